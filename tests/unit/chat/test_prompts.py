"""Zero-, one- and few-shot prompts as text and as chat messages; the chain-of-thought trigger."""

import pytest

from tinylm.chat.prompts import COT_TRIGGER, Example, as_examples, shot_messages, shot_prompt, with_context
from tinylm.errors import TinylmError
from tinylm.templates import check_messages

EXAMPLES = [("2 + 2", "4"), {"input": "3 + 5", "output": "8"}, Example("1 + 1", "2")]


def test_text_prompts_zero_one_and_few_shot():
    assert shot_prompt("7 + 1") == "Q: 7 + 1\nA:"
    assert shot_prompt("7 + 1", EXAMPLES[:1], instruction="Add the numbers.") == (
        "Add the numbers.\n\nQ: 2 + 2\nA: 4\n\nQ: 7 + 1\nA:"
    )
    assert shot_prompt("7 + 1", EXAMPLES, input_label="Input", output_label="Sum") == (
        "Input: 2 + 2\nSum: 4\n\nInput: 3 + 5\nSum: 8\n\nInput: 1 + 1\nSum: 2\n\nInput: 7 + 1\nSum:"
    )


def test_chain_of_thought_trigger_opens_the_answer():
    assert COT_TRIGGER == "Let's think step by step."
    assert shot_prompt("7 + 1", cot=True) == "Q: 7 + 1\nA: Let's think step by step."
    assert shot_prompt("7 + 1", cot="Reason first.") == "Q: 7 + 1\nA: Reason first."
    assert shot_messages("7 + 1", cot=True)[-1]["content"] == "7 + 1\n\nLet's think step by step."


def test_chat_messages_turn_examples_into_exchanges():
    assert shot_messages("7 + 1") == [{"role": "user", "content": "7 + 1"}]
    messages = shot_messages("7 + 1", EXAMPLES[:2], system="You add numbers.")
    check_messages(messages)
    assert [(m["role"], m["content"]) for m in messages] == [
        ("system", "You add numbers."),
        ("user", "2 + 2"),
        ("assistant", "4"),
        ("user", "3 + 5"),
        ("assistant", "8"),
        ("user", "7 + 1"),
    ]


def test_bad_examples_name_the_example():
    assert as_examples(EXAMPLES) == [Example("2 + 2", "4"), Example("3 + 5", "8"), Example("1 + 1", "2")]
    with pytest.raises(TinylmError, match=r"example 1: expected .* found \{'input': 'x'\}"):
        shot_prompt("q", [("a", "b"), {"input": "x"}])
    with pytest.raises(TinylmError, match="example 0"):
        shot_messages("q", [("a", "b", "c")])


def test_context_goes_before_the_question():
    text = with_context("Who won?", "  The blue team won in 2022.\n")
    assert text.endswith("Context:\nThe blue team won in 2022.\n\nQuestion: Who won?")
    assert with_context("Who won?", "   ") == "Who won?"
