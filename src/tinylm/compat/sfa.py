"""The seed's mini-GPT API: `text_generation(path)` and `get_embeddings(path)` on a Q/A JSON file.

Both train a small GPT from scratch on the file (the recipe in `tinylm/recipes/sfa.yaml`, the same as
`examples/qa/config.yaml`) the first time they see its contents, and cache the checkpoint under
`$TINYLM_HOME/sfa/` (default `~/.cache/tinylm`), so later calls only load it.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from tinylm.api import LM, load
from tinylm.config import load_config
from tinylm.data.formats import read_examples
from tinylm.paths import tinylm_home
from tinylm.templates import layout_prompt


def train_or_load(path: str | Path, *, overrides: list[str] | None = None) -> LM:
    """The mini-GPT trained on `path`, trained now unless a checkpoint for these exact contents exists."""
    from tinylm.train import fit

    path = Path(path)
    read_examples(path)  # validate the data before any work: a clear error for a bad file
    digest = hashlib.sha256(path.read_bytes() + repr(overrides).encode()).hexdigest()[:16]
    run_dir = tinylm_home() / "sfa" / digest
    last = run_dir / "checkpoints" / "last"
    if not last.exists():
        recipe = resources.files("tinylm") / "recipes" / "sfa.yaml"
        with resources.as_file(recipe) as recipe_path:
            cfg = load_config(recipe_path, [f"data.path={path}", f"out_dir={run_dir}", *(overrides or [])])
        fit(cfg)
    return load(last)


def text_generation(path: str | Path) -> dict[str, str]:
    """{input: predicted output} for every input of the Q/A file, by greedy decoding."""
    lm = train_or_load(path)
    return {ex.prompt: lm.generate(ex.prompt) for ex in read_examples(path)}


def get_embeddings(path: str | Path) -> Tensor:
    """Per-token embeddings (batch, tokens, embed) of every input of the file; padding positions are zero."""
    lm = train_or_load(path)
    prompts = [layout_prompt(ex.prompt, lm.prompt_template, lm.tokenizer) for ex in read_examples(path)]
    hidden, mask = lm.token_embeddings(prompts)
    return hidden * mask.unsqueeze(-1).to(torch.float32)
