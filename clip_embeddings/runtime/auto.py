"""What ``dtype="auto"`` runs on this machine: capabilities, a short probe, a decision, its cache.

The fastest correct path differs between CPUs: bf16 is 2-3x fp32 where the CPU computes it
natively (AMX, AVX512-BF16) and 5-20x slower where torch emulates it (AVX2); oneDNN's packed
linears beat MKL on AMD processors and gain little on Intel's. So ``auto`` decides per machine:

1. :func:`detect_capabilities` reads the CPU's flags (``/proc/cpuinfo``) and torch's view of them.
2. :func:`first_paths` lists the paths worth timing first: plain fp32, and fp32 and (only where
   it is native) bf16 with every applicable rewrite; where bf16 is not native, ONNX Runtime's
   image tower (:func:`onnx_candidate`) and int8 linears (:func:`int8_candidate`,
   :mod:`clip_embeddings.runtime.int8`) join them; a second round times those again beside the
   winner minus each rewrite (:func:`second_paths`), so each rewrite stays only where it pays.
3. :func:`probe` times each path on a fixed canary (seeded images and fixed captions, each tower
   on its own, interleaved repeats) and measures each one's cosine to plain fp32.
4. :func:`decide` (pure: capabilities + probe results in, a :class:`Decision` out) keeps the
   fastest path that beats plain fp32 by ``MARGIN`` with cosine >= ``COSINE_BAR`` (int8:
   ``INT8_COSINE_BAR``), else plain fp32.
   It runs once per tower: on a ResNet model the image tower's best path (convolutions) is not
   always the text tower's (linear layers), so each tower runs its own.
5. The decision is cached in ``cache_dir()/runtime-decisions.json``, keyed by CPU model + torch
   version (+ the architecture), so later start-ups skip the probe.

A first load does not wait for the probe: ``runtime.table.first_decision`` takes the cached decision, else
the shipped table's (:mod:`clip_embeddings.runtime.table`), else exact fp32, at once, and
:mod:`clip_embeddings.runtime.refine` probes in the background (``CLIP_AUTO_PROBE=0``: never).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

if TYPE_CHECKING:
    from ..core.model import CLIP

_log = logging.getLogger("clip_embeddings")

__all__ = [
    "COSINE_BAR", "INT8_COSINE_BAR", "MARGIN", "TOWERS", "Capabilities", "Decision", "PathResult", "auto_decision", "decide",
    "detect_capabilities", "first_paths", "int8_candidate", "path_name", "probe", "probe_allowed", "second_paths",
]

COSINE_BAR = 0.9999  # a reduced-precision path must keep every canary row this close to fp32
# int8 rounds every activation to 1 part in 127 (and, without VNNI, every weight to 1 in 63), so
# it cannot meet the bar above. Its own bar is set from what that rounding costs where nothing
# else goes wrong: on ViT-B/32 weights without outlier channels (random), 256 captions kept
# cosine >= 0.9993 with 8-bit weights and >= 0.9980 with 7-bit ones. 0.997 takes int8 where the
# user's weights quantize about that well and refuses weights whose outlier activations make it
# worse (each row within 4.4 degrees of fp32: a similarity to another unit vector moves by about
# sqrt(2 - 2 * 0.997) / sqrt(512) = 0.003 where the error points nowhere in particular).
INT8_COSINE_BAR = 0.997
MARGIN = 0.05  # a path must be this much faster than plain fp32 to be worth its risk: probe noise
MIN_PROBE_WEIGHTS = 10_000_000  # smaller models: a timing probe measures overhead, not arithmetic
CACHE_VERSION = 4  # bumped when the inference rewrites change what a probe would measure
_FLAGS_SEEN = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "amx_fp16")
_NATIVE_BF16 = ("avx512_bf16", "amx_bf16")
IMAGE_ONLY_REWRITES = ("fold", "channels_last")  # ResNet convolutions: nothing to do in the text tower


# --- capabilities -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Capabilities:
    """What this machine offers the forward pass, as far as the decision needs to know."""

    cpu_model: str
    flags: tuple[str, ...]  # the subset of ``_FLAGS_SEEN`` the CPU reports
    torch_capability: str  # ``torch.backends.cpu.get_cpu_capability()``: the kernels torch picked
    torch_version: str

    @property
    def native_bf16(self) -> bool:
        """Whether the CPU multiplies bf16 in hardware (AMX or AVX512-BF16), not by emulation."""
        return any(flag in self.flags for flag in _NATIVE_BF16)

    @property
    def cache_key(self) -> str:
        return f"{self.cpu_model} | torch {self.torch_version}"


def parse_cpuinfo(text: str) -> tuple[str | None, set[str]]:
    """The first processor's model name and flags from ``/proc/cpuinfo`` text (x86 or ARM).

    Example:
        >>> model, flags = parse_cpuinfo("model name : AMD EPYC\\nflags : fpu avx2 avx512_bf16\\n")
        >>> model, sorted(flags)
        ('AMD EPYC', ['avx2', 'avx512_bf16', 'fpu'])
    """
    model: str | None = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def capabilities_from(cpuinfo: str) -> Capabilities:
    """:class:`Capabilities` from ``/proc/cpuinfo`` text and the running torch."""
    model, flags = parse_cpuinfo(cpuinfo)
    return Capabilities(model or platform.processor() or platform.machine(), tuple(f for f in _FLAGS_SEEN if f in flags),
                        torch.backends.cpu.get_cpu_capability(), torch.__version__)


@lru_cache(maxsize=1)
def detect_capabilities() -> Capabilities:
    """This machine's :class:`Capabilities` (read once per process).

    Without ``/proc/cpuinfo`` (not Linux) no flag is seen, so no bf16 is claimed: fp32 is always
    correct, and the probe still judges the fp32 rewrites.

    Example:
        >>> detect_capabilities().native_bf16  # doctest: +SKIP
        True
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    return capabilities_from(text)


# --- paths, probe results and the decision ----------------------------------------------------

def path_name(dtype: str, rewrites: Sequence[str]) -> str:
    """The name of a precision path, as the embedding cache keys on it: ``"bf16+fold+onednn"``.

    Example:
        >>> path_name("fp32", ("onednn",))
        'fp32+onednn'
    """
    return "+".join([dtype, *rewrites])


def _split(name: str) -> tuple[str, tuple[str, ...]]:
    dtype, *rewrites = name.split("+")
    return dtype, tuple(rewrites)


@dataclass(frozen=True)
class PathResult:
    """One path's probe outcome: seconds for the canary (fastest repeat) and min cosine to plain fp32."""

    seconds: float
    cosine: float


@dataclass
class Decision:
    """What ``auto`` runs and why; ``as_dict()`` is what ``ClipEF.runtime_info()`` reports."""

    dtype: str
    rewrites: tuple[str, ...]
    reason: str
    capabilities: Capabilities
    probe: dict[str, PathResult] = field(default_factory=dict)
    from_cache: bool = False
    text: Decision | None = None  # the text tower's own path where ``auto`` chose one; None: the same
    source: str = "probe"  # "probe" (timed on this machine), "table" (shipped), "default" (exact fp32), "asked"

    @property
    def precision(self) -> str:
        """The path's name; where the text tower runs another path, both: ``"bf16+fold, text bf16+onednn"``."""
        own = path_name(self.dtype, self.rewrites)
        return own if self.text is None else f"{own}, text {self.text.precision}"

    @property
    def text_path(self) -> tuple[torch.dtype, tuple[str, ...]]:
        """(torch dtype, rewrites) of the text tower."""
        tower = self.text or self
        return tower.torch_dtype, tower.rewrites

    @property
    def torch_dtype(self) -> torch.dtype:
        # "ort": ONNX Runtime's fp32 image tower (onnx_backend), which takes fp32 inputs;
        # "int8": fp32 activations, int8 linear layers (prepare_for_inference reads torch.int8 so)
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "ort": torch.float32,
                "int8": torch.int8}[self.dtype]

    def as_dict(self, device: str = "cpu") -> dict[str, Any]:
        out = {
            "device": device, "dtype": self.dtype, "precision": self.precision, "rewrites": list(self.rewrites),
            "cpu": self.capabilities.cpu_model, "cpu_flags": list(self.capabilities.flags),
            "torch_capability": self.capabilities.torch_capability, "torch": self.capabilities.torch_version,
            "native_bf16": self.capabilities.native_bf16, "from_cache": self.from_cache, "source": self.source,
            "reason": self.reason,
            "probe": {name: asdict(result) for name, result in self.probe.items()},
        }
        if self.text is not None:
            out["text"] = {"dtype": self.text.dtype, "precision": self.text.precision, "rewrites": list(self.text.rewrites),
                           "reason": self.text.reason, "probe": {n: asdict(r) for n, r in self.text.probe.items()}}
        return out


def first_paths(caps: Capabilities, rewrites: Sequence[str]) -> list[str]:
    """The probe's first round: plain fp32, and each allowed dtype with every applicable rewrite.

    Example:
        >>> first_paths(Capabilities("cpu", ("avx512_bf16",), "AVX512", "2.13.0"), ("onednn",))
        ['fp32', 'fp32+onednn', 'bf16+onednn']
    """
    dtypes = ["fp32", "bf16"] if caps.native_bf16 else ["fp32"]
    return list(dict.fromkeys(["fp32", *(path_name(d, rewrites) for d in dtypes)]))


def text_paths(results: Mapping[str, PathResult], ort_text: str | None = None) -> dict[str, PathResult]:
    """The text tower's view of probe results: image-only rewrites and backends taken out of the names.

    ``fold`` and ``channels_last`` change only ResNet convolutions, so for the text tower
    ``bf16+fold+onednn`` is ``bf16+onednn`` (the fastest timing of a name counts). The ``ort``
    backend runs only the image tower; its text tower runs ``ort_text`` in torch, timed right after
    an ONNX Runtime image batch, as a user alternating images and captions runs it: where that is
    slower than the same text path after torch's image tower, the slower timing counts (the two
    runtimes' threads share the cores). Without ``ort_text`` the ``ort`` entry is dropped.

    Example:
        >>> sorted(text_paths({"fp32": PathResult(1, 1), "bf16+fold+onednn": PathResult(.5, 1), "ort": PathResult(.9, 1)}))
        ['bf16+onednn', 'fp32']
        >>> text_paths({"fp32": PathResult(1, 1), "fp32+onednn": PathResult(.5, 1), "ort": PathResult(.6, 1)},
        ...            ort_text="fp32+onednn")["fp32+onednn"].seconds
        0.6
    """
    out: dict[str, PathResult] = {}
    for name, result in results.items():
        dtype, rewrites = _split(name)
        if dtype == "ort":
            continue
        key = path_name(dtype, tuple(r for r in rewrites if r not in IMAGE_ONLY_REWRITES))
        if key not in out or result.seconds < out[key].seconds:
            out[key] = result
    if ort_text is not None and "ort" in results:
        after_ort = results["ort"]
        if ort_text not in out or after_ort.seconds > out[ort_text].seconds:
            out[ort_text] = after_ort
    return out


def onnx_candidate(caps: Capabilities, available: bool) -> bool:
    """Whether the probe also times ONNX Runtime's fp32 image tower (the ``"ort"`` path).

    Only where the CPU has no native bf16: there torch is left with fp32 too, and ONNX Runtime's
    fused kernels can win (a ResNet on a 2-core EPYC: 1.76x openai/CLIP vs torch fp32's 1.28x).
    Where bf16 is native, it does the same work at twice the rate (2.5x vs 1.76x there), so the
    export (tens of seconds, the tower's size on disk) would buy a candidate that cannot win.

    Example:
        >>> onnx_candidate(Capabilities("cpu", ("avx2",), "AVX2", "2.13.0"), available=True)
        True
    """
    return available and not caps.native_bf16


def int8_candidate(caps: Capabilities, available: bool) -> bool:
    """Whether the probe also times int8 linear layers (the ``"int8"`` path), in both towers.

    Only where the CPU has no native bf16: there fp32 is all torch has, and integer
    multiply-adds run at twice its rate (AVX2) or more (VNNI). Where bf16 is native it reaches
    the same goals with about eight times less error (1 - cosine: 9e-5 vs 7e-4), so int8 is not offered.

    Example:
        >>> int8_candidate(Capabilities("cpu", ("avx2",), "AVX2", "2.13.0"), available=True)
        True
        >>> int8_candidate(Capabilities("cpu", ("avx2", "avx512_bf16"), "AVX512", "2.13.0"), available=True)
        False
    """
    return available and not caps.native_bf16


def second_paths(winner: str) -> list[str]:
    """The second round: the first round's winner against itself minus each rewrite, and none.

    Each rewrite is judged by what removing it costs, rather than timing every subset (memory:
    each path is a copy of the model). ``channels_last`` lives in the folded convolutions, so
    dropping ``fold`` drops it too.

    Example:
        >>> second_paths("bf16+fold+channels_last+onednn")  # doctest: +NORMALIZE_WHITESPACE
        ['fp32', 'bf16+fold+channels_last+onednn', 'bf16+onednn', 'bf16+fold+onednn', 'bf16+fold+channels_last',
         'bf16']
    """
    dtype, rewrites = _split(winner)
    subsets = [tuple(r for r in rewrites if r != drop) for drop in rewrites] + [()]
    subsets = [s if "fold" in s else tuple(r for r in s if r != "channels_last") for s in subsets]
    return list(dict.fromkeys(["fp32", winner, *(path_name(dtype, s) for s in subsets)]))


def decide(caps: Capabilities, results: Mapping[str, PathResult], *, margin: float = MARGIN,
           cosine_bar: float = COSINE_BAR, int8_bar: float = INT8_COSINE_BAR) -> Decision:
    """Pick the path ``auto`` runs from a capability report and probe results; no timing here.

    Plain ``"fp32"`` is the baseline and the fallback. A path is eligible when its dtype is one
    the CPU computes natively (bf16 needs AMX or AVX512-BF16, whatever the probe says), its canary
    cosine to fp32 is at least ``cosine_bar``, and it is faster than the baseline by ``margin``.
    The fastest eligible path wins. int8 paths are held to ``int8_bar`` instead (they round
    every activation; see ``INT8_COSINE_BAR``).

    Example:
        >>> caps = Capabilities("cpu", ("avx512_bf16",), "AVX512", "2.13.0")
        >>> decide(caps, {"fp32": PathResult(1.0, 1.0), "bf16": PathResult(0.5, 0.99995)}).precision
        'bf16'
    """
    if "fp32" not in results:
        raise ValueError(f"the probe results need the plain 'fp32' baseline, got {sorted(results)}")
    base = results["fp32"].seconds
    eligible, refused = {}, []
    for name, result in results.items():
        dtype, _ = _split(name)
        if name == "fp32":
            continue
        bar = int8_bar if dtype == "int8" else cosine_bar
        if dtype == "bf16" and not caps.native_bf16:
            refused.append(f"{name}: no native bf16 on this CPU")
        elif result.cosine < bar:
            refused.append(f"{name}: canary cosine {result.cosine:.6f} < {bar}")
        elif result.seconds > base * (1 - margin):
            refused.append(f"{name}: {base / result.seconds:.2f}x fp32, not {1 / (1 - margin):.2f}x")
        else:
            eligible[name] = result
    bf16_note = "native bf16 (" + ", ".join(f for f in caps.flags if f in _NATIVE_BF16) + ")" \
        if caps.native_bf16 else "no native bf16 (no AMX or AVX512-BF16 flag)"
    rewrites: tuple[str, ...]
    if not eligible:
        dtype, rewrites = "fp32", ()
        reason = f"{bf16_note}; no path beat plain fp32 by {margin:.0%}"
    else:
        best = min(eligible, key=lambda n: eligible[n].seconds)
        dtype, rewrites = _split(best)
        result = eligible[best]
        reason = f"{bf16_note}; {best} ran the canary at {base / result.seconds:.2f}x plain fp32, cosine {result.cosine:.6f}"
    if refused:
        reason += "; refused " + "; ".join(refused)
    return Decision(dtype, rewrites, reason, caps, dict(results))


def small_model_decision(caps: Capabilities, rewrites: Sequence[str], weights: int) -> Decision:
    """For a model too small to time meaningfully: fp32 with every exact (fp32) rewrite, no probe."""
    return Decision("fp32", tuple(rewrites), f"{weights / 1e6:.1f} M matrix weights (< {MIN_PROBE_WEIGHTS / 1e6:.0f} M): "
                    "too small for a timing probe to tell paths apart; fp32 with every exact rewrite", caps,
                    source="small model")


def cuda_decision(caps: Capabilities) -> Decision:
    return Decision("fp16", (), "CUDA: fp16 weights with SDPA attention (the GPU default)", caps)


# --- the probe ------------------------------------------------------------------------------

_CANARY_SUBJECTS = ("a photo of a dog", "two children playing", "a red bicycle parked", "a plate of pasta",
                    "an old man reading a newspaper", "a small fishing boat", "a woman with an umbrella", "three birds")
_CANARY_PLACES = ("on the beach at sunset", "next to a brick wall covered in graffiti", "in a crowded market",
                  "under heavy snow")


def canary(resolution: int, context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed probe input: 4 seeded images in preprocessed space and 32 fixed captions (7-16 tokens).

    32 captions, not 4: a pass over 4 short rows costs about as much in per-op overhead as in
    arithmetic, so a path with more, smaller ops (int8's quantize steps) loses there what it gains
    on a real batch; more so in the probe's background thread, where each op costs more (libgomp,
    with more threads than cores, stops its workers spinning between ops; ``GOMP_SPINCOUNT=0``
    makes the main thread as slow). Measured held to AVX2: int8 0.9x fp32 on 4 captions in that
    thread, 1.3x on 32 (1.6x on 32 in the main thread).
    """
    from ..core.tokenizer import tokenize

    images = torch.randn(4, 3, resolution, resolution, generator=torch.Generator().manual_seed(14))
    texts = [f"{subject} {place}" for subject in _CANARY_SUBJECTS for place in _CANARY_PLACES]
    return images, tokenize(texts, context_length=context_length, truncate=True)


TOWERS = ("image", "text")


def probe(build: Callable[[str], torch.nn.Module], names: Sequence[str], images: torch.Tensor,
          tokens: torch.Tensor, repeats: int = 3) -> dict[str, dict[str, PathResult]]:
    """Time each path on the canary, each tower on its own, interleaved; compare with plain fp32.

    ``build(name)`` returns the inference model for a path name; ``names`` must include ``"fp32"``.
    Returns ``{"image": {name: result}, "text": {...}}``: the towers are decided separately, as
    the same rewrite can pay in one and cost in the other. Repeats alternate their order so a
    neighbour's load hits all paths alike, and each path's fastest repeat counts: on a shared
    machine the fastest run is the least disturbed one.
    """
    models = {name: build(name) for name in names}
    runs = {"image": lambda model: model.encode_image(images).float(),
            "text": lambda model: model.encode_text(tokens).float()}
    with torch.inference_mode():
        outputs = {tower: {name: run(models[name]) for name in names} for tower, run in runs.items()}  # + warm-up
        times: dict[str, dict[str, list[float]]] = {tower: {name: [] for name in names} for tower in TOWERS}
        for r in range(repeats):
            for name in (names if r % 2 == 0 else list(reversed(names))):
                for tower, run in runs.items():
                    start = time.perf_counter()
                    run(models[name])
                    times[tower][name].append(time.perf_counter() - start)
    return {tower: {name: PathResult(min(times[tower][name]), float(torch.nn.functional.cosine_similarity(
                        outputs[tower][name], outputs[tower]["fp32"], dim=-1).min())) for name in names}
            for tower in TOWERS}


# --- the decision cache ----------------------------------------------------------------------

def decisions_file() -> Path:
    from ..core.download import cache_dir

    return cache_dir() / "runtime-decisions.json"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"version": CACHE_VERSION}
    except (OSError, ValueError) as e:  # damaged: start from the table and probe again rather than fail a start-up
        message = f"ignoring the damaged decision cache {path} ({e}); it is rewritten by the next probe"
        _log.warning(message)
        import warnings

        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return {"version": CACHE_VERSION}
    return data if isinstance(data, dict) and data.get("version") == CACHE_VERSION else {"version": CACHE_VERSION}


def cached_decision(caps: Capabilities, architecture: str, path: Path | None = None) -> Decision | None:
    """The stored decision for this CPU model + torch version + architecture, if any."""
    entry = _read_cache(path or decisions_file()).get("decisions", {}).get(caps.cache_key, {}).get(architecture)
    if not isinstance(entry, dict):
        return None
    try:
        return decision_from_entry(entry, caps)
    except (KeyError, TypeError):
        return None


def decision_from_entry(entry: dict[str, Any], caps: Capabilities) -> Decision:
    """A :class:`Decision` from one stored entry (as :func:`cached_decisions` returns them); KeyError if malformed."""
    text = decision_from_entry(entry["text"], caps) if isinstance(entry.get("text"), dict) else None
    probe_results = {k: PathResult(**v) for k, v in entry.get("probe", {}).items()}
    return Decision(entry["dtype"], tuple(entry["rewrites"]), entry["reason"], caps, probe_results, from_cache=True,
                    text=text)


def _entry_of(decision: Decision) -> dict[str, Any]:
    entry = {"dtype": decision.dtype, "rewrites": list(decision.rewrites), "reason": decision.reason,
             "probe": {k: asdict(v) for k, v in decision.probe.items()}}
    if decision.text is not None:
        entry["text"] = _entry_of(decision.text)
    return entry


def store_decision(decision: Decision, architecture: str, path: Path | None = None) -> None:
    """Add a decision to the cache file (written atomically; a failure only costs a later probe)."""
    path = path or decisions_file()
    data = _read_cache(path)
    entry = _entry_of(decision) | {"time": time.strftime("%Y-%m-%d %H:%M:%S")}
    data.setdefault("decisions", {}).setdefault(decision.capabilities.cache_key, {})[architecture] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass


def cached_decisions(caps: Capabilities | None = None, path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every stored decision for this CPU model + torch version, by architecture (for ``models``)."""
    caps = caps or detect_capabilities()
    return dict(_read_cache(path or decisions_file()).get("decisions", {}).get(caps.cache_key, {}))


# --- putting it together ---------------------------------------------------------------------

def architecture_of(model: CLIP) -> str:
    """A short signature of a CLIP architecture: what a decision made on one model carries to."""
    from ..core.model import Bottleneck, ModifiedResNet

    visual = model.visual
    if isinstance(visual, ModifiedResNet):
        layers = "-".join(str(len(getattr(visual, f"layer{i}"))) for i in (1, 2, 3, 4))
        first = cast(Bottleneck, visual.layer1[0])  # an nn.Sequential of Bottlenecks
        kind = f"resnet{layers}-w{first.conv1.out_channels}"
    else:
        kind = f"vit-w{visual.conv1.out_channels}-l{len(visual.transformer.resblocks)}-p{visual.conv1.kernel_size[0]}"
    return f"{kind}-r{visual.input_resolution}-text{model.transformer.width}x{model.transformer.layers}"


def matrix_weights(model: torch.nn.Module) -> int:
    """How many weights sit in matrix multiplies (linear, convolution, attention, projections)."""
    from ..core.model import MultiheadAttention

    total = 0
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            total += module.weight.numel()
        elif isinstance(module, MultiheadAttention):
            total += module.in_proj_weight.numel()
    return total


def auto_decision(model: CLIP, caps: Capabilities | None = None, use_cache: bool = True,
                  onnx_file: Path | None = None) -> Decision:
    """The decision for this fp32 CPU model on this machine: from the cache, or probed and stored.

    ``model`` is not modified: each probed path runs on its own copy. With ``onnx_file`` (where
    the exported image tower lives) ONNX Runtime is probed too where :func:`onnx_candidate`
    says so; its export is removed again unless it wins.

    Example:
        >>> auto_decision(ce.build_model(sd)).precision  # doctest: +SKIP
        'bf16+onednn'
    """
    import copy

    from . import onnx_backend
    from .inference import applicable_rewrites, prepare_for_inference
    from .int8 import int8_available

    caps = caps or detect_capabilities()
    rewrites = applicable_rewrites(model)
    weights = matrix_weights(model)
    if weights < MIN_PROBE_WEIGHTS:
        return small_model_decision(caps, rewrites, weights)
    architecture = architecture_of(model)
    if use_cache:
        hit = cached_decision(caps, architecture)
        if hit is not None:
            return hit

    ort_text = path_name("fp32", tuple(r for r in applicable_rewrites(model) if r not in IMAGE_ONLY_REWRITES))

    def build(name: str) -> CLIP:
        dtype, chosen = _split(name)
        if dtype == "ort":  # what a user runs with it: ONNX Runtime's images, torch's fp32 texts with their rewrites
            if onnx_file is None:  # "ort" is only probed with a place for its export
                raise ValueError("ONNX Runtime's path needs onnx_file, the place for its export")
            return with_onnx_image_tower(copy.deepcopy(model), onnx_file, text_rewrites=_split(ort_text)[1])
        torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}[dtype]
        return prepare_for_inference(copy.deepcopy(model), torch_dtype, chosen)

    images, tokens = canary(model.visual.input_resolution, model.context_length)
    first_round = first_paths(caps, rewrites)
    if onnx_file is not None and onnx_candidate(caps, onnx_backend.available()):
        first_round.append("ort")
    if int8_candidate(caps, int8_available()):
        first_round.append(path_name("int8", tuple(r for r in rewrites if r in IMAGE_ONLY_REWRITES)))
    results = probe(build, first_round, images, tokens)
    winners = {decide(caps, results["image"]).precision, decide(caps, text_paths(results["text"], ort_text)).precision}
    if winners != {"fp32"}:
        # The second round times the first round's paths again beside each winner's ablations, so
        # the final choice compares numbers from one interleaved round (a neighbour's load shifts rounds).
        second_round = list(dict.fromkeys(first_round + [p for w in sorted(winners) for p in second_paths(w)]))
        results = probe(build, second_round, images, tokens)
    decision, text = decide(caps, results["image"]), decide(caps, text_paths(results["text"], ort_text))
    if decision.dtype != "ort" and onnx_file is not None:
        onnx_file.unlink(missing_ok=True)  # it lost: not worth its disk space
    decision.reason = f"images: {decision.reason}"
    if text.precision != decision.precision:
        text.reason = f"texts: {text.reason}"
        decision.text = text
    store_decision(decision, architecture)
    return decision


def with_onnx_image_tower(model: CLIP, onnx_file: Path, text_rewrites: Sequence[str] = ()) -> CLIP:
    """``model`` (fp32) with its image tower exported to ``onnx_file`` and run by ONNX Runtime.

    The text tower stays in torch, fp32 with ``text_rewrites`` (as ``ClipEF`` runs it beside the backend).
    """
    from .inference import prepare_for_inference
    from .onnx_backend import OnnxImageTower, export_image_tower

    tower = OnnxImageTower(export_image_tower(model, onnx_file), model.visual)
    model = prepare_for_inference(model, torch.float32, (), text=(torch.float32, tuple(text_rewrites)))
    model.visual = tower  # type: ignore[assignment]  # the stand-in CLIP.visual allows (see CLIP.__init__)
    return model


def probe_allowed() -> bool:
    """Whether ``auto`` may probe this machine (in the background); ``CLIP_AUTO_PROBE=0`` says no: the table only.

    Example:
        >>> os.environ["CLIP_AUTO_PROBE"] = "0"
        >>> probe_allowed()
        False
    """
    return os.environ.get("CLIP_AUTO_PROBE", "1").strip().lower() not in ("0", "false", "no", "off")
