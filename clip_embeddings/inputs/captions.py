"""Captions for a folder of images, so ``index`` stores text records beside the pictures.

Three forms, looked for in this order (the first that names an image wins):

* ``captions.json`` at the folder's root: ``{"relative/path.jpg": "a caption", ...}``;
* ``captions.csv`` at the folder's root: a header row with ``path`` (or ``image``/``file``) and
  ``caption`` (or ``text``) columns, paths relative to the folder;
* a sidecar text file beside the image, same name with ``.txt`` (``cat.jpg`` → ``cat.txt``).

Paths are compared with forward slashes, relative to the folder.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path

_PATH_COLUMNS = ("path", "image", "file", "filename")
_CAPTION_COLUMNS = ("caption", "text", "description")
MAX_SIDECAR_BYTES = 64 * 1024  # a caption, not a document: longer files are cut (CLIP reads 77 tokens)


def read_captions_file(path: str | os.PathLike) -> dict[str, str]:
    """A ``captions.json`` (mapping) or ``.csv`` (path and caption columns) as {relative path: caption}.

    Raises ``ValueError`` naming the file and what is wrong with it.

    Example:
        >>> read_captions_file("photos/captions.json")  # doctest: +SKIP
        {'cat.jpg': 'a sleeping cat'}
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise ValueError(f'{path}: expected a JSON object of "image path": "caption" pairs')
        return {_key(k): v for k, v in data.items()}
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        return {}
    header = [h.strip().lower() for h in rows[0]]
    try:
        p = next(header.index(c) for c in _PATH_COLUMNS if c in header)
        c = next(header.index(c) for c in _CAPTION_COLUMNS if c in header)
    except StopIteration:
        raise ValueError(f"{path}: the first row must name a path column ({'/'.join(_PATH_COLUMNS)}) and a "
                         f"caption column ({'/'.join(_CAPTION_COLUMNS)}); it is {rows[0]}") from None
    return {_key(row[p]): row[c] for row in rows[1:] if len(row) > max(p, c) and row[p].strip()}


def folder_captions(folder: str | os.PathLike) -> dict[str, str]:
    """The captions file at ``folder``'s root (``captions.json`` or ``captions.csv``), or {}.

    Sidecar ``.txt`` files are read per image by :func:`caption_for`, not here.
    """
    for name in ("captions.json", "captions.csv"):
        candidate = Path(folder) / name
        if candidate.is_file():
            return read_captions_file(candidate)
    return {}


def caption_for(captions: Mapping[str, str], folder: str | os.PathLike, image: str | os.PathLike,
                sidecars: bool = True) -> str | None:
    """The caption of ``image`` (a file under ``folder``): from ``captions``, else its sidecar ``.txt``.

    Example:
        >>> caption_for({"cat.jpg": "a cat"}, "photos", "photos/cat.jpg")
        'a cat'
    """
    relative = _key(os.path.relpath(image, folder))
    if relative in captions:
        return captions[relative] or None
    if not sidecars:
        return None
    sidecar = os.path.splitext(os.fspath(image))[0] + ".txt"
    try:
        with open(sidecar, encoding="utf-8", errors="replace") as f:
            return f.read(MAX_SIDECAR_BYTES).strip() or None
    except OSError:  # no sidecar (the usual case), or unreadable: no caption
        return None


def _key(path: str) -> str:
    return path.strip().replace("\\", "/").removeprefix("./")
