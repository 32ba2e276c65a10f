"""Tests of clip_embeddings.inputs: every input kind, every failure, on real files and a real server.

Files are written to ``tmp_path`` with Pillow; URLs are served by an ``http.server`` on
127.0.0.1 in a thread. Nothing in urllib or Pillow is mocked.
"""

from __future__ import annotations

import base64
import http.server
import io
import socket
import struct
import time
import urllib.parse
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from clip_embeddings.errors import ClipError, ImageLoadError
from clip_embeddings.inputs.options import DEFAULT_OPTIONS, LoaderOptions, RawImage, describe
from clip_embeddings.inputs.decode import DRAFT_MARGIN, decode_image
from clip_embeddings.inputs.folders import IMAGE_EXTENSIONS, iter_image_files
from clip_embeddings.inputs.sources import load_image, read_image_source
from tests.servers import serving

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
# The known 2x2 image: red green / blue white.
KNOWN = np.array([[RED, GREEN], [BLUE, WHITE]], dtype=np.uint8)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def known_png() -> bytes:
    return encode(Image.fromarray(KNOWN))


def noisy(width: int, height: int, seed: int = 0) -> Image.Image:
    """Random pixels: compress badly, so a cut anywhere lands in image data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def reason_of(item, options: LoaderOptions = DEFAULT_OPTIONS, **kwargs) -> str:
    with pytest.raises(ImageLoadError) as info:
        load_image(item, options, **kwargs)
    err = info.value
    assert isinstance(err, ClipError) and isinstance(err, ValueError)
    assert err.source == describe(item)  # every error names its item
    assert str(err).startswith(err.source)
    return err.reason


def png_header_only(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height; its pixel data is only a few zeros."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(bytes(10_000))) + chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------
# A real HTTP server


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection; bodies may end at close
    routes: dict = {}
    seen_agents: list = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        type(self).seen_agents.append(self.headers.get("User-Agent"))
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path.startswith("/r/"):  # /r/N redirects N times (relative Location), then the image
                n = int(path[3:])
                self._send(302, b"", {"Location": f"/r/{n - 1}" if n > 1 else "/img.png"})
            elif path == "/drip-body":
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                self._drip(b"x" * 100)
            elif path == "/drip-headers":
                self._drip(b"HTTP/1.0 200 OK\r\nX-Slow: " + b"y" * 100)
            elif path in self.routes:
                self._send(*self.routes[path])
            else:
                self._send(404, b"no such thing", {"Content-Type": "text/plain"})
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, code: int, body: bytes, headers: dict, length: bool = True):
        self.send_response(code)
        for key, value in headers.items():
            self.send_header(key, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drip(self, data: bytes):
        for i in range(len(data)):
            self.wfile.write(data[i:i + 1])
            self.wfile.flush()
            time.sleep(0.5)


@pytest.fixture(scope="module")
def server():
    png = known_png()
    _Handler.routes = {
        "/img.png": (200, png, {"Content-Type": "image/png"}),
        "/to-file": (302, b"", {"Location": "file:///etc/passwd"}),
        "/to-data": (301, b"", {"Location": "data:image/png;base64," + base64.b64encode(png).decode()}),
        "/to-ftp": (307, b"", {"Location": "ftp://127.0.0.1/img.png"}),
        "/big": (200, bytes(5000), {"Content-Type": "image/png"}),
        "/big-no-length": (200, bytes(5000), {"Content-Type": "image/png"}, False),
        "/short": (200, png[:10], {"Content-Length": "1000"}, False),
        "/page.html": (200, b"<!DOCTYPE html><html><body>Sign in</body></html>",
                       {"Content-Type": "text/html"}),
        "/gone": (500, b"oops", {}),
    }
    with serving(_Handler) as httpd:
        yield httpd.url


pytestmark = pytest.mark.usefixtures("no_proxy")


# ---------------------------------------------------------------------------------------------
# Every input kind gives the same pixels


def test_known_image_through_every_input_kind(tmp_path, server):
    png = known_png()
    path = tmp_path / "known.png"
    path.write_bytes(png)
    b64 = base64.b64encode(png).decode()
    items = {
        "str path": str(path),
        "Path": path,
        "bytes": png,
        "bytearray": bytearray(png),
        "memoryview": memoryview(png),
        "data URI base64": "data:image/png;base64," + b64,
        "data URI base64 unpadded, wrapped": "data:image/png;base64," + "\n".join(
            b64.rstrip("=")[i:i + 20] for i in range(0, len(b64.rstrip("=")), 20)),
        "data URI percent-encoded": "data:image/png," + urllib.parse.quote_from_bytes(png),
        "file URL": path.as_uri(),
        "http URL": server + "/img.png",
        "PIL": Image.fromarray(KNOWN),
        "PIL opened lazily": Image.open(path),
        "ndarray uint8": KNOWN.copy(),
        "ndarray float": KNOWN.astype(np.float32) / 255.0,
        "ndarray uint16": KNOWN.astype(np.uint16) * 257,
        "ndarray non-contiguous": np.asfortranarray(KNOWN),
        "ndarray RGBA opaque": np.dstack([KNOWN, np.full((2, 2), 255, np.uint8)]),
    }
    for name, item in items.items():
        image = load_image(item)
        assert image.size == (2, 2), name
        np.testing.assert_array_equal(pixels(image), KNOWN, err_msg=name)


def test_gray_and_bool_arrays():
    gray = np.array([[0, 64], [128, 255]], dtype=np.uint8)
    expected = np.repeat(gray[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(pixels(load_image(gray)), expected)
    np.testing.assert_array_equal(pixels(load_image(gray[:, :, None])), expected)
    np.testing.assert_array_equal(pixels(load_image(gray / 255.0)), expected)
    flags = np.array([[True, False], [False, True]])
    np.testing.assert_array_equal(pixels(load_image(flags))[:, :, 0], [[255, 0], [0, 255]])
    # float rounding: 0.5 * 255 = 127.5 rounds to even 128
    assert pixels(load_image(np.full((1, 1), 0.5)))[0, 0, 0] == 128


def test_array_is_snapshotted_when_read():
    for shape in [(2, 2), (2, 2, 3), (2, 2, 4)]:
        arr = np.full(shape, 255, np.uint8)
        raw = read_image_source(arr)
        arr[...] = 0  # the caller reuses its buffer before the item is decoded
        assert (pixels(decode_image(raw)) == 255).all(), shape


def test_sources_are_short_descriptions(tmp_path):
    png = known_png()
    assert read_image_source(png).source == f"<bytes: {len(png)} B>"
    assert describe(Image.new("RGBA", (640, 480))) == "<PIL RGBA 640x480>"
    assert describe(np.zeros((480, 640, 3), np.uint8)) == "<ndarray uint8 (480, 640, 3)>"
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    assert read_image_source(uri).source == f"data:image/png;base64,… ({len(png)} B)"
    assert describe(uri) == read_image_source(uri).source
    assert describe("https://user:secret@example.com/a.jpg") == "https://user:***@example.com/a.jpg"
    assert len(describe("x" * 5000)) <= 200
    path = tmp_path / "k.png"
    path.write_bytes(png)
    assert read_image_source(path).source == str(path)
    raw = read_image_source(path)
    assert raw.data == png and raw.image is None
    raw = read_image_source(KNOWN)
    assert raw.data is None and raw.image is not None


# ---------------------------------------------------------------------------------------------
# Decoding: orientation, transparency, bit depth, colour spaces, animation


@pytest.mark.parametrize("orientation, corner", [(6, "top-right"), (8, "bottom-left")])
def test_exif_orientation_is_applied(orientation, corner):
    stored = Image.new("RGB", (80, 40), BLUE)
    stored.paste(RED, (0, 0, 20, 20))  # a red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    jpeg = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    image = load_image(jpeg)
    assert image.size == (40, 80)  # portrait once rotated
    arr = pixels(image).astype(int)
    red_at = {"top-right": arr[5, 34], "bottom-left": arr[74, 5]}[corner]
    assert red_at[0] > 200 and red_at[2] < 60, red_at
    assert arr[5, 5][2] > 200 if corner == "top-right" else arr[74, 34][2] > 200
    # the draft path keeps the orientation too
    assert load_image(jpeg, draft_resolution=8).size[0] < load_image(jpeg, draft_resolution=8).size[1]


def test_in_memory_pil_is_taken_as_is():
    stored = Image.new("RGB", (80, 40), BLUE)
    exif = Image.Exif()
    exif[0x0112] = 6
    opened = Image.open(io.BytesIO(encode(stored, "JPEG", exif=exif.tobytes())))
    assert load_image(opened).size == (80, 40)


def test_rgba_transparency_becomes_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 255, 0, 0)  # fully transparent green
    rgba[1, 0] = (255, 0, 0, 128)  # half-transparent red
    rgba[1, 1] = (0, 0, 0, 0)
    for item in (rgba, encode(Image.fromarray(rgba)), encode(Image.fromarray(rgba), "WEBP", lossless=True)):
        arr = pixels(load_image(item))
        assert tuple(arr[0, 0]) == RED
        assert tuple(arr[0, 1]) == WHITE and tuple(arr[1, 1]) == WHITE
        assert arr[1, 0, 0] == 255 and 120 <= arr[1, 0, 1] <= 135  # red over white at 50%


def test_la_gray_with_alpha_becomes_white():
    la = Image.merge("LA", [Image.new("L", (2, 1), 0), Image.frombytes("L", (2, 1), b"\xff\x00")])
    arr = pixels(load_image(encode(la)))
    assert tuple(arr[0, 0]) == (0, 0, 0) and tuple(arr[0, 1]) == WHITE


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_becomes_white(fmt):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 0])  # 0: red, 1: black
    image.putpixel((1, 0), 1)
    data = encode(image, fmt, transparency=1)
    arr = pixels(load_image(data))
    assert tuple(arr[0, 0]) == RED
    assert tuple(arr[0, 1]) == WHITE  # black but transparent


def test_rgb_color_key_transparency_becomes_white():
    image = Image.fromarray(np.array([[RED, (10, 20, 30)]], np.uint8))
    arr = pixels(load_image(encode(image, "PNG", transparency=(10, 20, 30))))
    assert tuple(arr[0, 0]) == RED and tuple(arr[0, 1]) == WHITE


def test_sixteen_bit_gray_is_scaled_to_eight_bits(tmp_path):
    values = np.array([[0, 65535, 32768, 257, 4096]], np.uint16)
    expected = [0, 255, 128, 1, 16]
    image16 = Image.fromarray(values)
    assert image16.mode.startswith("I;16")
    for fmt in ("PNG", "TIFF"):
        arr = pixels(load_image(encode(image16, fmt)))
        assert arr[0, :, 0].tolist() == expected, fmt
        assert (arr[..., 0] == arr[..., 2]).all()
    big_endian = Image.frombytes("I;16B", (5, 1), values.astype(">u2").tobytes())
    assert pixels(load_image(big_endian))[0, :, 0].tolist() == expected
    as_int32 = Image.fromarray(values.astype(np.int32))
    assert as_int32.mode == "I"
    assert pixels(load_image(as_int32))[0, :, 0].tolist() == expected
    assert pixels(load_image(values))[0, :, 0].tolist() == expected  # uint16 array


def test_float_image_is_scaled_to_eight_bits():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert unit.mode == "F"
    assert pixels(load_image(unit))[0, :, 0].tolist() == [0, 128, 255]
    wide = Image.fromarray(np.array([[-10.0, 0.0, 10.0, np.nan]], np.float32))
    assert pixels(load_image(encode(wide, "TIFF")))[0, :, 0].tolist() == [0, 128, 255, 0]


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint32, np.uint64])
def test_integer_arrays_in_eight_bit_range_are_eight_bit(dtype):
    # Chroma's Image type is an int64 array (its own test feeds np.random.randint(0, 255, ..., int64)).
    values = np.array([[0, 1, 64, 127]], dtype)
    assert pixels(load_image(values))[0, :, 0].tolist() == [0, 1, 64, 127]
    if np.iinfo(dtype).max >= 255:
        rgb = np.array([[[255, 0, 7], [3, 200, 255]]], dtype)
        assert pixels(load_image(rgb)).tolist() == [[[255, 0, 7], [3, 200, 255]]]


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32])
def test_integer_arrays_past_255_are_sixteen_bit(dtype):
    # The same expected values as the 16-bit file test above: (v * 255 + 32767) // 65535.
    values = np.array([[0, 65535, 32768, 257, 4096]], dtype)
    assert pixels(load_image(values))[0, :, 0].tolist() == [0, 255, 128, 1, 16]


def test_chroma_image_loader_arrays_embed_like_the_files(tmp_path):
    """Chroma's ImageLoader gives int32 arrays for mode-I files and float32 0..255 for mode-F."""
    from chromadb.utils.data_loaders import ImageLoader

    mode_i = tmp_path / "mode-i.tif"
    Image.fromarray(np.array([[0, 65535, 32768, 257, 4096]], np.int32)).save(mode_i)
    mode_f = tmp_path / "mode-f.tif"
    Image.fromarray(np.array([[0.0, 63.6, 128.0, 254.5, 255.0]], np.float32)).save(mode_f)
    int_array, float_array = ImageLoader(max_workers=1)([str(mode_i), str(mode_f)])
    assert int_array.dtype == np.int32 and float_array.dtype == np.float32
    assert pixels(load_image(int_array))[0, :, 0].tolist() == [0, 255, 128, 1, 16]
    assert pixels(load_image(int_array)).tolist() == pixels(load_image(mode_i)).tolist()
    assert pixels(load_image(float_array))[0, :, 0].tolist() == [0, 64, 128, 254, 255]  # rint: 254.5 -> 254


def test_float_arrays_range_is_decided_by_their_maximum():
    assert pixels(load_image(np.array([[0.0, 0.5, 1.0]])))[0, :, 0].tolist() == [0, 128, 255]  # [0, 1]
    assert pixels(load_image(np.array([[0.0, 0.5, 2.0]])))[0, :, 0].tolist() == [0, 0, 2]  # [0, 255]
    assert pixels(load_image(np.full((2, 2, 3), 255.0, np.float16)))[0, 0].tolist() == [255, 255, 255]


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    image = load_image(encode(cmyk, "JPEG", quality=95))
    assert image.mode == "RGB"
    r, g, b = pixels(image)[8, 8].astype(int)
    assert r > 230 and g < 30 and b < 30


def test_one_bit_and_gray_become_rgb():
    bits = Image.frombytes("1", (8, 1), b"\xf0")
    assert pixels(load_image(encode(bits)))[0, :, 0].tolist() == [255] * 4 + [0] * 4
    gray = Image.new("L", (3, 3), 77)
    assert tuple(pixels(load_image(encode(gray, "BMP")))[1, 1]) == (77, 77, 77)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (4, 4), color) for color in (RED, GREEN, BLUE)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 3
    assert tuple(pixels(load_image(buffer.getvalue()))[2, 2]) == RED


# ---------------------------------------------------------------------------------------------
# Broken inputs: one clear error each


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_fails(tmp_path, fmt):
    data = encode(noisy(128, 128), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) * 2 // 3])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    reason = reason_of(path)
    assert "truncated" in reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the global was left alone
    assert load_image(data).size == (128, 128)  # the whole file is fine


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_corrupt_image_data_fails(fmt):
    data = bytearray(encode(noisy(128, 128), fmt))
    middle = len(data) // 2
    data[middle:middle + 64] = b"\xff" * 64
    assert "corrupt" in reason_of(bytes(data))


def test_corrupt_header_is_not_called_not_an_image():
    data = encode(noisy(32, 32), "PNG")
    assert "corrupt" in reason_of(data[:30]) and "PNG" in reason_of(data[:30])


def test_text_saved_as_jpg_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n")
    assert reason_of(path).startswith("not an image (cannot identify image file)")
    html = tmp_path / "page.jpg"
    html.write_text("<!DOCTYPE html><html></html>")
    assert "HTML" in reason_of(html)


def test_file_errors(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert reason_of(empty) == "empty file (0 bytes)"
    assert reason_of(str(tmp_path / "nope.jpg")) == "file not found"
    assert reason_of(tmp_path / "nope.jpg") == "file not found"
    assert reason_of(tmp_path) == "is a directory"
    assert reason_of((tmp_path / "nope").as_uri()) == "file not found"
    big = tmp_path / "big.png"
    big.write_bytes(known_png())
    reason = reason_of(big, LoaderOptions(max_bytes=20))
    assert f"{big.stat().st_size} bytes" in reason and "max_bytes=20" in reason
    link = tmp_path / "dangling.jpg"
    link.symlink_to(tmp_path / "gone.jpg")
    assert "broken symbolic link" in reason_of(link)


def test_bytes_and_data_uri_errors():
    assert reason_of(b"") == "empty input (0 bytes)"
    assert "max_bytes=10" in reason_of(known_png(), LoaderOptions(max_bytes=10))
    assert "no ','" in reason_of("data:image/png;base64")
    assert "invalid base64" in reason_of("data:image/png;base64,@@@@")
    assert "max_bytes" in reason_of("data:image/png;base64," + "A" * 400, LoaderOptions(max_bytes=100))
    assert "unsupported URL scheme 's3'" in reason_of("s3://bucket/cat.jpg")
    assert "unsupported input type" in reason_of(12345)
    assert "unsupported input type" in reason_of(None)


def test_array_errors():
    assert "NaN or infinity" in reason_of(np.array([[0.1, np.nan]]))
    assert "NaN or infinity" in reason_of(np.array([[0.1, np.inf]], np.float32))
    reason = reason_of(np.array([[0.0, 256.0]]))
    assert "[0, 1]" in reason and "[0, 255]" in reason and "got [0, 256]" in reason
    assert "got [-1, 0.5]" in reason_of(np.array([[-1.0, 0.5]], np.float32))
    reason = reason_of(np.array([[-3, 7]], np.int8))
    assert "int8" in reason and "0..255" in reason and "0..65535" in reason and "got [-3, 7]" in reason
    assert "got [0, 70000]" in reason_of(np.array([[0, 70000]], np.int32))
    assert "got [0, 18446744073709551615]" in reason_of(np.array([[0, 2**64 - 1]], np.uint64))
    reason = reason_of(np.zeros((3, 16, 16), np.uint8))
    assert "(3, 16, 16)" in reason and "channels-first" in reason
    assert "(2, 16, 16, 3)" in reason_of(np.zeros((2, 16, 16, 3), np.uint8))
    assert "(16, 16, 2)" in reason_of(np.zeros((16, 16, 2), np.uint8))
    assert "complex128" in reason_of(np.zeros((4, 4), complex))
    assert "no pixels" in reason_of(np.zeros((0, 4), np.uint8))


# ---------------------------------------------------------------------------------------------
# Decompression bombs are refused from the header


def test_decompression_bomb_beyond_pillow_limit_is_refused_fast():
    data = png_header_only(50_000, 50_000)
    assert len(data) < 1000
    start = time.perf_counter()
    reason = reason_of(data)
    assert time.perf_counter() - start < 1.0
    assert "too large" in reason


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_max_pixels_is_checked_from_the_header_before_decoding():
    # The pixel data is far too short: decoding would say "truncated". The size check comes first.
    data = png_header_only(10_000, 10_000)  # 1e8 pixels: over the default 89_478_485
    start = time.perf_counter()
    reason = reason_of(data)
    assert time.perf_counter() - start < 1.0
    assert "10000x10000" in reason and "max_pixels=89478485" in reason
    reason = reason_of(png_header_only(3000, 2000), LoaderOptions(max_pixels=1_000_000))
    assert "max_pixels=1000000" in reason and "truncated" not in reason
    assert "truncated" in reason_of(png_header_only(3000, 2000))  # under the limit: decoded
    assert "max_pixels" in reason_of(Image.new("L", (100, 100)), LoaderOptions(max_pixels=9999))
    assert "max_pixels" in reason_of(np.zeros((100, 100), np.uint8), LoaderOptions(max_pixels=9999))


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_warning_as_error_is_an_image_error():
    assert "too large" in reason_of(png_header_only(10_000, 10_000))


# ---------------------------------------------------------------------------------------------
# URLs


def test_url_image_and_user_agent(server):
    _Handler.seen_agents.clear()
    raw = read_image_source(server + "/img.png")
    assert raw.source == server + "/img.png"
    assert raw.data == known_png()
    assert _Handler.seen_agents and _Handler.seen_agents[-1].startswith("clip-embeddings/")


def test_url_http_errors(server):
    assert reason_of(server + "/missing") == "HTTP 404 Not Found"
    assert reason_of(server + "/gone").startswith("HTTP 500")
    assert "HTML page" in reason_of(server + "/page.html")


@pytest.mark.parametrize("route, scheme", [("/to-file", "file:"), ("/to-data", "data:"),
                                           ("/to-ftp", "ftp:")])
def test_url_redirect_to_another_scheme_is_refused(server, route, scheme):
    reason = reason_of(server + route)
    assert reason.startswith("redirect to a non-HTTP URL refused") and scheme in reason


def test_url_redirect_chain(server):
    image = load_image(server + "/r/5")  # 5 redirects: the default limit
    np.testing.assert_array_equal(pixels(image), KNOWN)
    assert "too many redirects" in reason_of(server + "/r/6")
    assert "too many redirects" in reason_of(server + "/r/1", LoaderOptions(max_redirects=0))


def test_url_body_over_max_bytes(server):
    options = LoaderOptions(max_bytes=1000)
    assert reason_of(server + "/big", options) == "response larger than 1000 bytes (Content-Length: 5000)"
    assert reason_of(server + "/big-no-length", options).startswith("response larger than 1000 bytes")
    assert "max_bytes" not in reason_of(server + "/big-no-length")  # under the default: read


def test_url_connection_closed_early(server):
    assert reason_of(server + "/short") == "connection closed after 10 of 1000 bytes"


@pytest.mark.parametrize("route", ["/drip-body", "/drip-headers"])
def test_slow_drip_server_hits_the_deadline(server, route):
    start = time.perf_counter()
    reason = reason_of(server + route, LoaderOptions(url_timeout=1.0))
    elapsed = time.perf_counter() - start
    assert "timed out after 1 s" in reason
    assert 0.9 < elapsed < 3.0


def test_url_connection_refused_and_disallowed(server):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert reason_of(f"http://127.0.0.1:{port}/x.png").startswith("cannot connect")
    assert "allow_urls" in reason_of(server + "/img.png", LoaderOptions(allow_urls=False))


# ---------------------------------------------------------------------------------------------
# Digests


def test_digest_follows_content(tmp_path):
    png = known_png()
    path = tmp_path / "a.png"
    path.write_bytes(png)
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    digests = {read_image_source(x).digest for x in (path, str(path), png, bytearray(png), uri)}
    assert len(digests) == 1
    assert len(next(iter(digests))) == 64
    changed = KNOWN.copy()
    changed[0, 0] = (254, 0, 0)
    path.write_bytes(encode(Image.fromarray(changed)))
    assert read_image_source(path).digest not in digests
    # in-memory: an array and the same PIL image agree; one pixel changes it; mode matters
    assert read_image_source(KNOWN).digest == read_image_source(Image.fromarray(KNOWN)).digest
    assert read_image_source(KNOWN).digest != read_image_source(changed).digest
    gray = np.zeros((2, 2), np.uint8)
    assert read_image_source(gray).digest != read_image_source(Image.fromarray(gray).convert("P")).digest


def test_digests_are_stable_across_processes():
    # Fixed values: no per-process salt, and a change of the digest scheme (which would make
    # every cached embedding miss) shows up here.
    assert read_image_source(b"abc").digest == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")  # plain SHA-256
    assert read_image_source(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).digest == (
        "285043ad81000d8ce67fdd99035a504f14ff34a1df19093f7aadb2265b8a531b")


# ---------------------------------------------------------------------------------------------
# JPEG draft mode


def test_draft_mode_decodes_large_jpegs_smaller_but_big_enough():
    gradient = np.linspace(0, 255, 3000, dtype=np.float32)[None, :, None]
    photo = Image.fromarray(np.broadcast_to(gradient, (2000, 3000, 3)).astype(np.uint8))
    jpeg = encode(photo, "JPEG", quality=85)
    full = load_image(jpeg)
    draft = load_image(jpeg, draft_resolution=224)
    assert full.size == (3000, 2000)
    assert DRAFT_MARGIN * 224 <= min(draft.size) < 2000
    assert draft.mode == "RGB"
    # the same picture, smaller: compare against a downscaled full decode
    reference = np.asarray(full.resize(draft.size, Image.Resampling.BOX), dtype=np.int16)
    assert np.abs(np.asarray(draft, dtype=np.int16) - reference).mean() < 2.0
    # small resolutions never go below the margin either; None decodes in full
    assert min(load_image(jpeg, draft_resolution=600).size) >= DRAFT_MARGIN * 600
    assert load_image(jpeg, draft_resolution=None).size == (3000, 2000)
    # other formats ignore it
    png = encode(Image.new("RGB", (1200, 900), BLUE))
    assert load_image(png, draft_resolution=224).size == (1200, 900)
    with pytest.raises(ValueError):
        load_image(jpeg, draft_resolution=0)


# ---------------------------------------------------------------------------------------------
# Folders


def test_iter_image_files(tmp_path):
    names = ["b.png", "a.JPG", "B.jpeg", "c.txt", "z.gif", ".hidden.jpg", ".cache/x.jpg",
             "sub/d.webp", "sub/deeper/e.TIFF", "sub/f.bmp", "noext", "sub.tif"]
    for name in names:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    found = [p.relative_to(tmp_path).as_posix() for p in iter_image_files(tmp_path)]
    # sorted by path parts; hidden names and other extensions skipped; the symlink loop
    # (sub/loop -> the root) is not walked twice
    assert found == ["B.jpeg", "a.JPG", "b.png", "sub/d.webp", "sub/deeper/e.TIFF", "sub/f.bmp",
                     "sub.tif", "z.gif"]
    assert found == sorted(found, key=lambda p: p.split("/"))
    assert all(isinstance(p, Path) for p in iter_image_files(tmp_path))
    flat = [p.name for p in iter_image_files(str(tmp_path), recursive=False)]
    assert flat == ["B.jpeg", "a.JPG", "b.png", "sub.tif", "z.gif"]
    assert [p.name for p in iter_image_files(tmp_path, extensions=["PNG", ".gif"], recursive=False)] \
        == ["b.png", "z.gif"]
    assert ".jpg" in IMAGE_EXTENSIONS and ".tiff" in IMAGE_EXTENSIONS
    with pytest.raises(ImageLoadError, match="folder not found"):
        list(iter_image_files(tmp_path / "missing"))


# ---------------------------------------------------------------------------------------------
# Used as the embedding function will: per item, in a thread pool


def test_bad_items_do_not_cost_the_rest(tmp_path, server):
    good = tmp_path / "good.png"
    good.write_bytes(known_png())
    items = [good, tmp_path / "missing.png", server + "/img.png", b"garbage", KNOWN,
             server + "/missing", str(good)] * 3

    def one(item):
        try:
            raw = read_image_source(item)
            assert isinstance(raw, RawImage)
            return decode_image(raw, draft_resolution=224)
        except ImageLoadError as e:
            return e

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, items))
    ok = [r for r in results if isinstance(r, Image.Image)]
    failed = [r for r in results if isinstance(r, ImageLoadError)]
    assert len(ok) == 12 and len(failed) == 9
    assert all(np.array_equal(pixels(r), KNOWN) for r in ok)
    assert {e.reason for e in failed} == {"file not found", "HTTP 404 Not Found",
                                          "not an image (cannot identify image file)"}


def test_options_are_validated():
    with pytest.raises(ValueError):
        LoaderOptions(max_pixels=0)
    with pytest.raises(ValueError):
        LoaderOptions(url_timeout=0)
    with pytest.raises(ValueError):
        LoaderOptions(max_redirects=-1)
    assert DEFAULT_OPTIONS == LoaderOptions()
