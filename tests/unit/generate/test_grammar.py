"""Structured output: a JSON schema compiled by llguidance holds what a (random, tiny) model generates, in
the engine and in the continuous batcher; a schema that does not compile fails closed."""

import json

import jsonschema
import pytest
import torch

from tinylm.generate.continuous import Batcher, Finished, Request
from tinylm.generate.engine import generate_batch, generate_ids
from tinylm.generate.grammar import GrammarError, constrain, json_grammar
from tinylm.generate.sampling import SamplingParams
from tinylm.model import GPTConfig, build_model
from tinylm.tokenizers import train_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = 'the quick brown fox {"name": "Ann", "age": 31, "tags": ["red", "blue"]} jumps 0123456789 ' * 30
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
        "pet": {
            "type": "object",
            "properties": {"kind": {"enum": ["cat", "dog"]}},
            "required": ["kind"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "tags", "pet"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer("bpe", [TEXT], vocab_size=300)


@pytest.fixture(scope="module")
def model(bpe):
    cfg = GPTConfig(vocab_size=bpe.vocab_size, block_size=256, n_layer=2, n_head=2, n_embd=32, pos="rope")
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _text(tok, ids, stop_ids):
    return tok.decode([i for i in ids if i not in stop_ids])


def test_a_tiny_random_model_writes_json_the_schema_allows(bpe, model):
    stop = [bpe.eos_id]
    grammar = json_grammar(bpe, SCHEMA, stop)
    prompts = [bpe.encode("the fox"), bpe.encode("jumps over"), bpe.encode("0")]
    for params in (SamplingParams(), SamplingParams(temperature=1.0, top_k=20)):
        rows = generate_batch(
            model,
            prompts,
            max_new_tokens=120,
            block_size=256,
            params=params,
            stop_ids=stop,
            generator=torch.Generator().manual_seed(1),
            grammar=grammar,
        )
        for row in rows:
            assert row.finish_reason == "stop" and row.tokens[-1] == bpe.eos_id
            jsonschema.validate(json.loads(_text(bpe, row.tokens, stop)), SCHEMA)


def test_without_the_grammar_the_same_model_writes_no_json(bpe, model):
    rows = generate_batch(
        model, [bpe.encode("the fox")], max_new_tokens=40, block_size=256, stop_ids=[bpe.eos_id]
    )
    with pytest.raises(ValueError):
        json.loads(_text(bpe, rows[0].tokens, [bpe.eos_id]))


def test_streamed_ids_follow_the_grammar_too(bpe, model):
    grammar = json_grammar(bpe, {"enum": ["yes", "no"]}, [bpe.eos_id])
    ids = list(
        generate_ids(
            model,
            bpe.encode("the"),
            max_new_tokens=20,
            block_size=256,
            stop_ids=[bpe.eos_id],
            grammar=grammar,
        )
    )
    assert json.loads(_text(bpe, ids, [bpe.eos_id])) in ("yes", "no")


def test_the_mask_allows_only_what_the_grammar_allows(bpe):
    matcher = json_grammar(bpe, {"type": "boolean"}, [bpe.eos_id]).matcher()
    logits = torch.zeros(2, bpe.vocab_size + 4)  # a model vocabulary wider than the tokenizer's
    masked = constrain(logits, [matcher, None])
    allowed = [bpe.decode([i]) for i in torch.nonzero(masked[0].isfinite()).flatten().tolist()]
    assert allowed and all("true".startswith(a) or "false".startswith(a) for a in allowed)
    assert masked[1].isfinite().all()  # a row without a grammar is left alone
    assert masked[0, bpe.vocab_size :].isneginf().all()
    for token in bpe.encode("true"):
        matcher.advance(token)
    assert matcher.done
    assert torch.nonzero(constrain(logits[:1], [matcher])[0].isfinite()).flatten().tolist() == [bpe.eos_id]


def test_a_char_tokenizer_is_constrained_and_a_word_one_refused():
    char = train_tokenizer("char", ['{"a": 12, "b": [true, false]} 0123456789 xyz'])
    grammar = json_grammar(char, {"type": "object", "properties": {"a": {"type": "integer"}}}, [char.eos_id])
    m = grammar.matcher()
    for token in char.encode('{"a": 12}'):
        m.advance(token)
    assert m.done
    word = train_tokenizer("word", ["a b c"])
    with pytest.raises(GrammarError, match="word"):
        json_grammar(word, {}, [word.eos_id])


@pytest.mark.parametrize(
    "schema, needle",
    [
        ({"type": "strnig"}, "strnig"),
        ({"$ref": "#/nowhere"}, "nowhere"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum"),
        ({"type": "string", "pattern": "(("}, "unclosed group"),
        ("not a schema", "must be an object"),
    ],
)
def test_a_schema_that_does_not_compile_fails_closed(bpe, schema, needle):
    with pytest.raises(GrammarError, match=r"cannot be compiled|must be an object") as info:
        json_grammar(bpe, schema, [bpe.eos_id])
    assert needle in str(info.value)


def test_the_batcher_constrains_its_rows_as_the_engine_does(bpe, model):
    """Constrained and free rows share the batch; each row's tokens equal generate_batch's for it alone."""
    stop = (bpe.eos_id,)
    grammar = json_grammar(bpe, SCHEMA, stop)
    prompts = [bpe.encode("the fox"), bpe.encode("jumps over the"), bpe.encode("0")]
    grammars = [grammar, None, grammar]
    with Batcher(model, max_batch=2, max_len=256) as batcher:
        jobs = [
            batcher.submit(Request(tuple(p), 80, stop_ids=stop, grammar=g)) for p, g in zip(prompts, grammars)
        ]
        got = [[e.id for e in job.events(timeout=60) if not isinstance(e, Finished)] for job in jobs]
    for p, g, tokens in zip(prompts, grammars, got):
        alone = generate_batch(model, [p], max_new_tokens=80, block_size=256, stop_ids=stop, grammar=g)[0]
        assert tokens == alone.tokens
        if g is not None:
            jsonschema.validate(json.loads(_text(bpe, tokens, stop)), SCHEMA)
