"""Prompt helpers: zero-, one- and few-shot prompts, a chain-of-thought trigger, and retrieved context.

The course notes' advice for a better reply is a better prompt: show the model worked examples (one-shot
with one, few-shot with several, zero-shot with none), and for reasoning add a trigger phrase such as
"Let's think step by step." (Kojima et al., "Large Language Models are Zero-Shot Reasoners"), which goes
where the answer starts. Each prompt comes in two shapes from the same examples:

- `shot_prompt`: plain text for a completion model, ``Q: ...\\nA: ...`` blocks ending in an open ``A:``.
- `shot_messages`: chat messages, each example a user/assistant exchange, then the question.

This module only builds text and message lists; it does not call a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tinylm.errors import TinylmError

COT_TRIGGER = "Let's think step by step."
REASONING_FIRST = "Explain your reasoning step by step first, then give the answer based on it."


@dataclass(frozen=True)
class Example:
    """One worked example: an input and the output we want for it."""

    input: str
    output: str


ExampleLike = Example | tuple[str, str] | Mapping[str, str]


def as_examples(examples: Sequence[ExampleLike]) -> list[Example]:
    """`Example`s from Examples, (input, output) pairs or {"input", "output"} dicts (the Q/A data format)."""
    out = []
    for i, ex in enumerate(examples):
        if isinstance(ex, Example):
            out.append(ex)
        elif (
            isinstance(ex, Mapping) and isinstance(ex.get("input"), str) and isinstance(ex.get("output"), str)
        ):
            out.append(Example(ex["input"], ex["output"]))
        elif isinstance(ex, tuple) and len(ex) == 2 and all(isinstance(x, str) for x in ex):
            out.append(Example(*ex))
        else:
            raise TinylmError(
                f"example {i}: expected an Example, an (input, output) pair of strings or a dict with "
                f"string 'input' and 'output', found {ex!r}"
            )
    return out


def _trigger(cot: bool | str) -> str:
    return COT_TRIGGER if cot is True else (cot or "")


def shot_prompt(
    question: str,
    examples: Sequence[ExampleLike] = (),
    *,
    instruction: str | None = None,
    cot: bool | str = False,
    input_label: str = "Q",
    output_label: str = "A",
) -> str:
    """A plain-text prompt: the instruction, one block per example, then the question with an open answer.

    `cot=True` puts the chain-of-thought trigger after the final answer label (a string replaces the
    trigger). With no examples this is a zero-shot prompt.
    """
    blocks = [instruction] if instruction else []
    blocks += [f"{input_label}: {ex.input}\n{output_label}: {ex.output}" for ex in as_examples(examples)]
    trigger = _trigger(cot)
    blocks.append(f"{input_label}: {question}\n{output_label}:" + (f" {trigger}" if trigger else ""))
    return "\n\n".join(blocks)


def shot_messages(
    question: str,
    examples: Sequence[ExampleLike] = (),
    *,
    system: str | None = None,
    cot: bool | str = False,
) -> list[dict[str, str]]:
    """Chat messages: the system prompt, each example as a user/assistant exchange, then the question.

    `cot=True` appends the trigger to the question (a chat model's answer starts in its own turn).
    """
    messages = [{"role": "system", "content": system}] if system else []
    for ex in as_examples(examples):
        messages += [{"role": "user", "content": ex.input}, {"role": "assistant", "content": ex.output}]
    trigger = _trigger(cot)
    messages.append({"role": "user", "content": f"{question}\n\n{trigger}" if trigger else question})
    return messages


def with_context(question: str, context: str) -> str:
    """The user message for a question answered from retrieved `context` (RAG)."""
    if not context.strip():
        return question
    return (
        "Answer the question using the context below. If the context does not contain the answer, say so.\n\n"
        f"Context:\n{context.strip()}\n\nQuestion: {question}"
    )
