"""`make demo`: the main job, end to end on a laptop CPU.

1. Train the from-scratch mini-GPT on the Q/A example (examples/qa) and answer its questions.
2. Pretrain a character-level GPT on Shakespeare for a few hundred steps and print a sample.
3. Fine-tune SmolLM2-135M-Instruct on examples/sft with the seed's configs: test metrics before and after,
   and two test questions answered by the fine-tuned model (about 8 minutes on 2 cores).
"""

from pathlib import Path

from tinylm import load
from tinylm.config import load_config, load_test_config
from tinylm.data.formats import read_examples
from tinylm.evaluate import run_test
from tinylm.train import fit

HERE = Path(__file__).resolve().parent


def qa() -> None:
    cfg = load_config(HERE / "qa" / "config.yaml", ["out_dir=runs/demo-qa"])
    run = fit(cfg)
    lm = load(run / "checkpoints" / "last")
    examples = read_examples(cfg.data.path)
    right = 0
    for ex in examples:
        answer = lm.generate(ex.prompt)
        right += answer == ex.response
        mark = "ok " if answer == ex.response else "XX "
        print(f"{mark} Q: {ex.prompt}\n    A: {answer}")
    print(f"\nexact answers: {right}/{len(examples)} ({right / len(examples):.0%})")
    print(
        f"unseen question: 'what is the capital of germany' -> {lm.generate('what is the capital of germany')!r}"
    )


def shakespeare() -> None:
    cfg = load_config(
        HERE / "shakespeare" / "cpu.yaml",
        ["out_dir=runs/demo-shakespeare", "train.max_steps=600", "train.val_check_interval=300"],
    )
    run = fit(cfg)
    lm = load(run / "checkpoints" / "best")
    print("\nShakespeare sample (600 steps):\n")
    print("ROMEO:" + lm.generate("ROMEO:", raw=True, max_new_tokens=300, temperature=0.8, top_k=50, seed=1))


def sft() -> None:
    test_cfg = HERE / "sft" / "test_config.yaml"
    before = run_test(
        load_test_config(
            test_cfg, ["test_params.test_model_path=null", "test_params.log_file=runs/demo-sft/base.jsonl"]
        )
    )
    run = fit(load_config(HERE / "sft" / "trainer_config.yaml", ["trainer.checkpoint.dirpath=runs/demo-sft"]))
    best = run / "checkpoints" / "best"
    after = run_test(
        load_test_config(
            test_cfg,
            [f"test_params.test_model_path={best}", "test_params.log_file=runs/demo-sft/tuned.jsonl"],
        )
    )
    print(f"\n{'test split':14}{'base':>10}{'fine-tuned':>12}")
    for name in ("bleu", "rouge1", "rouge2", "rougeL", "exact_match"):
        print(f"{name:14}{before[name]:>10.4f}{after[name]:>12.4f}")
    lm = load(best)
    for ex in read_examples(HERE / "sft" / "data.json", split="test")[:2]:
        print(f"Q: {ex.prompt}\nA: {lm.generate(ex.prompt)}   (reference: {ex.response})")


if __name__ == "__main__":
    qa()
    shakespeare()
    sft()
