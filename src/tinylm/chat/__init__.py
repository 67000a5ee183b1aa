"""Chat: templates that lay out conversations for a model."""
