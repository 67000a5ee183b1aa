"""The seed's main.py, on tinylm: train a mini-GPT on the Q/A file beside this script, then print its
answers (`text_generation`) and the shape of its per-token embeddings (`get_embeddings`).

    python examples/sfa/main.py [DATA.json]

The data file is a flat JSON dict {"sentence": "target <end>", ...} or the SFA format
{"training_data": [{"input": ..., "output": "... <end>"}]}. The first run trains (about a minute on a
laptop CPU); later runs load the cached checkpoint.
"""

import sys
from pathlib import Path

from tinylm.compat.sfa import get_embeddings, text_generation


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("data.json")
    predictions = text_generation(path)
    for sentence, predicted in predictions.items():
        print(f"{sentence!r} -> {predicted!r}")
    embeddings = get_embeddings(path)
    print(f"embeddings: {tuple(embeddings.shape)} (batch, tokens, embed)")


if __name__ == "__main__":
    main()
