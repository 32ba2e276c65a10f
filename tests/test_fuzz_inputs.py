"""A generated corpus of hostile inputs, mixed with good ones, through ClipEF and a real Chroma store.

Nothing binary is committed: every input is built here, from seeded random generators, Pillow and
hand-written headers. Each hostile item has an expected outcome decided per category:

* ``skip``: it must come back as a :class:`~clip_embeddings.SkippedItem` with a reason that says
  what is wrong (a substring is checked);
* ``embed``: it is a valid, if odd, image (1x1, CMYK, 16-bit, palette with transparency,
  animation...) and must be embedded;
* ``either``: random bit flips can leave a decodable file; it must then be embedded or skipped,
  never crash, hang or be lost.

Every item is accounted for exactly once, the whole batch finishes in bounded time (URLs that stall
are held to ``url_timeout=1``), and every good item ends up stored. ``pytest -s`` prints the table
of counts per category and outcome; it is also in every assertion message.
"""

from __future__ import annotations

import base64
import http.server
import io
import os
import random
import socket
import struct
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import clip_embeddings as ce
from clip_embeddings.adapters.base import item_id
from clip_embeddings.inputs.options import LoaderOptions
from tests.servers import serving

pytestmark = [pytest.mark.timeout(240), pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")]

MAX_BYTES = 2 * 2**20  # small enough that a "huge body" trips it quickly over loopback
OPTIONS = LoaderOptions(url_timeout=1.0, max_bytes=MAX_BYTES, max_redirects=3)


@dataclass
class Case:
    category: str
    item: Any
    expect: str  # "skip" | "embed" | "either"
    reason: tuple[str, ...] = ()  # for "skip": one of these must be in the reason (case-insensitive)


# ---------------------------------------------------------------------------------------------
# Building blocks


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def noisy(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1000)))
            + chunk(b"IEND", b""))


def png_zero_bomb(width: int, height: int) -> bytes:
    """A *real* bomb: a valid gray PNG of zeros, ~100 KB on disk, width x height once decoded."""
    row = bytes(width + 1)  # filter byte 0 + zeros
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def png_text_bomb() -> bytes:
    """A 4x4 PNG with a zTXt chunk that inflates to 64 MiB (Pillow caps text chunks)."""
    small = encode(Image.new("L", (4, 4), 9), "PNG")
    ztxt = b"Comment\x00\x00" + zlib.compress(bytes(64 * 2**20), 9)
    return small[:33] + chunk(b"zTXt", ztxt) + small[33:]


def gif_header(width: int, height: int, frame: tuple[int, int] | None = None) -> bytes:
    """A GIF whose logical screen (or first frame) claims a huge size; one LZW byte of data."""
    fw, fh = frame or (width, height)
    return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
            + b"\x2c" + struct.pack("<HHHHB", 0, 0, fw, fh, 0) + b"\x02\x02\x44\x01\x00\x3b")


def jpeg_header(width: int, height: int) -> bytes:
    """A JPEG whose SOF0 claims width x height; the scan data is a few bytes."""
    good = encode(Image.new("L", (8, 8), 128), "JPEG")
    sof = good.index(b"\xff\xc0")
    return good[: sof + 5] + struct.pack(">HH", height, width) + good[sof + 9:]


def tiff_header(width: int, height: int) -> bytes:
    """A baseline TIFF whose tags claim width x height."""
    data = bytearray(encode(Image.new("L", (8, 8), 50), "TIFF"))
    little = data[:2] == b"II"
    fmt = "<" if little else ">"
    (ifd,) = struct.unpack(fmt + "I", data[4:8])
    (count,) = struct.unpack(fmt + "H", data[ifd: ifd + 2])
    for i in range(count):
        at = ifd + 2 + 12 * i
        tag, kind = struct.unpack(fmt + "HH", data[at: at + 4])
        value = {256: width, 257: height}.get(tag)
        if value is not None:
            if kind == 3:  # SHORT
                data[at + 8: at + 10] = struct.pack(fmt + "H", min(value, 65535))
            else:
                data[at + 8: at + 12] = struct.pack(fmt + "I", value)
    return bytes(data)


def bmp_header(width: int, height: int) -> bytes:
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(header) + 16, 0, 0, 14 + len(header)) + header + bytes(16)


def webp_vp8x_header(width: int, height: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") \
        + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (24, 24), c) for c in ((200, 10, 10), (10, 200, 10), (10, 10, 200))]
    kwargs = {"save_all": True, "append_images": frames[1:], "duration": 50, "loop": 0}
    return encode(frames[0], fmt, **kwargs)


def sixteen_bit_png() -> bytes:
    arr = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 60).astype(np.uint16)
    return encode(Image.fromarray(arr), "PNG")


def palette_with_transparency(fmt: str) -> bytes:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.paste(1, (5, 5, 15, 15))
    return encode(image, fmt, transparency=0)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(noisy(40, 24, 77), "JPEG", exif=exif)


def flip_bits(data: bytes, rng: random.Random, count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        pos = rng.randrange(min(8, len(out) - 1), len(out))  # keep the magic, so the decoder is reached
        out[pos] ^= 1 << rng.randrange(8)
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# A local HTTP server with hostile routes; every handler is bounded in time and size


class _Hostile(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    routes: dict = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        try:
            if self.path == "/stall":  # accepts the request, never answers (for 3 s at most)
                time.sleep(3)
            elif self.path == "/stall-body":  # headers, then silence
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.flush()
                time.sleep(3)
            elif self.path == "/drip":  # a byte every 0.2 s: each read is fast, the whole is not
                self.send_response(200)
                self.end_headers()
                for _ in range(20):
                    self.wfile.write(b"\x89")
                    self.wfile.flush()
                    time.sleep(0.2)
            elif self.path == "/huge-stream":  # no Content-Length, 64 MiB of zeros (client stops first)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                block = bytes(256 * 1024)
                for _ in range(256):
                    self.wfile.write(block)
            elif self.path == "/huge-declared":  # a Content-Length of 10 GiB
                self.send_response(200)
                self.send_header("Content-Length", str(10 * 2**30))
                self.end_headers()
                self.wfile.write(bytes(1024))
            elif self.path == "/loop":
                self.send_response(302)
                self.send_header("Location", "/loop")
                self.end_headers()
            elif self.path in self.routes:
                code, body, headers = self.routes[self.path]
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(404)
                self.end_headers()
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def hostile_server():
    good = encode(noisy(40, 30, 999), "PNG")
    _Hostile.routes = {
        "/good.png": (200, good, {"Content-Type": "image/png"}),
        "/page.jpg": (200, b"<!DOCTYPE html><html><body>Log in</body></html>", {"Content-Type": "text/html"}),
        "/to-file": (302, b"", {"Location": "file:///etc/passwd"}),
        "/to-data": (302, b"", {"Location": "data:image/png;base64," + base64.b64encode(good).decode()}),
        "/to-huge": (302, b"", {"Location": "/huge-stream"}),
        "/to-huge-declared": (301, b"", {"Location": "/huge-declared"}),
        "/to-good": (307, b"", {"Location": "/good.png"}),
        "/gone": (500, b"oops", {}),
    }
    with serving(_Hostile) as httpd:
        yield httpd.url, good


pytestmark = pytest.mark.usefixtures("no_proxy")


# ---------------------------------------------------------------------------------------------
# The corpus


def good_cases(folder: Path, url: str) -> list[Case]:
    cases = []
    for i in range(12):
        fmt = ("JPEG", "PNG", "WEBP", "GIF")[i % 4]
        path = folder / f"good{i:02d}.{fmt.lower()}"
        path.write_bytes(encode(noisy(48 + i, 40, seed=i), fmt))
        cases.append(Case("good: files", path if i % 2 else str(path), "embed"))
    cases.append(Case("good: bytes", encode(noisy(33, 33, 100), "PNG"), "embed"))
    cases.append(Case("good: bytes", bytearray(encode(noisy(34, 33, 101), "JPEG")), "embed"))
    data = base64.b64encode(encode(noisy(35, 33, 102), "PNG")).decode()
    cases.append(Case("good: data URI", f"data:image/png;base64,{data}", "embed"))
    cases.append(Case("good: URL", f"{url}/good.png", "embed"))
    cases.append(Case("good: URL", f"{url}/to-good", "embed"))
    cases.append(Case("good: PIL", noisy(36, 33, 103), "embed"))
    cases.append(Case("good: array", np.asarray(noisy(37, 33, 104)), "embed"))
    return cases


def hostile_cases(folder: Path, url: str) -> list[Case]:
    rng = random.Random(20240607)
    cases: list[Case] = []
    add = lambda category, item, expect, *reason: cases.append(Case(category, item, expect, reason))  # noqa: E731

    # Truncated files: the cut lands inside the pixel data (noisy pixels fill the file).
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif")):
        data = encode(noisy(64, 48, seed=hash(fmt) % 1000), fmt)
        for j in range(12):
            cut = rng.randrange(1, int(len(data) * 0.85))
            path = folder / f"cut-{fmt.lower()}-{j}.{ext}"
            path.write_bytes(data[:cut])
            add(f"truncated {fmt}", path, "skip", "truncated", "corrupt", "not an image", "broken")

    # Bit flips: may still decode (a JPEG with a flipped DCT bit is just a noisier picture).
    for fmt in ("JPEG", "PNG", "WEBP", "GIF"):
        data = encode(noisy(56, 40, seed=len(fmt)), fmt)
        for j in range(20):
            add(f"bit-flipped {fmt}", flip_bits(data, rng, rng.choice((1, 3, 16))), "either")

    # Empty files and inputs.
    for ext in ("jpg", "png", "webp", "gif"):
        (folder / f"empty.{ext}").write_bytes(b"")
        add("0-byte", folder / f"empty.{ext}", "skip", "empty")
    add("0-byte", b"", "skip", "empty")
    add("0-byte", bytearray(), "skip", "empty")
    add("0-byte", "/proc/self/environ", "skip", "empty")  # a regular file that stat() says is empty

    # Not images at all, saved with image names.
    texts = {
        "page.jpg": b"<!DOCTYPE html><html><head><title>403</title></head><body>Forbidden</body></html>",
        "notes.jpg": b"these are not pixels\n" * 20,
        "data.png": b'{"error": "rate limited"}',
        "drawing.png": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
        "latin1.jpg": "caf\xe9 cr\xe8me".encode("latin-1") * 10,  # not UTF-8 either
        "binary.webp": bytes(rng.randrange(256) for _ in range(3000)),
        "nulls.gif": bytes(4096),
    }
    for name, body in texts.items():
        (folder / name).write_bytes(body)
        add("text/HTML as image", folder / name, "skip", "not an image")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\n%%EOF\n"
    add("text/HTML as image", eps, "skip", "postscript", "not an image")

    # Decompression bombs: tiny files claiming huge sizes, and one real zlib bomb.
    add("decompression bomb", png_header_only(100_000, 100_000), "skip", "too large")
    add("decompression bomb", png_header_only(10_000, 10_000), "skip", "max_pixels")
    add("decompression bomb", png_zero_bomb(12_000, 8_000), "skip", "max_pixels")
    add("decompression bomb", gif_header(65_535, 65_535), "skip", "too large")
    add("decompression bomb", gif_header(16, 16, frame=(65_535, 65_535)), "skip", "too large", "corrupt")
    add("decompression bomb", jpeg_header(65_500, 65_500), "skip", "too large")
    add("decompression bomb", tiff_header(100_000, 100_000), "skip", "too large")
    add("decompression bomb", bmp_header(60_000, 60_000), "skip", "too large", "corrupt")
    add("decompression bomb", webp_vp8x_header(16_000, 16_000), "skip", "too large", "corrupt")
    add("decompression bomb", png_text_bomb(), "skip", "too large", "corrupt")
    lazy_bomb = Image.open(io.BytesIO(png_header_only(10_000, 10_000)))  # a PIL image never decoded
    add("decompression bomb", lazy_bomb, "skip", "max_pixels")
    add("decompression bomb", bytes(MAX_BYTES + 1), "skip", "max_bytes")

    # Odd but valid images: embedded.
    add("odd but valid", animated("GIF"), "embed")
    add("odd but valid", animated("WEBP"), "embed")
    add("odd but valid", animated("PNG"), "embed")  # APNG
    add("odd but valid", encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"), "embed")
    add("odd but valid", encode(Image.new("RGB", (1, 1), (9, 99, 199)), "JPEG"), "embed")
    add("odd but valid", encode(Image.new("L", (1, 1), 3), "GIF"), "embed")
    add("odd but valid", encode(Image.new("L", (1, 2000), 200), "PNG"), "embed")
    add("odd but valid", sixteen_bit_png(), "embed")
    add("odd but valid", encode(Image.fromarray(np.full((9, 9), 40000, np.uint16)), "TIFF"), "embed")
    add("odd but valid", encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"), "embed")
    add("odd but valid", encode(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "TIFF"), "embed")
    add("odd but valid", palette_with_transparency("PNG"), "embed")
    add("odd but valid", palette_with_transparency("GIF"), "embed")
    add("odd but valid", encode(Image.new("RGBA", (12, 12), (0, 0, 0, 0)), "PNG"), "embed")
    add("odd but valid", encode(Image.new("LA", (12, 12), (10, 128)), "PNG"), "embed")
    add("odd but valid", encode(Image.new("1", (17, 5), 1), "PNG"), "embed")
    nan_tiff = Image.fromarray(np.array([[np.nan, np.inf], [-np.inf, -5.0]], np.float32))
    add("odd but valid", encode(nan_tiff, "TIFF"), "embed")
    add("odd but valid", exif_rotated_jpeg(), "embed")
    add("odd but valid", np.ones((5, 7), bool), "embed")
    add("odd but valid", np.full((6, 6, 1), 65535, np.uint16), "embed")
    add("odd but valid", np.linspace(0, 1, 4 * 4 * 4).reshape(4, 4, 4), "embed")
    add("odd but valid", np.zeros((4, 4), np.int64), "embed")  # Chroma's Image type
    add("odd but valid", np.full((4, 4, 3), 255.0), "embed")  # float 0..255, as Chroma's mode-F loader
    add("odd but valid", np.asarray(noisy(20, 20, 5))[::2, ::-1], "embed")  # a strided view

    # Extreme aspect ratios: resizing the shorter side to the model's resolution would make the
    # longer one enormous (1x100000 -> 32x3200000 here, 224x22400000 for ViT-B/32).
    add("extreme aspect ratio", encode(Image.new("L", (1, 100_000), 7), "PNG"), "skip", "aspect")
    add("extreme aspect ratio", encode(Image.new("L", (100_000, 1), 7), "PNG"), "skip", "aspect")
    add("extreme aspect ratio", np.zeros((1, 100_000), np.uint8), "skip", "aspect")

    # Arrays with wrong values, dtypes and shapes.
    arrays = [
        (np.full((4, 4), np.nan), "nan"), (np.full((4, 4, 3), np.inf, np.float32), "nan"),
        (np.array([[0.5, np.nan]], np.float16), "nan"), (np.full((4, 4), -0.5), "[0, 1]"),
        (np.full((4, 4), 255.5), "[0, 255]"), (np.full((4, 4), -3, np.int8), "0..255"),
        (np.full((4, 4), 65536, np.int64), "0..65535"), (np.zeros((4, 4), complex), "dtype"),
        (np.array([[object(), None]]), "dtype"), (np.zeros((4, 4), "U3"), "dtype"),
        (np.zeros((3, 16, 16), np.uint8), "channels-first"), (np.zeros((2, 8, 8, 3), np.uint8), "batch"),
        (np.zeros(16, np.uint8), "shape"), (np.array(7, np.uint8), "shape"),
        (np.zeros((8, 8, 2), np.uint8), "shape"), (np.zeros((8, 8, 5), np.uint8), "shape"),
        (np.zeros((0, 5, 3), np.uint8), "no pixels"), (np.zeros((5, 0), np.uint8), "no pixels"),
    ]
    for arr, reason in arrays:
        add("bad array", arr, "skip", reason)

    # Strings that are not usable image references.
    (folder / "a-folder").mkdir()
    os.mkfifo(folder / "pipe.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    strings = [
        ("", "not found", "directory", "cannot read"), ("\x00", "cannot read", "null"),
        ("cat\x00.jpg", "cannot read", "null"), ("x" * 1_000_000, "cannot read", "too long"),
        ("\ud800\udfff.jpg", "cannot read", "not found", "encode"), (str(folder / "missing.jpg"), "not found"),
        (str(folder / "a-folder"), "directory"), (str(folder / "pipe.jpg"), "not a regular file"),
        (str(folder / "loop.jpg"), "cannot read", "too many levels"), ("/dev/zero", "not a regular file"),
        ("s3://bucket/cat.jpg", "unsupported url scheme"), ("ftp://127.0.0.1/x.jpg", "unsupported url scheme"),
        ("javascript:alert(1)", "not found"), ("file:///etc/passwd", "not an image"),
        ("file://evil.example/share/x.jpg", "remote host"), ("data:", "malformed", "no ','"),
        ("data:image/png;base64,", "empty"), ("data:image/png;base64,@@@@", "invalid base64"),
        ("data:text/html,<html><body>hi</body></html>", "not an image"),
        ("data:image/png;base64," + "A" * (MAX_BYTES * 2), "max_bytes"),
    ]
    for text, *reasons in strings:
        add("bad string", text, "skip", *reasons)

    # Bytes that are not images: non-UTF-8, nulls, bare magic numbers.
    blobs = [bytes(range(128, 256)) * 8, b"\xff\xfe\x00\x00" + "héllo".encode("utf-16"), bytes(1000),
             b"\x00", b"\xff\xd8\xff", b"GIF89a", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
             memoryview(b"\xc3\x28\xa0\xa1" * 100)]
    for blob in blobs:
        add("non-image bytes", blob, "skip", "not an image", "truncated", "corrupt")

    # Things that are not images of any kind.
    for thing in (None, 12345, 3.5, {"path": "x.jpg"}, [1, 2, 3], torch.zeros(3, 8, 8), object()):
        add("wrong type", thing, "skip", "unsupported input type")

    # URLs: stalls, drips, redirects to other schemes and to huge bodies, errors.
    for path, reasons in [
        ("/stall", ("timed out",)), ("/stall-body", ("timed out",)), ("/drip", ("timed out",)),
        ("/to-file", ("non-http",)), ("/to-data", ("non-http",)), ("/to-huge", ("max_bytes", "larger than")),
        ("/to-huge-declared", ("larger than",)), ("/huge-stream", ("max_bytes", "larger than")),
        ("/loop", ("too many redirects",)), ("/page.jpg", ("html",)), ("/gone", ("http 500",)),
        ("/nope.jpg", ("http 404",)),
    ]:
        add("hostile URL", url + path, "skip", *reasons)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    add("hostile URL", f"http://127.0.0.1:{closed}/x.jpg", "skip", "cannot connect", "refused")
    add("hostile URL", "http://[::1/x.jpg", "skip", "invalid url")
    return cases


def corpus(folder: Path, url: str) -> list[Case]:
    good, hostile = good_cases(folder, url), hostile_cases(folder, url)
    mixed = good + hostile
    random.Random(7).shuffle(mixed)  # good items between bad ones, not in a block
    return mixed


# ---------------------------------------------------------------------------------------------
# Checking outcomes


def table(cases: list[Case], outcome: dict[int, str]) -> str:
    counts: dict[str, Counter] = defaultdict(Counter)
    for i, case in enumerate(cases):
        counts[case.category][outcome[i]] += 1
    lines = [f"{'category':<24} {'items':>5} {'embedded':>8} {'skipped':>7}  expected",
             "-" * 60]
    for category in sorted(counts):
        c = counts[category]
        expects = sorted({case.expect for case in cases if case.category == category})
        lines.append(f"{category:<24} {sum(c.values()):>5} {c['embedded']:>8} {c['skipped']:>7}  {'/'.join(expects)}")
    total = Counter(outcome.values())
    lines.append("-" * 60)
    lines.append(f"{'total':<24} {len(cases):>5} {total['embedded']:>8} {total['skipped']:>7}")
    return "\n".join(lines)


def check_outcomes(cases, indices, skipped, label: str) -> tuple[dict[int, str], str]:
    """Every item once, in the expected outcome; returns the outcomes and the printed table."""
    outcome: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for i in indices:
        assert i not in outcome, f"{label}: item {i} reported twice"
        outcome[i] = "embedded"
    for s in skipped:
        assert s.index not in outcome, f"{label}: item {s.index} both embedded and skipped"
        assert s.reason and s.reason.strip(), f"{label}: item {s.index} skipped without a reason"
        assert s.source, f"{label}: item {s.index} skipped without naming its source"
        assert len(s.source) <= 250, f"{label}: item {s.index}'s source is not shortened"
        outcome[s.index] = "skipped"
        reasons[s.index] = s.reason
    summary = table(cases, {i: outcome.get(i, "LOST") for i in range(len(cases))})
    print(f"\n[{label}]\n{summary}")
    assert set(outcome) == set(range(len(cases))), f"{label}: items lost\n{summary}"
    wrong = []
    for i, case in enumerate(cases):
        got = outcome[i]
        if case.expect == "embed" and got != "embedded":
            wrong.append(f"item {i} [{case.category}] should embed; skipped: {reasons[i]}")
        elif case.expect == "skip":
            if got != "skipped":
                wrong.append(f"item {i} [{case.category}] {ce.inputs.describe(case.item)} should be skipped")
            elif not any(r.lower() in reasons[i].lower() for r in case.reason):
                wrong.append(f"item {i} [{case.category}] reason {reasons[i]!r} has none of {case.reason}")
    assert not wrong, f"{label}:\n" + "\n".join(wrong) + "\n" + summary
    return outcome, summary


# ---------------------------------------------------------------------------------------------
# The tests


def test_corpus_is_big_enough(tmp_path, hostile_server):
    url, _ = hostile_server
    cases = hostile_cases(tmp_path, url)
    assert len(cases) >= 200
    assert len({c.category for c in cases}) >= 10


def test_hostile_batch_through_encode_images(tmp_path, hostile_server, tiny_model_path):
    url, _ = hostile_server
    cases = corpus(tmp_path, url)
    ef = ce.ClipEF(tiny_model_path, device="cpu", cache=False, loader_options=OPTIONS, batch_size=16)
    ef.dim  # load the model outside the timed part
    start = time.perf_counter()
    result = ef.encode_images([c.item for c in cases], on_error="skip")
    elapsed = time.perf_counter() - start
    outcome, summary = check_outcomes(cases, result.indices, result.skipped, "ClipEF.encode_images")
    print(f"{len(cases)} items in {elapsed:.1f} s")
    # Stalling URLs are cut at 1 s each and run on the worker threads; nothing else waits.
    assert elapsed < 30, f"the batch took {elapsed:.1f} s: something hung\n{summary}"
    assert result.embeddings.shape == (len(result.indices), ef.dim)
    assert np.isfinite(result.embeddings).all()
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)
    good = [i for i, c in enumerate(cases) if c.category.startswith("good")]
    # A good item gives the same vector alone as in the hostile batch: no cross-talk.
    alone = ef.encode_images([cases[i].item for i in good], on_error="raise")
    rows = [result.indices.index(i) for i in good]
    np.testing.assert_allclose(result.embeddings[rows], alone.embeddings, atol=1e-5)


def test_hostile_batch_into_chroma(tmp_path, hostile_server, tiny_model_path):
    chromadb = pytest.importorskip("chromadb")
    from clip_embeddings.adapters.chroma import ChromaStore

    url, good_png = hostile_server
    folder = tmp_path / "inputs"
    folder.mkdir()
    cases = corpus(folder, url)
    ef = ce.ClipEF(tiny_model_path, device="cpu", loader_options=OPTIONS, batch_size=16)
    client = chromadb.PersistentClient(str(tmp_path / "db"), settings=chromadb.Settings(anonymized_telemetry=False))
    store = ChromaStore(client, "fuzz", ef)
    store.write_batch = 25
    start = time.perf_counter()
    report = store.add_images([c.item for c in cases], on_error="skip")
    elapsed = time.perf_counter() - start
    embedded = sorted(set(range(len(cases))) - {s.index for s in report.skipped})
    outcome, summary = check_outcomes(cases, embedded, report.skipped, "ChromaStore.add_images")
    assert elapsed < 40, f"add_images took {elapsed:.1f} s\n{summary}"

    # Every embedded item is stored once under its content id; equal contents share one row.
    raws = {i: ce.inputs.read_image_source(cases[i].item, OPTIONS) for i in embedded}
    expected_ids = {item_id("image", raw.digest) for raw in raws.values()}
    assert set(report.ids) == expected_ids
    assert store.count() == len(expected_ids), summary
    stored = store.collection.get(ids=sorted(expected_ids), include=["metadatas"])
    assert set(stored["ids"]) == expected_ids
    good_ids = {item_id("image", raws[i].digest) for i, c in enumerate(cases) if c.category.startswith("good")}
    assert good_ids <= set(stored["ids"])
    # All good items are distinct pictures but two: /good.png and the redirect to it.
    assert len(good_ids) == sum(c.category.startswith("good") for c in cases) - 1
    assert item_id("image", ce.inputs.read_image_source(good_png).digest) in good_ids  # the URL item

    # Adding the same hostile batch again stores nothing new and skips the same items.
    again = store.add_images([c.item for c in cases], on_error="skip")
    assert {s.index for s in again.skipped} == {s.index for s in report.skipped}
    assert store.count() == len(expected_ids)
    assert again.cache_hits >= len(good_ids) - 2  # URLs and in-memory items also hit by digest


def test_texts_hostile(tiny_model_path):
    ef = ce.ClipEF(tiny_model_path, device="cpu", cache=False)
    texts = ["a photo of a cat", "", " " * 10_000, "x\x00y", "\x00" * 300, "a" * 1_000_000,
             "word " * 100_000, "\ud800 lone surrogate \udcff", "é\u0301" * 5000, "<|endoftext|>" * 100,
             "😀" * 20_000, "\u202e\u200b\ufeff", "&amp;" * 10_000]
    vectors = ef.embed_texts(texts)  # the tokenizer's cost is bounded in tests/test_tokenizer.py
    assert vectors.shape == (len(texts), ef.dim)
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Truncation keeps the first 77 tokens: a huge text embeds like its beginning.
    np.testing.assert_allclose(ef.embed_texts(["a" * 1_000_000])[0], ef.embed_texts(["a" * 1_000])[0], atol=1e-6)
    np.testing.assert_allclose(ef.embed_texts(["word " * 100_000])[0], ef.embed_texts(["word " * 200])[0], atol=1e-6)
    # Chunk mode also embeds them (a mean over windows), without error.
    chunked = ce.ClipEF(tiny_model_path, device="cpu", cache=False, long_text="chunk").embed_texts(texts[:7])
    assert np.isfinite(chunked).all() and chunked.shape == (7, ef.dim)

    for bad, index, kind in [([b"bytes are not text"], 0, "bytes"), (["ok", None], 1, "NoneType"),
                             (["ok", "ok", 3], 2, "int"), (["ok", b"\xff\xfe"], 1, "bytes"),
                             (["ok", np.zeros(3)], 1, "ndarray"), ([["nested"]], 0, "list")]:
        with pytest.raises(TypeError) as info:
            ef.embed_texts(bad)
        assert f"item {index}" in str(info.value) and kind in str(info.value)


# ---------------------------------------------------------------------------------------------
# Decompression bombs: refused from the header, in bounded time and memory

_BOMB_SCRIPT = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, sys.argv[1])
from tests.test_fuzz_inputs import (bmp_header, gif_header, jpeg_header, png_header_only, png_text_bomb,
                                    png_zero_bomb, tiff_header, webp_vp8x_header)
from clip_embeddings.errors import ImageLoadError
from clip_embeddings.inputs import LoaderOptions, load_image

bombs = {
    "png 100000x100000 header": (png_header_only(100_000, 100_000), {}),
    "png 10000x10000 header": (png_header_only(10_000, 10_000), {}),
    "png 12000x8000 real zlib bomb": (png_zero_bomb(12_000, 8_000), {}),
    "png 2000x2000 real, max_pixels=1e6": (png_zero_bomb(2_000, 2_000), {"max_pixels": 1_000_000}),
    "gif 65535x65535 screen": (gif_header(65_535, 65_535), {}),
    "gif 65535x65535 frame": (gif_header(16, 16, frame=(65_535, 65_535)), {}),
    "jpeg 65500x65500 SOF": (jpeg_header(65_500, 65_500), {}),
    "jpeg 9000x9000 SOF, max_pixels=1e6": (jpeg_header(9_000, 9_000), {"max_pixels": 1_000_000}),
    "tiff 100000x100000 tags": (tiff_header(100_000, 100_000), {}),
    "bmp 60000x60000 header": (bmp_header(60_000, 60_000), {}),
    "webp 16000x16000 canvas": (webp_vp8x_header(16_000, 16_000), {}),
    "png zTXt 64 MiB": (png_text_bomb(), {}),
}
# Cap the address space at what is mapped now + 64 MiB: decoding any of these would need more.
vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 64 * 2**20, resource.RLIM_INFINITY))
out = {}
for name, (data, opts) in bombs.items():
    start = time.perf_counter()
    try:
        load_image(data, LoaderOptions(**opts))
        reason = "DECODED"
    except ImageLoadError as e:
        reason = e.reason
    out[name] = [reason, time.perf_counter() - start]
# The cap is real: the same 12000x8000 bomb, allowed by max_pixels, runs out of memory.
try:
    load_image(bombs["png 12000x8000 real zlib bomb"][0], LoaderOptions(max_pixels=150_000_000))
    out["control"] = ["DECODED", 0]
except ImageLoadError as e:
    out["control"] = [e.reason, 0]
print(json.dumps(out))
"""


def test_bombs_are_refused_before_decoding_in_bounded_time_and_memory(tmp_path):
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", _BOMB_SCRIPT, str(root)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    control = results.pop("control")
    report = "\n".join(f"{name:<38} {t * 1000:7.1f} ms  {reason[:90]}" for name, (reason, t) in results.items())
    print("\n" + report + f"\ncontrol (max_pixels raised): {control[0]}")
    for name, (reason, seconds) in results.items():
        assert seconds < 0.5, f"{name} took {seconds:.2f} s\n{report}"
        assert "too large" in reason or "max_pixels" in reason or "MAX_TEXT_CHUNK" in reason, f"{name}\n{report}"
        assert "out of memory" not in reason, report
    # Without the pixel limit the same file does try to decode, and the 64 MiB cap stops it:
    # so the refusals above were made before any pixel buffer was allocated.
    assert "out of memory" in control[0], control


def test_private_addresses_can_be_refused(hostile_server):
    """``allow_private_addresses=False`` refuses loopback hosts, by name or number, and redirects."""
    url, good = hostile_server
    port = url.rsplit(":", 1)[1]
    public_only = LoaderOptions(url_timeout=1.0, allow_private_addresses=False)
    assert ce.inputs.load_image(f"{url}/good.png").size == (40, 30)  # the default allows them
    reasons = []
    for target in (f"{url}/good.png", f"http://localhost:{port}/good.png", f"http://127.1:{port}/to-good",
                   f"http://[::ffff:127.0.0.1]:{port}/good.png", f"http://0.0.0.0:{port}/good.png"):
        with pytest.raises(ce.ImageLoadError) as info:
            ce.inputs.load_image(target, public_only)
        reasons.append(info.value.reason)
        assert "allow_private_addresses" in info.value.reason, target  # refused before any request
    print("\n" + "\n".join(reasons))
