"""Keep a collection true to a folder: plan what changed since the last index, then apply it.

:func:`plan_sync` is pure: given the folder's files now (path, size, mtime, content digest,
caption) and the items stored from that folder, it says which files to **add**, which to
**update** (same path, new content: the old item goes, the new one comes), which stored items
were **renamed** (same content at a new path: the stored vector stays, its source changes) and
which to **remove** (the file is gone). After applying the plan, the collection holds exactly what
a fresh index of the folder would: the same item ids, sources, captions and counts.

What sync decides, and why:

* **Scope.** Only records whose ``source`` lies under the folder's absolute path (as an ingest
  stores it), with an extension the walk would pick and not hidden, are the folder's. Records
  from other folders, URLs, bytes or texts are never touched, even when they hold the same
  picture as a file here (then the file is already stored and is left alone, as a plain index
  would leave it).
* **Captions** travel with their image: removing an image removes its caption, and an item whose
  caption changed (a ``.txt`` sidecar edited, ``captions.json`` changed) is rewritten with the new
  one and counted as updated. A renamed file whose caption also changed is re-indexed.
* **Duplicates**: files with the same content are one item whose source is the first of them in
  the walk's order, as in a fresh index.
* **Unreadable files** (permission denied, a caption that cannot be read) and everything under
  a folder that cannot be listed keep whatever is stored for them: sync removes a record only
  when its file is known to be gone or changed.
* **Order**: removals and renames are written before new content is embedded; an interrupted
  sync leaves a collection the next sync finishes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ..inputs.captions import caption_for, folder_captions
from ..inputs.names import path_of, stored_name
from ..inputs.user_files import Refused, walk_folder


@dataclass(frozen=True)
class LocalFile:
    """A file in the folder now. ``digest`` is None when it could not be read."""

    path: str  # absolute, as an ingest stores it in ``source``
    size: int
    mtime_ns: int
    digest: str | None
    caption: str | None = None


@dataclass(frozen=True)
class StoredItem:
    """An item stored from the folder: its image record's id, digest and source, and its caption."""

    id: str
    digest: str | None
    source: str
    caption: str | None = None


@dataclass
class SyncPlan:
    """What a sync does. ``update``/``rename``/``recaption`` pair the stored item with its file now."""

    add: list[LocalFile] = field(default_factory=list)
    update: list[tuple[StoredItem, LocalFile]] = field(default_factory=list)
    rename: list[tuple[StoredItem, LocalFile]] = field(default_factory=list)
    recaption: list[tuple[StoredItem, LocalFile]] = field(default_factory=list)
    remove: list[StoredItem] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # item ids
    duplicates: int = 0

    def summary(self) -> dict[str, int]:
        """Item counts by what happens to them (renamed items whose caption changed count as renamed).

        Example:
            >>> SyncPlan(add=[LocalFile("/p/a.jpg", 1, 0, "d")]).summary()
            {'added': 1, 'updated': 0, 'renamed': 0, 'removed': 0, 'unchanged': 0}
        """
        moved = sum(s.source != f.path for s, f in self.recaption)
        return {"added": len(self.add), "updated": len(self.update) + len(self.recaption) - moved,
                "renamed": len(self.rename) + moved, "removed": len(self.remove), "unchanged": len(self.unchanged)}

    @property
    def to_ingest(self) -> list[LocalFile]:
        """The files to embed, in walk order: new files, new content, and items re-captioned."""
        files = self.add + [f for _, f in self.update + self.recaption]
        return sorted(files, key=lambda f: Path(f.path).parts)

    @property
    def to_delete(self) -> list[str]:
        """Item ids to remove before ingesting: files gone, old content, and items re-captioned."""
        return [s.id for s in self.remove] + [s.id for s, _ in self.update + self.recaption]


def plan_sync(files: Iterable[LocalFile], stored: Iterable[StoredItem], item_of: Callable[[str], str],
              elsewhere: Callable[[str], bool] = lambda item: False, unread: Iterable[str] = ()) -> SyncPlan:
    """Compare the folder's files (in walk order) with the items stored from it.

    ``item_of`` maps a content digest to its item id; ``elsewhere(item)`` says whether that item is
    stored from outside the folder (then the file is stored already and is left alone);
    items under an ``unread`` folder (one that could not be listed) are kept.

    Example:
        >>> files = [LocalFile("/p/new.jpg", 1, 0, "d1"), LocalFile("/p/b.jpg", 1, 0, "d3")]
        >>> stored = [StoredItem("i1", "d1", "/p/old.jpg"), StoredItem("i2", "d2", "/p/b.jpg"),
        ...           StoredItem("i9", "d9", "/p/gone.jpg")]
        >>> plan_sync(files, stored, item_of=lambda d: "i" + d[1:]).summary()
        {'added': 0, 'updated': 1, 'renamed': 1, 'removed': 1, 'unchanged': 0}
    """
    stored = list(stored)
    by_id = {s.id: s for s in stored}
    by_source = {s.source: s for s in stored}
    plan, wanted, kept = SyncPlan(), {}, set()
    for f in files:
        if f.digest is None:  # unreadable now: keep what is stored for it
            if f.path in by_source:
                kept.add(by_source[f.path].id)
            continue
        if f.digest in wanted:
            plan.duplicates += 1
            continue
        wanted[f.digest] = f
    wanted_ids = {item_of(d): f for d, f in wanted.items()}
    replaced = set()
    for item, f in wanted_ids.items():
        s = by_id.get(item)
        if s is not None:
            kept.add(item)
            if s.caption != f.caption:
                plan.recaption.append((s, f))
            elif s.source != f.path:
                plan.rename.append((s, f))
            else:
                plan.unchanged.append(item)
        elif elsewhere(item):
            continue
        elif (old := by_source.get(f.path)) is not None and old.id not in wanted_ids and old.id not in kept:
            plan.update.append((old, f))
            replaced.add(old.id)
        else:
            plan.add.append(f)
    hidden = tuple(folder.rstrip(os.sep) + os.sep for folder in unread)
    plan.remove = [s for s in stored if s.id not in kept and s.id not in replaced and not s.source.startswith(hidden or ("\0",))]
    return plan


# --- reading the two sides ---------------------------------------------------------------

class DigestCache(Protocol):
    def file_digest(self, path: str, stat: os.stat_result) -> str | None: ...
    def record_file_digest(self, path: str, stat: os.stat_result, digest: str) -> None: ...


def local_files(folder: str | os.PathLike, *, extensions: Iterable[str], recursive: bool = True,
                captions: Mapping[str, str] | bool = True, cache: DigestCache | None = None,
                unread: list[str] | None = None) -> Iterator[LocalFile]:
    """The folder's image files in walk order with their SHA-256 digests (the ingest's content ids).

    An unchanged file (same size and mtime) takes its digest from the embedding cache instead of
    being read again; a file that cannot be read (or refused: a link out of the folder) has
    ``digest=None``; folders that cannot be listed are appended to ``unread``.
    """
    lookup = folder_captions(folder) if captions is True else (captions or {})
    root = os.path.realpath(folder)
    for path in walk_folder(folder, extensions, recursive):
        if isinstance(path, Refused):
            if path.folder and unread is not None:
                unread.append(os.path.abspath(path.path))
            elif not path.folder:
                yield LocalFile(os.path.abspath(path.path), 0, 0, None)
            continue
        absolute = os.path.abspath(path)
        try:
            caption = caption_for(lookup, folder, path, sidecars=captions is not False, root=root)
        except Refused:
            yield LocalFile(absolute, 0, 0, None)
            continue
        try:
            stat = os.stat(absolute)
            digest = cache.file_digest(absolute, stat) if cache is not None else None
            if digest is None:
                with open(absolute, "rb") as fh:
                    digest = _sha256_of(fh)
                if cache is not None:
                    cache.record_file_digest(absolute, stat, digest)
        except OSError:
            yield LocalFile(absolute, 0, 0, None, caption)
            continue
        yield LocalFile(absolute, stat.st_size, stat.st_mtime_ns, digest, caption)


def _sha256_of(fh: BinaryIO) -> str:
    """The hex SHA-256 of an open file's content, read in chunks (``hashlib.file_digest`` is Python 3.11+)."""
    h = hashlib.sha256()
    while chunk := fh.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def in_scope(source: str | None, root: str, extensions: Iterable[str], recursive: bool) -> bool:
    """Whether a stored ``source`` is a file a walk of ``root`` with these options would find.

    Example:
        >>> in_scope("/p/trip/a.JPG", "/p", {".jpg"}, recursive=True), in_scope("/p/trip/a.jpg", "/p", {".jpg"}, False)
        (True, False)
    """
    if not source or "://" in source[:16] or not source.startswith(root.rstrip(os.sep) + os.sep):
        return False
    relative = Path(os.path.relpath(source, root))
    if not recursive and len(relative.parts) != 1:
        return False
    wanted = {"." + e.lower().lstrip(".") for e in extensions}
    return relative.suffix.lower() in wanted and not any(part.startswith(".") for part in relative.parts)


def stored_items(records: Iterable[Any], root: str, extensions: Iterable[str],
                 recursive: bool) -> tuple[list[StoredItem], set[str]]:
    """The items stored from ``root`` (from ``Store.records(with_vectors=False)``), and every other item id."""
    images: dict[str, Any] = {}
    captions: dict[str, str | None] = {}
    for r in records:
        if r.modality == "image":
            images[r.id] = r
        else:
            captions[r.id] = r.document
    ours, others = [], set()
    for item, r in images.items():
        source = path_of(r.source) if r.source else r.source  # a file:// URI of a name not UTF-8: its path
        if in_scope(source, root, extensions, recursive):
            ours.append(StoredItem(item, r.digest, source, captions.get(item)))
        else:
            others.add(item)
    return ours, others


def renamed_records(records: Iterable[Any], plan: SyncPlan) -> list[Any]:
    """The stored records (image and caption, vectors included) of renamed items, with their new source."""
    new_source = {s.id: stored_name(f.path) for s, f in plan.rename}
    return [replace(r, source=new_source[r.id]) for r in records if r.id in new_source]
