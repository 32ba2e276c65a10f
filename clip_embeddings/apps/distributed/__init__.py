"""Embedding at scale: many processes or machines, each with one model, writing to one database.

Backends live in submodules that import their framework lazily, so importing this package never
needs them:

* :mod:`clip_embeddings.apps.distributed.ray`: a Ray Data pipeline (``pip install clip-embeddings[ray]``).

Example:
    >>> from clip_embeddings.apps.distributed.ray import index_with_ray  # doctest: +SKIP
    >>> index_with_ray(paths, model="ViT-B/32", sink="chroma+http://db:8000/photos", num_actors=8)  # doctest: +SKIP
    RayIngestReport(stored=1000000, skipped=[...], elapsed=...)
"""
