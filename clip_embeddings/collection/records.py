"""The portable record filter and the tag keys: what ``where`` means the same way in every database.

Each database has its own filter language (Chroma's ``where``, Qdrant's ``Filter``, LanceDB's
SQL). Jobs that run over :meth:`Store.records` (``delete(where=...)``, sync) filter in Python
with :func:`matches`, which understands the one form every adapter also accepts: a dict of exact
matches, all of which must hold.

Tags are stored as one boolean metadata key per label, ``"tag:<label>": True``, because that is
the one shape all three databases can filter on exactly (Chroma metadata holds no lists in
every version, LanceDB's JSON metadata has no "array contains", Qdrant matches either).
``{"tag": label}`` in a ``where`` is rewritten to ``{"tag:<label>": True}`` by
:func:`expand_tags` before it reaches a database.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ..tasks.tags import TAG_PREFIX

TAG_KEY = "tag"  # the portable spelling in ``where``: {"tag": "beach"} or {"tag": ["beach", "sea"]}
RECORD_FIELDS = ("source", "document", "digest")


class RecordLike(Protocol):
    id: str
    source: str | None
    document: str | None
    digest: str
    metadata: dict[str, Any]


def tag_key(label: str) -> str:
    """The metadata key that marks ``label`` on an item.

    Example:
        >>> tag_key("beach")
        'tag:beach'
    """
    return TAG_PREFIX + label


def expand_tags(where: Any) -> Any:
    """``{"tag": "beach", "album": "x"}`` → ``{"tag:beach": True, "album": "x"}``; other filters unchanged.

    A list of tags means *all* of them (each is its own key, and every key of a ``where`` must hold).

    Example:
        >>> expand_tags({"tag": ["beach", "sea"]})
        {'tag:beach': True, 'tag:sea': True}
    """
    if not isinstance(where, Mapping) or TAG_KEY not in where:
        return where
    labels = where[TAG_KEY]
    labels = [labels] if isinstance(labels, str) else list(labels)
    out = {k: v for k, v in where.items() if k != TAG_KEY}
    out.update({tag_key(label): True for label in labels})
    return out


def tags_of(metadata: Mapping[str, Any]) -> list[str]:
    """The labels tagged in a record's metadata, sorted.

    Example:
        >>> tags_of({"tag:sea": True, "tag:beach": True, "album": "x"})
        ['beach', 'sea']
    """
    return sorted(k[len(TAG_PREFIX):] for k, v in metadata.items() if k.startswith(TAG_PREFIX) and v is True)


def matches(record: RecordLike, where: Mapping[str, Any]) -> bool:
    """Whether a record passes a dict of exact matches (a list value: any of its elements).

    Keys name the user's metadata, or ``item_id``, ``source``, ``document``, ``digest``;
    ``{"tag": label}`` asks for a stored tag.

    Example:
        >>> from types import SimpleNamespace as R
        >>> r = R(id="1", source="/p/a.jpg", document=None, digest="d", metadata={"album": "x", "tag:sea": True})
        >>> matches(r, {"album": ["x", "y"], "tag": "sea"}), matches(r, {"source": "/p/b.jpg"})
        (True, False)
    """
    if not isinstance(where, Mapping):
        raise TypeError(f"where must be a dict of exact matches here, not {type(where).__name__}")
    for key, wanted in expand_tags(where).items():
        value: Any
        if key == "item_id":
            value = record.id
        elif key in RECORD_FIELDS:
            value = getattr(record, key)
        else:
            value = record.metadata.get(key)
        options = wanted if isinstance(wanted, (list, tuple, set, frozenset)) else [wanted]
        if not any(value == o and isinstance(value, bool) == isinstance(o, bool) for o in options):
            return False
    return True
