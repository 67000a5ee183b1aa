"""DPO (`train.objective: dpo`): the loss equals TRL's DPOTrainer on the same model, token ids and beta; only
response tokens are scored; precomputed reference log-probabilities train exactly as a frozen copy does; a
`tinylm train` run validates before and after, writes checkpoints that `tinylm.load` reads, and resumes
where it stopped; `tinylm inspect-data` shows each pair's three parts."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_config, write_config
from tests.unit.tiny_hf import tiny_word_tokenizer
from tinylm import load
from tinylm.checkpoint import WEIGHTS_FILE
from tinylm.cli import main
from tinylm.config import load_config
from tinylm.convert import import_pretrained
from tinylm.data.datasets import IGNORE_INDEX, EncodedPair, PairRows, encode_pair, pair_prompt
from tinylm.data.formats import Pair, read_pairs
from tinylm.footprint import model_counts
from tinylm.train.fits import subject_for_run
from tinylm.train.loggers import read_metrics
from tinylm.train.loss import WithDPOLoss, sequence_logps

# ----------------------------------------------------------------------------------------------------------
# The loss against TRL's DPOTrainer

TRL_PAIRS = [  # words of the tiny tokenizer's corpus, so that every side is a few whole tokens
    ("the cat sat", "on the mat", "a dog ate the bone"),
    ("the bird sang", "a song at dawn", "on the mat"),
    ("a dog ate", "the bone", "the cat sat at dawn"),
]
TEMPLATE = "{prompt}\n"


def test_dpo_loss_equals_trls_on_the_same_model_and_tokens(hf_dir, tmp_path):
    """A tiny Llama as the reference and a perturbed copy as the policy, both in transformers (for TRL) and
    converted into tinylm's GPT: TRL tokenizes the pairs to the very ids tinylm does, and its loss and
    reward margin on that batch match tinylm's within 1e-5."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    ref_dir, ref_hf = hf_dir
    policy_hf = copy.deepcopy(ref_hf)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy_hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    policy_hf.save_pretrained(tmp_path / "policy")
    tiny_word_tokenizer().save_pretrained(tmp_path / "policy")
    ref_lm = load(import_pretrained(ref_dir, tmp_path / "ref-ckpt"))
    policy_lm = load(import_pretrained(tmp_path / "policy", tmp_path / "policy-ckpt"))
    tok, beta = policy_lm.tokenizer, 0.3

    pairs = [Pair(p, c, r, source=f"pair {i}") for i, (p, c, r) in enumerate(TRL_PAIRS)]
    encoded = [encode_pair(p, tok, template=TEMPLATE, max_length=32) for p in pairs]
    batch = PairRows(encoded, tok.pad_id).batch(range(len(pairs)))
    with torch.no_grad():
        ref_logps = sequence_logps(ref_lm.model(batch["input_ids"]), batch["labels"])
        per_pair = WithDPOLoss(policy_lm.model, beta)(
            batch["input_ids"], batch["labels"], ref_logps, reduction="none"
        )
    ours, our_margin = per_pair[:, 0].mean().item(), per_pair[:, 1].mean().item()

    data = Dataset.from_list(
        [{"prompt": TEMPLATE.format(prompt=p), "chosen": c, "rejected": r} for p, c, r in TRL_PAIRS]
    )
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=beta,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        max_length=None,
    )
    trainer = DPOTrainer(
        model=policy_hf,
        ref_model=ref_hf,
        args=args,
        train_dataset=data,
        processing_class=tiny_word_tokenizer(),
    )
    rows = [trainer.train_dataset[i] for i in range(len(pairs))]
    assert [r["prompt_ids"] for r in rows] == [e.prompt for e in encoded]  # the same token ids
    assert [r["chosen_ids"] for r in rows] == [e.chosen for e in encoded]  # response + EOS
    assert [r["rejected_ids"] for r in rows] == [e.rejected for e in encoded]
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, trainer.data_collator(rows)).item()
    their_margin = trainer._metrics["train" if trainer.model.training else "eval"]["rewards/margins"][-1]

    assert abs(ours - math.log(2)) > 1e-2  # the policy differs from the reference: not the trivial log 2
    assert abs(ours - theirs) < 1e-5, (ours, theirs)
    assert abs(our_margin - their_margin) < 1e-5, (our_margin, their_margin)


def test_pairs_read_from_jsonl_with_chat_messages(tmp_path):
    """TRL's conversational form: the prompt a chat (its system turn kept in the layout), each response one
    assistant message; plain strings beside it; END_MARKER and whitespace stripped."""
    chat = {
        "prompt": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of Peru?"},
        ],
        "chosen": [{"role": "assistant", "content": "Lima. <end>"}],
        "rejected": [{"role": "assistant", "content": "It is a city."}],
    }
    plain = {"prompt": " Capital of Chile? ", "chosen": "Santiago.", "rejected": "No idea."}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(chat) + "\n\n" + json.dumps(plain) + "\n")
    first, second = read_pairs(path)
    assert (first.prompt, first.chosen, first.rejected) == ("Capital of Peru?", "Lima.", "It is a city.")
    assert first.messages is not None and first.source == f"{path}: line 1"
    assert (second.prompt, second.chosen, second.messages, second.source) == (
        "Capital of Chile?",
        "Santiago.",
        None,
        f"{path}: line 3",
    )
    assert pair_prompt(first, "Q: {prompt}\nA:", None) == "Be brief.\nQ: Capital of Peru?\nA:"
    assert pair_prompt(second, "Q: {prompt}\nA:", None) == "Q: Capital of Chile?\nA:"


def test_only_the_response_tokens_are_scored():
    """Rows are prompt + response (chosen rows first), labels only on the response and its EOS; the
    log-probability of a row ignores what the logits say at prompt and padding positions."""
    pair = EncodedPair(prompt=[1, 2, 3], chosen=[4, 5, 0], rejected=[6, 0], truncated=False)
    batch = PairRows([pair], pad_id=7).batch([0])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [1, 2, 3, 6, 7]]  # padded with pad_id
    assert batch["labels"].tolist() == [[-100, -100, 4, 5, 0], [-100, -100, 6, 0, -100]]

    labels = batch["labels"]
    logits = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    logps = sequence_logps(logits, labels)
    by_hand = [
        sum(F.log_softmax(logits[r, t], -1)[labels[r, t]] for t in range(5) if labels[r, t] != IGNORE_INDEX)
        for r in range(2)
    ]
    torch.testing.assert_close(logps, torch.stack(by_hand))
    moved = logits.clone()
    moved[:, :2] += 5 * torch.randn(2, 2, 8)  # positions predicting prompt tokens
    moved[1, 4] += 5  # the rejected row's padding
    assert torch.equal(sequence_logps(moved, labels), logps)
    moved[0, 2, 5] += 1  # a response position: now it counts
    assert not torch.equal(sequence_logps(moved, labels), logps)


# ----------------------------------------------------------------------------------------------------------
# `tinylm train` with objective dpo, on a tiny char-level model

ITEMS = [("one", "red"), ("two", "blue"), ("three", "green"), ("four", "black"), ("five", "white"),
         ("six", "pink"), ("seven", "gray"), ("eight", "brown")]  # fmt: skip
PAIRS = [
    {"prompt": f"what is item {w}", "chosen": f"item {w} is {c}", "rejected": f"no idea about {w}"}
    for w, c in ITEMS
]


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny char-level GPT trained 2 steps on both answers of every pair, the pairs file: 6 to train
    on, 2 to validate on)."""
    root = tmp_path_factory.mktemp("dpo")
    qa = root / "qa.json"
    rows = [{"input": p["prompt"], "output": p[side]} for p in PAIRS for side in ("chosen", "rejected")]
    qa.write_text(json.dumps({"training_data": rows}))
    cfg = tiny_config(root, qa, data={"max_length": 64}, train={"max_steps": 2})
    assert main(["train", str(write_config(root, cfg, "init.yaml"))]) == 0
    pairs = root / "pairs.json"
    pairs.write_text(json.dumps({"train": PAIRS[:6], "val": PAIRS[6:]}))
    return root / "run" / "checkpoints" / "last", pairs


def _dpo(tmp_path: Path, tiny_init: tuple[Path, Path], out: str, *sets: str) -> Path:
    """`tinylm train` of a DPO run into tmp_path/out (4 steps at a constant learning rate, validated every
    2); its run folder."""
    init, pairs = tiny_init
    cfg = tiny_config(
        tmp_path,
        pairs,
        data={"val_split": "val", "max_length": 64},
        train={
            "max_steps": 4,
            "min_lr": 3e-3,  # = learning_rate: a run halted at step 2 and resumed steps as a straight one
            "objective": "dpo",
            "dpo_beta": 0.5,
            "log_every_n_steps": 1,
            "val_check_interval": 2,
        },
        checkpoint={"monitor": "val_loss", "save_top_k": -1},
    )
    del cfg["model"]
    cfg |= {"init_from": str(init), "out_dir": str(tmp_path / out)}
    config = write_config(tmp_path, cfg, f"{out}.yaml")
    assert main(["train", str(config), *[a for s in sets for a in ("--set", s)]]) == 0
    return tmp_path / out


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / "last" / WEIGHTS_FILE))


def test_a_dpo_run_validates_checkpoints_and_resumes_exactly(tmp_path, tiny_init, capsys):
    straight = _dpo(tmp_path, tiny_init, "straight")
    err = capsys.readouterr().err
    assert "objective: DPO, beta 0.5, reference precomputed" in err
    assert "step 0: val_loss 0.6931, val_dpo_margin 0.0000" in err  # before: the model is the reference
    metrics = {(s, n): v for s, n, v in read_metrics(straight / "metrics.csv")}
    assert metrics[(0, "val_dpo_accuracy")] == 0.0 and abs(metrics[(0, "val_dpo_margin")]) < 1e-6
    assert metrics[(4, "val_dpo_margin")] > 0 and metrics[(4, "val_loss")] < math.log(2)  # after: learnt
    assert {(4, "val_dpo_accuracy"), (4, "val_dpo_chosen_likelier"), (3, "train_loss")} <= set(metrics)

    lm = load(straight / "checkpoints" / "last")  # a checkpoint like any other
    assert lm.checkpoint.meta["step"] == 4 and lm.complete(["what is item one"], max_new_tokens=4)[0].tokens

    halted = _dpo(tmp_path, tiny_init, "halted", "train.max_steps=2")
    resumed = _dpo(tmp_path, tiny_init, "halted", "checkpoint.resume=auto")  # its reference values restored
    assert resumed == halted
    for name, value in _weights(straight).items():
        torch.testing.assert_close(_weights(resumed)[name], value, rtol=0, atol=1e-6)


def test_precomputed_reference_trains_as_a_frozen_copy_does(tmp_path, tiny_init, capsys):
    precomputed = _dpo(tmp_path, tiny_init, "precomputed")
    frozen = _dpo(tmp_path, tiny_init, "copy", "train.dpo_reference=copy")
    assert "reference copy" in capsys.readouterr().err
    ours = {
        (s, n): v for s, n, v in read_metrics(precomputed / "metrics.csv") if n.startswith(("val_", "train_"))
    }
    theirs = {
        (s, n): v for s, n, v in read_metrics(frozen / "metrics.csv") if n.startswith(("val_", "train_"))
    }
    assert ours.keys() == theirs.keys() and len(ours) > 10
    for key, value in ours.items():
        assert abs(theirs[key] - value) < 1e-5, (key, value, theirs[key])
    for name, value in _weights(precomputed).items():
        torch.testing.assert_close(_weights(frozen)[name], value, rtol=0, atol=1e-5)


def test_inspect_data_shows_prompt_chosen_and_rejected(tmp_path, tiny_init, capsys):
    init, pairs = tiny_init
    cfg = tiny_config(tmp_path, pairs, data={"max_length": 64}, train={"objective": "dpo"})
    del cfg["model"]
    cfg["init_from"] = str(init)
    assert main(["inspect-data", str(write_config(tmp_path, cfg)), "--examples", "1"]) == 0
    out = capsys.readouterr().out
    assert "preference pairs (DPO): the response tokens carrying loss are «between guillemets»" in out
    assert "prompt:   Q: what is item one\nA:" in out
    assert "chosen:   «item one is red<|endoftext|>»" in out
    assert "rejected: «no idea about one<|endoftext|>»" in out
    assert "train pairs 6, truncated 0 (0.0%)" in out


def test_the_memory_estimate_counts_two_rows_per_pair_and_the_reference_copy(tmp_path, tiny_init):
    init, pairs = tiny_init
    cfg = tiny_config(tmp_path, pairs, train={"objective": "dpo", "batch_size": 4})
    del cfg["model"]
    cfg["init_from"] = str(init)
    path = write_config(tmp_path, cfg)
    precomputed = subject_for_run(load_config(path), label="dpo").training("32-true")
    frozen = subject_for_run(load_config(path, ["train.dpo_reference=copy"]), label="dpo").training("32-true")
    sft = subject_for_run(
        load_config(path, ["train.objective=next_token", "train.batch_size=8"]), label="sft"
    )
    assert precomputed.reference == 0 and "reference model (frozen copy)" in frozen.parts()
    assert frozen.reference == 4 * sum(model_counts(load(init).model.config))  # fp32 weights and buffers
    assert frozen.peak == precomputed.peak + frozen.reference
    assert precomputed.activations == sft.training("32-true").activations  # 4 pairs: the rows of batch 8
