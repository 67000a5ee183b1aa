"""The workbench verbs and model import/export against a hostile user: tokenizer, plot, export, attention,
tokenize, estimate-memory, test, and Hugging Face / GGUF folders given as models.

Each case feeds `tinylm` one bad input and expects exit code 2 with fragments of a one-line message (no
traceback); a refused write leaves its target as it was. FIFOs are refused by their type before any open,
so no case can hang.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.adversarial.conftest import cli, expect

TEXT = "the cat sat on the mat, the dog ate the bone.\n" * 20
METRICS = "step,name,value\n1,train_loss,2.0\n2,train_loss,1.5\n2,lr,0.001\n"


def _snapshot(path: Path) -> dict[str, bytes] | str | None:
    """What is at `path` (a file's bytes, a folder's files), to check a refused write left it alone."""
    if path.is_symlink():
        return f"link to {os.readlink(path)}"
    if path.is_file():
        return {"": path.read_bytes()}
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    return None


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """A folder with a text file, a FIFO, a plain file, a folder of someone else's files and an empty one."""
    (tmp_path / "a.txt").write_text(TEXT)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    return tmp_path


# ----------------------------------------------------------------------------------------------------------
# tokenizer train


def _text_file(p: Path, name: str, data: bytes) -> Path:
    (p / name).write_bytes(data)
    return p / name


TRAIN_INPUTS = {  # name -> (make the training file in the place, expected fragments)
    "fifo": (lambda p: p / "fifo", ["fifo", "expected a regular file"]),
    "folder without text": (lambda p: p / "empty", ["no .txt or .md files"]),
    "empty file": (lambda p: _text_file(p, "e.txt", b""), ["e.txt", "empty"]),
    "not utf-8": (lambda p: _text_file(p, "b.txt", b"\xff\xfeab"), ["b.txt", "not valid utf-8"]),
    "missing": (lambda p: p / "nope.txt", ["nope.txt"]),
}


@pytest.mark.parametrize("case", TRAIN_INPUTS)
def test_tokenizer_train_refuses_bad_text_files(place: Path, case: str) -> None:
    make, fragments = TRAIN_INPUTS[case]
    out = place / "tok"
    expect(cli("tokenizer", "train", "--kind", "char", make(place), "--out", out), 2, *fragments)
    assert not out.exists()


@pytest.mark.parametrize(
    ("kind", "size", "fragments"),
    [
        ("char", "0", ["vocab_size", "1..1,048,576", "found 0"]),
        ("word", "-3", ["vocab_size", "found -3"]),
        ("bpe", str(10**12), ["vocab_size", "found 1000000000000"]),  # bounded before the trainer allocates
        ("char", str(10**12), ["vocab_size"]),
        ("bpe", "100", ["too small", "at least 258"]),
        ("char", "3", ["too small", "distinct characters"]),
        ("word", "2", ["too small"]),
    ],
)
def test_tokenizer_train_bounds_the_vocab_size(place: Path, kind: str, size: str, fragments: list) -> None:
    out = place / "tok"
    args = ("tokenizer", "train", "--kind", kind, place / "a.txt", "--out", out, "--vocab-size", size)
    expect(cli(*args), 2, *fragments)
    assert not out.exists()


@pytest.mark.parametrize(
    ("target", "fragments"),
    [
        ("file", ["expected a folder", "regular file"]),
        ("file/sub", ["file is a regular file"]),
        ("full", ["not a tokenizer's", "keep.txt", "nothing was written"]),
    ],
)
def test_tokenizer_train_never_writes_over_what_it_did_not_write(place: Path, target: str, fragments) -> None:
    out = place / target
    before = _snapshot(place / target.split("/")[0])
    expect(cli("tokenizer", "train", "--kind", "char", place / "a.txt", "--out", out), 2, *fragments)
    assert _snapshot(place / target.split("/")[0]) == before
    assert not [p for p in place.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_tokenizer_train_replaces_its_own_tokenizer_and_fills_an_empty_folder(place: Path) -> None:
    for out in (place / "empty", place / "tok", place / "tok"):
        expect(cli("tokenizer", "train", "--kind", "bpe", place / "a.txt", "--out", out), 0)
        assert sorted(p.name for p in out.iterdir()) == ["tinylm_tokenizer.json", "tokenizer.json"]
    assert not [p for p in place.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------------------------------------
# a garbage tokenizer folder, through `tinylm tokenize`

META = "tinylm_tokenizer.json"
TOKENIZER_FOLDERS: dict[str, tuple[dict[str, str | None], list[str]]] = {  # files (None: a FIFO)
    "meta not json": ({META: "{nope"}, [META, "invalid json at line 1"]),
    "meta a list": ({META: "[1]"}, [META, "format_version"]),
    "meta a fifo": ({META: None}, [META, "fifo"]),
    "unknown kind": ({META: '{"format_version": 1, "kind": "morse"}'}, [META, "unknown tokenizer kind"]),
    "bpe file missing": ({META: '{"format_version": 1, "kind": "bpe"}'}, ["tokenizer.json", "not found"]),
    "bpe file garbled": (
        {META: '{"format_version": 1, "kind": "bpe"}', "tokenizer.json": '{"model": 5}'},
        ["tokenizer.json"],
    ),
    "vocab not strings": ({META: '{"format_version": 1, "kind": "char", "vocab": [1]}'}, [META, "vocab"]),
    "hf tokenizer.json garbage": ({"tokenizer.json": "garbage"}, ["tokenizer.json", "invalid json"]),
    "hf config a list": ({"tokenizer_config.json": "[1]"}, ["tokenizer_config.json", "json object"]),
    "nothing": ({"readme.md": "hi"}, ["no tokenizer in", META]),
}


@pytest.mark.parametrize("case", TOKENIZER_FOLDERS)
def test_a_garbage_tokenizer_folder_names_the_file(tmp_path: Path, case: str) -> None:
    files, fragments = TOKENIZER_FOLDERS[case]
    folder = tmp_path / "tok"
    folder.mkdir()
    for name, text in files.items():
        os.mkfifo(folder / name) if text is None else (folder / name).write_text(text)
    expect(cli("tokenize", folder, "hello"), 2, *fragments)


@pytest.mark.parametrize(
    ("source", "text", "fragments"),
    [
        ("nope/tok", "hi", ["no such tokenizer or checkpoint directory"]),
        ("fifo", "hi", ["expected a tokenizer or checkpoint directory", "fifo"]),
        ("file", "hi", ["regular file"]),
        ("CKPT", "", ["text is empty"]),
    ],
)
def test_tokenize_refuses_bad_sources_and_empty_text(
    place: Path, ckpt: Path, source, text, fragments
) -> None:
    where = ckpt if source == "CKPT" else place / source
    expect(cli("tokenize", where, text), 2, *fragments)


def test_tokenize_still_shows_a_checkpoint_tokenizer(ckpt: Path) -> None:
    outcome = cli("tokenize", ckpt, "what is item one", "--json")
    expect(outcome, 0)
    assert json.loads(outcome.out)["count"] == len("what is item one")


# ----------------------------------------------------------------------------------------------------------
# plot


def _run(p: Path, data: bytes | None) -> Path:
    """A run folder whose metrics.csv holds `data` (None: the log is a FIFO)."""
    run = p / "run"
    run.mkdir()
    os.mkfifo(run / "metrics.csv") if data is None else (run / "metrics.csv").write_bytes(data)
    return run


PLOT_RUNS: dict[str, tuple[Callable[[Path], Path], list[str]]] = {
    "missing": (lambda p: p / "nope", ["does not exist", "run directory"]),
    "a fifo": (lambda p: p / "fifo", ["fifo", "expected a metrics log"]),
    "no metrics.csv": (lambda p: p / "empty", ["has no metrics.csv"]),
    "empty log": (lambda p: _run(p, b""), ["metrics.csv, line 1", "expected the header"]),
    "only the header": (lambda p: _run(p, b"step,name,value\n"), ["no metrics yet"]),
    "garbage": (lambda p: _run(p, b"\x00garbage\x01\n"), ["line 1", "expected the header"]),
    "non-numeric cell": (lambda p: _run(p, b"step,name,value\n1,train_loss,abc\n"), ["line 2", "a number"]),
    "short row": (lambda p: _run(p, b"step,name,value\n1,train_loss\n"), ["line 2"]),
    "not utf-8": (lambda p: _run(p, b"step,name,value\n1,tr\xff,1\n"), ["not valid utf-8", "line 2"]),
    "log is a fifo": (lambda p: _run(p, None), ["metrics.csv", "fifo"]),
    "huge field": (lambda p: _run(p, b"step,name,value\n1," + b"x" * 200_000 + b",1\n"), ["line 2"]),
    "unknown metrics": (lambda p: _run(p, b"step,name,value\n1,foo,1\n"), ["no train_loss", "foo"]),
}


@pytest.mark.parametrize("case", PLOT_RUNS)
def test_plot_refuses_a_bad_run(place: Path, case: str) -> None:
    make, fragments = PLOT_RUNS[case]
    expect(cli("plot", make(place)), 2, *fragments)
    assert not list(place.rglob("*.png"))


@pytest.mark.parametrize(
    ("out", "fragments"),
    [
        ("empty", ["expected a .png file"]),
        ("picture.jpg", ["expected a .png file", ".jpg"]),
        ("file/x.png", ["file: expected a folder for the plot", "regular file"]),
        ("dir.png", ["expected a .png file, found a directory"]),
    ],
)
def test_plot_refuses_a_bad_out(place: Path, out: str, fragments: list) -> None:
    run = _run(place, METRICS.encode())
    (place / "dir.png").mkdir()
    before = _snapshot(place / out.split("/")[0])
    expect(cli("plot", run, "--out", place / out), 2, *fragments)
    assert _snapshot(place / out.split("/")[0]) == before


def test_plot_writes_aside_and_renames(place: Path) -> None:
    run = _run(place, METRICS.encode())
    (run / "metrics.png").write_text("an old plot")
    expect(cli("plot", run), 0)
    assert (run / "metrics.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in run.iterdir()) == ["metrics.csv", "metrics.png"]


# ----------------------------------------------------------------------------------------------------------
# export


@pytest.mark.parametrize(
    ("source", "out", "fragments"),
    [
        ("CKPT", "file", ["already exists and is not an empty directory"]),
        ("CKPT", "full", ["already exists and is not an empty directory"]),
        ("CKPT", "file/sub", ["file: expected a folder for the export", "regular file"]),
        ("CKPT", ".", ["current directory"]),
        ("CKPT", "link", ["symbolic link"]),
        ("nope", "new", ["nope"]),
        ("CKPT", "new", ["'char' tokenizer", "--no-tokenizer"]),
        ("garbage", "new", ["garbage"]),
    ],
)
def test_export_refuses_and_writes_nothing(place, ckpt, monkeypatch, source, out, fragments) -> None:
    monkeypatch.chdir(place)
    (place / "link").symlink_to(place / "empty")
    (place / "garbage").mkdir()
    (place / "garbage" / "tinylm.json").write_text("{not json")
    target = place / out if out != "." else Path(".")
    before = {p.name: _snapshot(p) for p in place.iterdir()}
    src = ckpt if source == "CKPT" else place / source
    expect(cli("export", src, target), 2, *fragments)
    assert {p.name: _snapshot(p) for p in place.iterdir()} == before


def test_export_names_the_fields_that_block_it_and_writes_nothing(place: Path, ckpt: Path) -> None:
    expect(cli("export", ckpt, place / "empty", "--no-tokenizer"), 2, "cannot export", "norm='layernorm'")
    assert not list((place / "empty").iterdir())


# ----------------------------------------------------------------------------------------------------------
# Hugging Face and GGUF folders given as models


@pytest.fixture(scope="module")
def hf_llama(tmp_path_factory) -> Path:
    """A tiny Llama folder as `save_pretrained` writes it (config.json, model.safetensors, tokenizer)."""
    from transformers import AutoModelForCausalLM

    from tests.unit.tiny_hf import save_tiny_tokenizer, tiny_llama_config

    path = tmp_path_factory.mktemp("hf") / "llama"
    tok = save_tiny_tokenizer(path)
    config = tiny_llama_config(vocab_size=len(tok), eos_token_id=tok.eos_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def _edit_config(**changes) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        config = json.loads((d / "config.json").read_text())
        config.update(changes)
        (d / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))

    return edit


def _pickle_only(d: Path) -> None:
    (d / "model.safetensors").rename(d / "pytorch_model.bin")  # never unpickled: refused by its name


def _halve(d: Path) -> None:
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def _replace_with_fifo(name: str) -> Callable[[Path], None]:
    def make(d: Path) -> None:
        (d / name).unlink()
        os.mkfifo(d / name)

    return make


HF_FOLDERS: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "pickle only": (
        _pickle_only,
        ["loads only safetensors", "pytorch_model.bin", "pickle that could run code"],
    ),
    "a .pt pickle": (lambda d: (d / "model.safetensors").rename(d / "weights.pt"), ["weights.pt", "pickle"]),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), ["no weights", "model.safetensors"]),
    "config not json": (lambda d: (d / "config.json").write_text("{nope"), ["config.json", "invalid json"]),
    "config a list": (lambda d: (d / "config.json").write_text("[1]"), ["config.json", "json object"]),
    "no model_type": (_edit_config(model_type=None), ["config.json", "model_type"]),
    "unknown model_type": (_edit_config(model_type="zorglub"), ["config.json", "'zorglub'"]),
    "config wrong type": (_edit_config(hidden_size="big"), ["config.json", "hidden_size"]),
    "truncated weights": (_halve, ["model.safetensors", "not a readable safetensors file"]),
    "empty weights": (lambda d: (d / "model.safetensors").write_bytes(b""), ["model.safetensors"]),
    "garbage weights": (
        lambda d: (d / "model.safetensors").write_bytes(b"\0" * 8 + b"junk" * 50),
        ["safetensors"],
    ),
    "shape mismatch": (
        _edit_config(hidden_size=64, intermediate_size=128),
        ["has shape", "config.json implies"],
    ),
    "absurd size": (_edit_config(hidden_size=4_096_000, vocab_size=10**8), ["config.json", "gib", "memory"]),
    "weights a fifo": (_replace_with_fifo("model.safetensors"), ["model.safetensors", "fifo"]),
    "tokenizer garbage": (lambda d: (d / "tokenizer.json").write_text("garbage"), ["tokenizer.json"]),
    "tokenizer config a list": (
        lambda d: (d / "tokenizer_config.json").write_text("[]"),
        ["tokenizer_config"],
    ),
}


@pytest.mark.parametrize("case", HF_FOLDERS)
def test_a_broken_hf_folder_is_refused_naming_the_file(hf_llama, tmp_path, monkeypatch, case) -> None:
    monkeypatch.setenv("TINYLM_HOME", str(tmp_path / "home"))
    folder = tmp_path / "model"
    shutil.copytree(hf_llama, folder)
    damage, fragments = HF_FOLDERS[case]
    damage(folder)
    expect(cli("generate", folder, "the cat", "--max-new-tokens", "2"), 2, *fragments)
    assert not list((tmp_path / "home" / "models").glob("*/tinylm.json"))


def test_a_pickle_is_never_read_even_beside_safetensors(hf_llama, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TINYLM_HOME", str(tmp_path / "home"))
    folder = tmp_path / "model"
    shutil.copytree(hf_llama, folder)
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle at all")  # unpickled, it would raise
    expect(cli("export", folder, tmp_path / "out"), 0)


@pytest.mark.parametrize("data", [b"GGUF" + b"\0" * 60, b"garbage", b""])
def test_a_garbage_gguf_file_is_a_checkpoint_error(tmp_path: Path, data: bytes) -> None:
    from tinylm.convert import import_pretrained
    from tinylm.errors import CheckpointError

    (tmp_path / "m.gguf").write_bytes(data)
    with pytest.raises(CheckpointError, match=r"m\.gguf"):
        import_pretrained(tmp_path / "m.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------
# attention


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--layer", "2"], ["--layer 2", "2 layers", "0..1"]),
        (["--layer", "-3"], ["--layer -3", "-2..-1"]),
        (["--head", "5"], ["--head 5", "2 heads", "0..1"]),
        (["--head", "-9"], ["--head -9"]),
        (["--text", ""], ["text is empty"]),
        (["--out", "x.jpg"], ["expected a .png or .html file", ".jpg"]),
        (["--out", "x"], ["expected a .png or .html file"]),
        (["--out", "file/x.png"], ["file: expected a folder for the attention map"]),
        (["--out", "dir.html"], ["expected a file, found a directory"]),
    ],
)
def test_attention_refuses_bad_arguments(place: Path, ckpt: Path, args: list, fragments: list) -> None:
    (place / "dir.html").mkdir()
    text, out, rest = "what is item one", "map.png", []
    for flag, value in zip(args[::2], args[1::2]):
        if flag == "--text":
            text = value
        elif flag == "--out":
            out = value
        else:
            rest += [flag, value]
    before = {p.name: _snapshot(p) for p in place.iterdir()}
    expect(cli("attention", ckpt, text, "--out", place / out, *rest), 2, *fragments)
    assert {p.name: _snapshot(p) for p in place.iterdir()} == before


def test_attention_counts_negative_indices_from_the_last(place: Path, ckpt: Path) -> None:
    out = place / "map.html"
    expect(cli("attention", ckpt, "item one", "--out", out, "--layer", "-1", "--head", "-2"), 0)
    assert out.read_text().startswith("<!doctype html>")
    assert not [p for p in place.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------------------------------------
# estimate-memory


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--batch-size", "0"], ["--batch-size", "found 0"]),
        (["--batch-size", "-1"], ["--batch-size", "found -1"]),
        (["--batch-size", str(10**15)], ["--batch-size", "1..1,048,576"]),
        (["--seq-len", "0"], ["--seq-len", "1..32"]),
        (["--seq-len", str(10**12)], ["--seq-len", "1..32"]),
        (["--device-memory", "12XB"], ["--device-memory '12XB'", "80GiB"]),
        (["--device-memory=-5GB"], ["--device-memory '-5GB'"]),
        (["--device-memory", "nan"], ["--device-memory 'nan'"]),
        (["--device-memory", "1e999GB"], ["--device-memory", "1 byte to 1 EiB"]),
        (["--device-memory", "0"], ["--device-memory '0'", "found 0 bytes"]),
    ],
)
def test_estimate_memory_refuses_bad_sizes(ckpt: Path, args: list, fragments: list) -> None:
    expect(cli("estimate-memory", ckpt, "--json", *args), 2, *fragments)


@pytest.mark.parametrize(
    ("source", "fragments"),
    [("fifo", ["fifo", "training config"]), ("nope", ["no model"]), ("empty", ["no model"])],
)
def test_estimate_memory_refuses_bad_sources(place: Path, source: str, fragments: list) -> None:
    expect(cli("estimate-memory", place / source), 2, *fragments)


def test_estimate_memory_still_estimates(ckpt: Path) -> None:
    outcome = cli("estimate-memory", ckpt, "--json", "--batch-size", "2", "--device-memory", "8GiB")
    expect(outcome, 0)
    assert json.loads(outcome.out)["device_memory"] == 8 * 2**30


# ----------------------------------------------------------------------------------------------------------
# test (the seed's test flow): where its log goes


def _test_config(arena: Path, place: Path, log_file: str, **params) -> Path:
    config = {
        "model_name": str(arena / "run" / "checkpoints" / "last"),
        "data": {"data_dir": str(arena / "qa.json"), "split": "train"},
        "generate_params": {"max_new_tokens": 2},
        "test_params": {"log_file": str(place / log_file), **params},
    }
    path = place / "test.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("log_file", "fragments"),
    [
        ("file/log.jsonl", ["file: expected a folder for the test log"]),
        ("full", ["log_file", "expected a file, found a directory"]),
        ("fifo", ["log_file", "fifo"]),
    ],
)
def test_test_refuses_a_log_file_it_cannot_write(arena, place, log_file: str, fragments: list) -> None:
    before = {p.name: _snapshot(p) for p in place.iterdir() if p.name != "fifo"}
    expect(cli("test", _test_config(arena, place, log_file)), 2, *fragments)
    after = {p.name: _snapshot(p) for p in place.iterdir() if p.name not in ("fifo", "test.yaml")}
    assert after == before


def test_test_refuses_a_zero_batch(arena: Path, place: Path) -> None:
    expect(cli("test", _test_config(arena, place, "log.jsonl", batch_size=0)), 2, "batch_size")
    assert not (place / "log.jsonl").exists()


def test_test_replaces_its_log_whole(arena: Path, place: Path) -> None:
    (place / "log.jsonl").write_text("an old log\n")
    expect(cli("test", _test_config(arena, place, "log.jsonl", batch_size=3)), 0)
    rows = [json.loads(line) for line in (place / "log.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert not [p for p in place.iterdir() if p.name.startswith(".")]
