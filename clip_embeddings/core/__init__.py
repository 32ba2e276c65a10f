"""The CLIP core: the model, the tokenizer, image preprocessing, checkpoint formats, downloads
and :func:`~.loading.load`. It imports nothing else of the package but the leaf modules
(``errors``); everything above builds on it.
"""
