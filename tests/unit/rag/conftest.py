"""Fixtures for the RAG tests (shared with tests/integration/test_rag_cli.py through tests.unit.rag.corpus)."""

from tests.unit.rag.corpus import one_torch_thread

__all__ = ["one_torch_thread"]
