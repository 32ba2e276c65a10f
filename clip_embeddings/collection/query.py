"""Compound queries: weighted texts, images and stored items combined into one query vector.

Each term ``i`` has a unit vector ``e_i`` (a text's embedding, an image's embedding, or the
stored vector of an item) and a weight ``w_i`` (default 1; negative pushes away). The query is

    q = normalize(sum_i w_i * e_i)

and results are ranked by cosine similarity to ``q``. Summing unit vectors weights every term
by its ``w`` alone, whatever its modality; a negative weight moves ``q`` away from that term,
so the term's near neighbours fall in the ranking (the direction Marqo and rclip take).

Terms in Python (:func:`as_terms`): a ``str`` is a text; a ``Path``, PIL image, array or
bytes is an image; :class:`Item` names a stored item; ``(term, weight)`` weighs any of them;
:class:`Term` says all three explicitly (``Term("https://x/y.jpg", kind="image")`` for a URL).

The string syntax (:func:`parse_query`, for the CLI and the server) in EBNF::

    query  = [sign] term { sign term } ;
    sign   = "+" | "-" ;                      (* written with spaces around it *)
    term   = [weight ":"] ( prefixed | quoted | words ) ;
    weight = number ;                         (* e.g. 2, 0.5, 1e-1 *)
    prefixed = ("img:" | "image:") path-or-url | "id:" item-id | "text:" words ;
    quoted = '"' chars '"' | "'" chars "'" ;  (* a text, signs inside it are kept *)
    words  = any text up to the next " + " or " - " ;

A bare term that starts with ``./``, ``../``, ``/``, ``~/``, ``http://`` or ``https://`` is
an image; anything else is a text. Example: ``2:beach + img:sunset.jpg - "people"``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

Kind = Literal["text", "image", "item"]
_IMAGE_PREFIXES = ("./", "../", "/", "~/", "http://", "https://")


@dataclass(frozen=True)
class Item:
    """A stored item as a query term: its stored vector (the image's, or the text's for a text item).

    Example:
        >>> Item("3f2a")
        Item(id='3f2a', modality=None)
    """

    id: str
    modality: Literal["image", "text"] | None = None  # None: the image vector if it has one


@dataclass(frozen=True)
class Term:
    """One weighted term of a compound query."""

    value: Any
    weight: float = 1.0
    kind: Kind = "text"

    def __str__(self) -> str:
        shown = self.value.id if isinstance(self.value, Item) else str(self.value)
        return f"{self.weight:g}:{self.kind}:{shown}"


class QueryStore(Protocol):
    """What a compound query needs from a store: its embedding function and stored vectors by id."""

    ef: Any

    def _vectors(self, keys: list[tuple[str, Any]]) -> dict[tuple[str, Any], np.ndarray]: ...  # (id, modality)


def is_compound(query: Any) -> bool:
    """Whether ``query`` is a compound query (a list of terms, an :class:`Item` or a :class:`Term`)."""
    return isinstance(query, (list, tuple, Item, Term))


def as_terms(query: Any) -> list[Term]:
    """The terms of a compound query given as Python values.

    Example:
        >>> [str(t) for t in as_terms(["a beach", ("people", -1.0), Path("sunset.jpg"), Item("42")])]
        ['1:text:a beach', '-1:text:people', '1:image:sunset.jpg', '1:item:42']
    """
    items = list(query) if isinstance(query, (list, tuple)) else [query]
    if not items:
        raise ValueError("a compound query needs at least one term")
    return [_term(x, i) for i, x in enumerate(items)]


def _term(x: Any, index: int) -> Term:
    weight = 1.0
    if isinstance(x, tuple):
        if len(x) != 2 or not isinstance(x[1], (int, float)) or isinstance(x[1], bool):
            raise ValueError(f"term {index}: a weighted term is (term, weight), got {x!r}")
        x, weight = x[0], float(x[1])
    if isinstance(x, Term):
        return Term(x.value, x.weight * weight, x.kind)
    if isinstance(x, Item):
        return Term(x, weight, "item")
    if isinstance(x, str):
        if not x.strip():
            raise ValueError(f"term {index}: an empty text")
        return Term(x, weight, "text")
    if isinstance(x, (list, tuple, dict, int, float)) or x is None:
        raise ValueError(f"term {index}: expected a text, an image or an Item, got {type(x).__name__}")
    return Term(x, weight, "image")


_SEPARATOR = re.compile(r"\s+([+-])\s+")
_WEIGHT = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?):(?!//)")
_QUOTED = re.compile(r"""(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?:)?("[^"]*"|'[^']*')""")


def parse_query(text: str) -> list[Term]:
    """Terms from the string syntax in this module's docstring.

    Example:
        >>> [str(t) for t in parse_query('2:beach + img:sunset.jpg - "people - crowds"')]
        ['2:text:beach', '1:image:sunset.jpg', '-1:text:people - crowds']
        >>> [str(t) for t in parse_query("- 0.5:id:42 + ./dog.jpg + the dog's toy")]
        ['-0.5:item:42', '1:image:./dog.jpg', "1:text:the dog's toy"]
    """
    text, sign, pieces = text.strip(), 1.0, []
    if m := re.match(r"([+-])\s+", text):
        sign, text = (-1.0 if m.group(1) == "-" else 1.0), text[m.end():]
    while True:
        # A term that opens with a quote (after its weight) runs to the closing quote, so a sign
        # inside it is text; any other term runs to the next " + " or " - ".
        quoted = _QUOTED.match(text)
        after = quoted.end() if quoted else 0
        m = _SEPARATOR.search(text, after)
        if m is None:
            pieces.append((sign, text))
            break
        pieces.append((sign, text[:m.start()]))
        sign, text = (-1.0 if m.group(1) == "-" else 1.0), text[m.end():]
    return [_parse_term(raw.strip(), sign, i) for i, (sign, raw) in enumerate(pieces)]


def _parse_term(raw: str, sign: float, index: int) -> Term:
    weight = 1.0
    if (m := _WEIGHT.match(raw)) is not None:
        weight, raw = float(m.group(1)), raw[m.end():]
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        raw = raw[1:-1]
        if (m := _WEIGHT.match(raw)) is not None:  # rclip's "2:dog": the weight inside the quotes
            weight, raw = weight * float(m.group(1)), raw[m.end():]
        kind: Kind = "text"
    elif raw.startswith(("img:", "image:")):
        raw, kind = raw.split(":", 1)[1], "image"
    elif raw.startswith("id:"):
        raw, kind = raw[3:], "item"
    elif raw.startswith("text:"):
        raw, kind = raw[5:], "text"
    else:
        kind = "image" if raw.startswith(_IMAGE_PREFIXES) else "text"
    if not raw.strip():
        raise ValueError(f"query term {index + 1} is empty; write terms like 2:beach + img:sunset.jpg - people")
    if kind == "image" and not raw.startswith(("http://", "https://")):
        raw = os.path.expanduser(raw)
    value: Any = Item(raw) if kind == "item" else raw
    return Term(value, sign * weight, kind)


def query_vector(store: QueryStore, terms: Sequence[Term]) -> np.ndarray:
    """``normalize(sum w_i e_i)`` over the terms: texts and images embedded in one batch each.

    Raises ``ValueError`` naming an item id that is not stored, or when the terms cancel out.
    """
    vectors: list[np.ndarray | None] = [None] * len(terms)
    texts = [i for i, t in enumerate(terms) if t.kind == "text"]
    images = [i for i, t in enumerate(terms) if t.kind == "image"]
    items = [i for i, t in enumerate(terms) if t.kind == "item"]
    if texts:
        for i, v in zip(texts, store.ef.embed_texts([terms[i].value for i in texts]), strict=True):
            vectors[i] = v
    if images:
        values = [Path(terms[i].value) if isinstance(terms[i].value, Path) else terms[i].value for i in images]
        for i, v in zip(images, store.ef.encode_images(values, on_error="raise").embeddings, strict=True):
            vectors[i] = v
    if items:
        for i, v in zip(items, item_vectors(store, [terms[i].value for i in items]), strict=True):
            vectors[i] = v
    return combine([t.weight for t in terms], vectors)


def item_vectors(store: QueryStore, items: Sequence[Item]) -> list[np.ndarray]:
    """The stored vector of each item (its image vector, else its text one, unless it names a modality).

    Raises ``ValueError`` naming the first item that is not stored.
    """
    stored = store._vectors([(item.id, m) for item in items for m in ("image", "text")])
    out = []
    for item in items:
        order = (item.modality,) if item.modality else ("image", "text")
        found = next((stored[(item.id, m)] for m in order if (item.id, m) in stored), None)
        if found is None:
            raise ValueError(f"item {item.id!r} is not stored" + (f" with a {item.modality} vector" if item.modality else ""))
        out.append(found)
    return out


def combine(weights: Sequence[float], vectors: Sequence[Any]) -> np.ndarray:
    """``normalize(sum w_i e_i)``: the query vector of terms whose unit vectors are known.

    Raises ``ValueError`` when the terms cancel out (or a weight is not a finite number).

    Example:
        >>> [round(float(x), 3) for x in combine([2.0, -1.0], [np.array([1.0, 0.0]), np.array([0.0, 1.0])])]
        [0.894, -0.447]
    """
    if not all(np.isfinite(w) for w in weights):
        raise ValueError("every weight must be a finite number")
    total = np.asarray(sum(w * np.asarray(v, np.float64) for w, v in zip(weights, vectors, strict=True)))
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm):
        raise ValueError("the query's weighted sum overflows; use smaller weights")
    if norm < 1e-6:
        raise ValueError("the query's terms cancel out (their weighted sum is zero); change a weight")
    return (total / norm).astype(np.float32)
