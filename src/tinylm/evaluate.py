"""Text metrics for generated answers: corpus BLEU, ROUGE-1/2/L and exact match.

Everything here takes strings (predictions and their references, one reference per prediction) and
returns plain floats. `MetricAccumulator` scores a test set batch by batch while keeping only running
counts and sums, never the texts or any logits.

Which code computes what:

- BLEU: sacrebleu's corpus BLEU (4-gram, 13a tokenization, case-sensitive, 'exp' smoothing), in [0, 1]
  rather than sacrebleu's [0, 100]. torchmetrics' `SacreBLEUScore` tokenizes and counts n-grams; the
  score is computed here from its counts, because torchmetrics offers only no smoothing (any n-gram order
  without a match gives 0) or add-one smoothing, and sacrebleu's default is neither.
- ROUGE: torchmetrics' `rouge_score`, which follows Google's rouge-score: lowercase, tokens are runs of
  [a-z0-9] (other characters, accented letters included, separate tokens), no stemming. The F-measure
  of each pair is averaged over pairs; ROUGE-L is LCS based.
- Exact match: `normalize` below.

This module knows nothing about models, tokenizers or generation, and downloads nothing (no nltk data,
no Hugging Face metrics).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from torchmetrics.functional.text.rouge import rouge_score
from torchmetrics.text import SacreBLEUScore

from tinylm.errors import TinylmError
from tinylm.files import check_output_dir, kind_of, written_aside

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
_TRAILING = re.compile(r"[\s.!?]+$")


def normalize(text: str) -> str:
    """Normalize an answer for exact match.

    Lowercases, strips, collapses every run of whitespace to one space, and drops trailing '.', '!'
    and '?' (with any spaces among them): "  The  Eiffel Tower!! " -> "the eiffel tower".
    Other punctuation, inside or at the end, is kept.
    """
    return _TRAILING.sub("", " ".join(text.lower().split()))


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of pairs whose `normalize`d prediction equals the `normalize`d reference, in [0, 1].

    Raises ValueError if the lists differ in length or are empty.
    """
    _check_pairs(predictions, references)
    return _exact_hits(predictions, references) / len(predictions)


def text_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """BLEU, ROUGE-1/2/L F-measures and exact match of predictions against references.

    Returns {"bleu", "rouge1", "rouge2", "rougeL", "exact_match"} each in [0, 1], and "count", the
    number of pairs. Raises ValueError if the lists differ in length or are empty.
    """
    accumulator = MetricAccumulator()
    accumulator.add(predictions, references)
    return accumulator.compute()


class MetricAccumulator:
    """Streaming `text_metrics`: `add` batches of pairs, then `compute` over all pairs added so far.

    Holds only n-gram counts for BLEU, running sums of ROUGE F-measures, and the exact-match tally.
    """

    def __init__(self) -> None:
        self._bleu = SacreBLEUScore(n_gram=4, tokenize="13a")
        self._rouge_sums = dict.fromkeys(ROUGE_KEYS, 0.0)
        self._exact = 0
        self._count = 0

    def add(self, predictions: list[str], references: list[str]) -> None:
        """Add a batch of pairs. Raises ValueError if the lists differ in length or are empty."""
        _check_pairs(predictions, references)
        self._bleu.update(predictions, [[r] for r in references])
        rouge = rouge_score(predictions, references, rouge_keys=ROUGE_KEYS)
        for key in ROUGE_KEYS:
            self._rouge_sums[key] += rouge[f"{key}_fmeasure"].item() * len(predictions)
        self._exact += _exact_hits(predictions, references)
        self._count += len(predictions)

    def compute(self) -> dict[str, float]:
        """The same dict as `text_metrics` over every pair added. Raises ValueError if none were added."""
        if self._count == 0:
            raise ValueError(
                "nothing to score: add() at least one prediction/reference pair before compute()"
            )
        state = {name: value.tolist() for name, value in self._bleu.metric_state.items()}
        bleu = _sacrebleu_score(
            state["numerator"], state["denominator"], state["preds_len"], state["target_len"]
        )
        rouge = {key: total / self._count for key, total in self._rouge_sums.items()}
        return {"bleu": bleu, **rouge, "exact_match": self._exact / self._count, "count": self._count}


def _sacrebleu_score(matches: list[float], totals: list[float], pred_len: float, ref_len: float) -> float:
    """Corpus BLEU in [0, 1] from clipped n-gram matches and n-gram totals per order (1..4) and lengths.

    Mirrors sacrebleu's `BLEU.compute_bleu` with its defaults: 'exp' smoothing (the k-th order without
    a match counts as 1 / (2^k * total) matches per n-gram) and no effective order, so an order with
    no n-grams at all in the predictions gives 0.
    """
    if not any(matches) or not all(totals):
        return 0.0
    log_precision = 0.0
    halvings = 1
    for match, total in zip(matches, totals):
        if match == 0:
            halvings *= 2
        log_precision += math.log(match / total if match else 1 / (halvings * total))
    brevity = 1.0 if pred_len >= ref_len else math.exp(1 - ref_len / pred_len)
    return brevity * math.exp(log_precision / len(matches))


def _exact_hits(predictions: list[str], references: list[str]) -> int:
    return sum(normalize(p) == normalize(r) for p, r in zip(predictions, references))


def _check_pairs(predictions: list[str], references: list[str]) -> None:
    if isinstance(predictions, str) or isinstance(references, str):
        raise ValueError("expected lists of strings for predictions and references, got a single string")
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references must pair up one to one: got {len(predictions)} predictions "
            f"and {len(references)} references"
        )
    if not predictions:
        raise ValueError("nothing to score: got 0 predictions and 0 references, expected at least one pair")


# ----------------------------------------------------------------------------------------------------------
# `tinylm test`: the seed's test flow


def run_test(cfg) -> dict[str, float]:
    """Generate an answer for every example of the split, log prompt / reference / generation as JSONL
    (flushed every `save_steps`), and return BLEU / ROUGE / exact match (with do_compute_metrics).

    The log is written beside its final name and renamed into place when every example is done, so an
    earlier log is replaced only by a whole one."""
    import json

    import torch

    from tinylm.api import load
    from tinylm.compat.seed import SEED_PROMPT, seed_data_file
    from tinylm.data.formats import read_examples

    t = cfg.test_params
    log_path = _log_file(Path(t.log_file))
    for key in ("batch_size", "save_steps"):
        if not isinstance(getattr(t, key), int) or getattr(t, key) < 1:
            raise TinylmError(f"test_params.{key}: expected a positive integer, found {getattr(t, key)!r}")
    device = "cuda" if cfg.cuda and torch.cuda.is_available() else "cpu"
    lm = load(t.test_model_path or cfg.model_name, device=device)
    path = seed_data_file(cfg.data.data_dir) or Path(cfg.data.data_dir)
    examples = read_examples(path, split=cfg.data.split)
    g = cfg.generate_params
    options = {
        "max_new_tokens": g.max_new_tokens,
        "no_repeat_ngram_size": g.no_repeat_ngram_size,
        "num_beams": g.num_beams,
        "seed": cfg.seed,
        "max_prompt_tokens": cfg.data.max_prompt_length if cfg.data.truncate_promt else None,
        "stop": ["\nQuestion:"],
        "temperature": 0.0,
    }
    if g.do_sample:
        options.update(temperature=g.temperature, top_k=g.top_k or None, top_p=g.top_p)  # 0: no top-k
    metrics = MetricAccumulator()
    with written_aside(log_path) as tmp, tmp.open("w", encoding="utf-8") as log:
        for start in range(0, len(examples), t.batch_size):
            chunk = examples[start : start + t.batch_size]
            prompts = [SEED_PROMPT.format(prompt=e.prompt) for e in chunk]
            replies = [c.text.strip() for c in lm.complete(prompts, raw=True, **options)]
            for i, (ex, prompt, reply) in enumerate(zip(chunk, prompts, replies), start):
                row = {"index": i, "prompt": prompt, "reference": ex.response, "generation": reply}
                log.write(json.dumps(row) + "\n")
                if (i + 1) % t.save_steps == 0:
                    log.flush()
            metrics.add(replies, [e.response for e in chunk])
    return metrics.compute() if t.do_compute_metrics else {"count": float(len(examples))}


def _log_file(path: Path) -> Path:
    """`path` if the test log may be written there: a file name (or an existing regular file, which is
    replaced), not a folder, a FIFO or a device, and not below a file; else TinylmError."""
    check_output_dir(path.parent, "test log (test_params.log_file)")
    if path.exists() and not path.is_file():
        raise TinylmError(
            f"test_params.log_file {path}: expected a file, found {kind_of(path.stat().st_mode)}"
        )
    return path
