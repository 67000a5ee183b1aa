"""tinylm as an lm-evaluation-harness model (`tinylm.harness`), offline, on task files written here: on the same
weights its scores equal lm-eval's own Hugging Face backend (`hf` on the `tinylm export` of the checkpoint),
request by request: log-likelihoods within 1e-4, greedy replies exactly. Task files that name Python are
refused; a training run's checkpoint gets its scores in the run's metrics.csv."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tinylm import load
from tinylm.checkpoint import save_checkpoint
from tinylm.errors import TinylmError
from tinylm.harness import (
    TinylmEvalLM,
    evaluate_models,
    read_task_file,
    scores_of,
    sealed,
    task_specs,
)
from tinylm.model import GPTConfig, build_model
from tinylm.tokenizers import train_tokenizer
from tinylm.tools.export import export_checkpoint
from tinylm.train.loggers import read_metrics

TEXT = "the cat sat on the mat a dog ate the bone a bird sang a song at dawn red blue green"
BLOCK = 48  # a short window, so that one long question is cut from the left
DOCS = [
    {
        "question": "what did the cat do",
        "answer": "the cat sat",
        "choices": ["the cat sat", "a dog ate", "at dawn"],
    },
    {"question": "who ate the bone", "answer": "a dog", "choices": ["a bird", "a dog", "the mat"]},
    {"question": "what sang", "answer": "a bird", "choices": ["a song", "a bird", "a bird sang at dawn"]},
    {"question": "which colour", "answer": "blue", "choices": ["red", "blue", "green", "the bone"]},
    {
        "question": " ".join([TEXT] * 4),
        "answer": "green",
        "choices": ["green", "a dog ate the bone"],
    },  # too long
]
TASKS = {
    "mc.yaml": """task: tiny_mc
dataset_path: json
dataset_kwargs: {data_files: {test: docs.jsonl}}
test_split: test
output_type: multiple_choice
doc_to_text: "Q: {{question}}\\nA:"
doc_to_choice: choices
doc_to_target: "{{choices.index(answer)}}"
metric_list: [{metric: acc}, {metric: acc_norm}]
""",
    "gen.yaml": """task: tiny_gen
dataset_path: json
dataset_kwargs: {data_files: {test: docs.jsonl}}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{question}}\\nA:"
doc_to_target: "{{answer}}"
generation_kwargs: {until: ["\\n", "dawn"], max_gen_toks: 12, do_sample: false}
metric_list: [{metric: exact_match}]
""",
    "rolling.yaml": """task: tiny_rolling
dataset_path: json
dataset_kwargs: {data_files: {test: docs.jsonl}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{question}} {{answer}}"
metric_list: [{metric: word_perplexity}, {metric: bits_per_byte}]
""",
}
FAMILIES = {  # the two layouts `tinylm export` writes: Llama (here with one k/v head) and GPT-2
    "llama": dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=1),
    "gpt2": dict(pos="learned", norm="layernorm", mlp="gelu", bias=True),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    (folder / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    for name, text in TASKS.items():
        (folder / name).write_text(text)
    return folder


def tiny_checkpoint(directory: Path, family: str) -> Path:
    """A random 2-layer, 32-dim GPT of `family` with a byte-level BPE tokenizer, in a run's checkpoint
    folder (RUN/checkpoints/step-000007) beside the run's metrics.csv."""
    tok = train_tokenizer("bpe", [TEXT] * 20 + ["Q: A:\n"], vocab_size=300)
    cfg = GPTConfig(
        vocab_size=tok.vocab_size, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, **FAMILIES[family]
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # sharper distributions: greedy choices far from ties
    _words_only(model, tok)
    (directory / "metrics.csv").parent.mkdir(parents=True)
    (directory / "metrics.csv").write_text("step,name,value\n7,train_loss,2.5\n")
    return save_checkpoint(
        directory / "checkpoints" / "step-000007", model=model, config=cfg, tokenizer=tok, meta={"step": 7}
    )


def _words_only(model: torch.nn.Module, tok) -> None:
    """No logit for the single bytes of the byte-level vocabulary: greedy replies are made of the merged word
    pieces (`" the"`, `"dawn"`), so that the tasks' stop strings come up, not of stray bytes."""
    single = [i for i in range(tok.vocab_size) if len(tok.tok.id_to_token(i)) == 1]
    with torch.no_grad():
        model.lm_head.weight[single] = 0


@pytest.fixture(scope="module", params=list(FAMILIES))
def checkpoint(request, tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp(request.param) / "run", request.param)


def _samples(model, tasks: Path, batch_size: int) -> dict[str, list]:
    """Per task, each request's response (a (log-likelihood, is greedy) pair, a float or a reply) in order."""
    from lm_eval.evaluator import simple_evaluate

    with sealed():
        specs, manager = task_specs([str(tasks / name) for name in TASKS])
        out = simple_evaluate(
            model=model,
            tasks=specs,
            task_manager=manager,
            batch_size=batch_size,
            bootstrap_iters=0,
            log_samples=True,
        )
    assert set(out["samples"]) == {"tiny_mc", "tiny_gen", "tiny_rolling"}
    found: dict[str, list] = {"metrics": scores_of(out)[0]}
    for task, rows in out["samples"].items():
        found[task] = [resp[0] for row in sorted(rows, key=lambda r: r["doc_id"]) for resp in row["resps"]]
    return found


@pytest.fixture(scope="module")
def hf_samples(checkpoint, tasks, tmp_path_factory) -> dict[str, list]:
    from lm_eval.models.huggingface import HFLM

    exported = export_checkpoint(checkpoint, tmp_path_factory.mktemp("hf") / "model")
    with sealed():
        hf = HFLM(pretrained=str(exported), batch_size=4, device="cpu")
    return _samples(hf, tasks, batch_size=4)


def test_scores_equal_lm_eval_hf_backend_on_the_exported_model(checkpoint, tasks, hf_samples):
    mine = _samples(TinylmEvalLM(load(checkpoint), batch_size=4), tasks, batch_size=4)
    assert len(mine["tiny_mc"]) == sum(len(d["choices"]) for d in DOCS)
    for (ll, greedy), (hf_ll, hf_greedy) in zip(mine["tiny_mc"], hf_samples["tiny_mc"], strict=True):
        assert ll == pytest.approx(hf_ll, abs=1e-4)
        assert greedy == hf_greedy
    assert mine["tiny_rolling"] == pytest.approx(hf_samples["tiny_rolling"], abs=1e-4)
    assert mine["tiny_gen"] == hf_samples["tiny_gen"]
    assert any(reply.strip() for reply in mine["tiny_gen"])  # replies, not a row of empty strings
    for task, found in hf_samples["metrics"].items():  # a perplexity is exp of a mean: compared relatively
        assert mine["metrics"][task] == pytest.approx(found, rel=1e-6, abs=1e-4)


def test_reading_a_context_once_for_its_choices_changes_no_score(checkpoint, tasks):
    """The shared-context path (batches of 8 rows, or one question at a time) against every request read
    whole (the path of models without a static cache)."""
    lm = load(checkpoint)
    whole = TinylmEvalLM(lm, batch_size=8)
    whole.shares_contexts = False
    found = [_samples(m, tasks, batch_size=8) for m in (TinylmEvalLM(lm, 8), TinylmEvalLM(lm, 1), whole)]
    for other in found[1:]:
        assert [ll for ll, _ in other["tiny_mc"]] == pytest.approx(
            [ll for ll, _ in found[0]["tiny_mc"]], abs=1e-5
        )
        assert other["tiny_rolling"] == pytest.approx(found[0]["tiny_rolling"], abs=1e-4)  # sums near -500
        assert other["tiny_gen"] == found[0]["tiny_gen"]


def test_a_gru_scores_the_same_alone_and_in_batches(tasks, tmp_path):
    """The GRU baseline: no cache and no padding on the left (the engine runs its prompts one at a time)."""
    tok = train_tokenizer("bpe", [TEXT] * 20 + ["Q: A:\n"], vocab_size=300)
    cfg = GPTConfig(kind="gru", vocab_size=tok.vocab_size, block_size=BLOCK, n_layer=1, n_embd=32)
    torch.manual_seed(0)
    model = build_model(cfg)
    _words_only(model, tok)
    lm = load(save_checkpoint(tmp_path / "gru", model=model, config=cfg, tokenizer=tok))
    one, four = (_samples(TinylmEvalLM(lm, batch_size=b), tasks, batch_size=b) for b in (1, 4))
    assert [ll for ll, _ in four["tiny_mc"]] == pytest.approx([ll for ll, _ in one["tiny_mc"]], abs=1e-5)
    assert four["tiny_gen"] == one["tiny_gen"]
    assert {len(lm.tokenizer.encode(reply)) for reply in four["tiny_gen"]} != {1}  # ran past a first token


def test_a_model_run_through_transformers_scores_as_the_hf_backend_does(tasks, tmp_path):
    """GPT-Neo (no tinylm layout: transformers runs it, each request read whole, its own tokenizer) against
    the `hf` backend on the same directory."""
    from lm_eval.models.huggingface import HFLM

    from tests.unit.tiny_hf import save_tiny_gpt_neo

    folder = save_tiny_gpt_neo(tmp_path / "neo", corpus=[TEXT, "Q: A:\n"] * 3)
    mine = TinylmEvalLM(load(folder), batch_size=4)
    assert not mine.shares_contexts
    with sealed():
        hf = HFLM(pretrained=str(folder), batch_size=4, device="cpu")
    found, expected = _samples(mine, tasks, batch_size=4), _samples(hf, tasks, batch_size=4)
    assert [ll for ll, _ in found["tiny_mc"]] == pytest.approx(
        [ll for ll, _ in expected["tiny_mc"]], abs=1e-4
    )
    assert found["tiny_rolling"] == pytest.approx(expected["tiny_rolling"], abs=1e-4)
    assert found["tiny_gen"] == expected["tiny_gen"]


def test_evaluate_models_compares_columns_and_logs_into_the_run(checkpoint, tasks):
    runs = evaluate_models(
        [str(checkpoint)],
        [str(tasks / "mc.yaml"), str(tasks / "gen.yaml")],
        quantize=["none", "int8"],
        limit=3,
    )
    assert [(r.model, r.quantize) for r in runs] == [(str(checkpoint), "none"), (str(checkpoint), "int8")]
    assert runs[0].docs == {"tiny_mc": 3, "tiny_gen": 3}
    assert set(runs[0].scores["tiny_mc"]) == {"acc", "acc_norm"} and "acc" in runs[0].stderr["tiny_mc"]
    metrics = checkpoint.parent.parent / "metrics.csv"
    assert runs[0].logged_to == metrics
    logged = {(step, name): value for step, name, value in read_metrics(metrics)}
    assert logged[(7, "eval/tiny_mc/acc")] == runs[0].scores["tiny_mc"]["acc"]
    assert logged[(7, "eval_int8/tiny_gen/exact_match")] == runs[1].scores["tiny_gen"]["exact_match"]
    assert logged[(7, "train_loss")] == 2.5  # the run's own rows kept


def test_a_data_file_is_read_beside_its_task_file(tasks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = read_task_file(tasks / "mc.yaml")
    assert cfg["dataset_kwargs"]["data_files"] == {"test": str((tasks / "docs.jsonl").resolve())}


def test_task_files_that_name_python_are_refused(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "hooks.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef docs(d):\n    return d\n")
    (tmp_path / "base.yaml").write_text("process_docs: !function hooks.docs\n")
    (tmp_path / "hooked.yaml").write_text(TASKS["mc.yaml"] + "include: base.yaml\n")
    (tmp_path / "metric.yaml").write_text(
        TASKS["mc.yaml"].replace("[{metric: acc}, {metric: acc_norm}]", "[{metric: ./evil.py}]")
    )
    with pytest.raises(TinylmError, match=r"!function hooks\.docs.*--allow-code"):
        read_task_file(tmp_path / "hooked.yaml")
    with pytest.raises(TinylmError, match=r"metric '\./evil\.py', which is not one of lm-eval's own"):
        read_task_file(tmp_path / "metric.yaml")
    assert not marker.exists()
    assert callable(read_task_file(tmp_path / "hooked.yaml", allow_code=True)["process_docs"])
    assert marker.exists()


def test_prompt_templates_render_in_a_sandbox(checkpoint, tmp_path):
    (tmp_path / "docs.jsonl").write_text(json.dumps(DOCS[0]) + "\n")
    (tmp_path / "t.yaml").write_text(
        TASKS["mc.yaml"].replace("Q: {{question}}", "{{ cycler.__init__.__globals__.os.getcwd() }}")
    )
    with pytest.raises(TinylmError, match="sandbox"):
        evaluate_models([str(checkpoint)], [str(tmp_path / "t.yaml")], log=False)


def test_a_task_whose_data_is_not_on_disk_is_refused(tmp_path):
    (tmp_path / "t.yaml").write_text(
        TASKS["mc.yaml"].replace("data_files: {test: docs.jsonl}", "data_files: {test: nowhere.jsonl}")
    )
    with (
        sealed(),
        pytest.raises(TinylmError, match=r"could not load this task offline.*data must be on disk"),
    ):
        task_specs([str(tmp_path / "t.yaml")])


def test_the_example_task_files_load_with_their_data():
    examples = Path(__file__).resolve().parents[2] / "examples" / "eval"
    with sealed():
        specs, manager = task_specs([str(examples / "qa_choice.yaml"), str(examples / "qa_answer.yaml")])
        loaded = manager.load(specs)["tasks"]
    assert {name: len(task.eval_docs) for name, task in loaded.items()} == {"qa_choice": 44, "qa_answer": 44}
    docs = loaded["qa_choice"].eval_docs
    assert all(doc["choices"][doc["label"]] == doc["answer"] for doc in docs)
