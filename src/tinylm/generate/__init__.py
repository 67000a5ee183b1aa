"""Generation: logits processors (`sampling`) and the decoding loop over token ids (`engine`)."""

from tinylm.generate.engine import generate_ids
from tinylm.generate.sampling import choose_next

__all__ = ["choose_next", "generate_ids"]
