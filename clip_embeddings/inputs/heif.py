"""HEIC/HEIF (phone photos) through the pillow-heif plugin, registered the first time one is seen.

Pillow reads AVIF itself (11.3 and later, built with libavif) but not HEIC. The ``heic`` extra
installs `pillow-heif <https://github.com/bigcat88/pillow_heif>`_, a maintained binding of libheif
whose opener plugs into ``PIL.Image.open``. It is registered lazily, when a file that Pillow
cannot identify turns out to be a HEIF container, so nobody pays its import for JPEG folders.
Without the extra such files are skipped with a reason that names it.
"""

from __future__ import annotations

import threading
from typing import Literal

# Major or compatible brands of the ISO base media ``ftyp`` box (ISO/IEC 23008-12).
HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"})
AVIF_BRANDS = frozenset({b"avif", b"avis"})
INSTALL_HINT = "pip install 'clip-embeddings[heic]'"

_lock = threading.Lock()
_registered = False


def container(data: bytes) -> Literal["heif", "avif"] | None:
    """Which HEIF-family container ``data`` starts with, from its ``ftyp`` box, or None.

    Example:
        >>> container(b"\\x00\\x00\\x00\\x18ftypheic\\x00\\x00\\x00\\x00mif1heic")
        'heif'
        >>> container(b"\\x89PNG") is None
        True
    """
    if data[4:8] != b"ftyp":
        return None
    size = int.from_bytes(data[:4], "big")
    box = data[8:max(16, min(size, 64))]
    brands = {box[0:4]} | {box[i:i + 4] for i in range(8, len(box) - 3, 4)}  # major, then compatible
    if brands & AVIF_BRANDS:
        return "avif"
    if brands & HEIF_BRANDS:
        return "heif"
    return None


def register_plugin() -> bool:
    """Register pillow-heif's opener with Pillow; True only for the call that registered it.

    False when it is registered already or not installed: either way, retrying ``Image.open``
    would fail the same way again.
    """
    global _registered
    with _lock:
        if _registered:
            return False
        try:
            import pillow_heif
        except ImportError:
            return False
        pillow_heif.register_heif_opener()
        _registered = True
        return True


def unreadable_reason(kind: Literal["heif", "avif"]) -> str:
    """Why a HEIF-family file Pillow could not open was skipped, and what to install."""
    if kind == "avif":
        return "AVIF image, but this Pillow cannot decode AVIF (Pillow >= 11.3 built with libavif can)"
    if _registered:
        return "truncated or corrupt HEIC/HEIF image data"
    return f"HEIC/HEIF image: decoding it needs the pillow-heif plugin: {INSTALL_HINT}"
