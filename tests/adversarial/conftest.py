"""The hostile user's toolbox: run `tinylm` in-process and check the outcome, and tiny artefacts to attack.

Every case states what it feeds tinylm and what must come back: an exit code (or HTTP status) and
fragments of the message. `expect` also holds the house rule for every case: no traceback, ever.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import tiny_config, write_config
from tinylm.cli import main


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def cli(*argv: str | Path, stdin: str = "") -> Outcome:
    """`tinylm ARGV` in this process, its stdout and stderr captured (stdin from the given text)."""
    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        _stdin(stdin),
    ):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse's refusals: usage on stderr, exit 2
            code = e.code if isinstance(e.code, int) else 1
    return Outcome(code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _stdin(text: str):
    import sys

    saved = sys.stdin
    sys.stdin = io.StringIO(text)
    try:
        yield
    finally:
        sys.stdin = saved


def expect(outcome: Outcome, code: int, *fragments: str) -> None:
    """The exit code is `code`, no traceback was printed, and stderr holds every fragment (any case)."""
    text = outcome.err + outcome.out
    assert "Traceback" not in text, text
    assert outcome.code == code, (outcome.code, text)
    for fragment in fragments:
        assert fragment.lower() in outcome.err.lower(), (fragment, outcome.err)


QA_ROWS = [{"input": f"what is item {w}", "output": f"item {w} is {c} <end>"}
           for w, c in [("one", "red"), ("two", "blue"), ("three", "green"), ("four", "black")]]  # fmt: skip


@pytest.fixture(scope="session")
def arena(tmp_path_factory) -> Path:
    """A folder holding a small Q/A file (qa.json) and a tiny trained run (run/checkpoints/last)."""
    root = tmp_path_factory.mktemp("arena")
    (root / "qa.json").write_text(json.dumps({"training_data": QA_ROWS}))
    cfg = tiny_config(root, root / "qa.json", train={"max_steps": 2, "log_every_n_steps": 1})
    assert cli("train", write_config(root, cfg, "train.yaml")).code == 0
    return root


@pytest.fixture(scope="session")
def ckpt(arena: Path) -> Path:
    """The tiny trained checkpoint (a 2-layer, 32-dim char-level GPT with a 32-token window)."""
    return arena / "run" / "checkpoints" / "last"
