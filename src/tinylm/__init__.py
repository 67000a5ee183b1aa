"""tinylm: one toolkit for the whole life of a small language model.

The small public API: `tinylm.load(path)` returns an `LM` with `.generate(...)` and `.embed(...)`;
`tinylm.compat.sfa` holds the seed's mini-GPT functions. Everything else is reached through `tinylm.cli`.
"""

from tinylm.api import LM, load

__all__ = ["LM", "load"]
__version__ = "0.1.0"
