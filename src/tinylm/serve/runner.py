"""Run the server: `serve()` behind `tinylm serve`, and `running()` to serve an app from a thread.

`serve` checks every argument (naming its flag, all problems at once) before the slow load, loads the model,
wires the optional RAG retriever and blocks in uvicorn. It binds 127.0.0.1 unless told otherwise and says so
when it listens beyond this machine without an API key. `running` starts an app on a loopback port of its
own in a background thread (tests, notebooks, benchmarks) and stops it on exit.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from fastapi import FastAPI

from tinylm.errors import TinylmError
from tinylm.generate.prefix import DEFAULT_MAX_TOKENS
from tinylm.serve.guard import DEFAULT_MAX_REQUEST_BYTES

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def serve(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    rag: str | Path | None = None,
    retrieval: str = "hybrid",
    max_batch: int = 8,
    max_len: int | None = None,
    device: str | None = None,
    quantize: str = "none",
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    prefix_cache_tokens: int = DEFAULT_MAX_TOKENS,
) -> None:
    """Serve `model` (a checkpoint dir, a model name or an HF dir) until interrupted; quantize="int8"
    serves weight-only int8 weights (`tinylm.quantize`). A blank `api_key` is refused, not taken as none.
    The keys and values of up to `prefix_cache_tokens` tokens of ended requests are kept for prompts that
    start alike (0: none; `tinylm.generate.prefix`)."""
    import uvicorn

    from tinylm.api import load
    from tinylm.serve.app import api_key_problem, create_app, request_bytes_problem

    problems = [
        *_address_problems(host, port),
        api_key_problem(api_key),
        _count_problem("--max-batch", max_batch, 1),
        None if max_len is None else _count_problem("--max-len", max_len, 2),
        _count_problem("--prefix-cache-tokens", prefix_cache_tokens, 0),
        request_bytes_problem(max_request_bytes),
        _device_problem(device),
        _rag_problem(rag),
    ]
    if any(problems):
        raise TinylmError("\n".join(p for p in problems if p))
    retriever = None
    if rag is not None:
        from tinylm.rag import retriever as rag_retriever

        retriever = rag_retriever(rag, retrieval=retrieval)
    _check_free(host, port)  # before the (slow) load
    lm = load(model, device=device or ("cuda" if torch.cuda.is_available() else "cpu"), quantize=quantize)
    block = lm.config.block_size
    if max_len is not None and not 2 <= max_len <= block:
        raise TinylmError(f"--max-len: expected 2..{block} (the model's context window), found {max_len}")
    app = create_app(
        lm,
        model_name=model,
        api_key=api_key,
        retriever=retriever,
        max_batch=max_batch,
        max_len=max_len or min(block, 2048),
        max_request_bytes=max_request_bytes,
        prefix_cache_tokens=prefix_cache_tokens,
    )
    if host not in LOOPBACK and api_key is None:
        print(
            f"warning: serving on {host} without --api-key: anyone who can reach port {port} can use the model",
            file=sys.stderr,
        )
    print(f"tinylm: {model} on http://{host}:{port} (chat page at /, API at /v1)", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="info")


def _address_problems(host: str, port: int) -> list[str | None]:
    problems: list[str | None] = []
    if not isinstance(host, str) or not host.strip():
        problems.append(f"--host: expected an interface to bind such as 127.0.0.1 or 0.0.0.0, found {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        problems.append(f"--port: expected a port number in 0..65535, found {port!r}")
    return problems


def _rag_problem(rag: str | Path | None) -> str | None:
    if rag is not None and not Path(rag).is_file():
        return f"--rag {rag}: no such RAG database (build one with `tinylm rag index`)"
    return None


def _count_problem(flag: str, value: int, least: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        return f"{flag}: expected >= {least}, found {value!r}"
    return None


def _device_problem(device: str | None) -> str | None:
    """Why `device` cannot run the model on this machine, if it cannot."""
    if device is None:
        return None
    forms = "cpu, cuda, cuda:N or mps"
    try:
        kind = torch.device(device)
    except (RuntimeError, TypeError):
        return f"--device {device!r}: expected {forms}"
    if kind.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return f"--device {device}: CUDA is not available on this machine (use --device cpu)"
        if (kind.index or 0) >= count:
            return f"--device {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}"
    elif kind.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {device}: MPS is not available on this machine (use --device cpu)"
    elif kind.type not in ("cpu", "cuda", "mps"):
        return f"--device {device}: expected {forms}"
    return None


def _check_free(host: str, port: int) -> None:
    """A clear error now for a port that uvicorn could not bind (it would log a traceback and exit 3)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise TinylmError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(address)
        except OSError as e:
            raise TinylmError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror})") from None


@contextmanager
def running(app: FastAPI, *, host: str = "127.0.0.1", timeout: float = 60) -> Iterator[str]:
    """Serve `app` from a background thread on a free port; yields its base URL, stops it on exit."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="tinylm-uvicorn", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server on {host}:{port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
