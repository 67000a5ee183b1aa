"""`tinylm inspect-data CONFIG`: look at the training rows before training on them.

Shows, for a few examples, exactly which tokens carry loss, and reports the truncation rate, examples
missing their end-of-sequence token and over-long examples; for DPO, each pair's prompt, chosen and rejected
response. It reads and tokenizes; it does not train.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from tinylm.checkpoint import TOKENIZER_DIR
from tinylm.config import RunConfig
from tinylm.data.datasets import IGNORE_INDEX, PairRows, QARows
from tinylm.errors import TinylmError
from tinylm.hub import resolve_model
from tinylm.tokenizers import load_tokenizer
from tinylm.train.data import prepare


def inspect_data(cfg: RunConfig, *, examples: int = 3) -> dict[str, float]:
    if not 0 <= examples <= 10_000:
        raise TinylmError(f"--examples: expected how many examples to show, 0..10000, found {examples}")
    console = Console()
    tokenizer = load_tokenizer(resolve_model(cfg.init_from) / TOKENIZER_DIR) if cfg.init_from else None
    data = prepare(cfg, tokenizer)
    tok = data.tokenizer
    if isinstance(data.train, PairRows):
        return _inspect_pairs(console, data.train, tok, data.stats, cfg, examples)
    if not isinstance(data.train, QARows):
        console.print(f"text data: {data.stats}; {len(data.train):,} windows of {cfg.data.max_length} tokens")
        return data.stats
    plain = console.color_system is None  # a pipe or a file: no colours, so mark the loss-carrying runs
    legend = "«between guillemets»" if plain else "[green]green[/green], the rest dim"
    console.print(f"[bold]tokens carrying loss are {legend}[/]\n")
    for i, row in enumerate(data.train.rows[:examples]):
        for ids, labels in row:
            console.print(f"[bold]example {i}[/] ({len(ids)} tokens)")
            console.print(_render(tok, ids, labels, marks=plain))
            console.print()
    s = data.stats
    n = max(int(s["examples"]), 1)
    held_out = f" (+{int(s['val_examples'])} held out for validation)" if s.get("val_examples") else ""
    console.print(
        f"train examples {int(s['examples'])}{held_out}, truncated {int(s['truncated'])} ({s['truncated'] / n:.1%}), "
        f"missing end-of-sequence {int(s['missing_eos'])}, tokens carrying loss {int(s['loss_tokens'])}, "
        f"max_length {cfg.data.max_length}"
    )
    if s["truncated"]:
        console.print(
            "[yellow]some examples are longer than data.max_length: raise it, or expect cut questions[/]"
        )
    return s


def _inspect_pairs(
    console: Console, pairs: PairRows, tok, s: dict[str, float], cfg: RunConfig, examples: int
) -> dict[str, float]:
    """Each pair's prompt, then its chosen and rejected response (the tokens DPO scores), and the counts."""
    plain = console.color_system is None
    legend = "«between guillemets»" if plain else "[green]green[/green]"
    console.print(f"[bold]preference pairs (DPO): the response tokens carrying loss are {legend}[/]\n")
    for i, pair in enumerate(pairs.pairs[:examples]):
        sizes = f"prompt {len(pair.prompt)}, chosen {len(pair.chosen)}, rejected {len(pair.rejected)} tokens"
        console.print(f"[bold]pair {i}[/] ({sizes})")
        prompt = "".join(tok.token_strings(pair.prompt))
        console.print(Text("prompt:   ", style="bold") + Text(prompt, style="dim"))
        for name, response in (("chosen:   ", pair.chosen), ("rejected: ", pair.rejected)):
            text = "".join(tok.token_strings(response))  # every response token is scored
            console.print(Text(name, style="bold") + Text(f"«{text}»" if plain else text, style="green"))
        console.print()
    n = max(int(s["pairs"]), 1)
    held_out = f" (+{int(s['val_pairs'])} held out for validation)" if s.get("val_pairs") else ""
    console.print(
        f"train pairs {int(s['pairs'])}{held_out}, truncated {int(s['truncated'])} ({s['truncated'] / n:.1%}), "
        f"mean tokens: prompt {s['prompt_tokens'] / n:.1f}, chosen {s['chosen_tokens'] / n:.1f}, "
        f"rejected {s['rejected_tokens'] / n:.1f}; max_length {cfg.data.max_length}"
    )
    if s["truncated"]:
        console.print("[yellow]some responses are cut at data.max_length: raise it, or expect cut answers[/]")
    return s


def _render(tok, ids: list[int], labels: list[int], *, marks: bool = False) -> Text:
    """Token i predicts labels[i] = ids[i + 1]: colour the predicted token by whether it carries loss; with
    `marks`, also put each run of loss-carrying tokens between « and »."""
    text = Text(tok.decode(ids[:1]), style="dim")
    inside = False
    for label, target in zip(labels, [*ids[1:], labels[-1]]):
        carries = label != IGNORE_INDEX
        if marks and carries != inside:
            text.append("«" if carries else "»")
            inside = carries
        text.append(tok.token_strings([target])[0], style="green" if carries else "dim")
    if marks and inside:
        text.append("»")
    return text
