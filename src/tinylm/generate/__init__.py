"""Generation over token ids: the one list of generation options (`options`), logits processors
(`sampling`), the batched decoding loop (`engine`), beam search (`beam`) and incremental detokenization
(`detok`)."""

from tinylm.generate.beam import beam_search
from tinylm.generate.engine import generate_batch, generate_ids
from tinylm.generate.options import GenerationOptions
from tinylm.generate.sampling import SamplingParams, choose, choose_next

__all__ = [
    "GenerationOptions",
    "SamplingParams",
    "beam_search",
    "choose",
    "choose_next",
    "generate_batch",
    "generate_ids",
]
