"""Hostile input to `tinylm generate` / `embed` and to the CLI itself: options, argv bytes, internal bugs.

Each case: what the user types -> exit code and message fragments, never a traceback without --debug.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.adversarial.conftest import cli, expect
from tests.conftest import REPO
from tinylm import cli as cli_module

OPTION_CASES = [
    (["--max-new-tokens", "1000000000"], ["max_new_tokens", "context window"]),
    (["--max-new-tokens", "0"], ["max_new_tokens", ">= 1"]),
    (["--max-new-tokens", "-5"], ["max_new_tokens"]),
    (["--seed", str(2**64)], ["seed", "64 bits"]),
    (["--seed", str(2**200)], ["seed"]),
    (["--seed", "-1"], ["seed"]),
    (["--temperature", "-0.5"], ["temperature"]),
    (["--temperature", "nan"], ["temperature", "finite"]),
    (["--temperature", "inf"], ["temperature", "finite"]),
    (["--top-k", "0"], ["top_k"]),
    (["--top-k", "-3"], ["top_k"]),
    (["--top-p", "0"], ["top_p"]),
    (["--top-p", "1.5"], ["top_p"]),
    (["--top-p", "nan"], ["top_p"]),
    (["--min-p", "2"], ["min_p"]),
    (["--min-p", "-1"], ["min_p"]),
    (["--repetition-penalty", "0"], ["repetition_penalty"]),
    (["--repetition-penalty=-inf"], ["repetition_penalty", "finite"]),
    (["--frequency-penalty", "nan"], ["frequency_penalty"]),
    (["--presence-penalty", "inf"], ["presence_penalty"]),
    (["--no-repeat-ngram-size", "-1"], ["no_repeat_ngram_size"]),
    (["--no-repeat-ngram-size", "100000"], ["no_repeat_ngram_size", "window"]),
    (["--num-beams", "0"], ["num_beams"]),
    (["--num-beams", "100000"], ["num_beams"]),
    (["--num-beams", "2", "--max-new-tokens", "500"], ["num_beams", "context window"]),
    (["--length-penalty", "nan"], ["length_penalty"]),
    (["--stop-token-ids", "99999"], ["stop_token_ids"]),
    (["--stop-token-ids", "-1"], ["stop_token_ids"]),
    (["--stop", ""], ["stop", "empty stop string"]),
    (["--system", "be brief"], ["--system needs --chat"]),
    (["--quantize", "int3"], ["invalid choice", "int3"]),
]


@pytest.mark.parametrize("flags, fragments", OPTION_CASES, ids=lambda v: " ".join(v)[:40])
def test_generation_options_are_refused_before_anything_is_allocated(ckpt, flags, fragments):
    expect(cli("generate", ckpt, "what is item one", *flags), 2, *fragments)


def test_stream_refuses_the_same_options(ckpt):
    expect(cli("generate", ckpt, "hi", "--stream", "--max-new-tokens", "1000000000"), 2, "max_new_tokens")


def test_the_sliding_window_still_generates_past_it(ckpt):
    outcome = cli("generate", ckpt, "what is", "--raw", "--max-new-tokens", "100", "--stop-token-ids", "0")
    assert outcome.code == 0, outcome.err


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["generate", "no/such/dir", "hi"], ["no such checkpoint"]),
        (["generate", "smollm3-9000b", "hi"], ["smollm3-9000b"]),
        (["embed", "no/such/dir", "hi"], ["no such checkpoint"]),
        (["generate", "/dev/null", "hi"], ["/dev/null"]),
        (["generate", "/etc/hostname", "hi"], ["/etc/hostname"]),
    ],
    ids=["missing", "unknown-name", "embed-missing", "device", "file"],
)
def test_models_that_are_not_there(argv, fragments):
    expect(cli(*argv), 2, *fragments)


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "x", "caf\udce9"],
        ["train", "c\udcffnfig.yaml"],
        ["train", "c.yaml", "--set", "out_dir=\udc80"],
        ["chat", "--list", "--db", "\udcfe.sqlite"],
    ],
    ids=["prompt", "path", "set-value", "db"],
)
def test_arguments_that_are_not_utf8(argv):
    expect(cli(*argv), 2, "not valid UTF-8")


def test_argv_bytes_from_a_real_shell():
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(
        [sys.executable.encode(), b"-m", b"tinylm.cli", b"generate", b"x", b"caf\xe9"],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert (
        result.returncode == 2 and b"not valid UTF-8" in result.stderr and b"Traceback" not in result.stderr
    )


def test_an_internal_bug_exits_1_and_shows_its_traceback_only_with_debug(monkeypatch):
    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli_module, "cmd_models", broken)
    outcome = cli("models")
    assert outcome.code == 1 and "Traceback" not in outcome.err
    assert "internal error: ZeroDivisionError: a bug" in outcome.err and "--debug" in outcome.err
    with pytest.raises(ZeroDivisionError):
        cli_module.main(["--debug", "models"])


def test_an_os_error_on_a_users_file_is_a_clear_error(monkeypatch):
    def denied(args):
        raise PermissionError(13, "Permission denied", "/data/secret.json")

    monkeypatch.setattr(cli_module, "cmd_models", denied)
    expect(cli("models"), 2, "/data/secret.json", "Permission denied")


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["generate"],
        ["train"],
        ["serve", "m", "--port", "eighty"],
        ["generate", "m", "p", "--seed", "1e30"],
    ],
    ids=["verb", "generate-args", "train-args", "port-text", "seed-float"],
)
def test_argparse_refusals_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli_module.main(argv)
    assert e.value.code == 2 and "usage" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--json-schema", '{"type": "strnig"}'], ["JSON schema", "cannot be compiled", "strnig"]),
        (["--json-schema", '{"type": '], ["--json-schema", "inline", "invalid JSON"]),
        (["--json-schema", "nowhere.json"], ["nowhere.json", "JSON schema file", "not found"]),
        (["--json-schema", "{}", "--json"], ["--json and --json-schema"]),
        (["--json", "--num-beams", "2"], ["json_schema", "num_beams"]),
    ],
    ids=lambda v: " ".join(v)[:40],
)
def test_a_json_schema_that_cannot_hold_the_reply_is_refused(ckpt, flags, fragments):
    expect(cli("generate", ckpt, "what is item one", *flags), 2, *fragments)


def test_the_reply_follows_the_json_schema(ckpt, tmp_path):
    """The tiny char model's vocabulary holds the letters of true and false, and no quote mark."""
    schema = tmp_path / "flag.json"
    schema.write_text(json.dumps({"type": "boolean"}))
    for flags in (["--json-schema", schema], ["--json-schema", schema.read_text(), "--stream"]):
        done = cli("generate", ckpt, "what is item one", *flags)
        expect(done, 0)
        assert json.loads(done.out) in (True, False)
    for flags in (["--json-schema", '{"enum": ["red"]}'], ["--json"]):
        expect(
            cli("generate", ckpt, "what is item one", *flags),
            2,
            "tokenizer cannot write",
            "vocabulary has no",
        )
