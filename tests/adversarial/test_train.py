"""Hostile input to `tinylm train` and `tinylm inspect-data`: configs, data files, the run folder.

Each case: what the user gives -> exit code and message fragments (no traceback, ever). The run-folder
cases also check that nothing the user had was deleted or changed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.adversarial.conftest import QA_ROWS, cli, expect
from tests.conftest import run_cli, tiny_config, write_config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A tiny config over a small Q/A file, its run in tmp_path/run."""
    data = tmp_path / "qa.json"
    data.write_text(json.dumps({"training_data": QA_ROWS}))
    return write_config(tmp_path, tiny_config(tmp_path, data, train={"max_steps": 2}), "train.yaml")


# -- numbers and values in a config: every problem at once, each naming its key ---------------------------
CONFIG_CASES = [
    (["train.learning_rate=-1"], ["train.learning_rate", "greater than 0"]),
    (["train.learning_rate=.nan"], ["train.learning_rate", "finite"]),
    (["train.learning_rate=.inf"], ["train.learning_rate", "finite"]),
    (["train.learning_rate=0"], ["train.learning_rate"]),
    (["train.betas=[1.5,0.9]"], ["train.betas.0", "less than 1"]),
    (["train.betas=[0.9,-0.1]"], ["train.betas.1"]),
    (["train.betas=[0.9]"], ["train.betas"]),
    (["train.devices=0"], ["train.devices", "found 0"]),
    (["train.devices=-3"], ["train.devices"]),
    (["train.devices=gpus"], ["train.devices", "'gpus'"]),
    (["train.min_lr=-1"], ["train.min_lr"]),
    (["train.min_lr=5"], ["train.min_lr", "above train.learning_rate"]),
    (["train.batch_size=0"], ["train.batch_size"]),
    (["train.batch_size=-4"], ["train.batch_size"]),
    (["train.batch_size=1e12"], ["train.batch_size"]),
    (["train.max_steps=0"], ["train.max_steps"]),
    (["train.max_epochs=-1"], ["train.max_epochs"]),
    (["train.weight_decay=-0.1"], ["train.weight_decay"]),
    (["train.grad_clip=0"], ["train.grad_clip"]),
    (["train.warmup=-5"], ["train.warmup"]),
    (["train.accumulate_grad_batches=0"], ["train.accumulate_grad_batches"]),
    (["train.num_nodes=0"], ["train.num_nodes"]),
    (["train.val_check_interval=0"], ["train.val_check_interval"]),
    (["train.val_check_interval=2.5"], ["train.val_check_interval", "at most 1.0"]),
    (["train.log_every_n_steps=0"], ["train.log_every_n_steps"]),
    (["train.eval_batches=0"], ["train.eval_batches"]),
    (["train.num_workers=-1"], ["train.num_workers"]),
    (["train.stop_at_val_loss=-1"], ["train.stop_at_val_loss"]),
    (["train.precision=8"], ["train.precision"]),
    (["train.lora={r: 0}"], ["train.lora.r"]),
    (["train.lora={dropout: 1.5}"], ["train.lora.dropout"]),
    (["checkpoint.save_top_k=-2"], ["checkpoint.save_top_k"]),
    (["checkpoint.every_n_train_steps=0"], ["checkpoint.every_n_train_steps"]),
    (["checkpoint.mode=median"], ["checkpoint.mode"]),
    (["data.max_length=0"], ["data.max_length"]),
    (["data.max_length=1000000000"], ["data.max_length"]),
    (["data.val_fraction=1.5"], ["data.val_fraction"]),
    (["data.val_fraction=-0.1"], ["data.val_fraction"]),
    (["data.stride=0"], ["data.stride"]),
    (["data.prompt_template=no placeholder"], ["data.prompt_template", "{prompt}"]),
    (["tokenizer.vocab_size=0"], ["tokenizer.vocab_size"]),
    (["tokenizer.kind=morse"], ["tokenizer.kind"]),
    (["generation.temperature=-1"], ["generation.temperature"]),
    (["generation.max_new_tokens=0"], ["generation.max_new_tokens"]),
    (["generation.top_p=0"], ["generation.top_p"]),
    (["generation.top_k=0"], ["generation.top_k"]),
    (["seed=-1"], ["seed"]),
    (["seed=99999999999999999999"], ["seed"]),
    (["model.n_layer=0"], ["n_layer"]),
    (["model.dropout=.nan"], ["dropout", "finite"]),
    (["model.norm_eps=.inf"], ["norm_eps", "finite"]),
    (["model.pos=spiral"], ["spiral"]),
    (["out_dir="], ["out_dir"]),
    (["train.lerning_rate=0.1"], ["train.lerning_rate", "did you mean 'train.learning_rate'"]),
    (["nonsense"], ["expected key=value"]),
    (["train.learning_rate=-1", "train.batch_size=0", "data.val_fraction=2"], ["3 problem(s)"]),
    (["train.objective=ppo"], ["train.objective", "'dpo'"]),
    (["train.objective=dpo", "train.dpo_beta=0"], ["train.dpo_beta", "greater than 0"]),
    (["train.objective=dpo", "train.dpo_reference=lazy"], ["train.dpo_reference", "'copy'"]),
    (["train.dpo_beta=0.5"], ["train.dpo_beta: only used with train.objective: dpo"]),
    (
        ["train.objective=dpo", "data.packing=true", "data.loss_on=all"],
        [
            "3 problem(s)",
            "init_from: train.objective dpo tunes a pretrained model",
            "data.packing",
            "data.loss_on",
        ],
    ),
]


@pytest.mark.parametrize("overrides, fragments", CONFIG_CASES, ids=lambda v: str(v)[:40])
def test_config_values_are_refused_at_load(config, overrides, fragments):
    outcome = cli("train", config, *[a for o in overrides for a in ("--set", o)])
    expect(outcome, 2, "train.yaml", *fragments)
    assert not (config.parent / "run").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "mapping of sections"),
        ("- a\n- b\n", "mapping of sections"),
        ("data: [unclosed\n", "malformed YAML"),
        ("a: " + "[" * 50_000 + "]" * 50_000, "nested too deeply"),
        ("x" * (1 << 21), "at most"),
    ],
    ids=["empty", "list", "malformed", "deep", "huge"],
)
def test_bad_yaml_files(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    expect(cli("train", path), 2, "bad.yaml", fragment)


def test_config_not_utf8(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes(b"out_dir: caf\xe9\n")
    expect(cli("train", path), 2, "latin.yaml", "UTF-8")


@pytest.mark.parametrize("kind", ["missing", "dir", "fifo"])
def test_config_path_is_not_a_file(tmp_path, kind):
    path = tmp_path / "c.yaml"
    if kind == "dir":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    fragment = {"missing": "not found", "dir": "directory", "fifo": "FIFO"}[kind]
    expect(cli("train", path), 2, "c.yaml", fragment)
    expect(cli("inspect-data", path), 2, "c.yaml", fragment)


# -- data files ------------------------------------------------------------------------------------------
DATA_CASES = [
    ("qa.json", b"", "invalid JSON"),
    ("qa.json", b"{broken", "line 1"),
    ("qa.json", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("qa.json", b"42", "qa.json"),
    ("qa.json", b"[1, 2]", "record 0"),
    ("qa.json", b'{"training_data": "no"}', "must be a list"),
    ("qa.json", b'{"training_data": []}', "no records"),
    ("qa.json", b'{"training_data": [{"input": "a"}]}', "record 0"),
    ("qa.json", b'{"training_data": [{"input": 5, "output": "b"}]}', "record 0"),
    ("qa.json", b"\xff\xfe\x00garbage", "UTF-8"),
    ("qa.jsonl", b'{"prompt": "a", "response": "b"}\n{bad\n', "line 2"),
    ("qa.jsonl", b'{"prompt": "a", "response": "b"}\n' + b"[" * 100_000 + b"]" * 100_000, "line 2"),
    ("qa.csv", b'prompt,response\n"a,b\n', "qa.csv"),
    ("qa.parquet", b"not parquet at all", "Parquet"),
    ("qa.xml", b"<a/>", "unsupported file type"),
    ("qa", b"{}", "no suffix"),
]


@pytest.mark.parametrize("name, content, fragment", DATA_CASES, ids=lambda v: str(v)[:24])
def test_bad_data_files(tmp_path, config, name, content, fragment):
    data = tmp_path / name
    data.write_bytes(content)
    expect(cli("train", config, "--set", f"data.path={data}"), 2, name, fragment)


@pytest.mark.parametrize("kind", ["missing", "dir", "fifo", "devnull"])
def test_data_path_is_not_a_regular_file(tmp_path, config, kind):
    data = {"missing": tmp_path / "nope.json", "dir": tmp_path, "fifo": tmp_path / "pipe.json"}.get(kind)
    if kind == "fifo":
        os.mkfifo(data)
    if kind == "devnull":
        data = Path("/dev/null")
    fragment = {"missing": "not found", "dir": "directory", "fifo": "FIFO", "devnull": "device"}[kind]
    expect(cli("train", config, "--set", f"data.path={data}"), 2, fragment)
    expect(cli("inspect-data", config, "--set", f"data.path={data}"), 2, fragment)


def test_a_fifo_never_hangs_the_process(tmp_path, config):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    result = run_cli("train", str(config), "--set", f"data.path={fifo}", timeout=120)
    assert result.returncode == 2 and "FIFO" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("examples", ["-1", "100000"])
def test_inspect_data_examples_out_of_range(config, examples):
    expect(cli("inspect-data", config, "--examples", examples), 2, "--examples", examples)


# -- preference pairs (train.objective: dpo) -------------------------------------------------------------
PAIR = {"prompt": "what is item one", "chosen": "item one is red", "rejected": "item one is blue"}
LONG_PROMPT = "what is item one " * 4  # 68 characters: more than the 32-token window
DPO_DATA_CASES = [
    ("pairs.jsonl", [PAIR, {**PAIR, "chosen": " "}], ["pairs.jsonl", "line 2", "key 'chosen'", "empty"]),
    (
        "pairs.json",
        [PAIR, {**PAIR, "rejected": "<end>"}],
        ["pairs.json", "record 1", "key 'rejected'", "empty"],
    ),
    ("pairs.json", [{**PAIR, "prompt": ""}], ["record 0", "key 'prompt'", "the prompt is empty"]),
    ("pairs.json", [QA_ROWS[0]], ["record 0", "'chosen', 'rejected'", "prompt/response data"]),
    ("pairs.json", [PAIR, {"prompt": "what"}], ["record 1", "missing key 'chosen'"]),
    ("pairs.json", [{**PAIR, "rejected": PAIR["chosen"]}], ["record 0", "the same text"]),
    ("pairs.json", [{**PAIR, "chosen": 5}], ["record 0", "key 'chosen'", "expected a string", "int 5"]),
    (
        "pairs.json",
        [{**PAIR, "prompt": [{"role": "assistant", "content": "hi"}]}],
        ["record 0", "key 'prompt'", "ends with a 'user' message"],
    ),
    (
        "pairs.json",
        [{**PAIR, "chosen": [{"role": "user", "content": "hi"}]}],
        ["record 0", "key 'chosen'", "the assistant's message"],
    ),
    (
        "pairs.jsonl",
        [PAIR, PAIR, {**PAIR, "prompt": LONG_PROMPT}],
        [
            "pairs.jsonl: line 3",
            f"the prompt is {len(f'Q: {LONG_PROMPT.strip()}') + 3} tokens",
            "data.max_length = 32",
        ],
    ),
]


@pytest.fixture
def dpo_config(tmp_path: Path, ckpt: Path) -> Path:
    """A DPO run on the arena's tiny checkpoint (its data path set by each case)."""
    cfg = tiny_config(tmp_path, tmp_path / "pairs.json", train={"max_steps": 1, "objective": "dpo"})
    del cfg["model"]
    cfg["init_from"] = str(ckpt)
    return write_config(tmp_path, cfg, "dpo.yaml")


@pytest.mark.parametrize("name, records, fragments", DPO_DATA_CASES, ids=lambda v: str(v)[:30])
def test_bad_preference_pairs(tmp_path, dpo_config, name, records, fragments):
    data = tmp_path / name
    text = "\n".join(json.dumps(r) for r in records) if name.endswith(".jsonl") else json.dumps(records)
    data.write_text(text)
    for verb in ("train", "inspect-data"):
        expect(cli(verb, dpo_config, "--set", f"data.path={data}"), 2, *fragments)


# -- the run folder: nothing lost ------------------------------------------------------------------------
def _tree(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
        for p in sorted(root.rglob("*"))
    }


def test_a_second_run_into_the_same_out_dir_is_refused_and_deletes_nothing(config):
    assert cli("train", config).code == 0
    run = config.parent / "run"
    before = _tree(run)
    outcome = cli("train", config, "--set", "train.max_steps=4")
    expect(outcome, 2, "already holds the checkpoints", "checkpoint.resume=auto", "out_dir")
    assert _tree(run) == before  # checkpoints, links and metrics.csv untouched
    assert cli("train", config, "--set", "train.max_steps=4", "checkpoint.resume=auto").code == 0


def test_resume_prunes_only_what_the_run_wrote(config):
    assert cli("train", config).code == 0
    ckpts = config.parent / "run" / "checkpoints"
    mine = ckpts / "step-000001"  # a folder of the user's that happens to look like a checkpoint
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert cli("train", config, "--set", "train.max_steps=4", "checkpoint.resume=auto").code == 0
    assert (mine / "notes.txt").read_text() == "keep me"
    assert not (ckpts / "step-000002").exists()  # the run's own superseded checkpoint was pruned


def test_resume_from_an_older_checkpoint_would_overwrite_later_ones(config):
    keep_all = ["checkpoint.save_top_k=-1", "train.log_every_n_steps=1"]
    assert cli("train", config, "--set", *keep_all).code == 0
    ckpts = config.parent / "run" / "checkpoints"
    before = _tree(ckpts)
    outcome = cli("train", config, "--set", f"checkpoint.resume={ckpts / 'step-000001'}", "train.max_steps=4")
    expect(outcome, 2, "step-000002", "overwrite")
    assert _tree(ckpts) == before


@pytest.mark.parametrize("where", ["file", "below-file"])
def test_out_dir_that_is_a_file(config, where):
    blocker = config.parent / "blocker"
    blocker.write_text("mine")
    out = blocker if where == "file" else blocker / "run"
    expect(cli("train", config, "--set", f"out_dir={out}"), 2, "out_dir", "regular file")
    assert blocker.read_text() == "mine"


def test_a_config_yaml_tinylm_did_not_write_is_never_overwritten(config):
    out = config.parent / "project"
    out.mkdir()
    (out / "config.yaml").write_text("# my notes\n")
    expect(cli("train", config, "--set", f"out_dir={out}"), 2, "config.yaml", "did not write")
    assert (out / "config.yaml").read_text() == "# my notes\n"


def test_temporaries_of_a_killed_save_are_cleared_and_an_interrupted_move_restored(config):
    assert cli("train", config).code == 0
    ckpts = config.parent / "run" / "checkpoints"
    stale = ckpts / ".step-000007.tmp-999999999"  # no process has this id
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    shutil.copytree(ckpts / "step-000002", ckpts / ".step-000005.old-999999999")
    alive = ckpts / f".step-000008.tmp-{os.getpid()}"  # a save in progress: left alone
    alive.mkdir()
    outcome = cli("train", config, "--set", "train.max_steps=3", "checkpoint.resume=auto")
    assert outcome.code == 0, outcome.err
    assert not stale.exists() and alive.exists()
    assert (ckpts / "step-000005" / "model.safetensors").is_file()  # moved back, not deleted
    assert "removed .step-000007" in outcome.err


def test_a_run_killed_before_its_first_checkpoint_leaves_its_metrics_aside(config):
    run = config.parent / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,name,value\n5,train_loss,9.0\n")
    assert cli("train", config).code == 0
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,name,value" and not any(r.startswith("5,") for r in rows)
    kept = list(run.glob("metrics.*.csv"))
    assert len(kept) == 1 and "9.0" in kept[0].read_text()


# -- damaged checkpoints, resumed or loaded ---------------------------------------------------------------
def _copy(ckpt: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ck"
    shutil.copytree(ckpt.resolve(), target)
    return target


def _write_safetensors(path: Path, **tensors) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))


DAMAGE = {
    "weights-empty": ("model.safetensors", b"", "not a readable safetensors"),
    "weights-garbage": ("model.safetensors", b"\x00" * 64, "not a readable safetensors"),
    "weights-dir": ("model.safetensors", None, "directory"),
    "meta-garbage": ("tinylm.json", b"{nope", "unreadable"),
    "meta-list": ("tinylm.json", b"[]", "JSON object"),
    "meta-deep": ("tinylm.json", b"[" * 100_000 + b"]" * 100_000, "unreadable"),
    "meta-version": ("tinylm.json", b'{"format_version": 99}', "format_version 99"),
    "meta-model": ("tinylm.json", b'{"format_version": 1, "model": {"n_layer": -2}}', "invalid model config"),
    "meta-missing": ("tinylm.json", None, "tinylm.json"),
    "weights-missing": ("model.safetensors", "remove", "missing model.safetensors"),
}


@pytest.mark.parametrize("case", DAMAGE, ids=list(DAMAGE))
def test_damaged_checkpoints_are_clear_errors(ckpt, tmp_path, case):
    name, content, fragment = DAMAGE[case]
    ck = _copy(ckpt, tmp_path)
    (ck / name).unlink()
    if content is None and name == "model.safetensors":
        (ck / name).mkdir()
    elif isinstance(content, bytes):
        (ck / name).write_bytes(content)
    expect(cli("generate", ck, "hi"), 2, fragment)
    expect(cli("embed", ck, "hi"), 2, fragment)


def test_truncated_weights(ckpt, tmp_path):
    ck = _copy(ckpt, tmp_path)
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    expect(cli("generate", ck, "hi"), 2, "model.safetensors")


def test_weights_of_the_wrong_shape(ckpt, tmp_path):
    import torch

    ck = _copy(ckpt, tmp_path)
    _write_safetensors(ck / "model.safetensors", **{"wte.weight": torch.zeros(3, 5)})
    expect(cli("generate", ck, "hi"), 2, "do not match the model config", "wte.weight")


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "not a readable trainer state"),
        (b"garbage bytes, not a zip", "not a readable trainer state"),
        ("pickle", "not a readable trainer state"),
        ("wrong-keys", "missing"),
    ],
    ids=["empty", "garbage", "pickle-with-code", "wrong-keys"],
)
def test_damaged_trainer_state_on_resume(config, content, fragment):
    import pickle

    import torch

    assert cli("train", config).code == 0
    state = config.parent / "run" / "checkpoints" / "last" / "trainer_state.pt"
    if content == "pickle":  # a pickle that would run code if it were loaded without weights_only
        state.write_bytes(pickle.dumps(os.system))
    elif content == "wrong-keys":
        torch.save({"optimizer": {}}, state)
    else:
        state.write_bytes(content)
    outcome = cli("train", config, "--set", "train.max_steps=4", "checkpoint.resume=auto")
    expect(outcome, 2, "trainer_state.pt", fragment)
