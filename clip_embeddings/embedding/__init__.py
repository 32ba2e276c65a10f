"""The embedding function: the process-wide registry of loaded models (:mod:`.loaded`), the image
pipeline (:mod:`.pipeline`), the embedding cache (:mod:`.cache`), ``ClipEF`` (:mod:`.function`)
and its client for a remote ``clip-embeddings serve`` (:mod:`.remote`).

Import order inside: ``loaded`` < ``pipeline`` < ``function``; ``remote`` takes plain values
(fingerprint, dim, batch size, loader options), never a ``ClipEF``.
"""
