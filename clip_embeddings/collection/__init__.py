"""Jobs over a stored collection: export, duplicates, map, sync, watch, compound queries.

Each job reads a store only through its primitives (``_scan``, ``count``, ``_search``,
``describe``, ``ef``; see :class:`~clip_embeddings.collection.protocol.StoreLike`), so it works on
every database; the ``Store`` methods in :mod:`clip_embeddings.adapters.base` delegate here.
"""
