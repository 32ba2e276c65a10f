"""The slow part of ``dtype="auto"``, done in the background: the ONNX export and the probe.

A first ``ClipEF()`` runs what :func:`~clip_embeddings.runtime.table.first_decision` says at once (the
cache, else the shipped table), so its first vector costs a model load, not a probe. What is
left runs in one background thread, after the first forward pass has returned:

1. Where the decision runs the image tower in ONNX Runtime and its export is not on disk yet,
   images run in torch (fp32, every rewrite) until the export is written; the tower then switches
   to ONNX Runtime between two batches.
2. Where the decision did not come from a probe on this machine (and ``CLIP_AUTO_PROBE`` is not
   ``0``), the probe runs, in a thread of its own at the lowest CPU priority (nice 19 for that
   thread and the pool threads it starts), so it takes only cycles the user's work leaves idle.
   Its result goes to the decision cache, replacing the table's for every later load, and where
   it differs from what runs, the model switches to it.

Each step says once, on a terminal's stderr and through ``logging``, what it is doing and why.
A failure is logged and leaves the running model as it is: nothing here can break an embedding.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .auto import Capabilities, Decision, auto_decision, path_name

if TYPE_CHECKING:
    from ..core.model import CLIP

__all__ = ["FIRST_USE_WAIT", "announce", "auto_start", "build_inference_model", "interim_decision", "start_refinement"]

FIRST_USE_WAIT = 30.0  # seconds the background work waits for the first forward pass before it starts anyway
# The probe's niceness: 19 takes only cycles nothing else wants, so on a busy machine it waits
# (the table's choice runs meanwhile; a process that exits first simply probes on a later start).
PROBE_NICE = 19
_log = logging.getLogger("clip_embeddings")
_said: set[str] = set()
_said_lock = threading.Lock()


def announce(key: str, message: str, stream: TextIO | None = None) -> bool:
    """Say ``message`` once per process per ``key``: a log record, and a line on stderr if it is a terminal.

    A line of its own (not a status line erased later): it comes from a background thread, while
    the foreground may be drawing a progress bar. Returns whether it was said now.

    Example:
        >>> import io
        >>> announce("doc-example", "exporting ...", stream=io.StringIO())
        True
    """
    with _said_lock:
        if key in _said:
            return False
        _said.add(key)
    _log.info(message)
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            stream.write(f"clip-embeddings: {message}\n")
            stream.flush()
    except (AttributeError, OSError, ValueError):  # a closed or odd stream: the log has it
        pass
    return True


def build_inference_model(model: CLIP, decision: Decision, onnx_file: Path | None) -> CLIP:
    """Turn fp32 ``model``, in place, into what ``decision`` runs (the ONNX export is written if missing)."""
    from .inference import prepare_for_inference
    from .onnx_backend import OnnxImageTower, export_image_tower

    tower = None
    if decision.dtype == "ort":
        if onnx_file is None:
            raise ValueError("the decision runs ONNX Runtime's image tower, but there is no place for its export")
        tower = OnnxImageTower(export_image_tower(model, onnx_file), model.visual)
    model = prepare_for_inference(model, decision.torch_dtype, decision.rewrites, text=decision.text_path)
    if tower is not None:
        model.visual = tower  # type: ignore[assignment]  # the stand-in CLIP.visual allows (see CLIP.__init__)
    return model


def interim_decision(decision: Decision, fp32_rewrites: tuple[str, ...]) -> Decision:
    """What runs while ``decision``'s ONNX export is being written: torch fp32 images, the same texts.

    Example:
        >>> caps = Capabilities("AMD EPYC", ("avx2",), "AVX2", "2.13.0")
        >>> table_ort_decision = Decision("ort", (), "the table's entry", caps, text=Decision("fp32", ("onednn",), "", caps))
        >>> table_ort_decision.precision
        'ort, text fp32+onednn'
        >>> interim_decision(table_ort_decision, ("onednn",)).precision
        'fp32+onednn'
    """
    text_dtype, text_rewrites = decision.text.dtype if decision.text else "fp32", decision.text_path[1]
    text_name = path_name(text_dtype, text_rewrites)
    image_name = path_name("fp32", fp32_rewrites)
    text = None if text_name == image_name else Decision(text_dtype, tuple(text_rewrites),
                                                         decision.text.reason if decision.text else "", decision.capabilities,
                                                         source=decision.source)
    return Decision("fp32", fp32_rewrites, f"{decision.reason}; ONNX Runtime's image tower is being exported in "
                    "the background, torch runs images until it is ready", decision.capabilities, dict(decision.probe),
                    decision.from_cache, text, decision.source)


def auto_start(clip: CLIP, caps: Capabilities, onnx_file: Path | None) -> tuple[Decision, dict[str, Any]]:
    """``auto``'s first decision for ``clip`` (no timing), and the background work it leaves, if any.

    The decision comes from the cache or the shipped table (:func:`~.table.first_decision`); where
    it runs ONNX Runtime's image tower and the export is not written yet, torch runs images until
    it is; where it was not probed on this machine, the probe is left to the background.
    ``pending`` holds what :func:`start_refinement` needs (empty: nothing left to do).

    Example:
        >>> import clip_embeddings as ce
        >>> from clip_embeddings.runtime.auto import detect_capabilities
        >>> onnx_file = Path("image-tower.onnx")  # where the export goes, if the decision runs ONNX Runtime
        >>> decision, pending = auto_start(ce.build_model(sd), detect_capabilities(), onnx_file)
    """
    from . import auto as runtime
    from . import onnx_backend
    from .inference import applicable_rewrites
    from .table import first_decision

    available = onnx_backend.available() and onnx_file is not None
    decision = first_decision(clip, caps, onnx_available=available)
    if decision.dtype == "ort" and not available:  # uninstalled since it was decided
        decision = runtime.Decision("fp32", applicable_rewrites(clip), "ONNX Runtime was chosen but is not installed "
                                    "now: fp32 with every rewrite", caps, text=decision.text, source=decision.source)
    export = decision.dtype == "ort" and onnx_file is not None and not onnx_file.exists()
    probe = decision.source in ("table", "default") and runtime.probe_allowed()
    if not export and not probe:
        return decision, {}
    pending = {"pristine": copy.deepcopy(clip), "target": decision, "export": export, "probe": probe}
    return (interim_decision(decision, applicable_rewrites(clip)) if export else decision), pending


def start_refinement(pristine: CLIP, caps: Capabilities, decision: Decision, *, onnx_file: Path | None,
                     swap: Callable[[CLIP, Decision], None], first_use: threading.Event,
                     export: bool, probe: bool, name: str = "model") -> threading.Thread | None:
    """Start the background work for one loaded model; ``None`` when there is none to do.

    ``pristine`` is an fp32 copy of the model nobody else holds; ``decision`` what the model should
    run (``export``: its ONNX tower is still to be written, and something else runs meanwhile);
    ``swap(model, decision)`` installs a new inference model. ``first_use`` is set after the first
    forward pass: nothing starts before it (or before ``FIRST_USE_WAIT`` seconds).

    Example:
        >>> start_refinement(copy.deepcopy(clip), caps, decision, onnx_file=path, swap=install,  # doctest: +SKIP
        ...                  first_use=event, export=True, probe=True)
    """
    if not export and not probe:
        return None

    def work() -> None:
        first_use.wait(FIRST_USE_WAIT)
        running = decision
        try:
            if export:
                announce(f"export:{onnx_file}", f"exporting {name}'s image tower to ONNX Runtime in the background "
                         "(the faster image path on this CPU, by the decision table; usually 5-30 s once per model); "
                         "images run in torch until it is ready")
                start = time.perf_counter()
                swap(build_inference_model(copy.deepcopy(pristine), decision, onnx_file), decision)
                _log.info("switched %s's image tower to ONNX Runtime after a %.1f s export", name,
                          time.perf_counter() - start)
            if probe:
                announce(f"probe:{name}", f"timing {name}'s candidate paths on this CPU in the background, at the "
                         "lowest priority (first use of this model on this CPU/torch; the table's choice runs "
                         "meanwhile; CLIP_AUTO_PROBE=0 turns this off)")
                probed = _probe_at_low_priority(pristine, caps, onnx_file)
                if probed.precision != running.precision:
                    _log.info("dtype='auto': the probe chose %s for %s where the table said %s; switching, and "
                                 "the decision cache keeps the probe's choice", probed.precision, name, running.precision)
                    swap(build_inference_model(pristine, probed, onnx_file), probed)
                else:
                    _log.info("dtype='auto': the probe confirmed %s for %s", probed.precision, name)
        except Exception as e:  # noqa: BLE001 (the model in place keeps working; say why nothing changed)
            _log.warning("dtype='auto' background work for %s stopped: %s: %s", name, type(e).__name__, e)

    thread = threading.Thread(target=work, name="clip-auto-refine", daemon=True)
    thread.start()
    return thread


def _probe_at_low_priority(pristine: CLIP, caps: Capabilities, onnx_file: Path | None) -> Decision:
    """:func:`auto_decision` (probe, then store) in a thread of its own at ``PROBE_NICE``; returns its decision."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PROBE_NICE)  # Linux: this thread only
        except (AttributeError, OSError):
            pass
        try:
            out["decision"] = auto_decision(pristine, caps, use_cache=False, onnx_file=onnx_file)
        except BaseException as e:  # noqa: BLE001 (handed to the waiting thread)
            out["error"] = e

    thread = threading.Thread(target=run, name="clip-auto-probe", daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["decision"]  # type: ignore[return-value]
