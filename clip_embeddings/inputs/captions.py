"""Captions for a folder of images, so ``index`` stores text records beside the pictures.

Three forms, looked for in this order (the first that names an image wins):

* ``captions.json`` at the folder's root: ``{"relative/path.jpg": "a caption", ...}``;
* ``captions.csv`` at the folder's root: a header row with ``path`` (or ``image``/``file``) and
  ``caption`` (or ``text``) columns, paths relative to the folder;
* a sidecar text file beside the image, same name with ``.txt`` (``cat.jpg`` → ``cat.txt``).

Paths are compared with forward slashes, relative to the folder. Every file here is read under
the one rule for user files (:mod:`clip_embeddings.inputs.user_files`): regular files only, and no
symbolic link out of the indexed folder; a file that breaks it is named in the error, never
read and never ignored in silence.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path

from .user_files import Refused, exists, read_regular_file

_PATH_COLUMNS = ("path", "image", "file", "filename")
_CAPTION_COLUMNS = ("caption", "text", "description")
MAX_SIDECAR_BYTES = 64 * 1024  # a caption, not a document: longer files are cut (CLIP reads 77 tokens)
MAX_CAPTIONS_FILE_BYTES = 1 << 30  # 1 GiB: ~5 million captions; a file past that is refused, not read


def read_captions_file(path: str | os.PathLike, *, root: str | None = None) -> dict[str, str]:
    """A ``captions.json`` (mapping) or ``.csv`` (path and caption columns) as {relative path: caption}.

    Raises ``ValueError`` naming the file and what is wrong with it: not a regular file, a
    symbolic link out of ``root`` (the real path of the folder it was found in), not UTF-8, not
    valid JSON or CSV (a CSV field over 128 KiB included).

    Example:
        >>> read_captions_file("photos/captions.json")["cat.jpg"]
        'a close-up photo of a tabby cat'
    """
    path = Path(path)
    try:
        data = read_regular_file(path, MAX_CAPTIONS_FILE_BYTES, root=root)
    except Refused as e:
        raise ValueError(f"captions file {e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"captions file {path}: not UTF-8 text (byte {e.start}, line {line})") from None
    if path.suffix.lower() == ".json":
        return _json_captions(text, path)
    return _csv_captions(text, path)


def _json_captions(text: str, path: Path) -> dict[str, str]:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        where = f"{e.msg}, line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "nested too deeply"
        raise ValueError(f"captions file {path}: not valid JSON ({where})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f'captions file {path}: expected a JSON object of "image path": "caption" pairs')
    return {_key(k): v for k, v in data.items()}


def _csv_captions(text: str, path: Path) -> dict[str, str]:
    reader = csv.reader(text.splitlines())
    try:
        rows = list(reader)
    except csv.Error as e:  # a field over csv.field_size_limit() (128 KiB), a NUL byte...
        raise ValueError(f"captions file {path}: not valid CSV at line {reader.line_num} ({e})") from None
    if not rows:
        return {}
    header = [h.strip().lower() for h in rows[0]]
    try:
        p = next(header.index(c) for c in _PATH_COLUMNS if c in header)
        c = next(header.index(c) for c in _CAPTION_COLUMNS if c in header)
    except StopIteration:
        raise ValueError(f"captions file {path}: the first row must name a path column ({'/'.join(_PATH_COLUMNS)}) "
                         f"and a caption column ({'/'.join(_CAPTION_COLUMNS)}); it is {rows[0]}") from None
    return {_key(row[p]): row[c] for row in rows[1:] if len(row) > max(p, c) and row[p].strip()}


def folder_captions(folder: str | os.PathLike) -> dict[str, str]:
    """The captions file at ``folder``'s root (``captions.json`` or ``captions.csv``), or {}.

    A captions file that cannot be read or parsed raises ``ValueError`` naming it, before
    anything is indexed (fix or remove it, or index with ``captions=False``). Sidecar ``.txt``
    files are read per image by :func:`caption_for`, not here.
    """
    for name in ("captions.json", "captions.csv"):
        candidate = Path(folder) / name
        if exists(candidate):  # whatever it is: a FIFO or a link out is refused by name, not passed over
            return read_captions_file(candidate, root=os.path.realpath(folder))
    return {}


def caption_for(captions: Mapping[str, str], folder: str | os.PathLike, image: str | os.PathLike,
                sidecars: bool = True, *, root: str | None = None) -> str | None:
    """The caption of ``image`` (a file under ``folder``): from ``captions``, else its sidecar ``.txt``.

    A sidecar that exists but breaks the rule for user files (not a regular file, a link out of
    ``folder``, unreadable) raises :class:`clip_embeddings.inputs.user_files.Refused` naming it; ``root``
    is ``folder``'s real path, when the caller has it already.

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
    if not exists(sidecar):  # the usual case: no caption
        return None
    data = read_regular_file(sidecar, MAX_SIDECAR_BYTES, root=root or os.path.realpath(folder), cut=True)
    return data.decode("utf-8", errors="replace").strip() or None


def _key(path: str) -> str:
    return path.strip().replace("\\", "/").removeprefix("./")
