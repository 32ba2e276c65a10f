"""``POST /query``: a compound query (weighted texts, images and stored items), or more-like-this.

A request gives exactly one of:

* ``query``: a string in the syntax of :mod:`clip_embeddings.collection.query`, e.g.
  ``2:beach + img:0 - "people" + id:3f2a``;
* ``terms``: a list of ``{"text": ...}``, ``{"image": <upload index or file name>}``,
  ``{"url": "https://..."}`` or ``{"item": <id>}`` objects, each with an optional ``"weight"``;
* ``more_like``: an item id (or a list of ids; a form sends them comma-separated), with optional
  ``unlike`` ids: the items themselves are never returned.

The query vector is ``normalize(sum w_i e_i)`` over the terms, as ``store.query`` computes it.
An image term is an uploaded image (by its index in ``images`` or its file name), an http(s) URL
fetched by the guarded loader, or a stored item: never a path on the server's disk. The budget
(terms, characters, weights, URLs) is checked before anything is queued for the model; texts and
images are encoded by the server's batcher like every other route, stored items are read from
the store.
"""

from __future__ import annotations

import asyncio
import math
import os
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ...collection.query import Item, Term, combine, item_vectors, parse_query
from .budget import check_images
from .inputs import BadRequest, Body, ImageInput, parse_json, url_image
from .limits import ServeLimits
from .service import ITEM_ID, Service

MAX_WEIGHT = 1_000.0  # |weight| beyond this only risks overflow: the sum is normalised anyway
_KEYS = ("text", "image", "url", "item")


def read_terms(body: Body, limits: ServeLimits) -> tuple[list[Term], list[str], set[str]]:
    """The request's terms, the field each came from, and the ids to leave out of the results.

    Every check here runs before any work is queued: a 4xx names the field.

    Example:
        >>> terms, fields, _ = read_terms(Body({"query": "2:beach - people"}), ServeLimits())
        >>> [str(t) for t in terms], fields
        (['2:text:beach', '-1:text:people'], ['query term 1', 'query term 2'])
    """
    given = [name for name in ("query", "terms", "more_like") if body.get(name) not in (None, "", [])]
    if len(given) != 1:
        raise BadRequest("query takes exactly one of query, terms or more_like"
                         + (f" (got {', '.join(given)})" if given else ""))
    if body.get("unlike") not in (None, "", []) and given != ["more_like"]:
        raise BadRequest("unlike: goes with more_like (in a query or terms, give the item a negative weight)")
    exclude: set[str] = set()  # more_like's own items, never among its hits
    if given == ["query"]:
        terms, exclude = _from_string(body.get("query"), body.images, limits), set()
        fields = [f"query term {i + 1}" for i in range(len(terms))]
    elif given == ["terms"]:
        terms, exclude = _from_list(body.get("terms"), body.images, limits), set()
        fields = [f"terms[{i}]" for i in range(len(terms))]
    else:
        liked, unliked = _ids(body.get("more_like"), "more_like"), _ids(body.get("unlike") or [], "unlike")
        terms = [Term(Item(i), 1.0, "item") for i in liked] + [Term(Item(i), -1.0, "item") for i in unliked]
        fields = [f"more_like[{i}]" for i in range(len(liked))] + [f"unlike[{i}]" for i in range(len(unliked))]
        exclude = set(liked) | set(unliked)
    if len(terms) > limits.max_terms:
        raise BadRequest(f"{given[0]}: {len(terms)} terms in one query, more than the limit of {limits.max_terms}", 413)
    for term, field in zip(terms, fields, strict=True):
        _check_term(term, field, limits)
    check_images([t.value for t in terms if t.kind == "image"], limits)
    return terms, fields, exclude


async def query_vector(service: Service, store: Any, terms: list[Term], fields: list[str],
                       request: Request) -> np.ndarray:
    """``normalize(sum w_i e_i)``: stored items read first (a 404 costs no model time), then the
    texts and images encoded on the model thread, each in one batcher job."""
    vectors: list[Any] = [None] * len(terms)
    items = [i for i, t in enumerate(terms) if t.kind == "item"]
    if items:
        try:
            found = await run_in_threadpool(item_vectors, store, [terms[i].value for i in items])
        except ValueError as e:  # "item 'x' is not stored": name the field that asked for it
            field = next((fields[i] for i in items if repr(terms[i].value.id) in str(e)), "an item term")
            raise BadRequest(f"{field}: {e} in collection {store.name!r}", 404) from None
        for i, v in zip(items, found, strict=True):
            vectors[i] = v
    texts = [i for i, t in enumerate(terms) if t.kind == "text"]
    images = [i for i, t in enumerate(terms) if t.kind == "image"]
    text_vectors, embedded = await asyncio.gather(
        service.run("texts", [terms[i].value for i in texts], request) if texts else _nothing(),
        service.embed_images([terms[i].value for i in images], "raise", request) if images else _nothing(),
    )
    for i, v in zip(texts, text_vectors if texts else [], strict=True):
        vectors[i] = v
    for i, v in zip(images, embedded.embeddings if embedded is not None else [], strict=True):
        vectors[i] = v
    try:
        return combine([t.weight for t in terms], vectors)
    except ValueError as e:
        raise BadRequest(f"the query was refused: {e}") from None


def describe(term: Term, field: str) -> dict[str, Any]:
    """A term as a response shows it: its field, kind and weight, and the text or item id (never bytes)."""
    shown: Any = term.value.id if isinstance(term.value, Item) else term.value if term.kind == "text" else None
    if isinstance(term.value, ImageInput):
        shown = term.value.url or term.value.name
    return {"field": field, "kind": term.kind, "weight": term.weight, "value": shown}


# -- reading the terms --

def _from_string(text: Any, images: list[ImageInput], limits: ServeLimits) -> list[Term]:
    if not isinstance(text, str):
        raise BadRequest("query must be a string, e.g. 2:beach + img:0 - people")
    if len(text) > limits.max_query_chars:
        raise BadRequest(f"query: {len(text):,} characters, more than the limit of {limits.max_query_chars:,}", 413)
    try:
        parsed = parse_query(text)
    except ValueError as e:
        raise BadRequest(f"query: {e}") from None
    out = []
    for i, term in enumerate(parsed):
        if term.kind == "image":
            term = Term(_image(term.value, images, f"query term {i + 1}"), term.weight, "image")
        out.append(term)
    return out


def _from_list(terms: Any, images: list[ImageInput], limits: ServeLimits) -> list[Term]:
    if isinstance(terms, str):  # a form sends the list as JSON text
        terms = parse_json(terms, "terms")
    if not isinstance(terms, list):
        raise BadRequest('terms must be a list of {"text": ...}, {"image": ...}, {"url": ...} or {"item": ...} objects')
    if len(terms) > limits.max_terms:
        raise BadRequest(f"terms: {len(terms)} terms in one query, more than the limit of {limits.max_terms}", 413)
    out = []
    for i, raw in enumerate(terms):
        field = f"terms[{i}]"
        keys = [k for k in _KEYS if isinstance(raw, dict) and k in raw]
        if not isinstance(raw, dict) or len(keys) != 1 or set(raw) - {keys[0], "weight"}:
            raise BadRequest(f'{field}: a term is one of {{"text": ...}}, {{"image": ...}}, {{"url": ...}}, '
                             '{"item": ...}, with an optional "weight"')
        key, value = keys[0], raw[keys[0]]
        weight = _weight(raw.get("weight", 1.0), f"{field}.weight")
        if key == "text":
            if not isinstance(value, str) or not value.strip():
                raise BadRequest(f"{field}.text must be a non-empty string")
            out.append(Term(value, weight, "text"))
        elif key == "item":
            out.append(Term(Item(value), weight, "item"))  # checked with the others in _check_term
        else:
            image = url_image(f"{field}.url", value) if key == "url" else _image(value, images, f"{field}.image")
            out.append(Term(image, weight, "image"))
    return out


def _image(value: Any, images: list[ImageInput], field: str) -> ImageInput:
    """An uploaded image by index or file name, or a URL; anything else (a path) is refused unread."""
    if isinstance(value, str) and value.lower().startswith(("http://", "https://")):
        return url_image(field, value)
    index = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, str) and value.isdecimal() and len(value) < 6:
        index = int(value)
    if index is not None:
        if not 0 <= index < len(images):
            raise BadRequest(f"{field}: no uploaded image {index} (this request has {len(images)})")
        return images[index]
    named = [image for image in images if isinstance(value, str) and image.name == value]
    if named:
        return named[0]
    shown = os.path.basename(value)[:60] if isinstance(value, str) else type(value).__name__
    raise BadRequest(f"{field}: {shown!r} is not an image of this request: an image term is an uploaded image (its "
                     "index or file name), an http(s) URL or a stored item (id:...); the server never opens paths "
                     "on its disk")


def _ids(value: Any, field: str) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{field} must be an item id or a list of item ids")
    return value


def _weight(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or abs(value) > MAX_WEIGHT:
        raise BadRequest(f"{field} must be a number from {-MAX_WEIGHT:g} to {MAX_WEIGHT:g}")
    return float(value)


def _check_term(term: Term, field: str, limits: ServeLimits) -> None:
    _weight(term.weight, f"{field} weight")
    if term.kind == "text" and len(term.value) > limits.max_prompt_chars:
        raise BadRequest(f"{field}: a text of {len(term.value):,} characters, more than the limit of "
                         f"{limits.max_prompt_chars:,}", 413)
    if term.kind == "item" and not (isinstance(term.value.id, str) and ITEM_ID.match(term.value.id)):
        raise BadRequest(f"{field}: not an item id from a search result")


async def _nothing() -> None:
    return None
