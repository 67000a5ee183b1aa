"""`tinylm serve` end to end: a subprocess on a loopback port answers the openai client, stops cleanly on
Ctrl-C, and refuses bad arguments with one message and exit code 2."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.conftest import REPO, run_cli
from tests.unit.serve.conftest import tiny_checkpoint
from tinylm import load
from tinylm.errors import TinylmError
from tinylm.serve import serve


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("serve-cli") / "tiny")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_the_openai_client_and_stops_on_ctrl_c(checkpoint):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1", "TINYLM_API_KEY": "k3y"}
    args = ["serve", str(checkpoint), "--port", str(port), "--max-batch", "2", "--max-len", "256"]
    args += ["--quantize", "int8"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinylm.cli", *args], env=env, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                health = httpx.get(url + "/health", timeout=2).json()
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health["context_length"] == 256 and health["max_batch"] == 2
        client = openai.OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)
        messages = [{"role": "user", "content": "hi"}]
        reply = client.chat.completions.create(
            model=str(checkpoint), messages=messages, max_tokens=5, logprobs=True
        )
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 5
        served = [t.logprob for t in reply.choices[0].logprobs.content]  # the int8 weights' log-probabilities
        int8, fp32 = (load(checkpoint, quantize=q).complete([messages], chat=True, max_new_tokens=5, logprobs=True)[0]
                      for q in ("int8", "none"))  # fmt: skip
        assert served == pytest.approx(int8.logprobs, abs=1e-4)
        assert max(abs(a - b) for a, b in zip(served, fp32.logprobs)) > 1e-3
        with pytest.raises(openai.AuthenticationError):  # the key came from $TINYLM_API_KEY
            openai.OpenAI(base_url=url + "/v1", api_key="other", max_retries=0).models.list()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"Uvicorn running on http://127.0.0.1:{port}" in err  # loopback unless told otherwise


def test_serve_refuses_a_missing_checkpoint(tmp_path):
    result = run_cli("serve", str(tmp_path / "nope" / "ck"), "--port", str(_free_port()), timeout=120)
    assert result.returncode == 2, result.stderr
    assert "no such checkpoint" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "options,needle",
    [
        ({"rag": "missing.db"}, "--rag missing.db: no such RAG database"),
        ({"max_len": 5000}, "--max-len: expected 2..1024 (the model's context window), found 5000"),
        ({"max_batch": 0}, "--max-batch: expected >= 1, found 0"),
    ],
)
def test_serve_refuses_bad_options_before_listening(checkpoint, options, needle):
    with pytest.raises(TinylmError) as info:
        serve(str(checkpoint), port=_free_port(), **options)
    assert needle in str(info.value)


def test_a_port_in_use_is_one_clear_line(checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", str(checkpoint), "--port", str(port), timeout=120)
    assert result.returncode == 2, result.stderr
    assert (
        f"error: --port {port}: cannot listen on 127.0.0.1:{port} (Address already in use)" in result.stderr
    )
    assert "Traceback" not in result.stderr and "Uvicorn" not in result.stderr
