"""CLIP-level tasks over embeddings: zero-shot, fine-tuning, evaluation, scores, tags."""
