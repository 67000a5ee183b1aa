"""`tinylm eval`: EleutherAI's lm-evaluation-harness tasks on tinylm models, offline.

`TinylmEvalLM` is tinylm's lm-eval model. Its `loglikelihood` goes through lm-eval's `TemplateLM`, which
splits a request into context and continuation tokens the way lm-eval's Hugging Face backend (`hf`) does;
`loglikelihood_rolling` cuts a text into the same windows; `generate_until` decodes greedily through
tinylm's engine (`generate_batch`) up to the task's stop strings or `max_gen_toks`. Contexts too long for the
window lose their oldest tokens, as in the `hf` backend, so on the same weights (`tinylm export`) the scores
agree with `hf` to float rounding (tests/unit/test_harness.py).

Faster than `hf` where requests share a context (the choices of a multiple-choice question, a few-shot
prompt): tinylm's GPT reads each context once into its KV cache, copies the cache to one row per
continuation, and reads only the continuations after it. Models without such a cache (transformers models,
the GRU) score each request as one right-padded sequence.

`evaluate_models` runs tasks on several models (each also int8 if asked): one `EvalRun` per column of the
comparison table. A checkpoint of a training run (`RUN/checkpoints/step-N`, `last`, `best`) also gets its
scores appended to the run's metrics.csv at the checkpoint's step, as the training loop logs its own.

What it does not do: reach the network (the hub and `datasets` are offline for the whole evaluation; a task
whose data is not on disk is refused); run Python that a task file given by path names (`!function`, a
metric that is not lm-eval's own, which HF `evaluate` would load as code) unless `allow_code`; apply chat
templates; sample (a task asking `do_sample: true` is refused).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from tinylm.api import LM, load
from tinylm.errors import TinylmError
from tinylm.files import check_input_file
from tinylm.generate.engine import Generated, generate_batch
from tinylm.model import GPT
from tinylm.quantize import check_method
from tinylm.train.loggers import METRICS_FILE, CSVLog, TensorBoardLog

try:
    import lm_eval
    from lm_eval.api.model import TemplateLM
    from lm_eval.models.utils import (
        Collator,
        handle_stop_sequences,
        normalize_gen_kwargs,
        postprocess_generated_text,
    )
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as e:
    if not (e.name or "").startswith("lm_eval"):
        raise
    raise TinylmError(
        "tinylm eval runs EleutherAI's lm-evaluation-harness, which is not installed: "
        "pip install 'tinylm[eval]' (or pip install 'lm-eval>=0.4,<0.5')"
    ) from None

DEFAULT_BATCH_SIZE = 8
MAX_GEN_TOKS = 256  # lm-eval's default when a task sets none, as in its HF backend
BOOTSTRAP_ITERS = 1000  # resamples for the stderr of metrics without a closed form (bleu, perplexity)
LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"  # lm-eval's own task files: its code, trusted


# ----------------------------------------------------------------------------------------------------------
# The model, as lm-eval sees it


class TinylmEvalLM(TemplateLM):
    """A tinylm `LM` behind lm-eval's model interface. `batch_size` bounds the rows of every pass: requests
    (or contexts, or continuations) read together."""

    def __init__(self, lm: LM, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__()
        self.lm, self.model, self.tok = lm, lm.model, lm.tokenizer
        self.batch_size = batch_size
        self.max_length = lm.config.block_size
        self.max_gen_toks = MAX_GEN_TOKS
        self._device = lm.device
        # tinylm's GPT: its cache rows may be copied, and its head applied to the positions scored alone
        self.shares_contexts = isinstance(self.model, GPT)

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context (and a rolling window's start) is: BOS, else EOS, as in the `hf` backend."""
        return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Token ids as the `hf` backend encodes: a Hugging Face tokenizer adds its special tokens (a BOS)
        unless told not to or the text starts with it; tinylm's own tokenizers add none."""
        hf = getattr(self.tok, "hf", None)
        if hf is None:
            return self.tok.encode(string)
        if add_special_tokens is None:
            add_special_tokens = not string.startswith(hf.decode(self.prefix_token_id))
        return hf.encode(string, add_special_tokens=add_special_tokens)

    def loglikelihood(self, requests, disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def _loglikelihood_tokens(
        self, requests, disable_tqdm: bool = True, **kwargs
    ) -> list[tuple[float, bool]]:
        """(log-probability of the continuation ids after the context ids, whether greedy decoding gives
        them) for each request ((context, continuation) text, context ids, continuation ids), in order."""
        pairs = [(list(ctx), list(cont)) for _, ctx, cont in requests]
        long = [len(cont) for _, cont in pairs if len(cont) > self.max_length]
        if long:
            raise TinylmError(
                f"a continuation of {long[0]} tokens does not fit this model's {self.max_length}-token context "
                "window; lm-eval scores continuations whole"
            )
        scores: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)  # an empty continuation: log 1
        groups, alone = self._plan(pairs)
        for batch in _batches(groups, self.batch_size, self.max_length, pairs):
            conts = [[pairs[i][1] for i in members] for _, members in batch]
            found = self._score_shared([list(ctx) for ctx, _ in batch], conts)
            for i, score in zip((i for _, members in batch for i in members), found):
                scores[i] = score
        for start in range(0, len(alone), self.batch_size):
            chunk = alone[start : start + self.batch_size]
            for i, score in zip(chunk, self._score_whole([pairs[i] for i in chunk])):
                scores[i] = score
        return scores

    def _plan(
        self, pairs: list[tuple[list[int], list[int]]]
    ) -> tuple[list[tuple[tuple, list[int]]], list[int]]:
        """The requests whose context is read once for all (context ids -> request indices, longest context
        first), and those scored whole (no shareable cache, or cut to fit the window), longest first."""
        groups: dict[tuple[int, ...], list[int]] = {}
        alone = []
        for i, (ctx, cont) in enumerate(pairs):
            if not cont:
                continue
            if self.shares_contexts and len(ctx) + len(cont) <= self.max_length + 1:
                groups.setdefault(tuple(ctx), []).append(i)
            else:
                alone.append(i)
        alone.sort(key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        return sorted(groups.items(), key=lambda kv: -len(kv[0])), alone

    @torch.no_grad()
    def _score_shared(
        self, contexts: list[list[int]], conts: list[list[list[int]]]
    ) -> list[tuple[float, bool]]:
        """Score every continuation of every context: the contexts are read once into the KV cache (left-
        padded, a row each), then the continuations `batch_size` rows at a time, each row a copy of its
        context's cache row. The head runs on the positions scored, no others. Scores continuation by
        continuation, context by context."""
        dev, width = self.device, max(map(len, contexts))
        flat = [k for ks in conts for k in ks]
        slots = torch.arange(width + max(map(len, flat)) - 1, device=dev)
        pad = torch.tensor([width - len(c) for c in contexts], device=dev)  # (G,)
        ids = torch.zeros((len(contexts), width), dtype=torch.long, device=dev)
        for g, ctx in enumerate(contexts):
            ids[g, width - len(ctx) :] = torch.tensor(ctx)
        cache = self.model.new_cache(len(contexts), len(slots), device=dev)
        last = self.model.embeddings(
            ids,
            input_pos=slots[:width],
            cache=cache,
            positions=slots[None, :width] - pad[:, None],
            key_mask=slots[None] >= pad[:, None],
        )[:, -1]  # (G, C): every continuation's first token follows its context's last
        first = self.model.lm_head(last)  # (G, V)
        owners = [g for g, ks in enumerate(conts) for _ in ks]  # the context of each continuation
        order = sorted(range(len(flat)), key=lambda r: -len(flat[r]))  # alike lengths together: less padding
        scores: list[tuple[float, bool]] = [(0.0, True)] * len(flat)
        for start in range(0, len(order), self.batch_size):
            picked = order[start : start + self.batch_size]
            rows, chunk = torch.tensor([owners[r] for r in picked], device=dev), [flat[r] for r in picked]
            single = len(chunk[0]) == 1  # nothing to read after the contexts
            rest = (
                [first[:0]] * len(chunk)
                if single
                else self._read_continuations(cache, rows, pad[rows], chunk, width)
            )
            for r, cont, after in zip(picked, chunk, rest):
                scores[r] = _score(torch.cat([first[owners[r]][None], after]), cont)
        return scores

    def _read_continuations(
        self, cache: Any, owner: Tensor, pad: Tensor, conts: list[list[int]], width: int
    ) -> list[Tensor]:
        """Logits (len(cont) - 1, V) after each continuation's tokens but its last, read after the cached
        context (`width` slots, `pad` (B,) of them padding) of row `owner[r]`."""
        longest = max(map(len, conts))
        total = width + longest - 1
        rows = self.model.new_cache(len(conts), total, device=self.device)
        for (k, v), (row_k, row_v) in zip(cache.layers, rows.layers):
            row_k.copy_(k[:, :, :total].index_select(0, owner))
            row_v.copy_(v[:, :, :total].index_select(0, owner))
        ids = torch.zeros((len(conts), longest - 1), dtype=torch.long, device=self.device)
        for r, cont in enumerate(conts):
            ids[r, : len(cont) - 1] = torch.tensor(cont[:-1], dtype=torch.long)
        every = torch.arange(total, device=self.device)
        hidden = self.model.embeddings(
            ids,
            input_pos=every[width:],
            cache=rows,
            positions=every[None, width:] - pad[:, None],
            key_mask=every[None] >= pad[:, None],
        )  # (B, longest - 1, C)
        lengths = [len(c) - 1 for c in conts]
        real = (
            every[None, : longest - 1] < torch.tensor(lengths, device=self.device)[:, None]
        )  # (B, longest - 1)
        logits = self.model.lm_head(hidden[real])  # (sum of lengths, V): padding never reaches the head
        return list(logits.split(lengths))

    @torch.no_grad()
    def _score_whole(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Each (context, continuation) read as one sequence, cut from the left to the window as the `hf`
        backend cuts it; rows right-padded (a causal model's real tokens never see what follows them)."""
        inputs = [(ctx + cont)[-(self.max_length + 1) :][:-1] for ctx, cont in pairs]
        ids = torch.zeros((len(inputs), max(map(len, inputs))), dtype=torch.long, device=self.device)
        for r, inp in enumerate(inputs):
            ids[r, : len(inp)] = torch.tensor(inp)
        logits = self.model(ids)  # (B, T, V)
        return [
            _score(logits[r, len(inp) - len(cont) : len(inp)], cont)
            for r, (inp, (_, cont)) in enumerate(zip(inputs, pairs))
        ]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = True) -> list[float]:
        """The log-likelihood of each whole text, in windows as lm-eval cuts them (each token scored once,
        after as much of the text before it as the window holds)."""
        windows, owners = [], []
        for i, (text,) in enumerate(r.args for r in requests):
            cut = get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for ctx, cont in map(make_disjoint_window, cut):
                windows.append((None, ctx, cont))
                owners.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows)):
            totals[i] += logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = True) -> list[str]:
        """Greedy replies, cut at the task's stop strings; batched as the `hf` backend batches them (same
        generation settings together, longest context first)."""
        collator = Collator(
            [r.args for r in requests],
            sort_fn=lambda args: (-len(self.tok_encode(args[0])), args[0]),
            group_by="gen_kwargs",
            group_fn=lambda args: args[1],
        )
        replies: list[str] = []
        for chunk in collator.get_batched(n=self.batch_size):
            contexts, settings = zip(*chunk)
            replies.extend(self._generate(list(contexts), settings[0]))
        return collator.get_original(replies)

    def _generate(self, contexts: list[str], gen_kwargs: dict[str, Any]) -> list[str]:
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=self.tok.decode([self.eot_token_id]))
        new = kwargs.pop("max_gen_toks")
        if kwargs.get("do_sample"):
            raise TinylmError(
                f"a task asks to sample its replies ({gen_kwargs}); tinylm eval decodes greedily: set "
                "do_sample: false in the task's generation_kwargs"
            )
        room = self.max_length - new
        if room <= 0:
            raise TinylmError(
                f"a task asks for up to {new} new tokens (max_gen_toks), which leaves no room for its prompt in "
                f"this model's {self.max_length}-token context window; set generation_kwargs: max_gen_toks "
                f"below {self.max_length} in the task"
            )
        prompts = [self.tok_encode(c)[-room:] or [self.prefix_token_id] for c in contexts]
        rows = generate_batch(
            self.model,
            prompts,
            max_new_tokens=new,
            block_size=self.max_length,
            stop_ids=[self.eot_token_id],
            until=_stopped(until, lambda ids: self.tok.decode(ids, skip_special=True)),
        )
        texts = [self.tok.decode(row.tokens, skip_special=True) for row in rows]
        return [postprocess_generated_text(text, until, None) for text in texts]


def _score(logits: Tensor, cont: list[int]) -> tuple[float, bool]:
    """logits (n, V) before each of the n continuation ids -> (their summed log-probability, all greedy)."""
    logprobs = F.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(cont, device=logits.device)
    return float(logprobs.gather(1, target[:, None]).sum()), bool((logprobs.argmax(-1) == target).all())


def _batches(
    groups: list[tuple[tuple, list[int]]], size: int, window: int, pairs: list[tuple[list[int], list[int]]]
) -> Iterator[list[tuple[tuple, list[int]]]]:
    """Consecutive context groups (longest context first), at most `size` together, whose longest context
    and longest continuation fit the window together."""
    batch: list[tuple[tuple, list[int]]] = []
    width = longest = 0
    for group in groups:
        ctx, members = group
        cont = max(len(pairs[i][1]) for i in members)
        if batch and (len(batch) == size or width + max(longest, cont) - 1 > window):
            yield batch
            batch, width, longest = [], 0, 0
        batch.append(group)
        width, longest = max(width, len(ctx)), max(longest, cont)
    if batch:
        yield batch


def _stopped(stops: list[str], decode: Callable[[list[int]], str]) -> Callable[[list[Generated]], bool]:
    """The engine's `until`: True once every row ended (its stop id, or one of `stops` in its text)."""

    def check(rows: list[Generated]) -> bool:
        return all(r.finish_reason == "stop" or any(s and s in decode(r.tokens) for s in stops) for r in rows)

    return check


# ----------------------------------------------------------------------------------------------------------
# Tasks: lm-eval's by name, or task files by path


class _Function(str):
    """A `!function` a task file names (its dotted name), as the scan below reads it."""


class _Scan(yaml.SafeLoader):
    """Reads a task file as data, `!function` tags included, without importing anything."""


_Scan.add_constructor("!function", lambda loader, node: _Function(loader.construct_scalar(node)))


def task_specs(tasks: Sequence[str], *, allow_code: bool = False) -> tuple[list[str | dict[str, Any]], Any]:
    """What lm-eval loads for `--tasks` (its task names, and the configs of task files given by path) and
    the lm-eval TaskManager that knows them; every task is loaded once here, so that a name that is not
    there, a file lm-eval cannot read or data that is not on disk is refused before any model loads."""
    from jinja2.exceptions import SecurityError
    from lm_eval.tasks import TaskManager

    specs: list[str | dict[str, Any]] = [
        read_task_file(Path(t), allow_code=allow_code) if _is_path(t) else t for t in tasks
    ]
    names = [s for s in specs if isinstance(s, str)]
    manager = TaskManager(include_defaults=bool(names))
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise TinylmError("; ".join(_not_found(n, manager.all_tasks) for n in unknown))
    for given, spec in zip(tasks, specs):
        try:
            manager.load([copy.deepcopy(spec)])
        except SecurityError as e:
            raise _unsafe_template(e) from None
        except Exception as e:  # datasets and lm-eval raise many kinds; each is a task the user named
            raise TinylmError(
                f"--tasks {given}: lm-eval could not load this task offline: {type(e).__name__}: {e}. tinylm "
                "eval never reaches the network: a task's data must be on disk (a task file with dataset_path: "
                "json and dataset_kwargs: data_files: FILE) or already in the datasets cache"
            ) from None
    return specs, manager


def _unsafe_template(e: Exception) -> TinylmError:
    return TinylmError(
        f"a task's prompt template reaches for Python ({e}); tinylm eval renders templates in jinja2's "
        "sandbox, which lets them read the document and nothing else"
    )


def _is_path(task: str) -> bool:
    return task.endswith((".yaml", ".yml")) or "/" in task or os.sep in task


def _not_found(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return (
        f"--tasks: no lm-eval task, group or tag is named {name!r}{hint} (a task file is given by its path)"
    )


def read_task_file(path: Path, *, allow_code: bool = False) -> dict[str, Any]:
    """The config of one task file, its `include`s merged as lm-eval merges them. A relative data file
    (`dataset_kwargs: data_files`) is read from the file's folder when it is there, else from the current
    one (as lm-eval reads it). Python the file names is refused unless `allow_code` (`_code_in`)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    check_input_file(path, "task file (--tasks)")
    if not allow_code:
        named = _code_in(path, set())
        if named:
            raise TinylmError(
                f"{path}: this task file would run Python code ({'; '.join(named)}); tinylm eval runs no "
                "code from a task file unless you pass --allow-code (read the code first)"
            )
    try:
        cfg = load_yaml(path, resolve_func=True)
    except (yaml.YAMLError, ValueError, OSError, ImportError, AttributeError) as e:
        raise TinylmError(f"{path}: lm-eval cannot read this task file: {e}") from None
    if not isinstance(cfg.get("task"), str):
        raise TinylmError(
            f"{path}: expected one task (a `task: NAME` key) in a task file given by path, found keys "
            f"{sorted(cfg)}; a group of tasks is named, or its tasks given one by one"
        )
    kwargs = cfg.get("dataset_kwargs")
    if isinstance(kwargs, dict) and "data_files" in kwargs:
        kwargs["data_files"] = _beside(kwargs["data_files"], path.parent)
    return cfg


def _beside(files: Any, folder: Path) -> Any:
    """`data_files` (a path, a list, or split -> path(s)) with each relative path that exists in `folder`
    made absolute there."""
    if isinstance(files, dict):
        return {split: _beside(f, folder) for split, f in files.items()}
    if isinstance(files, list):
        return [_beside(f, folder) for f in files]
    if isinstance(files, str) and not os.path.isabs(files) and (folder / files).is_file():
        return str((folder / files).resolve())
    return files


def _code_in(path: Path, seen: set[Path]) -> list[str]:
    """The Python that a task file (and the files it includes, lm-eval's own aside) would run: `!function`
    hooks, and metrics that are not lm-eval's own (HF `evaluate` would load those as code)."""
    import lm_eval.api.metrics  # noqa: F401  (fills the metric registry)
    from lm_eval.api.registry import metric_registry

    path = path.resolve()
    if path in seen or path.is_relative_to(LM_EVAL_TASKS.resolve()):
        return []
    seen.add(path)
    check_input_file(path, "task file (--tasks, or one it includes)")
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_Scan)  # a SafeLoader: data only
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise TinylmError(f"{path}: not a YAML task file: {e}") from None
    if not isinstance(cfg, dict):
        raise TinylmError(f"{path}: expected a YAML mapping of task settings, found {type(cfg).__name__}")
    found = [f"!function {f}" for f in _functions(cfg)]
    for entry in cfg.get("metric_list") or []:
        name = entry.get("metric") if isinstance(entry, dict) else None
        own = isinstance(name, str) and name in metric_registry and not entry.get("hf_evaluate")
        if isinstance(name, str) and not isinstance(name, _Function) and not own:
            found.append(f"metric {name!r}, which is not one of lm-eval's own")
    includes = cfg.get("include") or []
    for include in [includes] if isinstance(includes, str) else includes:
        found += _code_in(path.parent / include, seen)
    return found


def _functions(value: Any) -> Iterator[str]:
    if isinstance(value, _Function):
        yield str(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _functions(v)
    elif isinstance(value, list):
        for v in value:
            yield from _functions(v)


# ----------------------------------------------------------------------------------------------------------
# Running them


@dataclass
class EvalRun:
    """One column of the comparison: a model, quantized or not, and its scores per task."""

    model: str
    quantize: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> metric -> value
    stderr: dict[str, dict[str, float]] = field(default_factory=dict)  # where lm-eval gives one
    docs: dict[str, int] = field(default_factory=dict)  # task -> documents scored
    logged_to: Path | None = None  # the training run's metrics.csv the scores were appended to

    @property
    def label(self) -> str:
        return self.model if self.quantize == "none" else f"{self.model} ({self.quantize})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "quantize": self.quantize,
            "scores": self.scores,
            "stderr": self.stderr,
            "docs": self.docs,
            "logged_to": None if self.logged_to is None else str(self.logged_to),
        }


def evaluate_models(
    models: Sequence[str],
    tasks: Sequence[str],
    *,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    quantize: Sequence[str] = ("none",),
    num_fewshot: int | None = None,
    device: str = "cpu",
    allow_code: bool = False,
    log: bool = True,
) -> list[EvalRun]:
    """`tinylm eval`: every model (a checkpoint, a run's `last`/`best`, a model name, an HF directory) under
    every `quantize` method on every task (an lm-eval name, or a task file's path), at most `limit`
    documents per task. Returns one EvalRun per model and method, in that order. With `log`, the scores of
    a training run's checkpoint are appended to that run's metrics.csv (`log_to_run`)."""
    from jinja2.exceptions import SecurityError
    from lm_eval.evaluator import simple_evaluate

    _check_args(models, tasks, limit, batch_size, quantize, num_fewshot)
    runs = []
    with sealed():
        specs, manager = task_specs(tasks, allow_code=allow_code)
        for name in models:
            for method in quantize:
                lm = load(name, device=device, quantize=method)
                try:
                    results = simple_evaluate(
                        model=TinylmEvalLM(lm, batch_size),
                        tasks=copy.deepcopy(specs),  # lm-eval may take a config apart as it builds
                        task_manager=manager,
                        limit=limit,
                        num_fewshot=num_fewshot,
                        bootstrap_iters=BOOTSTRAP_ITERS,
                        log_samples=False,
                        confirm_run_unsafe_code=allow_code,
                    )
                except SecurityError as e:
                    raise _unsafe_template(e) from None
                run = EvalRun(str(name), method, *scores_of(results))
                run.logged_to = log_to_run(name, lm, run) if log else None
                runs.append(run)
    return runs


def _check_args(
    models: Sequence[str],
    tasks: Sequence[str],
    limit: int | None,
    batch_size: int,
    quantize: Sequence[str],
    num_fewshot: int | None,
) -> None:
    """Every problem with the arguments, raised once (before any task or model loads)."""
    problems = []
    if not models:
        problems.append("MODEL: expected at least one model (a checkpoint directory or a model name)")
    problems += [f"{m}: no such checkpoint directory" for m in models if _missing(m)]
    if not tasks or any(not t.strip() for t in tasks):
        problems.append(
            f"--tasks: expected task names or task files, separated by commas, found {','.join(tasks)!r}"
        )
    if limit is not None and limit < 1:
        problems.append(f"--limit: expected a positive number of documents per task, found {limit}")
    if batch_size < 1:
        problems.append(f"--batch-size: expected a positive number of requests per batch, found {batch_size}")
    if num_fewshot is not None and num_fewshot < 0:
        problems.append(f"--num-fewshot: expected 0 or more examples in each prompt, found {num_fewshot}")
    for method in quantize:
        try:
            check_method(method)
        except TinylmError as e:
            problems.append(f"--quantize: {e}")
    if problems:
        raise TinylmError("; ".join(problems))


def _missing(model: str) -> bool:
    """A path (not a model name) that is not there."""
    path = Path(model)
    return not path.exists() and len(path.parts) > 1


def scores_of(results: dict[str, Any]) -> tuple[dict, dict, dict]:
    """(task -> metric -> value, task -> metric -> stderr, task -> documents) of lm-eval's results, metric
    names as lm-eval writes them without the default filter (`acc`, `exact_match,strict-match`)."""
    scores: dict[str, dict[str, float]] = {}
    errors: dict[str, dict[str, float]] = {}
    for task, row in results["results"].items():
        for key, value in row.items():
            metric, _, kept = key.partition(",")
            if not kept or isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                continue  # the alias, a sample count, a stderr lm-eval did not compute ("N/A")
            stderr = metric.endswith("_stderr")
            metric = metric.removesuffix("_stderr")
            name = metric if kept == "none" else f"{metric},{kept}"
            (errors if stderr else scores).setdefault(task, {})[name] = float(value)
    docs = {task: int(n["effective"]) for task, n in results.get("n-samples", {}).items()}
    return scores, errors, docs


def log_to_run(model: str | Path, lm: LM, run: EvalRun) -> Path | None:
    """Append `run`'s scores to the metrics.csv (and TensorBoard, when the run keeps one) of the training
    run whose checkpoint `model` is (RUN/checkpoints/NAME), at the checkpoint's step, as `eval/TASK/METRIC`
    (`eval_int8/...` for int8). Returns the metrics file, or None for a model of no run."""
    path = Path(model)
    step = lm.checkpoint.meta.get("step")
    if not path.exists() or not isinstance(step, int):
        return None
    checkpoint = path.resolve()
    run_dir = checkpoint.parent.parent
    if checkpoint.parent.name != "checkpoints" or not (run_dir / METRICS_FILE).is_file():
        return None
    prefix = "eval" if run.quantize == "none" else f"eval_{run.quantize}"
    metrics = {
        f"{prefix}/{task}/{name}": v for task, found in run.scores.items() for name, v in found.items()
    }
    CSVLog(run_dir).log(metrics, step)
    if (run_dir / "tensorboard").is_dir():
        board = TensorBoardLog(run_dir)
        board.log(metrics, step)
        board.writer.close()
    return run_dir / METRICS_FILE


def results_table(runs: list[EvalRun]) -> Any:
    """A rich Table: a row per task and metric, a column per run (value ± stderr)."""
    from rich.table import Table

    table = Table(title="lm-eval tasks")
    table.add_column("task")
    table.add_column("metric")
    for run in runs:
        table.add_column(run.label, justify="right", overflow="fold")
    rows = dict.fromkeys((task, m) for run in runs for task, found in run.scores.items() for m in found)
    for task, metric in rows:
        cells = []
        for run in runs:
            value = run.scores.get(task, {}).get(metric)
            err = run.stderr.get(task, {}).get(metric)
            cells.append("-" if value is None else f"{value:.4f}" + ("" if err is None else f" ± {err:.4f}"))
        docs = runs[0].docs.get(task)
        table.add_row(task if docs is None else f"{task} ({docs} docs)", metric, *cells)
    return table


# ----------------------------------------------------------------------------------------------------------
# What an evaluation runs under

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DISABLE_MULTIPROC": "1",  # lm-eval's bootstrap in this process, not a pool of one per core
}


@contextlib.contextmanager
def sealed() -> Iterator[None]:
    """No network, no Python from templates, lm-eval's prints on stderr: for the duration of an evaluation,
    the previous state restored after."""
    with _offline(), _sandboxed_templates(), contextlib.redirect_stdout(sys.stderr):
        yield


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """The Hugging Face hub and `datasets` offline. They read their switches when imported, which may have
    been before (transformers is imported early): their modules' flags are set as well as the variables."""
    import datasets
    import datasets.config
    import huggingface_hub.constants as hub

    saved_env = {k: os.environ.get(k) for k in OFFLINE_ENV}
    saved = (hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE)
    bars = datasets.is_progress_bar_enabled()
    os.environ.update(OFFLINE_ENV)
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if bars:
            datasets.enable_progress_bars()


@contextlib.contextmanager
def _sandboxed_templates() -> Iterator[None]:
    """lm-eval renders a task's Jinja prompts in a plain jinja2 Environment, where a template can reach
    Python (`{{ cycler.__init__.__globals__ }}`): render them in jinja2's sandbox, same settings and filters."""
    from jinja2 import BaseLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment
    from lm_eval import utils

    plain = utils.env
    sandbox = SandboxedEnvironment(loader=BaseLoader(), undefined=StrictUndefined, keep_trailing_newline=True)
    sandbox.filters.update(plain.filters)
    utils.env = sandbox
    try:
        yield
    finally:
        utils.env = plain
