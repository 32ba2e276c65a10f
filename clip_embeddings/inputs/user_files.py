"""One rule for reading the files a user points us at: images, caption sidecars, captions files.

* **Regular files only, refused unopened otherwise.** A path is ``stat``-ed before anything opens
  it: a FIFO, a socket, a device or a folder is refused without being opened (opening a FIFO
  blocks until a writer comes, ``/dev/zero`` never ends). The file is then opened with
  ``O_NONBLOCK`` (a FIFO swapped in after the check cannot block either) and ``fstat``-ed: it must
  still be a regular file, and the same one that was checked.
* **Never out of the folder being read.** When a file was found by walking a folder
  (``index_folder``, ``clip-embeddings index``, :func:`walk_folder`), symbolic links are followed
  only when the path they resolve to is inside that folder; a link that leads outside it, to a
  file or to a folder, is refused, whatever it points to. Such a file is opened by its resolved
  path with ``O_NOFOLLOW`` and compared with what was checked, so a link swapped in between is
  refused too. A path the user names directly (``add_images(["/any/where.jpg"])``,
  ``--captions FILE``) has no folder to stay in: it is read wherever its links lead.
* **Every refusal names the path and the reason** (:class:`Refused`); callers turn it into their
  own report: a skipped image, a captions file named in an error, a folder that could not be read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

PathLike = str | bytes | os.PathLike

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # absent on Windows, where FIFOs do not appear in folders
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = os.O_RDONLY | _NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
OUTSIDE = "symbolic link to outside the folder being read: not followed"


class Refused(Exception):
    """A path that is not read, and why. ``folder`` is true when a folder could not be listed (its files are in no count).

    Example:
        >>> str(Refused("photos/cat.txt", "not a regular file"))
        'photos/cat.txt: not a regular file'
    """

    def __init__(self, path: str, reason: str, *, folder: bool = False):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.folder = folder


class FolderFile(os.PathLike):
    """A file found by walking ``root`` (a real path): readers refuse it if it no longer resolves inside.

    Example:
        >>> os.fspath(FolderFile("photos/cat.jpg", "/home/me/photos"))
        'photos/cat.jpg'
    """

    __slots__ = ("path", "root")

    def __init__(self, path: PathLike, root: str):
        self.path = os.fsdecode(os.fspath(path))
        self.root = root

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"FolderFile({self.path!r}, root={self.root!r})"


def inside(path: str, root: str) -> bool:
    """Whether the real path ``path`` is ``root`` or under it (both already resolved).

    Example:
        >>> inside("/data/photos/a/b.jpg", "/data/photos"), inside("/data/photos-2/b.jpg", "/data/photos")
        (True, False)
    """
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives, or one relative: not inside
        return False


def read_regular_file(path: PathLike, max_bytes: int, *, root: str | None = None, cut: bool = False,
                      too_big: Callable[[int], str] | None = None) -> bytes:
    """The bytes of the regular file ``path``, under the rule in this module's docstring.

    At most ``max_bytes`` are returned: with ``cut`` the rest of a longer file is left unread,
    otherwise a longer file is refused (``too_big(size)`` says how). ``root`` (a real path) is the
    folder the file was found in, which its links may not leave. Raises :class:`Refused`.

    Example:
        >>> read_regular_file("/dev/zero", 10)
        Traceback (most recent call last):
        ...
        clip_embeddings.inputs.user_files.Refused: /dev/zero: not a regular file
    """
    name = os.fsdecode(os.fspath(path))
    target: str | bytes = os.fspath(path)
    checked = _stat(target, name)
    if root is not None:
        target = os.path.realpath(os.fsdecode(target))
        if not inside(target, root):
            raise Refused(name, OUTSIDE)
    _require_regular(checked, name)
    too_big = too_big or (lambda size: f"file is {size} bytes, more than the limit of {max_bytes}")
    if checked.st_size > max_bytes and not cut:
        raise Refused(name, too_big(checked.st_size))
    if checked.st_size == 0:  # stat's word is taken: /proc files say 0 and make up content when read
        return b""
    flags = _READ_FLAGS | (_NOFOLLOW if root is not None else 0)  # the resolved path holds no link
    try:
        fd = os.open(target, flags)
    except OSError as e:
        raise Refused(name, _reason(e, name)) from None
    with os.fdopen(fd, "rb") as fh:  # owns fd from here on
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (checked.st_dev, checked.st_ino):
            raise Refused(name, "changed while being read (it is not the file that was checked)")
        try:
            data = fh.read(max_bytes if cut else max_bytes + 1)  # the file may have grown since the check
        except OSError as e:
            raise Refused(name, _reason(e, name)) from None
    if len(data) > max_bytes:
        raise Refused(name, too_big(len(data)))
    return data


def exists(path: PathLike) -> bool:
    """Whether anything at all is at ``path`` (a dangling link too), without following or opening it.

    Example:
        >>> exists("/"), exists("/no/such/file")
        (True, False)
    """
    try:
        os.lstat(path)
    except (OSError, ValueError):
        return False
    return True


def walk_folder(folder: PathLike, extensions: Iterable[str], recursive: bool = True) -> Iterator[Path | Refused]:
    """The files of ``folder`` whose extension is in ``extensions``, sorted, and what could not be read.

    Yields a ``Path`` for each file to read (which may still be refused when read: a FIFO named
    ``x.jpg``, a dangling link), and a :class:`Refused` for each folder that could not be listed
    and each symbolic link that leads out of ``folder``. Hidden names (``.*``) are left out. Links
    inside ``folder`` are followed, each folder at most once. Names are compared by code point.

    Example:
        >>> [type(x).__name__ for x in walk_folder("no-such-folder", [".jpg"])]
        ['Refused']
    """
    top = Path(os.fsdecode(os.fspath(folder)))
    wanted = frozenset("." + e.lower().lstrip(".") for e in extensions)
    yield from _walk(top, os.path.realpath(top), wanted, recursive, set())


def _walk(folder: Path, root: str, wanted: frozenset[str], recursive: bool,
          seen: set[tuple[int, int]]) -> Iterator[Path | Refused]:
    try:
        st = folder.stat()
        key = (st.st_dev, st.st_ino)
        if key in seen:  # a symbolic link loop, or a second link to one folder
            return
        seen.add(key)
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda entry: entry.name)
    except OSError as e:
        reason = f"folder could not be read ({_reason(e, str(folder))}): nothing in it was indexed"
        yield Refused(str(folder), reason, folder=True)
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = folder / entry.name
        try:
            is_dir = entry.is_dir()
            is_link = entry.is_symlink()
        except OSError:
            is_dir, is_link = False, False
        wanted_file = not is_dir and os.path.splitext(entry.name)[1].lower() in wanted
        if not (wanted_file or (is_dir and recursive)):
            continue
        if is_link and not inside(os.path.realpath(path), root):
            yield Refused(str(path), OUTSIDE)  # by the rule, not a failure to read: not an unread folder
        elif is_dir:
            yield from _walk(path, root, wanted, recursive, seen)
        else:
            yield path  # not necessarily a regular file: the reader says what it is


def _stat(target: str | bytes, name: str) -> os.stat_result:
    try:
        return os.stat(target)
    except (OSError, ValueError) as e:  # ValueError: an embedded NUL byte
        raise Refused(name, _reason(e, name)) from None


def _require_regular(st: os.stat_result, name: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise Refused(name, "is a directory")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block, a device never end
        raise Refused(name, "not a regular file")


def _reason(error: BaseException, name: str) -> str:
    if isinstance(error, FileNotFoundError):
        return "file not found (broken symbolic link)" if os.path.islink(name) else "file not found"
    if isinstance(error, NotADirectoryError):
        return "file not found (a parent in the path is not a folder)"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        return f"cannot read file: {error.strerror}"
    return f"cannot read file: {error}"
