"""Turn anything a user calls "an image" into a PIL RGB image, one item at a time.

Every database adapter takes images from the same places: paths in scraped folders, URLs,
``data:`` URIs, raw bytes, PIL images and numpy arrays. This module is the one loader they all
share, so that every input kind is decoded the same way and fails the same way.

Loading is split in two steps so that an embedding cache can sit between them:

* :func:`read_image_source` is cheap: it reads the encoded bytes (or takes the in-memory image)
  and computes a SHA-256 ``digest`` of the content, which is stable across processes.
* :func:`decode_image` does the expensive part, only on a cache miss: Pillow decoding with a
  decompression-bomb guard, a check that the file decodes completely (a truncated download fails
  instead of giving a half-grey picture), EXIF orientation, first frame of animations,
  transparency composited on white, 16-bit and float images scaled to 8 bits, and an optional
  JPEG draft mode that decodes large photos at a reduced scale that is still big enough for CLIP.

:func:`load_image` does both. Whatever goes wrong with one item raises
:class:`~clip_embeddings.errors.ImageLoadError`, whose message names the item and the reason, so
a caller can skip that item and keep the rest.

Example:
    >>> from clip_embeddings.inputs.sources import load_image
    >>> import numpy as np
    >>> load_image(np.zeros((4, 6, 3), dtype=np.uint8)).size
    (6, 4)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
from PIL import Image

from ..errors import ImageLoadError
from .decode import array_to_image, check_pixels, decode_image, image_digest
from .http import read_url
from .names import path_of
from .options import (
    DEFAULT_OPTIONS,
    SCHEME_RE,
    ImageLike,
    LoaderOptions,
    RawImage,
    base64_length,
    data_uri_parts,
    describe,
    is_url,
    too_big,
)
from .user_files import FolderFile, Refused, read_regular_file

# ---------------------------------------------------------------------------------------------
# Reading


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_image_source(item: ImageLike, options: LoaderOptions = DEFAULT_OPTIONS) -> RawImage:
    """Read one item's bytes (or take its in-memory image) and compute its content digest.

    * ``str`` / ``os.PathLike``: a local file. A ``str`` starting with ``http://`` or
      ``https://`` is fetched; ``data:`` is a data URI (base64 or percent-encoded); ``file://`` is
      a local path.
    * ``bytes`` / ``bytearray`` / ``memoryview``: an encoded image file.
    * ``PIL.Image.Image``: taken as it is (no EXIF rotation: it may already have been applied).
    * ``numpy.ndarray``: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``; ``uint8``,
      ``bool``, ``uint16`` (scaled to 8 bits) or float in ``[0, 1]``.

    Nothing is decoded here: pass the result to :func:`decode_image`.
    Raises :class:`ImageLoadError` naming the item and the reason.

    Example:
        >>> raw = read_image_source("does-not-exist.jpg")
        Traceback (most recent call last):
        ...
        clip_embeddings.errors.ImageLoadError: does-not-exist.jpg: file not found
    """
    if isinstance(item, Refused):  # a folder walk's entry it could not read: reported as this item
        raise ImageLoadError(item.reason, source=os.path.abspath(item.path))
    source = describe(item)
    if isinstance(item, str):
        low = item[:8].lower()
        if low.startswith("data:"):
            data = _read_data_uri(item, source, options)
        elif is_url(item):
            if not options.allow_urls:
                raise ImageLoadError("URLs are not allowed (LoaderOptions.allow_urls is False)",
                                     source=source)
            data = read_url(item, source, options)
        elif low.startswith("file://"):
            data = _read_file(_file_url_path(item, source), source, options)
        elif m := SCHEME_RE.match(item):
            raise ImageLoadError(f"unsupported URL scheme {m.group(1)!r} (only http, https, "
                                 "data: and file:// are read)", source=source)
        else:
            data = _read_file(item, source, options)
        return RawImage(source=source, data=data, image=None, digest=_sha256(data))
    if isinstance(item, os.PathLike):
        data = _read_file(item, source, options)
        return RawImage(source=source, data=data, image=None, digest=_sha256(data))
    if isinstance(item, (bytes, bytearray, memoryview)):
        size = item.nbytes if isinstance(item, memoryview) else len(item)
        if size == 0:
            raise ImageLoadError("empty input (0 bytes)", source=source)
        if size > options.max_bytes:
            raise ImageLoadError(too_big("input", size, options), source=source)
        data = item if isinstance(item, bytes) else bytes(item)
        return RawImage(source=source, data=data, image=None, digest=_sha256(data))
    if isinstance(item, Image.Image):
        check_pixels(item.width, item.height, source, options)
        return RawImage(source=source, data=None, image=item, digest=image_digest(item, source))
    if isinstance(item, np.ndarray):
        image = array_to_image(item, source, options)
        return RawImage(source=source, data=None, image=image, digest=image_digest(image, source))
    hint = ""
    if hasattr(item, "__array__"):  # a torch/jax/... tensor
        hint = "; convert it with numpy.asarray(x) in (H, W, C) layout"
    raise ImageLoadError(
        f"unsupported input type {type(item).__module__}.{type(item).__qualname__} (expected a "
        f"path, URL, data URI, bytes, PIL image or numpy array){hint}", source=source)


def _read_file(path: str | os.PathLike, source: str, options: LoaderOptions) -> bytes:
    """A local file under the one rule for user files (:mod:`clip_embeddings.inputs.user_files`)."""
    try:
        # Only a file found by walking a folder is held to that folder; a pathlib.Path has a
        # ``root`` attribute too ("" or "/"), which is no such folder.
        root = path.root if isinstance(path, FolderFile) else None
        data = read_regular_file(path, options.max_bytes, root=root,
                                 too_big=lambda size: too_big("file", size, options))
    except Refused as e:
        raise ImageLoadError(e.reason, source=source) from None
    if not data:
        raise ImageLoadError("empty file (0 bytes)", source=source)
    return data


def _file_url_path(url: str, source: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ImageLoadError(f"file:// URL with a remote host ({parts.netloc!r}) is not supported",
                             source=source)
    if os.name == "nt":
        return urllib.request.url2pathname(parts.path)
    return path_of(url)  # the URI's exact bytes: a file name need not be UTF-8 (inputs/names.py)


def _read_data_uri(uri: str, source: str, options: LoaderOptions) -> bytes:
    try:
        _, payload, b64 = data_uri_parts(uri)
    except ValueError as e:
        raise ImageLoadError(str(e), source=source) from None
    estimate = base64_length(payload) if b64 else len(payload) // 3
    if estimate > options.max_bytes:
        raise ImageLoadError(too_big("data URI payload", estimate, options), source=source)
    if b64:
        text = re.sub(r"\s+", "", urllib.parse.unquote(payload) if "%" in payload else payload)
        text = text.rstrip("=")
        text += "=" * (-len(text) % 4)
        try:
            if "-" in text or "_" in text:
                data = base64.b64decode(text, altchars=b"-_", validate=True)
            else:
                data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ImageLoadError(f"invalid base64 in data URI ({e})", source=source) from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if not data:
        raise ImageLoadError("empty data URI (0 bytes)", source=source)
    if len(data) > options.max_bytes:
        raise ImageLoadError(too_big("data URI payload", len(data), options), source=source)
    return data


def load_image(item: ImageLike, options: LoaderOptions = DEFAULT_OPTIONS,
               draft_resolution: int | None = None) -> Image.Image:
    """Read and decode one item: :func:`read_image_source` then :func:`decode_image`.

    Example:
        >>> import numpy as np
        >>> load_image(np.zeros((480, 640), dtype=np.uint8)).mode
        'RGB'
    """
    return decode_image(read_image_source(item, options), options,
                        draft_resolution=draft_resolution)
