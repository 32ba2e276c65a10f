"""What an ingest (or a sync) did, item by item: the same counts in every database."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..embedding.pipeline import SkippedItem


@dataclass
class IngestReport:
    """What an ingest did, item by item; the same counts in every database.

    An *item* is one image (with its caption, if any) or one text. ``new`` items were not stored
    before; ``updated`` ones were, and got a new caption or metadata merged in; ``present`` ones
    were stored already with the same content, so nothing was written;
    ``duplicates`` are inputs whose content (or id) came earlier in the same ingest and is stored
    once; ``skipped`` inputs could not be embedded, each with its reason. ``ids`` lists the item ids
    of every input now in the store, new or present, once each, in input order. ``unread_folders``
    (also in ``skipped``) are folders of an ``index_folder`` that could not be listed: what they
    hold is in no count, so the report is incomplete when there are any.

    A sync (``index_folder(..., sync=True)``) also counts ``renamed`` items (same content, new
    path) and ``removed`` ones (file gone); there ``new`` is what it added and ``updated`` what
    got new content or a new caption. With ``dry_run`` the counts say what it would do.

    Example:
        >>> print(IngestReport(ids=["a", "b"], new=1, present=1, duplicates=1))
        new 1, updated 0, already present 1, duplicates 1, skipped 0 (cache hits 0)
    """

    ids: list[str] = field(default_factory=list)
    new: int = 0
    updated: int = 0
    present: int = 0
    duplicates: int = 0
    skipped: list[SkippedItem] = field(default_factory=list)
    cache_hits: int = 0
    unread_folders: list[str] = field(default_factory=list)
    renamed: int = 0
    removed: int = 0
    sync: bool = False
    dry_run: bool = False

    @property
    def stored(self) -> int:
        """Items of this ingest that are now in the store (new, updated or already present)."""
        return len(self.ids)

    @classmethod
    def collect(cls, batches: Iterable[IngestReport]) -> IngestReport:
        """One report for a whole ingest from its per-batch reports."""
        report = cls()
        for batch in batches:
            report.add(batch)
        return report

    def add(self, other: IngestReport) -> IngestReport:
        """Fold a later batch's report into this one (in place); returns ``self``."""
        self.ids += other.ids
        self.new += other.new
        self.updated += other.updated
        self.present += other.present
        self.duplicates += other.duplicates
        self.skipped += other.skipped
        self.cache_hits += other.cache_hits
        self.unread_folders += other.unread_folders
        self.renamed += other.renamed
        self.removed += other.removed
        return self

    def to_dict(self) -> dict[str, Any]:
        """The counts and the skipped items (index, source, reason) as plain JSON-able values."""
        return {"new": self.new, "updated": self.updated, "present": self.present, "duplicates": self.duplicates,
                "skipped": [{"index": s.index, "source": s.source, "reason": s.reason} for s in self.skipped],
                "cache_hits": self.cache_hits, "unread_folders": list(self.unread_folders),
                **({"renamed": self.renamed, "removed": self.removed, "dry_run": self.dry_run} if self.sync else {})}

    def __str__(self) -> str:
        if self.sync:
            lines = [f"{'would have ' if self.dry_run else ''}added {self.new}, updated {self.updated}, "
                     f"renamed {self.renamed}, removed {self.removed}; unchanged {self.present}, "
                     f"duplicates {self.duplicates}, skipped {len(self.skipped)}"]
            return "\n".join(lines + [f"  skipped {s}" for s in self.skipped])
        lines = [f"new {self.new}, updated {self.updated}, already present {self.present}, duplicates {self.duplicates}, "
                 f"skipped {len(self.skipped)} (cache hits {self.cache_hits})"]
        lines += [f"  skipped {s}" for s in self.skipped]
        return "\n".join(lines)
