"""The Python API over a model: `load(name_or_path)` → `LM` with `.generate`, `.complete`, `.stream`, `.embed`.

`LM` speaks text: it lays prompts out (the checkpoint's prompt template, or a chat template), encodes them,
runs the generation engine over token ids, and turns ids back into text cut at stop strings. It does not
train, and it holds no conversation state (that is `tinylm.chat`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from tinylm.checkpoint import META_FILE, Checkpoint, load_checkpoint
from tinylm.errors import CheckpointError, TinylmError
from tinylm.generate.detok import TextStream, reply_text
from tinylm.generate.engine import Generated, generate_batch
from tinylm.generate.grammar import Grammar, json_grammar
from tinylm.generate.options import GenerationOptions
from tinylm.generate.prefix import PrefixCache
from tinylm.generate.sampling import SamplingParams, sampling_params
from tinylm.quantize import check_method
from tinylm.quantize import quantize as quantize_model
from tinylm.templates import CHAT, render_chat, render_in_template

Prompt = str | list[dict[str, str]]  # plain text, or chat messages
SLIDING_WINDOWS = 16
"""One call generates at most this many context windows of new tokens (the window slides past the first,
as nanoGPT's sampler does): the bound on what a request may ask for, checked before anything is allocated."""


@dataclass
class Completion:
    """One generated reply with its accounting."""

    text: str
    tokens: list[int]
    logprobs: list[float] | None
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int


class LM:
    """A loaded model with its tokenizer, prompt template and generation defaults."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.tokenizer = checkpoint.tokenizer
        self.config = checkpoint.config
        self.prompt_template: str = checkpoint.meta.get("prompt_template", "{prompt}")
        self.defaults: dict[str, Any] = checkpoint.meta.get("generation", {})
        self.chat_template: str | None = checkpoint.meta.get("chat_template_name")
        # keys and values of prompts `stream` ran, reused by later prompts that start alike (`tinylm chat`)
        self.prefix_cache: PrefixCache | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- text in, text out --------------------------------------------------------------------------
    def generate(
        self,
        prompt: Prompt | list[Prompt],
        *,
        chat: bool = False,
        raw: bool = False,
        json_schema: Any = None,
        **options,
    ) -> Any:
        """The reply to `prompt` (a string or chat messages), or a list of replies for a list of prompts.

        With `json_schema` (a JSON schema as a dict; True for any JSON value), every reply is JSON that the
        schema allows, or a prefix of it when `max_new_tokens` runs out first (`tinylm.generate.grammar`)."""
        many = isinstance(prompt, list) and not _is_messages(prompt)
        done = self.complete(
            prompt if many else [prompt], chat=chat, raw=raw, json_schema=json_schema, **options
        )
        return [c.text for c in done] if many else done[0].text

    def complete(
        self,
        prompts: list[Prompt],
        *,
        chat: bool = False,
        raw: bool = False,
        json_schema: Any = None,
        **options,
    ) -> list[Completion]:
        """Generate for a batch of prompts (left-padded, each stopping on its own); full accounting."""
        opts, params = self.resolve_options(options)
        grammar = self.grammar(json_schema, opts)
        laid_out = [self.render_prompt(p, chat=chat, raw=raw) for p in prompts]
        room = self._prompt_room(opts)
        keep = min(opts.max_prompt_tokens or room, room)
        ids = [self.encode(text)[-keep:] for text, _ in laid_out]
        stop_ids = self.stop_token_ids(opts)
        if opts.num_beams > 1:  # `grammar` refuses beams
            rows = [self._beam(i, opts, stop_ids) for i in ids]
        else:
            rows = generate_batch(
                self.model,
                ids,
                max_new_tokens=opts.max_new_tokens,
                block_size=self.config.block_size,
                params=params,
                stop_ids=stop_ids,
                generator=self._generator(opts.seed),
                grammar=grammar,
            )
        out = []
        for row, prompt_ids, (_, extra) in zip(rows, ids, laid_out):
            text, cut = reply_text(self.tokenizer, row.tokens, stop=[*opts.stop, *extra], stop_ids=stop_ids)
            reason = "stop" if row.finish_reason == "stop" or cut else "length"
            logprobs = row.logprobs if opts.logprobs else None
            out.append(Completion(text, row.tokens, logprobs, reason, len(prompt_ids)))
        return out

    def stream(
        self, prompt: Prompt, *, chat: bool = False, raw: bool = False, json_schema: Any = None, **options
    ) -> Iterator[str]:
        """Text pieces of the reply as they are generated; they concatenate to exactly `generate`'s text."""
        from tinylm.generate.engine import generate_ids

        opts, params = self.resolve_options(options)
        grammar = self.grammar(json_schema, opts)
        text, extra = self.render_prompt(prompt, chat=chat, raw=raw)
        stream = TextStream(self.tokenizer, [*opts.stop, *extra])
        stop_ids = self.stop_token_ids(opts)
        for token in generate_ids(
            self.model,
            self.encode(text),
            max_new_tokens=opts.max_new_tokens,
            block_size=self.config.block_size,
            params=params,
            stop_ids=stop_ids,
            generator=self._generator(opts.seed),
            grammar=grammar,
            prefix_cache=self.prefix_cache,
        ):
            if token in stop_ids:
                break
            piece = stream.push(token)
            if piece:
                yield piece
            if stream.stopped:
                break
        tail = stream.finish()
        if tail:
            yield tail

    # -- embeddings ---------------------------------------------------------------------------------
    @torch.no_grad()
    def token_embeddings(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Per-token hidden states (B, T, n_embd) of right-padded `texts`, and the mask (B, T) of real tokens."""
        encoded = [self.encode(t)[-self.config.block_size :] for t in texts]
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

    # -- the steps of a request, public for the chat session and the server -------------------------
    def resolve_options(self, given: dict[str, Any]) -> tuple[GenerationOptions, SamplingParams]:
        """This model's generation defaults overridden by `given` (None values ignored), validated; and the
        sampling parameters they make. Unknown option names raise TypeError listing the known ones."""
        known = {f.name for f in fields(GenerationOptions)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise TypeError(f"unknown generation option(s) {unknown}; known: {sorted(known)}")
        merged = {k: v for k, v in self.defaults.items() if k in known}
        merged.update({k: v for k, v in given.items() if v is not None})
        opts = GenerationOptions(**merged)
        opts.check()
        self._check_fits(opts)
        return opts, sampling_params(opts)

    def _check_fits(self, opts: GenerationOptions) -> None:
        """Refuse what this model cannot do in one call, before any buffer is allocated."""
        block, vocab = self.config.block_size, self.tokenizer.vocab_size
        problems = []
        limit = SLIDING_WINDOWS * block
        if opts.max_new_tokens > limit:
            problems.append(
                f"max_new_tokens: {opts.max_new_tokens} is more than one call generates with this model: at "
                f"most {limit:,} ({SLIDING_WINDOWS} times its {block}-token context window, which slides)"
            )
        if opts.no_repeat_ngram_size > block:
            problems.append(
                f"no_repeat_ngram_size: {opts.no_repeat_ngram_size} is longer than the {block}-token window"
            )
        bad = [i for i in opts.stop_token_ids or [] if i >= vocab]
        if bad:
            problems.append(f"stop_token_ids: {bad} are not token ids of this model (0..{vocab - 1})")
        if problems:
            raise TinylmError("invalid generation options: " + "; ".join(problems))

    def render_prompt(self, prompt: Prompt, *, chat: bool, raw: bool) -> tuple[str, list[str]]:
        """(prompt text, extra stop strings from a chat template): chat messages or chat=True through the
        chat template, raw=True as given, else through the checkpoint's prompt template."""
        if _is_messages(prompt) or chat:
            messages = prompt if _is_messages(prompt) else [{"role": "user", "content": prompt}]
            if self.chats_in_prompt_template():
                return render_in_template(messages, self.prompt_template)
            return render_chat(messages, self.tokenizer, self.chat_template)
        if raw:
            return prompt, []
        if self.prompt_template == CHAT:
            return render_chat([{"role": "user", "content": prompt}], self.tokenizer, self.chat_template)
        return self.prompt_template.format(prompt=prompt), []

    def chats_in_prompt_template(self) -> bool:
        """Whether the model was trained on a Q/A prompt template of its own and has no chat format (no
        tokenizer chat template, no named one, not trained on the chat layout): chat then uses that template."""
        hf = getattr(self.tokenizer, "hf", None)
        return (
            self.chat_template is None
            and not getattr(hf, "chat_template", None)
            and self.prompt_template != CHAT
            and self.prompt_template.strip() != "{prompt}"
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt text, never empty (an empty text is the BOS, or else the EOS token)."""
        ids = self.tokenizer.encode(text)
        if self.tokenizer.bos_id is not None and getattr(self.tokenizer, "kind", "") == "hf" and not ids:
            ids = [self.tokenizer.bos_id]
        return ids or [self.tokenizer.eos_id]

    def _prompt_room(self, opts: GenerationOptions) -> int:
        """How many prompt tokens (the last ones) a request keeps: the context window; with beams, what the
        window leaves beside max_new_tokens, since beam search does not slide the window."""
        block = self.config.block_size
        if opts.num_beams == 1:
            return block
        if opts.max_new_tokens >= block:
            raise TinylmError(
                f"num_beams={opts.num_beams}: max_new_tokens={opts.max_new_tokens} leaves no room for a prompt "
                f"in the {block}-token context window; ask for at most {block - 1} new tokens"
            )
        return block - opts.max_new_tokens + 1

    def grammar(self, json_schema: Any, opts: GenerationOptions) -> Grammar | None:
        """The grammar that holds replies to `json_schema` (None: no constraint), ending on this model's stop
        ids; a schema that cannot be compiled raises `GrammarError` (never an unconstrained reply)."""
        if json_schema is None:
            return None
        if opts.num_beams > 1:
            raise TinylmError("json_schema: structured output samples one row at a time; set num_beams to 1")
        return json_grammar(self.tokenizer, json_schema, self.stop_token_ids(opts))

    def stop_token_ids(self, opts: GenerationOptions) -> list[int]:
        """The end-of-sequence id and the request's stop_token_ids, sorted."""
        return sorted({self.tokenizer.eos_id, *(opts.stop_token_ids or [])})

    def _generator(self, seed: int | None) -> torch.Generator | None:
        return torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None

    def _beam(self, prompt_ids: list[int], opts: GenerationOptions, stop_ids: list[int]) -> Generated:
        from tinylm.generate.beam import beam_search

        best, _score = beam_search(
            self.model,
            prompt_ids,
            num_beams=opts.num_beams,
            max_new_tokens=opts.max_new_tokens,
            eos_ids=stop_ids,
            length_penalty=opts.length_penalty,
            early_stopping=opts.early_stopping,
        )[0]
        ended = bool(best) and best[-1] in stop_ids
        return Generated(tokens=best, logprobs=[], finish_reason="stop" if ended else "length")


def _is_messages(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(m, dict) for m in prompt)


def load(name_or_path: str | Path, *, device: str | torch.device = "cpu", quantize: str = "none") -> LM:
    """Load a tinylm checkpoint directory, a run's `last`/`best` link, a registry name such as
    `smollm2-135m-instruct`, or a Hugging Face model directory (converted once and cached).

    quantize="int8" turns the weights into weight-only int8 after loading (`tinylm.quantize`): about 4x
    less weight memory and faster batch-1 decoding, for inference only. "none" keeps them as stored.
    """
    check_method(quantize)  # before the (slow) load
    path = Path(name_or_path)
    if not path.exists() and len(path.parts) > 1:  # a path, not a model name
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not (path / META_FILE).is_file():
        from tinylm.hub import resolve_model

        path = resolve_model(name_or_path)
    checkpoint = load_checkpoint(path, device=device)
    quantize_model(checkpoint.model, quantize)
    return LM(checkpoint)
