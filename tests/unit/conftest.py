"""Fixtures shared by the unit tests of several modules."""

from pathlib import Path

import pytest
import torch

from tests.unit.tiny_hf import tiny_hf_model, tiny_word_tokenizer


@pytest.fixture
def hf_dir(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A tiny Llama saved with save_pretrained beside a tiny BPE tokenizer, and the model itself."""
    hf = tiny_hf_model("llama")
    hf.save_pretrained(tmp_path / "tiny-llama")
    tiny_word_tokenizer().save_pretrained(tmp_path / "tiny-llama")
    return tmp_path / "tiny-llama", hf


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
