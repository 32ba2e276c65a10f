"""Inputs: turn anything a user calls "an image" (or a caption) into something to embed.

One module per job, each importable on its own:

- :mod:`.options`: the shared types (``ImageLike``, ``RawImage``), ``LoaderOptions`` and
  :func:`~.options.describe`, the name an item gets in error messages;
- :mod:`.sources`: read one item's bytes and digest it (paths, URLs, data URIs, bytes, arrays);
- :mod:`.http`: the guarded URL client (deadline, public addresses only, bounded bodies);
- :mod:`.decode`: decode read bytes into a PIL RGB image, with the decompression-bomb guard;
- :mod:`.folders`: walk a folder for image files;
- :mod:`.captions`: captions next to images (sidecar files, a captions file).

The names below are the loader's public API, re-exported from those modules.

Example:
    >>> from clip_embeddings.inputs import load_image
    >>> import numpy as np
    >>> load_image(np.zeros((4, 6, 3), dtype=np.uint8)).size
    (6, 4)
"""

from .decode import DRAFT_MARGIN, decode_image
from .folders import IMAGE_EXTENSIONS, iter_image_files
from .options import DEFAULT_OPTIONS, ImageLike, LoaderOptions, RawImage, describe
from .sources import load_image, read_image_source

__all__ = [
    "DEFAULT_OPTIONS",
    "DRAFT_MARGIN",
    "IMAGE_EXTENSIONS",
    "ImageLike",
    "LoaderOptions",
    "RawImage",
    "decode_image",
    "describe",
    "iter_image_files",
    "load_image",
    "read_image_source",
]
