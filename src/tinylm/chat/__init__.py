"""Chat: conversations with a model.

templates (messages → prompt text), memory (what fits the context window), store (conversations in
SQLite), prompts (zero/one/few-shot and chain-of-thought prompts), session (`Chat`, the terminal loop).
"""
