"""Compatibility with the seed: its YAML dialect (`seed`, read by the config loader) and its mini-GPT API
(`sfa`: `text_generation`, `get_embeddings`). This package re-exports nothing, so that the config loader can
import `seed` without `sfa`, which sits on the top floor."""
