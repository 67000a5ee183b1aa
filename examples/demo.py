"""`make demo`: the main job, end to end on a laptop CPU.

1. Train the from-scratch mini-GPT on the Q/A example (examples/qa) and answer its questions.
2. Pretrain a character-level GPT on Shakespeare for a few hundred steps and print a sample.
"""

from pathlib import Path

from tinylm import load
from tinylm.config import load_config
from tinylm.data.formats import read_examples
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


if __name__ == "__main__":
    qa()
    shakespeare()
