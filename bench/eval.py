"""lm-eval log-likelihood requests through tinylm against lm-eval's own Hugging Face backend, on the same weights.

SmolLM2-135M-Instruct as tinylm loads it, and its `tinylm export` read by lm-eval's `hf` backend (HFLM, float32,
on the CPU). One multiple-choice task (default examples/eval/qa_choice.yaml, 44 questions x 4 answers) is
built once; both backends score the same lm-eval requests with the same batch size, alternately, `--repeats`
times. Tokens/s counts each request's context and continuation tokens (what the `hf` backend reads for it),
so the ratio of the two rates is the ratio of the times; a round is one run of each, back to back. The scores are compared too (largest difference of a
log-likelihood, and whether every greedy flag agrees).

    python bench/eval.py [--task examples/eval/qa_choice.yaml] [--fewshot 0] [--batch-size 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import tinylm
from tinylm.harness import TinylmEvalLM, sealed, task_specs
from tinylm.tools.export import export_checkpoint

MODEL = "smollm2-135m-instruct"
TASK = Path(__file__).resolve().parents[1] / "examples" / "eval" / "qa_choice.yaml"


def requests(task_file: str, fewshot: int, limit: int | None) -> list:
    """The loglikelihood requests (lm-eval Instances) of one task file, few-shot prompts included."""
    specs, manager = task_specs([task_file])
    (task,) = manager.load(specs)["tasks"].values()
    task.set_config(key="num_fewshot", value=fewshot)
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(limit=limit)
    return task.instances


def timed(model, instances: list) -> tuple[float, list]:
    start = time.perf_counter()
    scores = model.loglikelihood(instances, disable_tqdm=True)
    return time.perf_counter() - start, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default=str(TASK))
    parser.add_argument("--fewshot", type=int, default=0)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from lm_eval.models.huggingface import HFLM

    lm = tinylm.load(MODEL)
    mine = TinylmEvalLM(lm, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp, sealed():
        exported = export_checkpoint(MODEL, Path(tmp) / "smollm2")
        hf = HFLM(pretrained=str(exported), batch_size=args.batch_size, device="cpu", dtype="float32")
        instances = requests(args.task, args.fewshot, args.limit)
        tokens = sum(len(c) + len(k) for c, k in (mine._encode_pair(*i.args) for i in instances))
        times: dict[str, list[float]] = {"hf": [], "tinylm": []}
        scores = {}
        for _ in range(args.repeats):
            for name, model in (("hf", hf), ("tinylm", mine)):
                seconds, scores[name] = timed(model, instances)
                times[name].append(seconds)
    diff = max(abs(a[0] - b[0]) for a, b in zip(scores["hf"], scores["tinylm"]))
    same_greedy = all(a[1] == b[1] for a, b in zip(scores["hf"], scores["tinylm"]))
    print(
        f"{Path(args.task).name}: {len(instances)} requests, {tokens} tokens, {args.fewshot}-shot, "
        f"batch {args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    rates = {name: [tokens / s for s in runs] for name, runs in times.items()}
    for name, runs in rates.items():
        print(f"  {name:7s} tokens/s: {' / '.join(f'{r:,.0f}' for r in runs)} (best {max(runs):,.0f})")
    paired = sorted(t / h for t, h in zip(rates["tinylm"], rates["hf"]))
    print(
        f"  tinylm / hf: best of each {max(rates['tinylm']) / max(rates['hf']):.2f}x, median of the rounds "
        f"{paired[len(paired) // 2]:.2f}x (rounds {' / '.join(f'{r:.2f}' for r in paired)})"
    )
    print(f"  largest log-likelihood difference {diff:.2e}; greedy flags all equal: {same_greedy}")


if __name__ == "__main__":
    main()
