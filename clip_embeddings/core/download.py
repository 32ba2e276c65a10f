"""Fetch OpenAI's CLIP checkpoints into a local cache and check them by SHA-256.

Each official URL holds the file's SHA-256, so a cached file can be trusted without going to the
network. A download is streamed to a temporary file and renamed into place only once its hash
checks out, so an interrupted transfer never leaves something that looks like a model. A lock file
keeps two processes (say, data-loader workers) from downloading the same model at the same time.

Files in :func:`cache_dir`, for a checkpoint ``X.pt``:

* ``X.pt``: the checked checkpoint. It only ever appears through an atomic ``os.replace``.
* ``X.pt.sha256``: ``"<sha256> <size> <mtime_ns>"``. Once the file has passed its check, this
  records the result for that size and mtime, so later processes skip re-hashing it (1-2 s for
  ViT-L/14). If the file changes, the record no longer matches and the file is hashed again.
  Delete the record to force a full check.
* ``X.pt.lock``: the cross-process lock. It is left in place on purpose: deleting a lock file that
  another process has open breaks the lock.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import os
import pathlib
import re
import tempfile
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator

from tqdm import tqdm

from ..errors import DownloadError, ModelLoadError
from .http import FetchError, HTTPClient, iter_body, release

try:
    import fcntl
except ImportError:  # Windows: no lock, but the atomic rename still prevents torn files.
    fcntl = None  # type: ignore[assignment]  # the module or None: every use checks

_BASE = "https://openaipublic.azureedge.net/clip/models/"
MODELS: dict[str, str] = {
    "RN50":
        _BASE + "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "RN101":
        _BASE + "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
    "RN50x4":
        _BASE + "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
    "RN50x16":
        _BASE + "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt",
    "RN50x64":
        _BASE + "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt",
    "ViT-B/32":
        _BASE + "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16":
        _BASE + "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14":
        _BASE + "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px":
        _BASE + "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}
_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


def available_models() -> list[str]:
    """Names accepted by :func:`model_path`, in OpenAI's order.

    Example:
        >>> available_models()[:2]
        ['RN50', 'RN101']
    """
    return list(MODELS)


def cache_dir(download_root: str | os.PathLike | None = None) -> pathlib.Path:
    """Pick the cache folder and create it if needed.

    The first of these that is set wins: ``download_root``, ``$CLIP_CACHE_DIR``,
    ``$XDG_CACHE_HOME/clip``, ``~/.cache/clip``.

    Example:
        >>> cache_dir("/tmp/clip-cache")
        PosixPath('/tmp/clip-cache')
    """
    if download_root is not None:
        root = pathlib.Path(download_root)
    elif os.environ.get("CLIP_CACHE_DIR"):
        root = pathlib.Path(os.environ["CLIP_CACHE_DIR"])
    else:
        root = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "clip"
    root = root.expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def expected_sha256(url: str) -> str | None:
    """Return the SHA-256 in the path segment just before the file name, or None if there is none.

    Example:
        >>> expected_sha256(MODELS["RN50"])[:8]
        'afeb0e10'
    """
    parts = urllib.parse.urlparse(url).path.split("/")
    return parts[-2].lower() if len(parts) >= 2 and _HEX64.fullmatch(parts[-2].lower()) else None


def _sha256_file(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _remember(path: pathlib.Path, sha: str) -> str:
    st = path.stat()
    return f"{sha} {st.st_size} {st.st_mtime_ns}"


def _verified(path: pathlib.Path, expected: str) -> bool:
    sidecar = path.with_name(path.name + ".sha256")
    key = _remember(path, expected)
    with contextlib.suppress(OSError):
        if sidecar.read_text().strip() == key:
            return True
    if _sha256_file(path) != expected:
        return False
    with contextlib.suppress(OSError):  # A read-only cache still works, it just re-hashes.
        sidecar.write_text(key + "\n")
    return True


@contextlib.contextmanager
def _locked(path: pathlib.Path):
    if fcntl is None:
        yield
        return
    with open(path, "ab") as fh:  # "ab" so that opening never truncates a lock someone holds
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield  # Closing the file releases the lock, even when an exception propagates.


def download(url: str, root: str | os.PathLike | None = None, sha256: str | None = None,
             progress: bool = True, timeout: float = 30.0) -> pathlib.Path:
    """Download ``url`` (http, https or file) into the cache and return the local path.

    ``sha256`` defaults to the hash in the URL. If the file is already cached and its hash
    matches, no request is made. With no hash at all, a cached file is trusted as it is.
    Raises :class:`DownloadError` on network failure, interruption or a wrong hash.

    Example:
        >>> path = download(MODELS["ViT-B/32"], progress=False)  # doctest: +SKIP
        >>> path.name  # doctest: +SKIP
        'ViT-B-32.pt'
    """
    root = cache_dir(root)
    name = urllib.parse.unquote(pathlib.PurePosixPath(urllib.parse.urlparse(url).path).name)
    if not name:
        raise DownloadError(f"{url!r} does not end in a file name")
    expected = (sha256 or expected_sha256(url) or "").lower() or None
    target = root / name
    # Checked without the lock first, so a read-only, pre-filled cache needs no writes.
    if target.is_file() and (expected is None or _verified(target, expected)):
        return target
    with _locked(root / f"{name}.lock"):
        if target.is_file():  # Another process may have fetched it while we waited.
            if expected is None or _verified(target, expected):
                return target
            warnings.warn(f"{target} exists, but its SHA-256 is not {expected}; downloading it "
                          "again", RuntimeWarning, stacklevel=2)
        _fetch(url, target, expected, progress, timeout)
    return target


# Checkpoints come from the URLs in MODELS or one a user names (a mirror, maybe on the private
# network): any address is allowed, and the CDN's redirects are followed.
_CLIENT = HTTPClient(max_redirects=10)


@contextlib.contextmanager
def _body(url: str, timeout: float, hint: str) -> Iterator[tuple[int | None, Iterator[bytes]]]:
    """``(length or None, chunks)`` of ``url``: an http(s) response, or a local ``file:`` URL."""
    if urllib.parse.urlsplit(url).scheme.lower() == "file":
        path = urllib.request.url2pathname(urllib.parse.urlsplit(url).path)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as e:
            raise DownloadError(f"Could not read {url} ({e.strerror}). {hint}") from e
        with fh:
            yield os.fstat(fh.fileno()).st_size, iter(functools.partial(fh.read, _CHUNK), b"")
        return
    try:
        response = _CLIENT.open("GET", url, timeout=timeout)
    except FetchError as e:
        raise DownloadError(f"Could not reach {url} ({e.reason}). {hint}") from e
    try:
        if response.status != 200:
            raise DownloadError(f"Could not download {url}: the server answered HTTP {response.status} "
                                f"{response.reason}. {hint}")
        length = response.headers.get("Content-Length")
        yield (int(length) if length and length.isdigit() else None), iter_body(response, chunk=_CHUNK)
    finally:
        release(response)


def _fetch(url: str, target: pathlib.Path, expected: str | None, progress: bool,
           timeout: float) -> None:
    hint = (f"To work offline, download {url} elsewhere and pass its path, as in "
            f"clip_embeddings.load('/path/to/{target.name}'), or set CLIP_CACHE_DIR to a folder "
            f"that holds {target.name}.")
    with _body(url, timeout, hint) as (length, chunks):
        # Not a `with` here: the `with tmp` below closes it, and the except removes the partial file.
        tmp = tempfile.NamedTemporaryFile(dir=target.parent, delete=False, prefix="." + target.name,  # noqa: SIM115
                                          suffix=".part")
        try:
            with tmp, tqdm(total=length, unit="B", unit_scale=True, unit_divisor=1024,
                           desc=target.name, disable=not progress) as bar:
                digest = hashlib.sha256()
                for chunk in chunks:
                    tmp.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            actual = digest.hexdigest()
            if expected is not None and actual != expected:
                raise DownloadError(f"SHA-256 mismatch for {url}: expected {expected}, got {actual}. "
                                    f"The file was discarded. {hint}")
            # NamedTemporaryFile makes the file 0600; other users may share the cache.
            os.chmod(tmp.name, 0o644)
            os.replace(tmp.name, target)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp.name)
            if isinstance(e, DownloadError) or not isinstance(e, Exception):  # KeyboardInterrupt too
                raise
            reason = e.reason if isinstance(e, FetchError) else f"{type(e).__name__}: {e}"
            raise DownloadError(f"Download of {url} was interrupted ({reason}); try again. {hint}") from e
    if expected is not None:
        with contextlib.suppress(OSError):
            target.with_name(target.name + ".sha256").write_text(_remember(target, expected) + "\n")


def model_path(name: str | os.PathLike, download_root: str | os.PathLike | None = None,
               progress: bool = True) -> pathlib.Path:
    """Turn a model name (or the path of an existing file) into a local checkpoint file.

    Example:
        >>> model_path("ViT-B/32").name  # doctest: +SKIP
        'ViT-B-32.pt'
    """
    if isinstance(name, str) and name in MODELS:
        return download(MODELS[name], download_root, progress=progress)
    if os.path.isfile(name):
        return pathlib.Path(name)
    # Ignore case and punctuation, so that 'vit-b32' or 'ViT-B-32' still finds 'ViT-B/32'.
    norm = {re.sub(r"[^a-z0-9@]", "", m.lower()): m for m in MODELS}
    close = difflib.get_close_matches(re.sub(r"[^a-z0-9@]", "", os.fspath(name).lower()), norm, 1)
    guess = f" Did you mean {norm[close[0]]!r}?" if close else ""
    raise ModelLoadError(f"Unknown model {os.fspath(name)!r}.{guess} Available models: "
                         f"{', '.join(MODELS)}. You can also pass the path of a local checkpoint.")
