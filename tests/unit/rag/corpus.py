"""A small corpus in every supported format, labelled questions about it, and tiny tinylm checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

CATS = (
    "# Cats\n\nDomestic cats sleep for twelve to sixteen hours a day. A cat purrs when it is content, "
    "and kittens open their eyes about a week after birth.\n"
)
VOLCANO = """<html><head><title>Volcanoes</title><style>p { color: red; }</style>
<script>var hidden = "lava script";</script></head>
<body><h1>Volcanoes</h1><p>A volcano is a rupture in the crust where lava &amp; ash erupt.</p>
<p>Mount Etna, on the island of Sicily, is the most active volcano in Europe.</p></body></html>
"""
PDF_PAGES = [
    "Baking bread: knead the dough for ten minutes, then let it rise for an hour.",
    "Bicycle care: pump road bike tyres to about seven bar before every ride.",
]
FACTS = [
    {"text": "The Eiffel Tower in Paris was finished in 1889.", "id": 1},
    {"text": "The Python programming language was created by Guido van Rossum.", "id": 2},
]
NOTES = "Photosynthesis: plants turn sunlight, water and carbon dioxide into sugar and oxygen.\n"
MOON = "The Moon orbits the Earth once every twenty-seven days.\n"

QUESTIONS = [
    ("How many hours a day do cats sleep?", "cats.md"),
    ("Which volcano is on Sicily?", "volcano.html"),
    ("How long should bread dough be kneaded?", "guide.pdf"),
    ("What pressure should bicycle tyres have?", "guide.pdf"),
    ("Who created the Python language?", "facts.jsonl"),
    ("How do plants make sugar from sunlight?", "notes.txt"),
    ("How long does the Moon take to orbit the Earth?", "sub/moon.txt"),
]


def write_pdf(path: Path, pages: list[str]) -> Path:
    """A PDF with one line of Helvetica text per page, made with pypdf (which reads it back exactly)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    for text in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        content = DecodedStreamObject()
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        content.set_data(f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode())
        page.replace_contents(content)
    writer.write(path)
    return path


def write_corpus(root: Path) -> Path:
    """Seven supported files (one in a subfolder), plus a hidden file and an unsupported one to be skipped."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cats.md").write_text(CATS)
    (root / "volcano.html").write_text(VOLCANO)
    write_pdf(root / "guide.pdf", PDF_PAGES)
    (root / "facts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in FACTS))
    (root / "notes.txt").write_text(NOTES)
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "moon.txt").write_text(MOON)
    (root / ".hidden").mkdir(exist_ok=True)
    (root / ".hidden" / "secret.txt").write_text("never indexed")
    (root / "image.png").write_bytes(b"\x89PNG not indexed")
    return root


def write_questions(path: Path) -> Path:
    path.write_text("".join(json.dumps({"question": q, "source": s}) + "\n" for q, s in QUESTIONS))
    return path


def tiny_checkpoint(path: Path, *, chat_template: str | None = None, block_size: int = 64) -> Path:
    """A random 2-layer, 16-dim GPT with a char tokenizer covering the corpus' letters."""
    from tinylm.checkpoint import save_checkpoint
    from tinylm.model import GPTConfig, build_model
    from tinylm.tokenizers import train_tokenizer

    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;?!'&[]()#-\n"
    tok = train_tokenizer("char", [alphabet])
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=16)
    torch.manual_seed(0)
    meta = {"chat_template_name": chat_template} if chat_template else {}
    save_checkpoint(path, model=build_model(cfg), config=cfg, tokenizer=tok, meta=meta)
    return path


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run the embedders on one thread: these models are tiny, and two threads contending for a busy 2-core
    machine make a MiniLM forward pass some ten times slower. The previous setting is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
