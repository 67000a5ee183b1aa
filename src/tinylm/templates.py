"""Chat templates: turn a list of {"role", "content"} messages into the prompt text a model expects.

A Hugging Face tokenizer's own template (SmolLM2's ChatML) is used when it has one; our own models use a
named template. A model trained on a Q/A prompt template of its own (say "Q: {prompt}\nA:") and no chat
format gets the conversation in that template instead (`render_in_template`), which is all it has seen.
This module renders text only; it does not tokenize, generate or store conversations.
"""

from __future__ import annotations

import json

from tinylm.errors import TinylmError

TEMPLATES = {
    "chatml": {
        "turn": "<|im_start|>{role}\n{content}<|im_end|>\n",
        "reply": "<|im_start|>assistant\n",
        "stop": ["<|im_end|>"],
    },
    "plain": {"turn": "{role}: {content}\n", "reply": "assistant:", "stop": ["\nuser:"]},
}
ROLES = ("system", "user", "assistant")


CHAT = "chat"  # as a prompt template: lay prompts out with the chat template (`layout_prompt`)


def check_messages(messages: list[dict]) -> None:
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise TinylmError(
                f"message {i}: expected {{'role': one of {', '.join(ROLES)}, 'content': str}}, found {m!r}"
            )


def render_in_template(messages: list[dict], template: str) -> tuple[str, list[str]]:
    """(prompt text, stop strings) of a conversation laid out in a Q/A model's own prompt template: a system
    message as a first line, each user message as `template` filled in, each reply right after its
    question, then a new line. It stops where the model would begin a next question (the template's text
    before `{prompt}`, if any)."""
    check_messages(messages)
    parts = []
    for m in messages:
        if m["role"] == "user":
            parts.append(template.format(prompt=m["content"]))
        else:
            parts.append(m["content"] + "\n")
    head = template.split("{prompt}")[0].strip()
    return "".join(parts), [head] if head else []


def template_as_jinja(template: str) -> str:
    """`render_in_template(messages, template)`'s text as a Hugging Face chat template (Jinja), so a model
    exported to the Hugging Face layout keeps its own prompt layout (`tokenizer.apply_chat_template`)."""
    prefix, suffix = (part.replace("{{", "{").replace("}}", "}") for part in template.split("{prompt}", 1))
    return (
        "{%- for m in messages -%}{%- if m['role'] == 'user' -%}"
        f"{{{{ {json.dumps(prefix)} }}}}{{{{ m['content'] }}}}{{{{ {json.dumps(suffix)} }}}}"
        "{%- else -%}{{ m['content'] }}{{ '\\n' }}{%- endif -%}{%- endfor -%}"
    )


def layout_prompt(prompt: str, template: str, tokenizer) -> str:
    """A Q/A prompt laid out for the model: `template` with `{prompt}` filled in, or, for the template
    "chat", one user message in the tokenizer's chat template, ending where the reply starts."""
    if template == CHAT:
        return render_chat([{"role": "user", "content": prompt}], tokenizer)[0]
    return template.format(prompt=prompt)


def render_chat(messages: list[dict], tokenizer, template: str | None = None) -> tuple[str, list[str]]:
    """(prompt text ending where the assistant's reply starts, stop strings that end a reply)."""
    check_messages(messages)
    hf = getattr(tokenizer, "hf", None)
    if template is None and hf is not None and getattr(hf, "chat_template", None):
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, []
    name = template or "chatml"
    if name not in TEMPLATES:
        raise TinylmError(f"unknown chat template {name!r}; available: {', '.join(TEMPLATES)}")
    t = TEMPLATES[name]
    text = "".join(t["turn"].format(**m) for m in messages) + t["reply"]
    return text, list(t["stop"])
