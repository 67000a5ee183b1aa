"""The Python API over a checkpoint: `load(path)` → `LM` with `.generate(...)` and `.embed(...)`.

`LM` speaks text: it lays prompts out with the checkpoint's prompt template, encodes them, runs the
generation engine over token ids, and cuts the reply at stop strings. It does not train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from tinylm.checkpoint import Checkpoint, load_checkpoint
from tinylm.generate import generate_ids


class LM:
    """A loaded model with its tokenizer and generation defaults."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.tokenizer = checkpoint.tokenizer
        self.config = checkpoint.config
        self.prompt_template: str = checkpoint.meta.get("prompt_template", "{prompt}")
        self.defaults: dict = checkpoint.meta.get("generation", {})

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        stop: list[str] | None = None,
        seed: int | None = None,
        raw: bool = False,
    ) -> str:
        """The model's reply to `prompt` (laid out with the prompt template unless `raw`), without the prompt.

        Greedy by default (temperature 0); stops at end-of-sequence, at a stop string, or after
        `max_new_tokens`.
        """
        opts = self._options(max_new_tokens, temperature, top_k, top_p, stop)
        text = prompt if raw else self.prompt_template.format(prompt=prompt)
        ids = self.tokenizer.encode(text) or [self.tokenizer.eos_id]
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        out = []
        for token in generate_ids(
            self.model,
            ids,
            max_new_tokens=opts["max_new_tokens"],
            block_size=self.config.block_size,
            temperature=opts["temperature"],
            top_k=opts["top_k"],
            top_p=opts["top_p"],
            stop_ids=[self.tokenizer.eos_id],
            generator=generator,
        ):
            if token == self.tokenizer.eos_id:
                break
            out.append(token)
        return cut_at_stop(self.tokenizer.decode(out), opts["stop"])

    def _options(self, max_new_tokens, temperature, top_k, top_p, stop) -> dict:
        given = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p}
        opts = {"max_new_tokens": 64, "temperature": 0.0, "top_k": None, "top_p": None, "stop": []}
        opts.update({k: v for k, v in self.defaults.items() if k in opts})
        opts.update({k: v for k, v in given.items() if v is not None})
        if stop is not None:
            opts["stop"] = stop
        return opts

    @torch.no_grad()
    def token_embeddings(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Per-token hidden states (B, T, n_embd) of right-padded `texts`, and the mask (B, T) of real tokens."""
        encoded = [
            self.tokenizer.encode(t)[-self.config.block_size :] or [self.tokenizer.eos_id] for t in texts
        ]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.bool)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = torch.tensor(e)
            mask[i, : len(e)] = True
        hidden = self.model.embeddings(ids.to(self.device))  # causal: right padding never changes real tokens
        return hidden.float().cpu(), mask

    def embed(self, texts: str | list[str], *, pooling: Literal["mean", "last"] = "mean") -> Tensor:
        """One vector per text (B, n_embd): the mean over its tokens, or its last token's hidden state."""
        hidden, mask = self.token_embeddings([texts] if isinstance(texts, str) else list(texts))
        if pooling == "last":
            return hidden[torch.arange(len(hidden)), mask.sum(1) - 1]
        if pooling != "mean":
            raise ValueError(f"pooling must be 'mean' or 'last', found {pooling!r}")
        m = mask.unsqueeze(-1).float()
        return (hidden * m).sum(1) / m.sum(1)


def cut_at_stop(text: str, stops: list[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


def load(path: str | Path, *, device: str | torch.device = "cpu") -> LM:
    """Load a tinylm checkpoint directory (or a run's `last`/`best` link) as an `LM`."""
    return LM(load_checkpoint(path, device=device))
