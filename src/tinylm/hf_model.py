"""Hugging Face causal LMs that tinylm cannot convert, run through transformers behind the GPT's interface.

`tinylm.convert` maps Llama, Qwen2 and GPT-2 weights onto tinylm's GPT. Any other causal LM on disk (GPT-Neo,
Mistral, Phi, a Llama with RoPE scaling, ...) is loaded with `AutoModelForCausalLM` and wrapped in
`HFCausalLM`, a `tinylm.model.CausalLM` as tinylm's GPT is: `forward(idx) -> logits`, `new_cache`,
`embeddings(idx)`, a `config` with `vocab_size`, `block_size` and `n_embd`, and the capabilities that tell
the two apart (`takes_positions`, `static_cache`, `beam_search`, `save_pretrained`). Generation, chat,
embeddings, `fit` (freezing and LoRA go by module name) and `tinylm test` run it unchanged.

Its checkpoint is the usual checkpoint directory (tinylm.json, tokenizer/, trainer_state.pt) whose weights
are in the Hugging Face layout that `save_pretrained` writes (config.json, model.safetensors), so
`AutoModelForCausalLM.from_pretrained(checkpoint_dir)` reads it as well; tinylm.json's model kind is "hf".

Generation decodes through transformers' own KV cache: `new_cache()` gives an `HFCache` that the engine
passes as it passes a GPT's static cache, so a prompt is read once and each new token costs one step, and
prompts of different lengths share a left-padded batch (attention mask and position ids per row) when the
model takes position ids (`takes_positions`).

Beam search is transformers' own (`generate(num_beams=...)`, `HFCausalLM.beam_search`), which
`tinylm.generate.beam_search` mirrors step for step on tinylm's GPT; the model's generation_config.json
stays out of it, so the same arguments mean the same search on either model.

Its cache is not static (`static_cache` is False), so `tinylm serve` runs it with the `CachePerRequest`
layout of `tinylm.generate.continuous`: each request has its own transformers cache and the running
requests take their steps in turn.

What it does not do: tinylm's other fast paths do not apply: CUDA graphs, batched serving (continuous
batching), packed rows, the memory estimate; int8 (`tinylm.quantize`) turns its nn.Linear layers only.
transformers is imported inside the functions that need it, since it is slow to import.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from tinylm.errors import CheckpointError, TinylmError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

log = logging.getLogger(__name__)
_SWAPPING = threading.Lock()  # held while `beam_search` has a model's generation_config swapped out
KIND = "hf"  # tinylm.json's model kind for these checkpoints


@dataclass(frozen=True)
class HFModelConfig:
    """What tinylm reads of a wrapped model's config (kept in tinylm.json; config.json is the source)."""

    model_type: str
    vocab_size: int
    block_size: int  # the model's maximum number of positions
    n_embd: int
    kind: str = KIND

    @classmethod
    def of(cls, c: PretrainedConfig) -> HFModelConfig:
        block = getattr(c, "max_position_embeddings", None)  # GPT-2 style n_positions maps onto it
        if not block:
            raise TinylmError(
                f"model_type {c.model_type!r}: config.json gives no max_position_embeddings; tinylm needs "
                "the context length of the model"
            )
        return cls(c.model_type, c.vocab_size, int(block), c.hidden_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class HFCache:
    """transformers' KV cache of one generation (`past_key_values`, filled by the first pass), and how many
    positions it holds. Positions are appended in order, as the engine writes slots 0, 1, 2, ..."""

    past: Any = None
    length: int = 0


class HFCausalLM(nn.Module):
    """An `AutoModelForCausalLM` (`.hf`) as a `tinylm.model.CausalLM`: the forward/embeddings signature of
    tinylm's GPT, its own beam search and `save_pretrained`."""

    static_cache = False  # transformers' cache: one per generation, only forward touches it

    def __init__(self, hf: PreTrainedModel):
        super().__init__()
        self.hf = hf
        self.config = HFModelConfig.of(hf.config)
        self.takes_positions = "position_ids" in inspect.signature(hf.forward).parameters

    def forward(
        self,
        idx: Tensor,
        *,
        segment_ids: Tensor | None = None,
        positions: Tensor | None = None,
        key_mask: Tensor | None = None,
        input_pos: Tensor | None = None,
        cache: Any = None,
    ) -> Tensor:
        """idx (B, T) -> logits (B, T, vocab_size). Left-padded rows pass `key_mask` (B, T), True on real
        tokens, and `positions` (B, T), each token's position in its own row (-1 on padding).

        With `cache` (from `new_cache`), idx are the next T tokens after those the cache holds, at slots
        `input_pos`, and key_mask (B, S >= all tokens so far) marks the real ones among every slot."""
        out = self.hf(**self._inputs(idx, segment_ids, positions, key_mask, input_pos, cache))
        if cache is not None:
            cache.past, cache.length = out.past_key_values, cache.length + idx.size(1)
        return out.logits

    def new_cache(self, batch_size: int, max_len: int, **_: Any) -> HFCache:
        """An empty transformers cache for `batch_size` rows and up to `max_len` positions."""
        assert 0 < max_len <= self.config.block_size, f"cache max_len={max_len} must be in 1..block_size"
        return HFCache()

    def embeddings(self, idx: Tensor, *, segment_ids: Tensor | None = None) -> Tensor:
        """idx (B, T) -> the last hidden state (B, T, n_embd), after the model's final norm."""
        inputs = self._inputs(idx, segment_ids, None, None, None, None)
        return self.hf.base_model(**inputs).last_hidden_state

    def _inputs(
        self,
        idx: Tensor,
        segment_ids: Tensor | None,
        positions: Tensor | None,
        key_mask: Tensor | None,
        input_pos: Tensor | None,
        cache: Any,
    ) -> dict[str, Any]:
        """The transformers keyword arguments for a tinylm call; ValueError for what has no equivalent."""
        name = self.config.model_type
        if (cache is None) != (input_pos is None) or not isinstance(cache, HFCache | None):
            raise ValueError(
                f"{name} runs through transformers: pass the whole window, or input_pos with a cache from "
                "its new_cache()"
            )
        if segment_ids is not None:
            raise ValueError(
                f"{name} runs through transformers, which cannot keep packed rows apart (segment_ids)"
            )
        inputs: dict[str, Any] = {"input_ids": idx, "use_cache": cache is not None}
        seen = idx.size(1)  # the tokens attended to: those cached and these
        if cache is not None:
            assert input_pos.shape == (idx.size(1),), f"input_pos must have shape ({idx.size(1)},)"
            inputs["past_key_values"] = cache.past
            seen += cache.length
        if key_mask is not None:
            key_mask = key_mask[:, :seen]  # a cache's mask covers every slot, later ones too
            assert key_mask.shape == (idx.size(0), seen), (
                f"key_mask {tuple(key_mask.shape)}: expected {seen} keys"
            )
            inputs["attention_mask"] = key_mask.long()
        if positions is not None and self.takes_positions:  # others (ALiBi) place tokens by the mask
            inputs["position_ids"] = positions.clamp(min=0)
        return inputs

    @classmethod
    def from_pretrained(cls, path: str | Path) -> HFCausalLM:
        """The model of an HF model directory or an "hf" checkpoint: float32 (as conversion gives), eval mode.
        Logs one line saying it runs through transformers."""
        from safetensors import SafetensorError
        from transformers import AutoModelForCausalLM

        try:  # safetensors only: a pickle (pytorch_model.bin) could run code as it loads
            with no_progress_bars():
                hf = AutoModelForCausalLM.from_pretrained(
                    str(path), local_files_only=True, use_safetensors=True
                )
        except (OSError, ValueError, SafetensorError) as e:
            raise CheckpointError(f"{path}: could not load the transformers model: {e}") from None
        model = cls(hf.float()).eval()
        log.warning(
            f"tinylm: {model.config.model_type} runs through transformers' AutoModelForCausalLM, not tinylm's "
            "GPT: no CUDA graphs or continuous batching"
        )
        return model

    @torch.no_grad()
    def beam_search(
        self,
        prompt: Sequence[int],
        *,
        num_beams: int,
        max_new_tokens: int,
        eos_ids: Sequence[int],
        length_penalty: float,
        early_stopping: bool | str,
        num_return_sequences: int,
    ) -> list[tuple[list[int], float]]:
        """transformers' beam search for one prompt, as `tinylm.generate.beam_search` returns it: the best
        hypotheses, best first, as (new token ids up to and including the first eos id, score)."""
        from transformers import GenerationConfig

        ids = torch.tensor([list(prompt)], device=next(self.parameters()).device)
        eos = sorted(set(eos_ids))
        config = GenerationConfig(
            do_sample=False,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            num_return_sequences=num_return_sequences,
            eos_token_id=eos or None,
            pad_token_id=eos[0] if eos else 0,  # finished hypotheses are padded; cut at their eos below
            return_dict_in_generate=True,
            output_scores=True,
        )
        with _SWAPPING:  # one thread at a time swaps a model's config out and back
            saved, self.hf.generation_config = self.hf.generation_config, GenerationConfig()
            try:  # with the model's own defaults out of the way, transformers cannot fill in any of them
                out = self.hf.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
            finally:
                self.hf.generation_config = saved
        rows = []
        for i, seq in enumerate(out.sequences[:, ids.size(1) :].tolist()):
            end = next((j + 1 for j, t in enumerate(seq) if t in eos), len(seq))
            if num_beams > 1:
                score = out.sequences_scores[i].item()
            else:  # one beam is greedy search, which reports the logits of each step, not a score
                chosen = [s[0].float().log_softmax(-1)[t].item() for s, t in zip(out.scores, seq[:end])]
                score = sum(chosen) / end**length_penalty
            rows.append((seq[:end], score))
        return rows

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the weights in the Hugging Face layout: config.json, generation_config.json, model.safetensors."""
        with no_progress_bars():
            self.hf.save_pretrained(str(directory))


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers' "Loading weights" / "Writing model shards" bars, off: on every command they are noise."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def check_causal_lm(hf_config: PretrainedConfig, source: str | Path) -> None:
    """TinylmError unless transformers has an `AutoModelForCausalLM` class for this config."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(hf_config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise TinylmError(
            f"{source}: model_type {hf_config.model_type!r} is not a causal language model (transformers has "
            "no AutoModelForCausalLM for it); tinylm generates with decoder-only models: Llama, Qwen2 and "
            "GPT-2 converted to its GPT, others (GPT-Neo, Mistral, Phi, ...) run through transformers"
        )
