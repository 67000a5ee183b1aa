"""Token datasets and the batch loader: pretraining windows, Q/A rows (padded or packed), preference pairs,
sharded batches.

A dataset here holds token ids only and knows how to turn a list of indices into a batch of tensors:
`input_ids` (B, T), `labels` (B, T) with -100 where no loss is taken, and for packed rows `segment_ids`
(B, T); a batch of B preference pairs is 2B rows (see `PairRows`). It does not read files (that is
`formats.py`) and does not know about models.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from tinylm.data.formats import Example, Pair
from tinylm.errors import DataError
from tinylm.templates import CHAT, layout_prompt, render_chat, render_in_template

IGNORE_INDEX = -100


class TokenDataset(Protocol):
    def __len__(self) -> int: ...
    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]: ...


class TokenWindows:
    """The notes' sliding-window sampler: window i is ids[i*stride : i*stride + max_length + 1].

    Inputs are the first max_length tokens of a window, labels the last max_length (shifted by one).
    """

    def __init__(self, ids: Tensor, max_length: int, stride: int | None = None):
        assert ids.dim() == 1, "ids must be a flat tensor of token ids"
        self.ids = ids.long()
        self.max_length = max_length
        self.stride = stride or 1
        if len(self.ids) < max_length + 1:
            raise ValueError(
                f"the text has {len(self.ids)} tokens, fewer than one window of max_length + 1 = "
                f"{max_length + 1}; lower data.max_length or give more text"
            )

    def __len__(self) -> int:
        return (len(self.ids) - self.max_length - 1) // self.stride + 1

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        starts = torch.as_tensor(indices, dtype=torch.long) * self.stride
        offsets = torch.arange(self.max_length + 1)
        rows = self.ids[starts[:, None] + offsets]  # (B, T+1)
        return {"input_ids": rows[:, :-1].contiguous(), "labels": rows[:, 1:].contiguous()}


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    labels: list[int]  # same length; IGNORE_INDEX where no loss is taken
    truncated: bool
    has_eos: bool


def encode_example(
    ex: Example, tok, *, template: str, max_length: int, loss_on: str = "response"
) -> EncodedExample:
    """prompt (laid out by `template`, see `layout_prompt`) + response + EOS, shifted for next-token prediction.

    If too long, the prompt is cut from the left first (the question, never the answer), then the response.
    """
    prompt = tok.encode(layout_prompt(ex.prompt, template, tok))
    response = [*tok.encode(ex.response), tok.eos_id]
    budget = max_length + 1
    truncated = len(prompt) + len(response) > budget
    if truncated:
        keep_prompt = max(1, budget - len(response))
        prompt = prompt[-keep_prompt:]
        response = response[: budget - len(prompt)]
    seq = prompt + response
    weights = [loss_on == "all"] * len(prompt) + [True] * len(response)
    labels = [t if w else IGNORE_INDEX for t, w in zip(seq[1:], weights[1:])]
    return EncodedExample(seq[:-1], labels, truncated, response[-1] == tok.eos_id)


class QARows:
    """Q/A examples as rows: one example per row (padded at batch time) or several per row (packed).

    Packed rows carry `segment_ids` so attention never crosses examples; no loss spans a boundary
    because every example was shifted on its own.
    """

    def __init__(self, encoded: list[EncodedExample], pad_id: int, *, pack_length: int | None = None):
        self.pad_id = pad_id
        if pack_length is None:
            self.rows = [[(e.input_ids, e.labels)] for e in encoded]
        else:
            self.rows = _pack([(e.input_ids, e.labels) for e in encoded], pack_length)
        self.packed = pack_length is not None

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        rows = [self.rows[i] for i in indices]
        width = max(sum(len(ids) for ids, _ in row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        segments = torch.full((len(rows), width), -1, dtype=torch.long)
        for r, row in enumerate(rows):
            pos = 0
            for s, (ids, labs) in enumerate(row):
                n = len(ids)
                input_ids[r, pos : pos + n] = torch.tensor(ids)
                labels[r, pos : pos + n] = torch.tensor(labs)
                segments[r, pos : pos + n] = s
                pos += n
            segments[r, pos:] = len(row)  # padding is its own segment
        out = {"input_ids": input_ids, "labels": labels}
        if self.packed:
            out["segment_ids"] = segments
        return out


def _pack(items: list[tuple[list[int], list[int]]], capacity: int) -> list[list[tuple[list[int], list[int]]]]:
    """First-fit-decreasing bin packing of examples into rows of at most `capacity` tokens."""
    order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
    rows: list[list[tuple[list[int], list[int]]]] = []
    free: list[int] = []
    for i in order:
        n = len(items[i][0])
        slot = next((r for r, f in enumerate(free) if f >= n), None)
        if slot is None:
            rows.append([])
            free.append(capacity)
            slot = len(rows) - 1
        rows[slot].append(items[i])
        free[slot] -= n
    return rows


@dataclass(frozen=True)
class EncodedPair:
    prompt: list[int]
    chosen: list[int]  # the response's tokens and EOS (cut short when `truncated`)
    rejected: list[int]
    truncated: bool

    def row(self, response: list[int]) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of prompt + response, shifted; labels only on the response's tokens."""
        seq = self.prompt + response
        return seq[:-1], [IGNORE_INDEX] * (len(self.prompt) - 1) + response


def pair_prompt(pair: Pair, template: str, tok) -> str:
    """A pair's prompt laid out for the model: as `layout_prompt` does, or, when the record held a chat,
    the whole chat (the model's chat template for `template` "chat", else each turn in `template`)."""
    if pair.messages is None:
        return layout_prompt(pair.prompt, template, tok)
    if template == CHAT:
        return render_chat(list(pair.messages), tok)[0]
    return render_in_template(list(pair.messages), template)[0]


def encode_pair(pair: Pair, tok, *, template: str, max_length: int) -> EncodedPair:
    """prompt (laid out by `pair_prompt`), and each response + EOS, for rows of at most `max_length` inputs.

    A prompt that leaves no room for a response in `max_length` is a DataError naming the record; a
    response that does not fit is cut at the end (the pair is counted as truncated).
    """
    prompt = tok.encode(pair_prompt(pair, template, tok))
    if not prompt or len(prompt) >= max_length:
        raise DataError(
            f"{pair.source}: the prompt is {len(prompt)} tokens and a row holds data.max_length = {max_length}"
            ", which leaves no room for the responses; shorten the prompt or raise data.max_length"
        )
    room = max_length + 1 - len(prompt)
    chosen, rejected = ([*tok.encode(text), tok.eos_id] for text in (pair.chosen, pair.rejected))
    truncated = max(len(chosen), len(rejected)) > room
    return EncodedPair(prompt, chosen[:room], rejected[:room], truncated)


class PairRows:
    """Preference pairs as rows: a batch of B pairs is 2B rows, the B chosen responses first, then the B
    rejected (TRL's layout), each after its prompt and padded on the right; labels on the responses only.

    `ref` (N, 2), once set: the reference model's log-probabilities of each pair's chosen and rejected
    response (`tinylm.train.dpo`); batches then carry them as `ref_logps` (2B,), in the rows' order.
    """

    def __init__(self, encoded: list[EncodedPair], pad_id: int):
        self.pairs = encoded
        self.pad_id = pad_id
        self.ref: Tensor | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        pairs = [self.pairs[i] for i in indices]
        rows = [p.row(p.chosen) for p in pairs] + [p.row(p.rejected) for p in pairs]
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for r, (ids, labs) in enumerate(rows):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            labels[r, : len(labs)] = torch.tensor(labs)
        out = {"input_ids": input_ids, "labels": labels}
        if self.ref is not None:
            idx = torch.as_tensor(list(indices), dtype=torch.long)
            out["ref_logps"] = torch.cat([self.ref[idx, 0], self.ref[idx, 1]])  # (2B,)
        return out


class BatchLoader:
    """Seeded, resumable, rank-sharded batches of indices over a dataset.

    Epoch e uses the permutation drawn from `seed + e`, so a run resumed at (epoch, batch) sees exactly the
    batches it would have seen. Each rank takes its own slice of every global batch.
    """

    def __init__(
        self,
        dataset: TokenDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        limit: int | None = None,
    ):
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        n = len(dataset) if limit is None else min(limit, len(dataset))
        self.size = n
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = max(1, n // self.global_batch)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def order(self, epoch: int) -> Tensor:
        if not self.shuffle:
            base = torch.arange(self.size)
        else:
            g = torch.Generator().manual_seed(self.seed + epoch)
            base = torch.randperm(self.size, generator=g)
        need = self.batches_per_epoch * self.global_batch
        reps = math.ceil(need / self.size)
        return base.repeat(reps)[:need]  # a dataset smaller than one batch is repeated to fill it

    def iterate(self, epoch: int, start: int = 0) -> Iterator[dict[str, Tensor]]:
        order = self.order(epoch).view(self.batches_per_epoch, self.world_size, self.batch_size)
        for b in range(start, self.batches_per_epoch):
            yield self.dataset.batch(order[b, self.rank].tolist())


def eval_indices(n: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(n): a fixed, representative validation sample."""
    if count >= n:
        return list(range(n))
    return torch.linspace(0, n - 1, count).round().long().tolist()
