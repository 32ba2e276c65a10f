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
from .user_files import Refused, walk_folder

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic", ".heif"}
)
"""File extensions :func:`iter_image_files` picks up by default (compared case-insensitively)."""

# ---------------------------------------------------------------------------------------------
# Folders


def iter_image_files(folder: str | os.PathLike,
                     extensions: Iterable[str] = IMAGE_EXTENSIONS,
                     recursive: bool = True, *, on_error: str = "raise") -> Iterator[Path]:
    """The image files in ``folder``, in a sorted, deterministic order.

    Extensions are compared case-insensitively (``"JPG"``, ``".jpg"`` and ``"jpg"`` are the same).
    Hidden files and hidden folders (names starting with ``"."``) are skipped. Paths are sorted by
    their parts, by code point, so the order does not depend on the platform or the locale.
    Symbolic links are followed inside ``folder``, each folder at most once; a link leading out of
    it is not (:mod:`clip_embeddings.inputs.user_files`). A subfolder that cannot be listed, or such
    a link, raises :class:`ImageLoadError` naming it (``on_error="skip"`` leaves them out).

    Example:
        >>> for path in iter_image_files("photos"):
        ...     print(path)
        photos/astronaut.jpg
        photos/cameraman.jpg
        photos/cat.jpg
        photos/coffee.jpg
        photos/galaxies.jpg
        photos/retina.jpg
        photos/rocket.jpg
    """
    root = Path(folder)
    if not root.exists():
        raise ImageLoadError("folder not found", source=str(root))
    if not root.is_dir():
        raise ImageLoadError("not a folder", source=str(root))
    for found in walk_folder(root, extensions, recursive):
        if not isinstance(found, Refused):
            yield found
        elif on_error == "raise":
            raise ImageLoadError(found.reason, source=found.path)
