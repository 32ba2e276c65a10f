"""CLIP-level tasks over the embedding function: zero-shot, evaluation, fine-tuning, caption scores."""
