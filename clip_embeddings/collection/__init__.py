"""Jobs over a stored collection, written against the Store primitives only (never ``adapters``).

A store is reached through ``_scan`` / ``records``, ``_write``, ``_delete``, ``_search`` and
``_stored`` (see :class:`clip_embeddings.adapters.base.Store`); each module here takes the store
as a duck-typed argument, and the ``Store`` methods delegate to it.
"""
