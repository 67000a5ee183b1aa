"""Data for tinylm: file readers and validation (`formats`); tokenized datasets live beside them.

This package only re-exports the public names of its modules; it holds no logic of its own.
"""

from tinylm.data.formats import END_MARKER, Example, available_splits, read_documents, read_examples

__all__ = ["END_MARKER", "Example", "available_splits", "read_documents", "read_examples"]
