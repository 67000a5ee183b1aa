"""The workbench: tools around a model that no other part of tinylm depends on.

export (a checkpoint -> a Hugging Face folder), memory (the `estimate-memory` report), attention (the
attention view), tokenize (how a text splits into tokens), plots (a run's metrics), inspect_data (what the
training batches hold). Each is one CLI verb; this package re-exports nothing.
"""
