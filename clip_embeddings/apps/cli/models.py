"""``clip-embeddings models``: list the named models and whether each is in the download cache, and what ``auto`` runs here."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..console import emit, format_table
from .common import common_options, human_size


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``models`` sub-parser; :func:`run` carries it out."""
    p = sub.add_parser("models", parents=[common_options()], help="list model names and what is cached",
                       description="List the named models, whether each is in the cache folder, and its size.")
    return p


def run(args: argparse.Namespace) -> int:
    """List the named models and whether each is in the download cache, and what ``auto`` runs here."""
    from urllib.parse import unquote, urlparse

    from ...core.download import MODELS, cache_dir
    from ...runtime import auto as runtime

    root = cache_dir()
    rows, models = [], []
    for name, url in MODELS.items():
        file = root / unquote(Path(urlparse(url).path).name)
        size = file.stat().st_size if file.is_file() else None
        rows.append([name, "not cached" if size is None else "cached", "-" if size is None else human_size(size), file.name])
        models.append({"name": name, "cached": size is not None, "bytes": size, "path": str(file)})
    caps = runtime.detect_capabilities()
    decisions = runtime.cached_decisions(caps)
    machine = {"cpu": caps.cpu_model, "cpu_flags": list(caps.flags), "torch_capability": caps.torch_capability,
               "torch": caps.torch_version, "native_bf16": caps.native_bf16, "decisions_file": str(runtime.decisions_file()),
               "auto_decisions": decisions}
    document = {"command": "models", "cache": str(root), "models": models, "runtime": machine}
    text = [f"cache: {root}  (set CLIP_CACHE_DIR to move it)",
            format_table(["model", "status", "size", "file"], rows, align="llrl"), "",
            f"this machine: {caps.cpu_model}; flags seen: {' '.join(caps.flags) or 'none'}; torch kernels "
            f"{caps.torch_capability}; native bf16: {'yes' if caps.native_bf16 else 'no'}"]
    if decisions:
        text.append('dtype="auto" decisions cached for this CPU and torch ' + caps.torch_version + ":")
        decided = sorted((a, runtime.decision_from_entry(d, caps)) for a, d in decisions.items())
        why = ["; ".join(filter(None, [decision.reason, decision.text.reason if decision.text else None]))
               for _, decision in decided]
        text.append(format_table(["architecture", "path", "why"],
                                 [[arch, d.precision, reason] for (arch, d), reason in zip(decided, why, strict=True)],
                                 align="lll", max_width=120))
    else:
        text.append('dtype="auto": nothing probed yet on this CPU; a first ClipEF() runs the shipped table\'s choice '
                    'and probes in the background')
    emit(args, document, text)
    return 0
