"""The one list of generation options and the places built from it: the CLI flags of each verb, the server's
request fields, the generation defaults a checkpoint stores, the seed's generate_params and the sampler's
view agree with `GenerationOptions` field by field, and each refuses an out-of-range value naming the field."""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

import annotated_types
import pytest
import torch
from pydantic import BaseModel, ValidationError

from tinylm import load
from tinylm.checkpoint import save_checkpoint
from tinylm.cli import add_option_flags, build_parser, option_values
from tinylm.config import MAX_TOKENS, GenerationDefaults, SeedGenerateParams
from tinylm.errors import TinylmError
from tinylm.generate.options import OPTIONS, GenerationOptions, Option
from tinylm.generate.sampling import SAMPLED, SamplingParams, sampling_params
from tinylm.model import GPTConfig, build_model
from tinylm.serve.schemas import OPENAI_NAMES, OPENAI_RANGES, PLANNED, ChatRequest, GenerationBody
from tinylm.tokenizers import train_tokenizer

BAD_LISTS = {"stop": [""], "stop_token_ids": [-1]}
VERBS = {  # verb -> (the argv before the flags, the options it takes, the defaults it sets itself)
    "generate": (
        ["generate", "m", "p"],
        [name for name in OPTIONS if name not in ("logprobs", "max_prompt_tokens")],
        {},
    ),
    "chat": (["chat"], ["max_new_tokens", "temperature", "top_p", "seed"], {}),
    "rag ask": (
        ["rag", "ask", "q", "--db", "d", "--model", "m"],
        ["max_new_tokens", "temperature", "seed"],
        {"max_new_tokens": 256},
    ),
}
OPENAI_RENAMED = {"max_new_tokens": "max_tokens"}
NOT_SERVED = {  # beams, n-gram bans, token-id stops, prompt cuts: not OpenAI's; logprobs: its own fields
    "no_repeat_ngram_size",
    "num_beams",
    "length_penalty",
    "early_stopping",
    "stop_token_ids",
    "logprobs",
    "max_prompt_tokens",
}
STORED = ["max_new_tokens", "temperature", "top_k", "top_p", "stop"]  # tinylm.json "generation", in order
STORED_CAPS = {"max_new_tokens": {"le": MAX_TOKENS}, "temperature": {"le": 100.0}}


def bounds_of(field: Any) -> dict[str, float]:
    """The ge/gt/le bounds of a pydantic field."""
    kinds = (annotated_types.Ge, annotated_types.Gt, annotated_types.Le)
    found = {}
    for m in field.metadata:
        if isinstance(m, kinds):
            name = type(m).__name__.lower()
            found[name] = getattr(m, name)
    return found


def bad_value(o: Option, bounds: dict[str, float]) -> Any:
    """A value `bounds` refuse for option `o`: under the lower bound, else over the upper, else not finite."""
    if o.many:
        return BAD_LISTS[o.name]
    if "ge" in bounds:
        return bounds["ge"] - 1
    if "gt" in bounds:
        return bounds["gt"]
    if "le" in bounds:
        return bounds["le"] + 1
    assert o.kind is float, f"{o.name}: a whole-number option with no range"
    return math.nan


def refused_field(model: type[BaseModel], data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as e:
        model.model_validate(data)
    return [str(err["loc"][0]) for err in e.value.errors()]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    tok = train_tokenizer("char", ["abcdefghij klmnop: \n"])
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("options") / "ck"
    save_checkpoint(path, model=build_model(cfg), config=cfg, tokenizer=tok, meta={})
    return load(path)


def _verb_parser(verb: str):
    parser = build_parser()
    for word in verb.split():
        parser = next(a for a in parser._actions if a.dest and a.dest.endswith("command")).choices[word]
    return parser


@pytest.mark.parametrize("verb", list(VERBS))
def test_cli_flags_are_the_options(verb):
    _, names, own_defaults = VERBS[verb]
    actions = {a.dest: a for a in _verb_parser(verb)._actions}
    assert [name for name in actions if name in OPTIONS] == names  # no option flag besides these, in order
    for name in names:
        o, action = OPTIONS[name], actions[name]
        assert action.option_strings == ["--" + name.replace("_", "-")]
        assert action.default == own_defaults.get(name), name  # None: the checkpoint's default applies
        assert action.help == o.help, name
        if o.kind is bool:
            assert isinstance(action, argparse._StoreTrueAction), name
        else:
            assert action.type is o.kind and action.nargs == ("+" if o.many else None), name


@pytest.mark.parametrize("verb", list(VERBS))
def test_cli_flags_refuse_what_the_options_refuse(lm, verb):
    argv, names, _ = VERBS[verb]
    parser = build_parser()
    refused = []
    for name in names:
        o = OPTIONS[name]
        if o.kind is bool:
            continue  # a switch: nothing to refuse
        bad = bad_value(o, o.rule.bounds())
        given = [str(v) for v in bad] if o.many else [str(bad)]
        args = parser.parse_args([*argv, "--" + name.replace("_", "-"), *given])
        with pytest.raises(TinylmError, match=rf"\b{name}: "):
            lm.resolve_options(option_values(args, names))
        refused.append(name)
    assert refused == [n for n in names if OPTIONS[n].kind is not bool]


def test_add_option_flags_takes_a_new_option_from_its_field():
    p = argparse.ArgumentParser()
    add_option_flags(p, ["stop_token_ids", "early_stopping"], stop_token_ids=[7])
    assert vars(p.parse_args([])) == {"stop_token_ids": [7], "early_stopping": None}
    assert vars(p.parse_args(["--stop-token-ids", "1", "2", "--early-stopping"])) == {
        "stop_token_ids": [1, 2],
        "early_stopping": True,
    }


def test_server_fields_are_the_options_under_openais_names():
    assert {n: f for n, f in OPENAI_NAMES.items() if n != f} == OPENAI_RENAMED
    assert set(OPTIONS) - set(OPENAI_NAMES) == NOT_SERVED
    for name, field_name in OPENAI_NAMES.items():
        field = GenerationBody.model_fields[field_name]
        assert field.default is None, name  # unset: the checkpoint's default
        if name == "stop":  # OpenAI's shape: a string or a list of strings
            assert field.annotation == str | list[str] | None
            continue
        assert field.annotation == OPTIONS[name].hint | None, name
        assert bounds_of(field) == {**OPTIONS[name].rule.bounds(), **OPENAI_RANGES.get(name, {})}, name
    assert (
        bounds_of(ChatRequest.model_fields["max_completion_tokens"])
        == OPTIONS["max_new_tokens"].rule.bounds()
    )


def test_server_fields_refuse_out_of_range_values_naming_the_field():
    base = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    for name, field_name in OPENAI_NAMES.items():
        if name == "stop":
            continue
        bounds = bounds_of(GenerationBody.model_fields[field_name])
        assert refused_field(ChatRequest, {**base, field_name: bad_value(OPTIONS[name], bounds)}) == [
            field_name
        ]
    assert refused_field(ChatRequest, {**base, "stop": ["a"] * 5}) == ["stop"]
    assert ChatRequest.model_validate({**base, "stop": "a"}).stop == ["a"]


def test_server_hands_lm_the_options_it_was_given_by_their_option_names():
    values = {"temperature": 0.5, "top_k": 3, "top_p": 0.9, "min_p": 0.1, "repetition_penalty": 1.2}
    values |= {"frequency_penalty": 0.3, "presence_penalty": -0.4, "stop": ["x"]}
    fields = {OPENAI_NAMES[n]: v for n, v in values.items()}
    body = ChatRequest(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, seed=5, **fields
    )
    assert body.sampling_options() == values
    assert set(values) == set(OPENAI_NAMES) - set(PLANNED)
    assert GenerationOptions(**body.sampling_options()).problems() == []
    assert ChatRequest(model="tiny", messages=[{"role": "user", "content": "hi"}]).sampling_options() == {}


def test_stored_generation_defaults_are_the_options():
    assert list(GenerationDefaults.model_fields) == STORED  # the checkpoint format
    assert GenerationDefaults().model_dump() == {name: OPTIONS[name].default for name in STORED}
    for name, field in GenerationDefaults.model_fields.items():
        o = OPTIONS[name]
        assert field.annotation == o.hint, name
        assert bounds_of(field) == {**o.rule.bounds(), **STORED_CAPS.get(name, {})}, name
        bad = bad_value(o, o.rule.bounds())
        assert refused_field(GenerationDefaults, {name: bad}) == [name], name
        too_big = STORED_CAPS.get(name, {}).get("le")
        if too_big is not None:
            assert refused_field(GenerationDefaults, {name: too_big + 1}) == [name]


def test_seed_generate_params_have_the_ranges_of_their_options():
    mapped = ["max_new_tokens", "no_repeat_ngram_size", "top_p", "temperature", "num_beams"]
    defaults = {"max_new_tokens": 64, "no_repeat_ngram_size": 0, "top_p": None, "temperature": 1.0}
    for name in mapped:
        field, o = SeedGenerateParams.model_fields[name], OPTIONS[name]
        assert {**bounds_of(field), **o.rule.bounds()} == bounds_of(field), name  # the option's, capped
        assert field.default == defaults.get(name, o.default), name  # transformers' defaults
        assert refused_field(SeedGenerateParams, {name: bad_value(o, o.rule.bounds())}) == [name]
    assert bounds_of(SeedGenerateParams.model_fields["top_k"]) == {"ge": 0}  # transformers reads 0 as off


def test_sampling_params_are_the_sampled_options():
    fields = dataclasses.fields(SamplingParams)
    assert [f.name for f in fields] == list(SAMPLED)
    for f in fields:
        assert (f.type, f.default) == (OPTIONS[f.name].hint, OPTIONS[f.name].default), f.name
        bad = bad_value(OPTIONS[f.name], OPTIONS[f.name].rule.bounds())
        problems = SamplingParams(**{f.name: bad}).validate()
        assert len(problems) == 1 and problems[0].startswith(f"{f.name}: expected "), problems
    options = GenerationOptions(temperature=0.7, top_k=5, no_repeat_ngram_size=2)
    assert sampling_params(options) == SamplingParams(temperature=0.7, top_k=5, no_repeat_ngram_size=2)
    assert SamplingParams() == sampling_params(GenerationOptions())


def test_problems_lists_every_bad_option_at_once():
    bad = {name: bad_value(o, o.rule.bounds()) for name, o in OPTIONS.items() if o.kind is not bool}
    problems = GenerationOptions(**bad).problems()
    assert [p.split(":")[0] for p in problems] == list(bad)
    assert GenerationOptions().problems() == []
    shown = dict(p.split(": ", 1) for p in problems)
    assert shown["seed"] == "expected a value in 0..2**64-1 (64 bits) or None, found -1"
    assert shown["top_p"] == "expected a value in (0, 1] or None, found 0"
    assert shown["min_p"] == "expected a value in [0, 1] or None, found -1"
    assert shown["num_beams"] == "expected a value in 1..64, found 0"
    assert shown["temperature"] == "expected >= 0 (0 means greedy), found -1"
    assert shown["length_penalty"] == "expected a finite number, found nan"
    assert shown["stop"] == "an empty stop string would end every reply at once"
    assert shown["stop_token_ids"] == "expected a list of token ids >= 0, found [-1]"
    wrong_types = GenerationOptions(max_new_tokens=2.5, top_k=True, temperature="hot").problems()
    assert wrong_types == [
        "max_new_tokens: expected a whole number, found 2.5",
        "temperature: expected a finite number, found 'hot'",
        "top_k: expected a whole number, found True",
    ]
    with pytest.raises(TinylmError, match="invalid generation options: max_new_tokens: expected >= 1"):
        GenerationOptions(max_new_tokens=0).check()
