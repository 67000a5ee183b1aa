"""`make demo`: the main job, end to end on a laptop CPU.

1. Train the from-scratch mini-GPT on the Q/A example (examples/qa) and answer its questions.
2. Pretrain a character-level GPT on Shakespeare for a few hundred steps and print a sample.
3. Fine-tune SmolLM2-135M-Instruct on examples/sft with the seed's configs: test metrics before and after,
   and two test questions answered by the fine-tuned model (about 8 minutes on 2 cores).
4. Serve the fine-tuned model in the background (`tinylm serve`, 127.0.0.1), ask it one question through
   the official `openai` client, and print how to open the web chat page.
"""

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tinylm import load
from tinylm.config import load_config, load_test_config
from tinylm.data.formats import read_examples
from tinylm.evaluate import run_test
from tinylm.train import fit

HERE = Path(__file__).resolve().parent


def qa() -> None:
    cfg = load_config(HERE / "qa" / "config.yaml", ["out_dir=runs/demo-qa", "checkpoint.resume=auto"])
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
        [
            "out_dir=runs/demo-shakespeare",
            "train.max_steps=600",
            "train.val_check_interval=300",
            "checkpoint.resume=auto",
        ],
    )
    run = fit(cfg)
    lm = load(run / "checkpoints" / "best")
    print("\nShakespeare sample (600 steps):\n")
    print("ROMEO:" + lm.generate("ROMEO:", raw=True, max_new_tokens=300, temperature=0.8, top_k=50, seed=1))


def sft() -> Path:
    test_cfg = HERE / "sft" / "test_config.yaml"
    before = run_test(
        load_test_config(
            test_cfg, ["test_params.test_model_path=null", "test_params.log_file=runs/demo-sft/base.jsonl"]
        )
    )
    run = fit(
        load_config(
            HERE / "sft" / "trainer_config.yaml",
            ["trainer.checkpoint.dirpath=runs/demo-sft", "trainer.ckpt_path=auto"],
        )
    )
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
    return best


def serve(model: Path) -> None:
    """Start `tinylm serve MODEL` in the background and talk to it with the openai client."""
    from openai import OpenAI

    with socket.socket() as s:  # a free port on loopback
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path("runs/demo-serve.log")
    server = subprocess.Popen(
        [sys.executable, "-m", "tinylm.cli", "serve", str(model.resolve()), "--port", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # keeps serving after the demo ends
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            break
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"the server exited early; see {log}") from None
            time.sleep(0.5)
    client = OpenAI(base_url=f"{url}/v1", api_key="unused")
    question = "What is the capital of Kenya?"
    reply = client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": question}],
        max_tokens=32,
    )
    print(f"\nopenai client -> tinylm serve: {question!r} -> {reply.choices[0].message.content!r}")
    print(f"The server keeps running (pid {server.pid}, log {log}).")
    print(f"Open {url}/ in a browser to chat with the fine-tuned model; stop it with: kill {server.pid}")


if __name__ == "__main__":
    qa()
    shakespeare()
    serve(sft())
