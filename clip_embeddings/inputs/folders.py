"""Walk a folder for image files, in a stable order.

Example:
    >>> from clip_embeddings.inputs.folders import IMAGE_EXTENSIONS
    >>> ".jpg" in IMAGE_EXTENSIONS
    True
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import ImageLoadError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)
"""File extensions :func:`iter_image_files` picks up by default (compared case-insensitively)."""

# ---------------------------------------------------------------------------------------------
# Folders


def iter_image_files(folder: str | os.PathLike,
                     extensions: Iterable[str] = IMAGE_EXTENSIONS,
                     recursive: bool = True) -> Iterator[Path]:
    """The image files in ``folder``, in a sorted, deterministic order.

    Extensions are compared case-insensitively (``"JPG"``, ``".jpg"`` and ``"jpg"`` are the same).
    Hidden files and hidden folders (names starting with ``"."``) are skipped. Paths are sorted by
    their parts, by code point, so the order does not depend on the platform or the locale.
    Symbolic links are followed, each folder at most once.

    Example:
        >>> for path in iter_image_files("photos"):  # doctest: +SKIP
        ...     print(path)
        photos/a.jpg
        photos/trips/b.png
    """
    root = Path(folder)
    if not root.exists():
        raise ImageLoadError("folder not found", source=str(root))
    if not root.is_dir():
        raise ImageLoadError("not a folder", source=str(root))
    wanted = frozenset("." + e.lower().lstrip(".") for e in extensions)
    yield from _walk(root, wanted, recursive, set())


def _walk(folder: Path, wanted: frozenset[str], recursive: bool,
          seen: set[tuple[int, int]]) -> Iterator[Path]:
    try:
        st = folder.stat()
        key = (st.st_dev, st.st_ino)
        if key in seen:  # a symbolic link loop
            return
        seen.add(key)
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda entry: entry.name)
    except OSError:
        return  # unreadable subfolder: skipped, as a listing would
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()
            is_file = not is_dir and entry.is_file()
        except OSError:
            continue
        if is_dir:
            if recursive:
                yield from _walk(folder / entry.name, wanted, recursive, seen)
        elif is_file and os.path.splitext(entry.name)[1].lower() in wanted:
            yield folder / entry.name
