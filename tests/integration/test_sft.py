"""The seed's SFT system end to end on a tiny pretrained model: trainer_config.yaml → tinylm train →
test_config.yaml → tinylm test; the fine-tuned model stops by itself."""

import json
import logging

import torch
import yaml

from tests.conftest import run_cli
from tests.unit.tiny_hf import save_tiny_gpt_neo, save_tiny_tokenizer
from tinylm import load
from tinylm.cli import main
from tinylm.train.loggers import read_metrics

COLORS = ["red", "blue", "green", "black", "white", "pink", "gray", "brown", "gold", "teal"]
THINGS = ["box", "cup", "hat"]
PAIRS = [(f"What color is the {c} {t}?", f"The {c} {t} is {c}.") for t in THINGS for c in COLORS]


CORPUS = [f"Question: {q}\nAnswer: {a}" for q, a in PAIRS]


def _tiny_pretrained(path):
    """A tiny Llama (the SmolLM2 family) with a byte-level BPE tokenizer, saved like a hub download."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_tok = save_tiny_tokenizer(path, CORPUS)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=hf_tok.eos_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def _sft_data(path):
    rows = [{"Question": q, "Answer": a} for q, a in PAIRS]
    path.write_text(json.dumps({"train": rows, "val": rows[:6], "test": rows[-3:]}))  # taught, then asked
    return path


def _trainer_config(model_dir, data, run) -> dict:
    """The seed's trainer_config.yaml, every key of it, for `model_dir`."""
    return {
        "data": {
            "batch_size": 8,
            "data_dir": str(data),
            "max_length": 48,
            "on_tpu": False,
            "truncate_promt": True,
        },
        "model_name": str(model_dir),
        "model_params": {
            "adam_betas": [0.9, 0.95],
            "do_compute_metrics": True,
            "learning_rate": 0.003,
            "use_cache": True,
            "warmup_steps_per_cent": 5,
            "weight_decay": 0.0,
            "do_freeze": True,
            "freeze_emb": False,
            "freeze_ln": True,
            "freeze_attn": False,
            "freeze_ff": False,
            "freeze_other": False,
            "layers_not_to_freeze": ["h.1.ln_"],
        },
        "seed": 3,
        "trainer": {
            "checkpoint": {
                "dirpath": str(run),
                "every_n_train_steps": None,
                "log_obg": "val_rougeL",
                "mode": "max",
            },
            "ckpt_path": None,
            "params": {
                "accelerator": "cpu",
                "accumulate_grad_batches": 1,
                "gradient_clip_val": 1.0,
                "log_every_n_steps": 10,
                "max_epochs": 40,
                "num_sanity_val_steps": 1,
                "overfit_batches": 0,
                "precision": 32,
                "val_check_interval": 20,
            },
        },
        "wandb": {
            "api": None,
            "args": {"group": "g", "job_type": "sft", "name": "tiny", "project_name": "tinylm"},
        },
    }


def _test_config(model_dir, data, log_file, checkpoint) -> dict:
    """The seed's test_config.yaml, testing `checkpoint` (fine-tuned from `model_dir`)."""
    return {
        "cuda": False,
        "data": {
            "data_dir": str(data),
            "max_prompt_length": 32,
            "padding": True,
            "padding_side": "left",
            "split": "test",
            "truncate_promt": True,
        },
        "generate_params": {
            "do_sample": False,
            "max_new_tokens": 16,
            "no_repeat_ngram_size": 0,
            "top_k": 50,
            "top_p": 1.0,
        },
        "model_name": str(model_dir),
        "seed": 3,
        "test_params": {
            "do_compute_metrics": True,
            "log_file": str(log_file),
            "save_steps": 2,
            "test_model_path": str(checkpoint),
        },
        "use_cache": True,
    }


def test_seed_configs_fine_tune_and_test(tmp_path):
    model_dir = _tiny_pretrained(tmp_path / "tiny-llama")
    data = _sft_data(tmp_path / "qa.json")
    run = tmp_path / "sft"
    trainer = _trainer_config(model_dir, data, run)
    (tmp_path / "trainer_config.yaml").write_text(yaml.safe_dump(trainer))
    result = run_cli("train", str(tmp_path / "trainer_config.yaml"))
    assert result.returncode == 0, result.stderr
    assert "trainable" in result.stderr
    rows = read_metrics(run / "metrics.csv")
    rouge = [v for _, n, v in rows if n == "val_rougeL"]
    assert len(rouge) >= 2 and max(rouge) > 0.9 and max(rouge) > rouge[0]
    assert list((run / "wandb").glob("offline-run-*"))

    test = _test_config(model_dir, data, tmp_path / "test_log.jsonl", run / "checkpoints" / "best")
    (tmp_path / "test_config.yaml").write_text(yaml.safe_dump(test))
    tested = run_cli("test", str(tmp_path / "test_config.yaml"))
    assert tested.returncode == 0, tested.stderr
    assert "rougeL" in tested.stdout and "exact_match" in tested.stdout
    logged = [json.loads(line) for line in (tmp_path / "test_log.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in logged] == [a for _, a in PAIRS[-3:]]

    lm = load(run / "checkpoints" / "best")
    question, answer = PAIRS[0]
    done = lm.complete([question], max_new_tokens=30)[0]
    assert done.finish_reason == "stop" and done.text.strip() == answer  # stops by itself at EOS


def test_seed_configs_fine_tune_and_test_gpt_neo(tmp_path, monkeypatch, capsys, caplog):
    """GPT-Neo, which tinylm does not convert, trains through transformers with the seed's freezing flags;
    its checkpoints are HF model directories that `tinylm test` and `tinylm.load` read back."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("TINYLM_HOME", str(tmp_path / "home"))  # where the pretrained model is stored once
    model_dir = save_tiny_gpt_neo(tmp_path / "tiny-neo", CORPUS)
    data = _sft_data(tmp_path / "qa.json")
    run = tmp_path / "sft"
    trainer = _trainer_config(model_dir, data, run)
    trainer["data"]["batch_size"] = 4
    trainer["model_params"] |= {"freeze_emb": True, "freeze_ln": False, "freeze_attn": True}
    trainer["model_params"]["layers_not_to_freeze"] = ["h.1.attn."]
    trainer["trainer"]["checkpoint"]["log_obg"] = "val_loss"
    trainer["trainer"]["checkpoint"]["mode"] = "min"
    trainer["trainer"]["params"] |= {"max_epochs": 1, "overfit_batches": 3, "val_check_interval": 3}
    del trainer["wandb"]  # its offline run takes seconds; the Llama test above covers it
    (tmp_path / "trainer_config.yaml").write_text(yaml.safe_dump(trainer))
    with caplog.at_level(logging.WARNING, logger="tinylm.hf_model"):
        assert main(["train", str(tmp_path / "trainer_config.yaml")]) == 0  # in this process: fast
    assert "gpt_neo runs through transformers' AutoModelForCausalLM, not tinylm's GPT" in caplog.text
    assert "done: step 3" in capsys.readouterr().err
    assert {n for _, n, _ in read_metrics(run / "metrics.csv")} >= {"train_loss", "val_loss", "val_rougeL"}

    best = run / "checkpoints" / "best"
    tuned = dict(AutoModelForCausalLM.from_pretrained(best, local_files_only=True).named_parameters())
    base = dict(AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).named_parameters())
    changed = {k.removeprefix("transformer.") for k in base if not torch.equal(base[k], tuned[k])}
    frozen = {k for k in base if k.startswith(("transformer.wte", "transformer.wpe", "transformer.h.0.attn"))}
    assert changed == {k.removeprefix("transformer.") for k in set(base) - frozen}
    assert {"h.1.attn.attention.q_proj.weight", "h.0.mlp.c_fc.bias", "ln_f.weight"} <= changed
    assert len(frozen) == 7  # wte, wpe, and h.0's q/k/v and out projections (kept: h.1's)

    test = _test_config(model_dir, data, tmp_path / "test_log.jsonl", best)
    (tmp_path / "test_config.yaml").write_text(yaml.safe_dump(test))
    assert main(["test", str(tmp_path / "test_config.yaml")]) == 0
    assert "rougeL" in capsys.readouterr().out
    logged = [json.loads(line) for line in (tmp_path / "test_log.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in logged] == [a for _, a in PAIRS[-3:]]
    assert all(r["prompt"].startswith("Question: ") for r in logged)

    lm = load(best)
    assert lm.checkpoint.meta["step"] == 3 and lm.complete([PAIRS[0][0]], max_new_tokens=4)[0].tokens


def test_seed_config_errors_name_the_seed_keys(tmp_path):
    cfg = {
        "model_name": "x",
        "trainer": {"params": {"max_epoch": 1}},
        "data": {"data_dir": "d", "on_tpu": True},
    }
    (tmp_path / "trainer_config.yaml").write_text(yaml.safe_dump(cfg))
    result = run_cli("train", str(tmp_path / "trainer_config.yaml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "trainer.params.max_epoch: unknown key (did you mean 'trainer.params.max_epochs'?)" in result.stderr
    )
    assert "data.on_tpu" in result.stderr
