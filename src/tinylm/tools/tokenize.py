"""`tinylm tokenize MODEL_OR_TOKENIZER "text"`: how a tokenizer cuts a text, shown token by token.

Prints the text with each token on its own background colour (whitespace made visible), a table of
positions, ids and token strings, and the counts (tokens, characters, characters per token, unknown
tokens); `--json` prints the same as JSON. The tokenizer comes from a tokenizer directory, a checkpoint
directory (its `tokenizer/`), a registry model name or a Hugging Face model directory; no weights load.

What this module does not do: it adds no BOS/EOS (`Tokenizer.encode` never does), applies no prompt or
chat template, and trains nothing (that is `tinylm tokenizer train`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinylm.checkpoint import TOKENIZER_DIR
from tinylm.errors import TinylmError
from tinylm.files import kind_of
from tinylm.tokenizers import Tokenizer, load_tokenizer

COLOURS = ("#3b4a6b", "#6b3b4a", "#3b6b4f", "#6b5a3b", "#4f3b6b", "#3b636b")  # readable under white text


@dataclass
class Tokenized:
    """A text cut into tokens: ids and, for each, its string (the id decoded alone)."""

    text: str
    ids: list[int]
    pieces: list[str]
    unknown: int

    def to_dict(self) -> dict[str, Any]:
        n = len(self.ids)
        return {
            "text": self.text,
            "tokens": [{"id": i, "text": p} for i, p in zip(self.ids, self.pieces)],
            "count": n,
            "characters": len(self.text),
            "chars_per_token": len(self.text) / n if n else 0.0,
            "unknown": self.unknown,
        }


def find_tokenizer(source: str | Path) -> Tokenizer:
    """The tokenizer of a tokenizer dir, a checkpoint dir (`tokenizer/` inside), an HF model dir, or a
    registry model name (converted once, like `tinylm.load`)."""
    path = Path(source)
    if path.exists() and not path.is_dir():
        raise TinylmError(
            f"{path}: expected a tokenizer or checkpoint directory, found {kind_of(path.stat().st_mode)}"
        )
    if (path / TOKENIZER_DIR).is_dir():
        return load_tokenizer(path / TOKENIZER_DIR)
    if path.is_dir():
        return load_tokenizer(path)
    if len(path.parts) > 1:  # a path, not a model name
        raise TinylmError(f"{path}: no such tokenizer or checkpoint directory")
    from tinylm.hub import resolve_model

    return load_tokenizer(resolve_model(str(source)) / TOKENIZER_DIR)


def tokenize(tokenizer: Tokenizer, text: str) -> Tokenized:
    if not text:
        raise TinylmError("the text is empty: give the text to tokenize")
    ids = tokenizer.encode(text)
    unknown = ids.count(tokenizer.unk_id) if tokenizer.unk_id is not None else 0
    return Tokenized(text, ids, tokenizer.token_strings(ids), unknown)


def visible(piece: str, *, breaks: bool = False) -> str:
    """A token string with its whitespace shown: space ·, tab ⇥, newline ↵ (followed by a real line break
    if `breaks`), and the empty string as ∅."""
    return piece.replace(" ", "·").replace("\t", "⇥").replace("\n", "↵\n" if breaks else "↵") or "∅"


def show(tok: Tokenized, console: Any) -> None:
    """The coloured text, the table of tokens and the counts, on a rich console."""
    from rich.table import Table
    from rich.text import Text

    coloured = Text()
    for n, piece in enumerate(tok.pieces):
        coloured.append(visible(piece, breaks=True), style=f"white on {COLOURS[n % len(COLOURS)]}")
    console.print(coloured)
    console.print()
    table = Table(show_edge=False)
    for name, justify in (("#", "right"), ("id", "right"), ("token", "left"), ("repr", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for n, (i, piece) in enumerate(zip(tok.ids, tok.pieces)):
        table.add_row(
            str(n), str(i), Text(visible(piece), style=f"white on {COLOURS[n % len(COLOURS)]}"), repr(piece)
        )
    console.print(table)
    d = tok.to_dict()
    console.print(
        f"{d['count']} tokens, {d['characters']} characters, {d['chars_per_token']:.2f} characters per token"
        + (f", {d['unknown']} unknown" if d["unknown"] else ""),
        highlight=False,
    )
