"""An OpenAI-compatible server over one model, with continuous batching and a chat page.

`tinylm serve MODEL` (or `serve()`) answers /v1/completions, /v1/chat/completions (streamed as server-sent
events when asked), /v1/embeddings and /v1/models, with a chat page at /. Layout: schemas (request bodies),
guard (the body size limit and strict JSON before any route), protocol (OpenAI's response and error
shapes), replies (batcher events → text cut at stop strings), app (the routes), runner (argument checks and
uvicorn), page.html. The model runs only in the batcher's thread (`tinylm.generate.continuous`).
"""

from tinylm.serve.app import create_app
from tinylm.serve.runner import running, serve

__all__ = ["create_app", "running", "serve"]
