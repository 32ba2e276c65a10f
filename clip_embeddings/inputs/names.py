"""File names as stored text: databases take valid UTF-8, POSIX file names are any bytes.

Python holds a name that is not valid UTF-8 surrogate-escaped (PEP 383: each byte that does not
decode becomes one of U+DC80..U+DCFF), and no database, JSON document or sqlite row takes such a
string: Chroma and LanceDB refused the whole write batch. :func:`stored_name` keeps a UTF-8 path
as it is and turns any other into a ``file://`` URI of its exact bytes, percent-encoded: ASCII,
lossless, and never mistaken for a path (a stored path is absolute, so it starts with ``/``).
:func:`path_of` gives the surrogate-escaped path back; ``ClipEF`` reads such a URI as that file.

Example:
    >>> stored_name("/photos/cat.jpg")
    '/photos/cat.jpg'
    >>> stored_name("/photos/caf\\udce9.jpg")
    'file:///photos/caf%E9.jpg'
    >>> path_of("file:///photos/caf%E9.jpg") == "/photos/caf\\udce9.jpg"
    True
"""

from __future__ import annotations

import os
import urllib.parse


def stored_name(path: str) -> str:
    """``path`` as valid UTF-8 text: itself if it is, else a ``file://`` URI of its bytes."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        pass
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:  # a surrogate no file name decodes to (not from PEP 383)
        raw = path.encode("utf-8", "surrogatepass")
    return "file://" + urllib.parse.quote(raw, safe="/")


def path_of(source: str) -> str:
    """The local path a stored source names: a ``file://`` URI's exact bytes, or ``source`` itself."""
    if source[:7].lower() == "file://":
        parts = urllib.parse.urlsplit(source)
        return os.fsdecode(urllib.parse.unquote_to_bytes(parts.path))
    return source
