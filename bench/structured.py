"""Structured output on SmolLM2-135M-Instruct: how often replies follow a JSON schema with and without the
grammar, what the grammar costs per token, and llguidance against xgrammar on the same schemas.

50 prompts, each with one of five schemas (nested objects, enums, arrays, numbers with bounds), greedy,
in batches. Unconstrained, the prompt shows the schema and asks for JSON only; constrained, the same prompt
runs under `json_schema`. Every reply is parsed and validated with `jsonschema`. The cost: seconds per
generated token with and without the grammar at batch 1 (same prompts, same token budget), and the time
spent computing masks and advancing matchers per token. The engine comparison compiles every schema and
walks a valid document token by token in both engines (xgrammar is measured only when it is installed:
`pip install xgrammar`; tinylm does not depend on it).

    python bench/structured.py [--prompts 50] [--batch 10] [--new 160]
"""

from __future__ import annotations

import argparse
import json
import time

import jsonschema
import torch

import tinylm
from tinylm.generate import grammar as grammar_module

SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "email": {"type": "string", "maxLength": 60},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "order": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "product": {"type": "string", "maxLength": 30},
                        "quantity": {"type": "integer", "minimum": 1, "maximum": 20},
                    },
                    "required": ["product", "quantity"],
                    "additionalProperties": False,
                },
                "minItems": 1,
                "maxItems": 4,
            },
            "express": {"type": "boolean"},
        },
        "required": ["items", "express"],
        "additionalProperties": False,
    },
    "review": {
        "type": "object",
        "properties": {
            "sentiment": {"enum": ["positive", "neutral", "negative"]},
            "stars": {"type": "number", "minimum": 1, "maximum": 5},
            "summary": {"type": "string", "maxLength": 80},
        },
        "required": ["sentiment", "stars", "summary"],
        "additionalProperties": False,
    },
    "city": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "country": {"type": "string", "maxLength": 30},
            "location": {
                "type": "object",
                "properties": {
                    "lat": {"type": "number", "minimum": -90, "maximum": 90},
                    "lon": {"type": "number", "minimum": -180, "maximum": 180},
                },
                "required": ["lat", "lon"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "country", "location"],
        "additionalProperties": False,
    },
    "task": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 50},
            "priority": {"enum": ["low", "medium", "high"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 15}, "maxItems": 3},
        },
        "required": ["title", "priority", "tags"],
        "additionalProperties": False,
    },
}
SUBJECTS = {
    "person": [
        "a retired teacher",
        "a young chef",
        "a famous painter",
        "a software engineer",
        "a farmer",
        "a nurse",
        "an astronaut",
        "a student",
        "a pilot",
        "a librarian",
    ],
    "order": [
        "two pizzas and a salad",
        "office supplies",
        "a birthday party",
        "a camping trip",
        "groceries for a week",
        "a new laptop and a mouse",
        "flowers",
        "books for school",
        "paint for a room",
        "a picnic",
    ],
    "review": [
        "a noisy hotel",
        "a great phone",
        "an average movie",
        "a slow restaurant",
        "a comfy chair",
        "a broken umbrella",
        "a fun board game",
        "a boring book",
        "a fast car",
        "cheap headphones",
    ],
    "city": ["Paris", "Tokyo", "Nairobi", "Lima", "Oslo", "Sydney", "Toronto", "Cairo", "Mumbai", "Berlin"],
    "task": [
        "fix the login bug",
        "write the report",
        "call the plumber",
        "plan the trip",
        "buy milk",
        "review the budget",
        "clean the garage",
        "renew the passport",
        "update the website",
        "prepare the slides",
    ],
}


def prompts(n: int) -> list[tuple[str, list[dict[str, str]]]]:
    out = []
    for i in range(n):
        kind = list(SCHEMAS)[i % len(SCHEMAS)]
        subject = SUBJECTS[kind][(i // len(SCHEMAS)) % len(SUBJECTS[kind])]
        ask = (
            f"Describe {subject} as a JSON object that follows this JSON schema:\n"
            f"{json.dumps(SCHEMAS[kind])}\nReply with the JSON object only."
        )
        out.append((kind, [{"role": "user", "content": ask}]))
    return out


def valid(text: str, schema: dict) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


def valid_inside(text: str, schema: dict) -> bool:
    """Leniently: the text from its first "{" to its last "}" (a reply in a code fence, or with words around
    it) parses and validates."""
    start, end = text.find("{"), text.rfind("}")
    return start >= 0 and valid(text[start : end + 1], schema)


def follow_rates(lm, cases, batch: int, new: int) -> None:
    for constrained in (False, True):
        ok = lenient = 0
        t0 = time.perf_counter()
        for kind in SCHEMAS:
            group = [messages for k, messages in cases if k == kind]
            schema = SCHEMAS[kind] if constrained else None
            for i in range(0, len(group), batch):
                replies = lm.generate(group[i : i + batch], max_new_tokens=new, json_schema=schema)
                ok += sum(valid(r, SCHEMAS[kind]) for r in replies)
                lenient += sum(valid_inside(r, SCHEMAS[kind]) for r in replies)
        label = "with the grammar   " if constrained else "without the grammar"
        print(
            f"{label}: {ok}/{len(cases)} replies parse and validate, {lenient}/{len(cases)} leniently (the "
            f"first {{ to the last }}) ({time.perf_counter() - t0:.0f} s)"
        )


def per_token_cost(lm, cases, new: int) -> None:
    """At batch 1, each prompt under its grammar, then the same prompt without one for exactly as many
    tokens (no stop id); best of 3 alternated rounds. Also the time computing masks, per token."""
    from tinylm.generate.engine import generate_batch

    opts, _ = lm.resolve_options({})
    stop = lm.stop_token_ids(opts)
    spent = {"mask": 0.0, "calls": 0}
    constrain = grammar_module.constrain

    def timed(logits, matchers):
        t = time.perf_counter()
        out = constrain(logits, matchers)
        spent["mask"] += time.perf_counter() - t
        spent["calls"] += 1
        return out

    import tinylm.generate.engine as engine

    block = lm.config.block_size
    best = {True: float("inf"), False: float("inf")}
    tokens = 0
    for _ in range(3):
        took = {True: 0.0, False: 0.0}
        tokens = 0
        for kind, messages in cases[:5]:
            ids = lm.encode(lm.render_prompt(messages, chat=True, raw=False)[0])
            g = lm.grammar(SCHEMAS[kind], opts)
            engine.constrain = timed
            t = time.perf_counter()
            row = generate_batch(
                lm.model, [ids], max_new_tokens=new, block_size=block, stop_ids=stop, grammar=g
            )[0]
            took[True] += time.perf_counter() - t
            engine.constrain = constrain
            t = time.perf_counter()
            generate_batch(lm.model, [ids], max_new_tokens=len(row.tokens), block_size=block)
            took[False] += time.perf_counter() - t
            tokens += len(row.tokens)
        best = {k: min(best[k], took[k]) for k in best}
    mask = spent["mask"] / max(spent["calls"], 1)
    step = best[False] / tokens
    print(
        f"batch 1, {tokens} tokens: {step * 1e3:.1f} ms/token without, {best[True] / tokens * 1e3:.1f} ms/token "
        f"with the grammar: {best[True] / best[False]:.3f}x; mask {mask * 1e3:.3f} ms/token = {mask / step:.1%} "
        "of a step"
    )


def engines(lm) -> None:
    """Compile each schema and walk a valid document through both grammar engines."""
    docs = {
        "person": {"name": "Ann Lee", "age": 41, "email": "ann@example.com"},
        "order": {"items": [{"product": "pizza", "quantity": 2}], "express": True},
        "review": {"sentiment": "negative", "stars": 2, "summary": "Too noisy at night."},
        "city": {"name": "Oslo", "country": "Norway", "location": {"lat": 59.9, "lon": 10.7}},
        "task": {"title": "Buy milk", "priority": "low", "tags": ["home"]},
    }
    stop = lm.stop_token_ids(lm.resolve_options({})[0])
    tok = lm.tokenizer
    t0 = time.perf_counter()
    grammar_module.json_grammar(tok, {}, stop)
    print(f"llguidance: tokenizer built in {time.perf_counter() - t0:.2f} s (once per model)")
    compile_s = walk_s = steps = 0.0
    for kind, schema in SCHEMAS.items():
        ids = tok.encode(json.dumps(docs[kind]))
        t = time.perf_counter()
        g = grammar_module.json_grammar(tok, schema, stop)
        m = g.matcher()
        compile_s += time.perf_counter() - t
        logits = torch.zeros(1, tok.vocab_size)
        t = time.perf_counter()
        for i in ids:
            grammar_module.constrain(logits, [m])  # the mask computed and applied, as xgrammar's below
            m.advance(i)
        walk_s += time.perf_counter() - t
        steps += len(ids)
    print(
        f"llguidance: compile {compile_s / len(SCHEMAS) * 1e3:.2f} ms/schema, mask+advance {walk_s / steps * 1e3:.3f} ms/token"
    )
    try:
        import xgrammar as xgr
    except ImportError:
        print("xgrammar: not installed (pip install xgrammar to compare)")
        return
    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok.hf, vocab_size=tok.vocab_size, stop_token_ids=stop)
    compiler = xgr.GrammarCompiler(info)
    print(f"xgrammar: tokenizer built in {time.perf_counter() - t0:.2f} s (once per model)")
    compile_s = walk_s = 0.0
    bitmask = xgr.allocate_token_bitmask(1, tok.vocab_size)
    logits = torch.zeros(1, tok.vocab_size)
    for kind, schema in SCHEMAS.items():
        ids = tok.encode(json.dumps(docs[kind]))
        t = time.perf_counter()
        m = xgr.GrammarMatcher(compiler.compile_json_schema(json.dumps(schema), any_whitespace=False))
        compile_s += time.perf_counter() - t
        t = time.perf_counter()
        for i in ids:
            m.fill_next_token_bitmask(bitmask)
            xgr.apply_token_bitmask_inplace(logits, bitmask)
            assert m.accept_token(i)
        walk_s += time.perf_counter() - t
    print(
        f"xgrammar:   compile {compile_s / len(SCHEMAS) * 1e3:.2f} ms/schema, mask+advance {walk_s / steps * 1e3:.3f} ms/token"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--new", type=int, default=160)
    args = parser.parse_args()
    lm = tinylm.load("smollm2-135m-instruct")
    cases = prompts(args.prompts)
    engines(lm)
    per_token_cost(lm, cases, 64)
    follow_rates(lm, cases, args.batch, args.new)


if __name__ == "__main__":
    main()
