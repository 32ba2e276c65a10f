"""Requests to the server's inputs: JSON or multipart bodies, checked, with reasons for 4xx.

Every endpoint takes either a JSON object or a multipart form (files under ``image``, text fields
by name). Images arrive as uploaded files, base64 (plain or a ``data:`` URI) or http(s) URLs, and
nothing else: a string that could name a local file is refused, so no request can make the server
open a path.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request

from ...errors import BadRequest  # re-exported: its old import path


@dataclass
class ImageInput:
    """One image of a request: ``data`` (encoded bytes) or ``url``, and what to call it in errors."""

    label: str
    data: bytes | None = None
    url: str | None = None
    name: str | None = None  # an uploaded file's name, by which a compound query's img: term may name it

    @property
    def item(self) -> bytes | str:
        return self.data if self.data is not None else self.url  # type: ignore[return-value]


@dataclass
class Body:
    """A parsed request: its fields (JSON values or form strings) and its images, in order."""

    fields: dict[str, Any] = field(default_factory=dict)
    images: list[ImageInput] = field(default_factory=list)

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


_URL = re.compile(r"^https?://", re.IGNORECASE)
# Metadata keys the library writes itself: a `where` on them would let a client probe for paths
# (`source`) or content (`digest`), so only the user's own keys are searchable.
RESERVED_KEYS = frozenset({"item_id", "modality", "digest", "source", "document"})
_LIST_FIELDS = ("texts", "labels", "templates")  # form fields that may repeat


async def read_body(request: Request, max_items: int) -> Body:
    """Parse a JSON or multipart request into a :class:`Body`; raise :class:`BadRequest` if malformed.

    Example:
        >>> body = await read_body(request, max_items=64)  # doctest: +SKIP
        >>> body.get("texts"), [i.label for i in body.images]  # doctest: +SKIP
        (['a cat'], ['upload cat.jpg'])
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if kind == "multipart/form-data" or kind == "application/x-www-form-urlencoded":
            body = await _read_form(request, max_items)
        else:
            body = _read_json(await request.body())
    except ClientDisconnect:
        raise BadRequest("the client disconnected before sending the whole request", 400) from None
    if len(body.images) > max_items:
        raise BadRequest(f"{len(body.images)} images in one request, more than the limit of {max_items}", 413)
    for name in _LIST_FIELDS:
        values = body.fields.get(name)
        if values is not None and len(values) > max_items:
            raise BadRequest(f"{len(values)} {name} in one request, more than the limit of {max_items}", 413)
    return body


def _read_json(raw: bytes) -> Body:
    if not raw.strip():
        return Body()
    doc = parse_json(raw, "the request body")
    if not isinstance(doc, dict):
        raise BadRequest(f"the request body must be a JSON object, not {type(doc).__name__}")
    images = doc.pop("images", None)
    if images is None and "image" in doc:
        images = [doc.pop("image")]
    if images is None:
        images = []
    if not isinstance(images, list):
        raise BadRequest("images must be a list of {\"base64\": ...} or {\"url\": ...} objects")
    for name in _LIST_FIELDS:
        if name in doc:
            doc[name] = string_list(doc[name], name)
    return Body(doc, [_json_image(i, image) for i, image in enumerate(images)])


def parse_json(raw: bytes | str, what: str) -> Any:
    """Strict JSON: no ``NaN``/``Infinity`` (nor numbers that overflow to them), bounded nesting.

    Example:
        >>> parse_json('{"k": 3}', "body")
        {'k': 3}
        >>> try:
        ...     parse_json('{"k": Infinity}', "body")
        ... except BadRequest as e:
        ...     print(e.status, e)
        400 body: malformed JSON (Infinity is not a JSON number)
    """
    try:
        return json.loads(raw, parse_constant=_not_a_number, parse_float=_finite)
    except RecursionError:
        raise BadRequest(f"{what}: malformed JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"{what}: malformed JSON ({e})") from None


def _not_a_number(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is too large for a number")
    return value


def _json_image(i: int, image: Any) -> ImageInput:
    label = f"images[{i}]"
    if isinstance(image, dict) and len(image) == 1 and "url" in image:
        return url_image(label, image["url"])
    if isinstance(image, dict) and len(image) == 1 and "base64" in image:
        return ImageInput(label, data=_decode_base64(label, image["base64"]))
    raise BadRequest(f"{label}: an image is {{\"base64\": \"...\"}} or {{\"url\": \"http(s)://...\"}}, got {_short(image)}")


def url_image(label: str, url: Any) -> ImageInput:
    """An image given by URL: http(s) only, never a path on the server's disk."""
    if not isinstance(url, str) or not _URL.match(url):
        raise BadRequest(f"{label}: url must be an http:// or https:// URL, got {_short(url)} "
                         "(the server never opens paths named by a request; upload the file instead)")
    return ImageInput(label, url=url)


def _decode_base64(label: str, text: Any) -> bytes:
    if not isinstance(text, str):
        raise BadRequest(f"{label}: base64 must be a string")
    if text[:5].lower() == "data:":
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"{label}: invalid base64 ({e})") from None


async def _read_form(request: Request, max_items: int) -> Body:
    try:
        form = await request.form(max_files=max_items, max_fields=4 * max_items + 16)
    except (ClientDisconnect, BadRequest):
        raise
    except Exception as e:  # python-multipart's and Starlette's parse errors, worded for the client
        raise BadRequest(f"malformed form data: {e}") from None
    body = Body()
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name not in ("image", "images"):
                raise BadRequest(f"file field {name!r}: upload images under the field name 'image'")
            body.images.append(ImageInput(f"upload {value.filename or len(body.images)}", data=await value.read(),
                                          name=value.filename or None))
        elif name in ("image", "images", "url"):
            body.images.append(url_image(f"{name} field", value))
        elif name in _LIST_FIELDS:
            body.fields.setdefault(name, []).append(value)
        else:
            body.fields[name] = value
    labels = body.fields.get("labels")
    if labels and len(labels) == 1:  # "a,b,c" in one field is the easy way to type labels
        body.fields["labels"] = [v.strip() for v in labels[0].split(",") if v.strip()]
    return body


def string_list(value: Any, name: str) -> list[str]:
    """A list of strings, or a :class:`BadRequest` naming the field and the first bad entry."""
    if isinstance(value, str) or not isinstance(value, list):
        raise BadRequest(f"{name} must be a list of strings, got {_short(value)}")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise BadRequest(f"{name}[{i}] must be a string, got {_short(v)}")
    return value


def integer(body: Body, name: str, default: int, low: int, high: int) -> int:
    """An integer field (JSON number or form string) within ``[low, high]``."""
    value = body.get(name, default)
    try:
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or not low <= number <= high or (isinstance(value, float) and value != number):
        raise BadRequest(f"{name} must be an integer from {low} to {high}, got {_short(value)}")
    return number


def choice(body: Body, name: str, default: str, options: tuple[str, ...]) -> str:
    """A string field that must be one of ``options``."""
    value = body.get(name, default)
    if not isinstance(value, str) or value not in options:
        raise BadRequest(f"{name} must be one of {', '.join(options)}, got {_short(value)}")
    return value


def where_filter(body: Body) -> dict[str, Any] | None:
    """``where``: a JSON object of exact metadata matches (a form sends it as JSON text)."""
    where = body.get("where")
    if where in (None, "", {}):
        return None
    if isinstance(where, str):
        where = parse_json(where, "where")
    # Only plain exact matches: a raw filter string would reach a database's query language.
    if not isinstance(where, dict) or not all(isinstance(k, str) for k in where):
        raise BadRequest("where must be an object of exact matches, e.g. {\"album\": \"space\"}")
    for key, value in where.items():
        if key in RESERVED_KEYS or key.startswith("$") or not key:
            raise BadRequest(f"where: {_short(key)} is not a metadata key you can search on (the library's own "
                             "keys and operators are not)")
        if not isinstance(value, (str, int, float, bool)) or (isinstance(value, float) and not math.isfinite(value)):
            raise BadRequest(f"where[{_short(key)}] must be a string, number or boolean, got {_short(value)}")
    return where


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 60 else text[:59] + "…"


def number(body: Body, name: str, low: float, high: float) -> float | None:
    """An optional number field (JSON number or form string) within ``[low, high]``; ``None`` when absent.

    Example:
        >>> number(Body({"min_score": "0.25"}), "min_score", -1.0, 1.0)
        0.25
    """
    value = body.get(name)
    if value is None or value == "":
        return None
    try:
        number = float(value) if not isinstance(value, bool) and isinstance(value, (int, float, str)) else None
    except (ValueError, OverflowError):
        number = None
    if number is None or not math.isfinite(number) or not low <= number <= high:
        raise BadRequest(f"{name} must be a number from {low:g} to {high:g}, got {_short(value)}")
    return number
