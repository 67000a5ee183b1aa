"""`tinylm eval` against a hostile user: bad flags, task names and files, models that are not there, task
files that would run code, data that is not on disk. Each case expects exit code 2 and fragments of one
message, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.adversarial.conftest import cli, expect

TASK = """task: adv_mc
dataset_path: json
dataset_kwargs: {data_files: {test: docs.jsonl}}
test_split: test
output_type: multiple_choice
doc_to_text: "what is item {{n}}"
doc_to_choice: ["red", "blue"]
doc_to_target: 0
"""
GENERATE = TASK.replace("output_type: multiple_choice", "output_type: generate_until").replace(
    'doc_to_choice: ["red", "blue"]\ndoc_to_target: 0', 'doc_to_target: "red"'
)


@pytest.fixture
def tasks(tmp_path: Path) -> Path:
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"n": n}) + "\n" for n in ("one", "two")))
    (tmp_path / "mc.yaml").write_text(TASK)
    (tmp_path / "gen.yaml").write_text(GENERATE)  # lm-eval's default budget: 256 new tokens
    (tmp_path / "hook.yaml").write_text(TASK + "process_docs: !function hooks.docs\n")
    (tmp_path / "elsewhere.yaml").write_text(TASK.replace("docs.jsonl", "missing.jsonl"))
    (tmp_path / "group.yaml").write_text("group: mine\ntask: [adv_mc]\n")
    return tmp_path


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--limit", "0"], ["--limit", "positive", "found 0"]),
        (["--limit", "-3"], ["--limit", "found -3"]),
        (["--batch-size", "0"], ["--batch-size", "found 0"]),
        (["--num-fewshot", "-1"], ["--num-fewshot", "found -1"]),
        (["--quantize", "int4"], ["--quantize", "int4"]),
        (["--tasks", ","], ["--tasks", "expected task names"]),
        (["--limit", "0", "--batch-size", "0"], ["--limit", "--batch-size"]),  # every problem at once
    ],
)
def test_eval_refuses_bad_flags(ckpt: Path, tasks: Path, args: list, fragments: list) -> None:
    base = ["--tasks", tasks / "mc.yaml"] if "--tasks" not in args else []
    expect(cli("eval", ckpt, *base, *args), 2, *fragments)


@pytest.mark.parametrize(
    ("task", "fragments"),
    [
        ("arc_esy", ["no lm-eval task", "'arc_esy'", "closest: arc_easy"]),
        ("nowhere/t.yaml", ["nowhere/t.yaml", "task file (--tasks) not found"]),
        ("hook.yaml", ["hook.yaml", "!function hooks.docs", "--allow-code"]),
        ("elsewhere.yaml", ["--tasks", "could not load this task offline", "missing.jsonl"]),
        ("group.yaml", ["group.yaml", "expected one task"]),
        ("gen.yaml", ["256 new tokens", "32-token context window", "max_gen_toks"]),
    ],
)
def test_eval_refuses_bad_tasks(ckpt: Path, tasks: Path, monkeypatch, task: str, fragments: list) -> None:
    monkeypatch.chdir(tasks)
    expect(cli("eval", ckpt, "--tasks", task, "--no-log"), 2, *fragments)


@pytest.mark.parametrize(
    ("model", "fragments"),
    [
        ("gone/checkpoint", ["gone/checkpoint", "no such checkpoint directory"]),
        ("no-such-model", ["no model"]),
    ],
)
def test_eval_refuses_models_that_are_not_there(tasks: Path, model: str, fragments: list) -> None:
    expect(cli("eval", model, "--tasks", tasks / "mc.yaml"), 2, *fragments)


def test_eval_scores_the_tiny_checkpoint(ckpt: Path, tasks: Path) -> None:
    outcome = cli("eval", ckpt, "--tasks", tasks / "mc.yaml", "--json", "--no-log")
    expect(outcome, 0)
    (run,) = json.loads(outcome.out)
    assert run["docs"] == {"adv_mc": 2} and 0.0 <= run["scores"]["adv_mc"]["acc"] <= 1.0
