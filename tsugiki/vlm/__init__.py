"""LLaVA-family surgery: merge or swap the language model, vision tower and projector untouched."""
