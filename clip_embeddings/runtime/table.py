"""The decision ``dtype="auto"`` starts from: a table of probe results, shipped with the package.

Probing a CPU costs tens of seconds (every candidate path built and timed, an ONNX export), and a
first ``ClipEF()`` should cost seconds. What decides the fastest path is known: the CPU's ISA
level (bf16 is native with AVX512-BF16 or AMX and emulated elsewhere; ONNX Runtime's fp32 image
tower wins where torch is left with fp32), the model family (ResNet convolutions vs ViT linears)
and torch's version. So ``data/decision-table.json`` holds, per (ISA level, family, torch
major.minor), the choice probes made on such CPUs, and :func:`table_decision` turns an entry
into a :class:`~clip_embeddings.runtime.auto.Decision` at once. The probe still runs, in the
background (:mod:`clip_embeddings.runtime.refine`), and its result, cached per machine, replaces the
table's from then on.

Everything here is pure except :func:`load_table` (it reads the file; a damaged file is ignored
with a warning: the machine then starts from exact fp32, as without a table).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import auto
from .auto import Capabilities, Decision

if TYPE_CHECKING:
    from ..core.model import CLIP

__all__ = ["TABLE_FILE", "family_of", "first_decision", "isa_level", "load_table", "table_decision"]

TABLE_FILE = Path(__file__).resolve().parent.parent / "data" / "decision-table.json"
TABLE_VERSION = 1
_log = logging.getLogger("clip_embeddings")


def isa_level(caps: Capabilities) -> str:
    """The part of a CPU's flags that decides the path: ``amx``, ``avx512_bf16``, ``avx512``, ``avx2`` or ``baseline``.

    Example:
        >>> isa_level(Capabilities("AMD EPYC", ("avx2", "avx512f"), "AVX512", "2.13.0"))
        'avx512'
    """
    for flag, level in (("amx_bf16", "amx"), ("avx512_bf16", "avx512_bf16"), ("avx512f", "avx512"), ("avx2", "avx2")):
        if flag in caps.flags:
            return level
    return "baseline"


def family_of(architecture: str) -> str:
    """``"vit"`` or ``"resnet"`` from :func:`~clip_embeddings.runtime.auto.architecture_of`'s signature.

    Example:
        >>> family_of("vit-w768-l12-p32-r224-text512x12")
        'vit'
    """
    return architecture.split("-", 1)[0].rstrip("0123456789")


def _torch_minor(version: str) -> tuple[int, int]:
    parts = version.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def _split(name: str) -> tuple[str, tuple[str, ...]]:
    dtype, *rewrites = name.split("+")
    return dtype, tuple(rewrites)


def table_decision(caps: Capabilities, architecture: str, entries: Sequence[Mapping[str, Any]], *,
                   rewrites: Mapping[str, Sequence[str]], onnx_available: bool) -> Decision | None:
    """The table's decision for this CPU and architecture, or ``None`` where the table has no row for them.

    An entry for this ISA level and family with this torch major.minor wins; else the one with the
    nearest torch version (what decides the path changes slowly between versions; the probe checks).
    ``rewrites`` maps ``"fp32"`` / ``"bf16"`` to the rewrites this model and torch support: an
    entry's rewrite that does not apply is dropped. Where the entry says ``ort`` and ONNX Runtime
    is not installed, the image tower runs fp32 with every rewrite instead. bf16 is never taken on
    a CPU without native bf16, and int8 never at all, whatever a (hand-edited) table says: how
    well int8 keeps the embeddings depends on the weights, so only a probe of them can choose it.

    Example:
        >>> caps = Capabilities("AMD EPYC", ("avx2",), "AVX2", "2.13.0")
        >>> rows = [{"isa": "avx2", "family": "vit", "torch": "2.13", "image": "ort", "text": "fp32+onednn"}]
        >>> table_decision(caps, "vit-w768-l12-p32-r224-text512x12", rows,
        ...                rewrites={"fp32": ("onednn",)}, onnx_available=True).precision
        'ort, text fp32+onednn'
    """
    level, family, version = isa_level(caps), family_of(architecture), _torch_minor(caps.torch_version)
    rows = [e for e in entries if e.get("isa") == level and e.get("family") == family]
    if not rows:
        return None
    def distance(entry: Mapping[str, Any]) -> tuple[int, int]:
        major, minor = _torch_minor(str(entry.get("torch", "")))
        return abs(major - version[0]), abs(minor - version[1])

    row = min(rows, key=distance)
    why = f"table: {level}, {family}, torch {row.get('torch')} ({row.get('source', 'no source given')})"

    def tower(name: str, label: str) -> Decision:
        dtype, wanted = _split(str(name))
        note = ""
        if dtype == "ort" and not onnx_available:
            dtype, wanted, note = "fp32", tuple(rewrites.get("fp32", ())), "; ONNX Runtime not installed: fp32"
        if dtype == "int8":
            dtype, wanted, note = "fp32", tuple(rewrites.get("fp32", ())), "; int8 is only taken from a probe: fp32"
        elif dtype == "bf16" and not caps.native_bf16 or dtype not in ("fp32", "bf16", "ort"):
            dtype, wanted, note = "fp32", tuple(rewrites.get("fp32", ())), f"; {name} not usable here: fp32"
        kept = () if dtype == "ort" else tuple(r for r in wanted if r in rewrites.get(dtype, ()))
        return Decision(dtype, kept, f"{label}{why}{note}", caps, source="table")

    image, text = tower(row.get("image", "fp32"), "images: "), tower(row.get("text", "fp32"), "texts: ")
    if text.precision != image.precision:
        image.text = text
    return image


@lru_cache(maxsize=4)
def load_table(path: Path = TABLE_FILE) -> tuple[dict[str, Any], ...]:
    """The table's entries; an unreadable or malformed file gives none, with a warning (read once per process).

    Example:
        >>> any(e["isa"] == "avx2" for e in load_table())
        True
    """
    try:
        data = json.loads(Path(path).read_text())
        entries = data["entries"] if isinstance(data, dict) and data.get("version") == TABLE_VERSION else None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError(f"expected {{'version': {TABLE_VERSION}, 'entries': [...]}}")
        return tuple(entries)
    except FileNotFoundError:
        return ()
    except (OSError, ValueError, KeyError, TypeError) as e:
        message = f"ignoring the decision table {path}: {e}; dtype='auto' starts from exact fp32 and probes"
        _log.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return ()


def first_decision(model: CLIP, caps: Capabilities | None = None, *, onnx_available: bool = False,
                   table: Sequence[Mapping[str, Any]] | None = None) -> Decision:
    """What ``auto`` runs from the first call, without timing anything: the work is a file read.

    In order: a model too small to probe runs exact fp32; a decision probed on this machine before
    (the cache); the shipped table's entry for this CPU's ISA level, model family and torch
    (``source="table"``); else exact fp32 with every rewrite (``source="default"``). Whether the
    probe should still run is the caller's (:mod:`clip_embeddings.runtime.refine`): wherever
    ``source != "probe"``.

    Example:
        >>> first_decision(ce.build_model(sd)).source  # doctest: +SKIP
        'table'
    """
    from .inference import applicable_rewrites

    caps = caps or auto.detect_capabilities()
    rewrites = applicable_rewrites(model)
    weights = auto.matrix_weights(model)
    if weights < auto.MIN_PROBE_WEIGHTS:
        return auto.small_model_decision(caps, rewrites, weights)
    architecture = auto.architecture_of(model)
    hit = auto.cached_decision(caps, architecture)
    if hit is not None:
        return hit
    by_dtype = {"fp32": rewrites}
    if caps.native_bf16:
        by_dtype["bf16"] = applicable_rewrites(model, torch.bfloat16)
    decision = table_decision(caps, architecture, load_table() if table is None else table, rewrites=by_dtype,
                              onnx_available=onnx_available)
    if decision is not None:
        return decision
    return Decision("fp32", tuple(rewrites), f"no table entry for this CPU and model ({architecture}): exact fp32 "
                    "with every rewrite until the probe has run", caps, source="default")
