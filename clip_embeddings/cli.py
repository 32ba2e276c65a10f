"""``clip-embeddings``: index, search, classify, evaluate and fine-tune from the shell.

Each subcommand is a thin layer over the library: it parses arguments, calls one public function
and prints a readable table. Errors print one line, ``error: <message>``, and exit with status 1
(2 for usage errors); ``--debug`` prints the traceback instead.

Example::

    $ clip-embeddings index examples/images --db chroma --location ./db --collection photos
    $ clip-embeddings search "a photo of a cat" --db chroma --location ./db --collection photos
    $ clip-embeddings classify examples/images/*.jpg --labels cat,rocket,coffee
    $ clip-embeddings models
    $ clip-embeddings serve --db chroma --location ./db --collection photos
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .console import GracefulStop, UsageError, emit, format_table, one_line, report_error, status
from .loading import default_model

DBS = ("chroma", "qdrant", "lancedb")
_DB_MODULES = {"chroma": ("chromadb", "chroma"), "qdrant": ("qdrant_client", "qdrant"), "lancedb": ("lancedb", "lancedb")}



# --- shared pieces ----------------------------------------------------------------------------

def _make_ef(args: argparse.Namespace, **options: Any):
    from .embedding import ClipEF

    return ClipEF(args.model or default_model(), device=args.device, batch_size=args.batch_size, **options)


def _loaded(ef: Any) -> Any:
    """``ef`` with its model loaded, under a status line on a terminal (a first load takes seconds)."""
    with status(f"loading model {ef.model_name} ..."):
        ef.dim  # noqa: B018  (loads, and checks the weights against a collection's fingerprint)
    return ef


def _skipped_lines(skipped: Sequence[Any]) -> list[str]:
    if not skipped:
        return []
    return ["", f"skipped {len(skipped)} item(s):",
            format_table(["#", "source", "reason"], [[s.index, s.source, s.reason] for s in skipped],
                         align="rll", max_width=80)]


def _skipped_json(skipped: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"index": s.index, "source": s.source, "reason": s.reason} for s in skipped]


def _images_in(paths: Sequence[str]) -> list[str]:
    """Expand folders among ``paths`` into their image files; plain files pass through as given."""
    from .images import iter_image_files

    out: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            out += [str(p) for p in iter_image_files(path)]
        else:
            out.append(path)
    if not out:
        raise UsageError(f"no images found in {', '.join(paths)}")
    return out


def _read_labels(path: str) -> list[str] | dict[str, str]:
    """Labels from a file: one per line (``#`` comments), a JSON list, or a JSON {folder: label} map."""
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        labels = json.loads(text)
        if not isinstance(labels, (list, dict)) or not labels:
            raise UsageError(f"{path}: expected a JSON list of labels or a {{folder: label}} object")
        return labels
    labels = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not labels:
        raise UsageError(f"{path}: no labels in it (one label per line)")
    return labels


def _templates(name: str) -> list[str]:
    from . import zeroshot

    return list(zeroshot.IMAGENET_TEMPLATES if name == "imagenet" else zeroshot.DEFAULT_TEMPLATES)


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(image path, caption) pairs from a CSV (``image,caption`` columns) or JSONL file.

    A CSV may have a header naming ``image`` and ``caption`` (any column order) or be two bare
    columns; a JSONL line is ``{"image": ..., "caption": ...}``. Relative image paths are taken
    relative to the pairs file, so a dataset folder can move as a whole (the current directory is
    tried second).

    Example:
        >>> read_pairs("train.csv")[:1]  # doctest: +SKIP
        [('/data/train/cat.jpg', 'a close-up photo of a tabby cat')]
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: pairs file not found")
    raw: list[tuple[str, str]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                raw.append((str(row["image"]), str(row["caption"])))
            except (ValueError, KeyError, TypeError) as e:
                raise UsageError(f"{path}:{n}: expected {{\"image\": ..., \"caption\": ...}} ({e})") from None
    else:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
        header = [c.strip().lower() for c in rows[0]] if rows else []
        if "image" in header and "caption" in header:
            i, c = header.index("image"), header.index("caption")
            rows = rows[1:]
        else:
            i, c = 0, 1
        for n, row in enumerate(rows, 1):
            if len(row) <= max(i, c):
                raise UsageError(f"{path}: row {n} needs an image path and a caption")
            raw.append((row[i].strip(), row[c].strip()))
    if not raw:
        raise UsageError(f"{path}: no (image, caption) pairs in it")
    pairs = []
    for image, caption in raw:
        candidate = Path(image).expanduser()
        if not candidate.is_absolute():
            beside = path.parent / candidate
            candidate = beside if beside.exists() or not candidate.exists() else candidate
        pairs.append((str(candidate), caption))
    return pairs


def _human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable; keeps type checkers content


# --- commands ---------------------------------------------------------------------------------

def cmd_index(args: argparse.Namespace) -> int:
    """Embed every image under FOLDER (and its captions) into a collection, writing as it goes."""
    from .adapters import open_store
    from .adapters.base import IngestReport
    from .errors import ImageLoadError

    folder = Path(args.folder)
    # Checked before loading a model, so a typo costs milliseconds, not a model load.
    if not folder.exists():
        raise UsageError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder (index takes a directory of images)")
    from ._extras import require

    require(*_DB_MODULES[args.db])  # before any model loads: "pip install 'clip-embeddings[qdrant]'"
    if getattr(args, "engine", "local") == "ray":
        return _index_with_ray(args, folder)
    captions = _captions(args)
    store = open_store(args.db, args.location, args.collection, _make_ef(args, on_error=args.on_error))
    # A progress bar is for people watching; in logs and pipes it is only noise.
    options: dict[str, Any] = {"recursive": not args.no_recursive, "on_error": args.on_error,
                               "progress": sys.stderr.isatty(), "captions": captions}
    if args.extensions:
        options["extensions"] = _extensions(args.extensions)
    report = IngestReport()
    where = f"{args.db} collection {args.collection!r} at {args.location}"
    interrupted = (f"interrupted: {{new}} new item(s) were stored in {where} before the stop ({{stored}} of this "
                   "folder's items are in it); run the same command again to resume, it stores only what is missing")
    try:
        with GracefulStop() as stop:  # a Ctrl-C lets the write in flight land and be counted
            for batch in store.stream_folder(folder, **options):
                report.add(batch)
                if stop.requested:
                    break
    except KeyboardInterrupt:  # the second Ctrl-C: a write may have landed uncounted
        print("\n" + interrupted.format(new=f"at least {report.new}", stored=f"at least {report.stored}"),
              file=sys.stderr)
        return 130
    except ImageLoadError as e:
        raise UsageError(f"{e} (stopped there with --on-error raise; the {report.stored} item(s) before it are "
                         "stored, and a re-run resumes after fixing or removing it)") from e
    if stop.requested:
        print(interrupted.format(new=report.new, stored=report.stored), file=sys.stderr)
        return 130
    counts = {"items": store.count(), "images": store.count("image"), "texts": store.count("text")}
    document = {"folder": str(folder), "db": args.db, "location": str(args.location), "collection": args.collection,
                **report.to_dict(), "collection_counts": counts}
    emit(args, document, [
        f"indexed {folder} into {where}",
        f"  {report}".split("\n")[0],
        f"  the collection now holds {counts['items']} item(s): {counts['images']} image(s), {counts['texts']} text(s)",
    ])
    if not getattr(args, "json", False):
        _print_skipped(report.skipped)
    return 0


def _captions(args: argparse.Namespace) -> dict[str, str] | bool:
    """``--captions FILE`` read now (a bad file fails before the model loads); else auto, or none."""
    if args.no_captions:
        return False
    if args.captions is None:
        return True
    from .captions import read_captions_file

    path = Path(args.captions)
    if not path.is_file():
        raise UsageError(f"{path}: captions file not found")
    return read_captions_file(path)


def _extensions(text: str) -> frozenset[str]:
    return frozenset(e.strip() for e in text.split(",") if e.strip())


def _index_with_ray(args: argparse.Namespace, folder: Path) -> int:
    """``index --engine ray``: list the images here, embed them on the cluster, write through the Store."""
    from .adapters import open_store
    from .distributed.ray import import_ray, index_with_ray
    from .embedding import ClipEF
    from .images import IMAGE_EXTENSIONS, iter_image_files

    ray = import_ray()
    wanted = _extensions(args.extensions) if args.extensions else IMAGE_EXTENSIONS
    files = [str(p) for p in iter_image_files(folder, extensions=wanted, recursive=not args.no_recursive)]
    if not files:
        raise UsageError(f"no images found in {folder}")
    if not ray.is_initialized():
        ray.init(address=None if args.address == "local" else args.address, include_dashboard=False)
    model = args.model or default_model()
    ef = ClipEF(str(Path(model).resolve()) if Path(model).exists() else model, device="cpu",
                batch_size=args.batch_size, cache=False)
    store = open_store(args.db, args.location, args.collection, ef)
    report = index_with_ray(files, model=model, sink=store, num_actors=args.num_actors, batch_size=args.batch_size,
                            num_gpus=args.num_gpus or 0, progress=sys.stderr.isatty())  # bars are noise in logs
    document = {"folder": str(folder), "db": args.db, "location": str(args.location), "collection": args.collection,
                "engine": "ray", "stored": report.stored, "elapsed_s": report.elapsed,
                "skipped": [{"source": s, "reason": r} for s, r in report.skipped], "collection_items": store.count()}
    emit(args, document, [
        f"indexed {folder} into {args.db} collection {args.collection!r} at {args.location} with Ray "
        f"({args.num_actors} actors)",
        f"  stored {report.stored} item(s), skipped {len(report.skipped)} in {report.elapsed:.1f} s "
        f"({report.items_per_second:.0f} items/s); the collection now holds {store.count()} item(s)",
    ])
    if report.skipped and not getattr(args, "json", False):
        print(f"\nskipped {len(report.skipped)} item(s):")
        print(format_table(["source", "reason"], report.skipped, align="ll", max_width=80))
    if report.skipped and args.on_error == "raise":
        return 1  # the good items are stored (idempotently); the status says not all were
    return 0


def _add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scale-out (Ray)")
    group.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="embed in this process (local) or on a Ray cluster (ray; pip install clip-embeddings[ray])")
    group.add_argument("--address", default="auto", metavar="ADDR",
                       help="Ray cluster address: auto (the running cluster), ray://HOST:10001, or local (default: auto)")
    group.add_argument("--num-actors", type=_positive_int, default=2, metavar="N", help="model replicas (default: 2)")
    group.add_argument("--num-gpus", type=float, default=0, metavar="G",
                       help="GPUs per actor; fractions share a GPU (default: 0, CPU)")


def cmd_search(args: argparse.Namespace) -> int:
    """Query a collection with a text or an image and print the nearest items."""
    if (args.query is None) == (args.image is None):
        raise UsageError("search takes a QUERY_TEXT or --image PATH, exactly one of them")
    if args.image is not None and not os.path.exists(args.image) and "://" not in args.image:
        raise UsageError(f"{args.image}: image not found")
    store = _open_search_store(args)
    if store.count(args.modality) == 0:
        hint = ("fill it with `clip-embeddings index` first" if args.modality == "image" else
                "index a folder with captions (captions.json, captions.csv or .txt files beside the images)")
        raise UsageError(f"{args.db} collection {args.collection!r} at {args.location} holds no {args.modality} "
                         f"records; {hint}")
    _loaded(store.ef)
    if args.image is not None:
        hits = store.query(image=args.image, k=args.k, modality=args.modality)
    else:
        hits = store.query(args.query, k=args.k, modality=args.modality)
    query = f"image {args.image}" if args.image is not None else repr(args.query)
    document = {
        "command": "search", "db": args.db, "location": args.location, "collection": args.collection,
        "query": {"text": args.query} if args.image is None else {"image": args.image},
        "modality": args.modality, "k": args.k,
        "hits": [{"rank": rank, "id": h.id, "score": h.score, "source": h.source, "document": h.document,
                  "modality": h.modality, "metadata": h.metadata} for rank, h in enumerate(hits, 1)],
    }
    text = [f"{len(hits)} nearest {args.modality} record(s) to {query} in {args.db} collection {args.collection!r}:"]
    if hits:
        rows = [[rank, h.score, h.id, h.source or h.document or ""] for rank, h in enumerate(hits, 1)]
        headers = ["rank", "score", "id", "source" if args.modality == "image" else "document"]
        if args.modality == "image" and any(h.document for h in hits):
            headers.append("caption")
            for row, h in zip(rows, hits):
                row.append(h.document or "")
        text.append(format_table(headers, rows, align="rrll", max_width=250))  # whole paths: they get copied
    emit(args, document, text)
    return 0


def _open_search_store(args: argparse.Namespace):
    """Open an existing collection; without --model, with the model it was indexed with.

    Searching only reads: ``open_store(create=False)`` reports a location without a database, never makes one.
    """
    from ._extras import require
    from .adapters import open_store
    from .errors import CollectionNotFoundError

    # A missing database client is the first thing to say, wherever the location points.
    require(*_DB_MODULES[args.db])
    # With --model the store checks those weights against the collection's, so a wrong one fails
    # with a message naming the right one instead of returning meaningless neighbours.
    ef = _loaded(_make_ef(args)) if args.model else None
    try:
        store = open_store(args.db, args.location, args.collection, ef, create=False)
    except CollectionNotFoundError as e:
        raise UsageError(f"no {args.db} collection {args.collection!r} at {args.location}; "
                         "create it with `clip-embeddings index FOLDER ...` first") from e
    if ef is not None:
        return store
    # The rebuilt embedding function keeps the stored model; where to run it is this machine's call.
    store.ef.device, store.ef.batch_size = args.device, args.batch_size
    return store


def cmd_classify(args: argparse.Namespace) -> int:
    """Zero-shot classify images over a label set and print each image's top labels."""
    from .zeroshot import classify

    labels = _label_list(args)
    images = _images_in(args.images)
    result = classify(images, labels, _templates(args.templates), ef=_loaded(_make_ef(args)), top_k=args.k,
                      on_error="skip")
    names = _short_names(images)
    rows = []
    for index, top_labels, top_scores in zip(result.indices, result.top_labels, result.top_scores):
        for rank, (label, prob) in enumerate(zip(top_labels, top_scores), 1):
            rows.append([names[index] if rank == 1 else "", rank, label, prob])
    document = {
        "command": "classify", "labels": labels, "templates": args.templates,
        "results": [{"image": images[index], "labels": [{"label": label, "probability": float(prob)}
                                                        for label, prob in zip(top_labels, top_scores)]}
                    for index, top_labels, top_scores in zip(result.indices, result.top_labels, result.top_scores)],
        "skipped": _skipped_json(result.skipped),
    }
    text = [f"zero-shot classification of {len(images)} image(s) over {len(labels)} label(s) "
            f"({args.templates} templates):"]
    if rows:
        text.append(format_table(["image", "rank", "label", "probability"], rows, align="lrlr"))
    emit(args, document, text + _skipped_lines(result.skipped))
    return 0 if result.indices else 1


def _short_names(paths: Sequence[str]) -> list[str]:
    """File names, unless two share one: then the paths as given."""
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else list(paths)


def _print_skipped(skipped: Sequence[Any]) -> None:
    for line in _skipped_lines(skipped):
        print(line)


def _label_list(args: argparse.Namespace) -> list[str]:
    if args.labels_file:
        labels = _read_labels(args.labels_file)
        labels = list(labels.values()) if isinstance(labels, dict) else labels
    else:
        labels = [label.strip() for label in (args.labels or "").split(",") if label.strip()]
    if len(labels) < 2:
        raise UsageError("classify needs at least two labels (--labels a,b,c or --labels-file FILE)")
    return labels


def cmd_eval(args: argparse.Namespace) -> int:
    """Zero-shot accuracy on an ImageFolder-style dataset (one sub-folder per class)."""
    from .evaluation import evaluate

    dataset = Path(args.dataset)
    if not dataset.is_dir():
        raise UsageError(f"{dataset}: dataset folder not found (expected one sub-folder of images per class)")
    labels: Any = None
    if args.labels:
        if not os.path.isfile(args.labels):
            raise UsageError(f"{args.labels}: labels file not found")
        labels = _read_labels(args.labels) if args.labels.endswith(".json") else args.labels
    result = evaluate(dataset, labels, ef=_loaded(_make_ef(args, on_error="skip")),
                      templates=_templates(args.templates), progress=sys.stderr.isatty())
    classes = len(result.per_class)
    skipped = getattr(result, "skipped", [])
    document = {
        "command": "eval", "dataset": str(dataset), "templates": args.templates, "n": result.n,
        "top1": result.top1, "top5": result.top5,
        "per_class": [{"class": folder, "label": c.label, "n": c.n, "top1": _number(c.top1), "top5": _number(c.top5)}
                      for folder, c in result.per_class.items()],
        "skipped": _skipped_json(skipped),
    }
    text = [f"zero-shot evaluation on {dataset}: {result.n} image(s), {classes} class(es), {args.templates} templates",
            f"  top-1 accuracy: {result.top1:.2%}",
            f"  top-5 accuracy: {result.top5:.2%}" + (f" (top-{classes}: only {classes} classes)" if classes < 5 else "")]
    if result.per_class:
        rows = [[folder, c.label, c.n, _percent(c.top1), _percent(c.top5)] for folder, c in result.per_class.items()]
        text += ["", format_table(["class", "label", "n", "top-1", "top-5"], rows, align="llrrr")]
    emit(args, document, text + _skipped_lines(skipped))
    return 0


def _number(value: float) -> float | None:
    """JSON has no NaN: a class folder without images has no accuracy (null)."""
    return None if value != value else float(value)


def _percent(value: float) -> str:
    return "-" if value != value else f"{value:.1%}"  # nan: a class folder without images


def cmd_finetune(args: argparse.Namespace) -> int:
    """Contrastively fine-tune a model on (image, caption) pairs and save the checkpoint."""
    from .finetune import finetune

    if args.freeze_image and args.freeze_text:
        raise UsageError("--freeze-image and --freeze-text together leave nothing to train")
    pairs = read_pairs(args.pairs)
    if len(pairs) < 2:
        raise UsageError(f"{args.pairs}: fine-tuning needs at least 2 pairs (the other pairs of a batch are the negatives)")
    result = finetune(
        args.model, pairs, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        freeze_image=args.freeze_image, freeze_text=args.freeze_text, output=args.output,
        device=args.device, warmup_steps=args.warmup_steps, on_error=args.on_error, progress=sys.stderr.isatty(),
    )
    frozen = [name for name, flag in (("image", args.freeze_image), ("text", args.freeze_text)) if flag]
    output = result.output or args.output
    document = {
        "command": "finetune", "model": args.model, "pairs": len(pairs), "epochs": args.epochs,
        "frozen": frozen, "epoch_losses": [float(v) for v in result.epoch_losses], "output": str(output),
        "skipped": _skipped_json(result.skipped),
    }
    text = [f"fine-tuned {args.model} on {len(pairs)} pair(s) for {args.epochs} epoch(s)"
            + (f", {frozen[0]} tower frozen" if frozen else "")]
    if result.epoch_losses:
        text.append(format_table(["epoch", "mean loss"], [[i, float(v)] for i, v in enumerate(result.epoch_losses, 1)]))
    text += _skipped_lines(result.skipped)
    text += [f"saved checkpoint: {output}", f"use it with --model {output} (or ce.load({str(output)!r}) in Python)"]
    emit(args, document, text)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """List the named models and whether each is in the download cache, and what ``auto`` runs here."""
    from urllib.parse import unquote, urlparse

    from . import runtime
    from .download import MODELS, cache_dir

    root = cache_dir()
    rows, models = [], []
    for name, url in MODELS.items():
        file = root / unquote(Path(urlparse(url).path).name)
        size = file.stat().st_size if file.is_file() else None
        rows.append([name, "not cached" if size is None else "cached", "-" if size is None else _human_size(size), file.name])
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
        text.append(format_table(["architecture", "path", "why"],
                                 [[arch, decision.precision, "; ".join(filter(None, [decision.reason, decision.text and decision.text.reason]))]
                                  for arch, decision in sorted((a, runtime.decision_from_entry(d, caps)) for a, d in decisions.items())],
                                 align="lll", max_width=120))
    else:
        text.append('dtype="auto": nothing decided yet on this CPU; the first ClipEF() load of a model probes it')
    emit(args, document, text)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """Show, prune or clear the embedding cache (``stats`` / ``prune`` / ``clear``)."""
    from .cache import EmbeddingCache, parse_size
    from .download import cache_dir

    path = Path(args.path) if args.path else cache_dir() / "embeddings.sqlite3"
    if args.action != "stats" and not path.is_file():
        raise UsageError(f"no embedding cache at {path} (nothing to {args.action})")
    max_bytes = parse_size(args.max_size) if args.max_size is not None else None
    cache = EmbeddingCache(path, max_bytes=max_bytes)
    document: dict[str, Any] = {"action": args.action}
    if args.action == "prune":
        document["removed"] = cache.prune()
    elif args.action == "clear":
        document["removed"] = cache.clear()
    stats = cache.stats()
    cache.close()
    if stats["disabled"]:
        raise UsageError(f"the embedding cache {path} cannot be used: {stats['disabled']}")
    document.update(stats)
    lines = [f"cache: {path}  (set CLIP_CACHE_DIR to move it, CLIP_CACHE_MAX_BYTES to change the cap)"]
    if "removed" in document:
        lines.append(f"removed {document['removed']} vector(s)")
    lines.append(format_table(["entries", "models", "file digests", "live size", "on disk", "cap"], [[
        stats["entries"], stats["models"], stats["file_digests"], _human_size(stats["live_bytes"]),
        _human_size(stats["file_bytes"]), _human_size(stats["max_bytes"])]], align="rrrrrr"))
    emit(args, document, lines)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve one loaded model (and a collection) over HTTP until interrupted."""
    try:
        from .server import ServeLimits, serve
        from .server.limits import default_allowed_hosts
    except ImportError as e:
        raise UsageError(f"serve needs the serve extra ({e.name} is missing): pip install 'clip-embeddings[serve]'") from None
    if (args.location is None) != (args.collection is None):
        raise UsageError("serve takes --location and --collection together (or neither, to serve only /embed and /classify)")
    store = None
    if args.collection is not None:
        store = _open_search_store(args)  # the collection's own model unless --model says otherwise
        ef = store.ef
    else:
        ef = _make_ef(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # before the model's first pass, which sizes torch's pool
    token = args.token or os.environ.get("CLIP_EMBEDDINGS_TOKEN") or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        print(f"warning: serving on {args.host} without --token: anyone who can reach it can use it", file=sys.stderr)
    limits = ServeLimits(
        max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels, request_timeout=args.timeout,
        max_queue=args.max_queue, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_items=args.max_items,
        max_templates=args.max_templates, max_prompts=args.max_prompts, max_prompt_chars=args.max_prompt_chars,
        max_urls=args.max_urls, token=token,
        allowed_hosts=tuple(args.allowed_hosts) if args.allowed_hosts else default_allowed_hosts(args.host), allow_private_urls=args.allow_private_urls,
    )
    where = f"{args.db} collection {args.collection!r} at {args.location}" if store is not None else "no collection"
    print(f"serving {ef.model_name} ({where}) on http://{args.host}:{args.port}/", file=sys.stderr)
    serve(ef, store, limits, host=args.host, port=args.port, root_path=args.root_path)
    return 0


def benchmarks_script() -> Path:
    """Where ``benchmarks/run_all.py`` is in a source checkout (it is not part of the wheel)."""
    return Path(__file__).resolve().parent.parent / "benchmarks" / "run_all.py"


def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``benchmarks/run_all.py`` with this interpreter, passing the remaining arguments on."""
    script = benchmarks_script()
    if not script.is_file():
        raise UsageError(
            f"{script} not found: the benchmarks ship with the source checkout, not the installed package. "
            "Clone the repository and run `clip-embeddings bench` (or `make bench`) from there."
        )
    return subprocess.call([sys.executable, str(script), *args.bench_args], cwd=script.parent.parent)


# --- the parser -------------------------------------------------------------------------------

def _model_options(for_search: bool = False) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("model")
    group.add_argument(
        "--model", default=None if for_search else default_model(), metavar="NAME_OR_PATH",
        help="a model name (see `clip-embeddings models`) or a checkpoint path "
             + ("(default: the model the collection was indexed with)" if for_search
                else "(default: $CLIP_WEIGHTS, else ViT-B/32)"),
    )
    group.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")
    group.add_argument("--batch-size", type=_positive_int, default=32, metavar="N",
                       help="images or texts per forward pass (default: 32)")
    return parent


def _store_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("database")
    group.add_argument("--db", choices=DBS, default="chroma", help="vector database (default: chroma)")
    group.add_argument("--location", required=True, metavar="PATH_OR_URL",
                       help="a local folder for an embedded database, or a server URL (http://host:port)")
    group.add_argument("--collection", required=True, metavar="NAME", help="collection (table) name")
    return parent


def _common_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False, parents=[_json_option()])
    # SUPPRESS, so `clip-embeddings search --debug` and `clip-embeddings --debug search` both work
    # without the subcommand's default overwriting the global flag.
    parent.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print full tracebacks instead of one-line errors")
    return parent


def _json_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON document on stdout instead of tables")
    return parent


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``clip-embeddings`` argument parser, one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="clip-embeddings",
        description="OpenAI CLIP embeddings for Chroma, Qdrant and LanceDB: index images, search them by text "
                    "or image, zero-shot classify, evaluate and fine-tune.",
        epilog="Run `clip-embeddings COMMAND --help` for a command's options. The default model is "
               "$CLIP_WEIGHTS when set, else ViT-B/32 (downloaded once into the cache).",
    )
    parser.add_argument("--debug", action="store_true", default=False,
                        help="print full tracebacks instead of one-line errors")
    parser.add_argument("--json", action="store_true", default=False,
                        help="print one JSON document on stdout instead of tables")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Every command takes --debug and --json, before or after its name.
    debug, model, store = _common_options(), _model_options(), _store_options()

    p = sub.add_parser("index", parents=[debug, store, model], help="embed a folder of images into a collection",
                       description="Embed every image under FOLDER into a collection. Ids come from the image "
                                   "content, so re-indexing a folder stores nothing new.")
    p.add_argument("folder", metavar="FOLDER", help="folder of images to index")
    p.add_argument("--extensions", default=None, metavar=".jpg,.png",
                   help="comma-separated file extensions to pick up (default: common image types)")
    p.add_argument("--no-recursive", action="store_true", help="only index FOLDER itself, not its sub-folders")
    p.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                   help="skip unreadable images and list them at the end, or stop at the first one (default: skip)")
    captions = p.add_mutually_exclusive_group()
    captions.add_argument("--captions", metavar="FILE",
                          help="captions to store as text records: a JSON {\"path\": \"caption\"} object or a CSV "
                               "with path,caption columns, paths relative to FOLDER (default: FOLDER/captions.json "
                               "or FOLDER/captions.csv if present, and a .txt file beside an image)")
    captions.add_argument("--no-captions", action="store_true", help="store images only, even if captions exist")
    _add_ray_arguments(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", parents=[debug, store, _model_options(for_search=True)],
                       help="find the nearest items to a text or an image",
                       description="Query a collection with a text (text-to-image search by default) or with "
                                   "--image (image-to-image); --modality text searches stored captions/texts.")
    p.add_argument("query", nargs="?", metavar="QUERY_TEXT", help="the text to search for")
    p.add_argument("--image", metavar="PATH", help="search with this image instead of a text")
    p.add_argument("--modality", choices=("image", "text"), default="image",
                   help="which stored records to rank: images or texts/captions (default: image)")
    p.add_argument("-k", type=_positive_int, default=5, help="number of results (default: 5)")
    p.set_defaults(func=cmd_search)

    templates = argparse.ArgumentParser(add_help=False)
    templates.add_argument("--templates", choices=("default", "imagenet"), default="default",
                           help="prompt templates: a few generic ones, or CLIP's 80 ImageNet prompts "
                                "(slower, usually a little more accurate) (default: default)")

    p = sub.add_parser("classify", parents=[debug, model, templates], help="zero-shot classify images",
                       description="Zero-shot classify images (or folders of images) over a set of labels.")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", metavar="a,b,c", help="comma-separated labels")
    labels.add_argument("--labels-file", metavar="FILE", help="labels, one per line (or a JSON list)")
    p.add_argument("-k", type=_positive_int, default=3, help="top labels to show per image (default: 3)")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("eval", parents=[debug, model, templates], help="zero-shot accuracy on a labelled folder",
                       description="Zero-shot top-1/top-5 accuracy on an ImageFolder-style dataset: one sub-folder "
                                   "per class, named after the class (or mapped by --labels).")
    p.add_argument("--dataset", required=True, metavar="DIR", help="dataset folder with one sub-folder per class")
    p.add_argument("--labels", metavar="FILE",
                   help="class names: one per line in sub-folder order, or a JSON {folder: label} object "
                        "(default: the sub-folder names)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("finetune", parents=[debug, model], help="fine-tune on (image, caption) pairs",
                       description="Contrastively fine-tune CLIP on (image, caption) pairs and save a checkpoint "
                                   "that ce.load and --model read.")
    p.add_argument("--pairs", required=True, metavar="CSV_OR_JSONL",
                   help="pairs file: CSV with image,caption columns or JSONL with image/caption keys; "
                        "relative image paths are relative to this file")
    p.add_argument("--epochs", type=_positive_int, default=1, help="passes over the pairs (default: 1)")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate (default: 1e-5)")
    p.add_argument("--output", required=True, metavar="PATH", help="where to save the fine-tuned checkpoint")
    p.add_argument("--freeze-image", action="store_true", help="keep the image tower fixed")
    p.add_argument("--freeze-text", action="store_true", help="keep the text tower fixed")
    p.add_argument("--warmup-steps", type=int, default=0, metavar="N",
                   help="steps of linear learning-rate warm-up (default: 0)")
    p.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                   help="drop pairs whose image cannot be read (listed at the end), or stop (default: skip)")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("serve", parents=[debug, _model_options(for_search=True)],
                       help="serve the model (and a collection) over HTTP, with a search page",
                       description="One loaded model for many clients: POST /embed, /search, /classify, GET /health, "
                                   "and a search page at /. Concurrent requests share forward passes. "
                                   "See docs/serving.md.")
    group = p.add_argument_group("database (optional: without it, /search is off)")
    group.add_argument("--db", choices=DBS, default="chroma", help="vector database (default: chroma)")
    group.add_argument("--location", metavar="PATH_OR_URL", help="the collection's folder or server URL")
    group.add_argument("--collection", metavar="NAME", help="collection (table) name")
    group = p.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    group.add_argument("--port", type=int, default=8765, help="port (default: 8765)")
    group.add_argument("--root-path", default="", metavar="PREFIX",
                       help="the path prefix a reverse proxy serves this under, e.g. /clip (default: none)")
    group.add_argument("--allowed-hosts", nargs="+", metavar="NAME", default=None,
                       help="Host header names to answer to, '*' for any (default: localhost, 127.0.0.1, ::1 and "
                            "--host; any name when --host is 0.0.0.0): DNS rebinding cannot reach a loopback server")
    group.add_argument("--token", default=None,
                       help="require Authorization: Bearer TOKEN on API calls (default: $CLIP_EMBEDDINGS_TOKEN, else none)")
    group = p.add_argument_group("limits")
    group.add_argument("--max-upload-mb", type=float, default=32, metavar="MB", help="largest request body (default: 32)")
    group.add_argument("--max-pixels", type=_positive_int, default=50_000_000, metavar="N",
                       help="largest image width*height (default: 50000000)")
    group.add_argument("--timeout", type=float, default=30, metavar="S",
                       help="seconds a request may take to arrive and to be embedded (default: 30)")
    group.add_argument("--max-queue", type=_positive_int, default=256, metavar="N",
                       help="requests waiting for the model before new ones get 429 (default: 256)")
    group.add_argument("--max-batch", type=_positive_int, default=64, metavar="N",
                       help="most texts+images in one shared forward pass (default: 64)")
    group.add_argument("--max-wait-ms", type=float, default=5, metavar="MS",
                       help="how long a request waits for others to share its pass (default: 5)")
    group.add_argument("--max-items", type=_positive_int, default=64, metavar="N",
                       help="most texts, images or labels in one request (default: 64)")
    group.add_argument("--max-templates", type=_positive_int, default=32, metavar="N",
                       help="most prompt templates in one /classify request (default: 32)")
    group.add_argument("--max-prompts", type=_positive_int, default=512, metavar="N",
                       help="most labels x templates in one /classify request (default: 512)")
    group.add_argument("--max-prompt-chars", type=_positive_int, default=1000, metavar="N",
                       help="longest label, and longest template filled with a label (default: 1000)")
    group.add_argument("--max-urls", type=_positive_int, default=16, metavar="N",
                       help="most image URLs in one request (default: 16)")
    group.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                       help="torch threads for the model (default: torch's, one per core); fewer leaves cores "
                            "for decoding uploads and for other processes")
    group.add_argument("--allow-private-urls", action="store_true",
                       help="let image URLs reach loopback/private addresses (off by default: no SSRF)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("models", parents=[debug], help="list model names and what is cached",
                       description="List the named models, whether each is in the cache folder, and its size.")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("cache", parents=[debug], help="show, prune or clear the embedding cache",
                       description="The embedding cache keeps image vectors so re-indexing unchanged files "
                                   "never runs the model. `stats` shows its size, `prune` evicts the least "
                                   "recently used vectors down to the cap and compacts the file, `clear` "
                                   "empties it.")
    p.add_argument("action", choices=["stats", "prune", "clear"], help="what to do (default: stats)",
                   nargs="?", default="stats")
    p.add_argument("--path", default=None,
                   help="the cache file (default: embeddings.sqlite3 in $CLIP_CACHE_DIR or ~/.cache/clip)")
    p.add_argument("--max-size", default=None, metavar="SIZE",
                   help="the cap for prune, e.g. 500M or 2G (default: $CLIP_CACHE_MAX_BYTES or 1G)")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("bench", parents=[debug], help="run the benchmark suite (source checkout only)",
                       description="Run benchmarks/run_all.py with this Python; arguments after `bench` are "
                                   "passed to it. The benchmarks ship with the source checkout, not the package.")
    p.add_argument("bench_args", nargs="*", metavar="ARGS",
                   help="arguments for run_all.py, passed on as they are (`bench -- --help` shows its help)")
    p.set_defaults(func=cmd_bench)
    return parser


def _split_bench_args(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Cut what follows ``bench`` off the command line: it belongs to run_all.py, options and all.

    argparse would reject options it does not know (``bench --quick``); ``bench --help`` stays ours.
    """
    command = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if command is None or argv[command] != "bench":
        return argv, None
    rest = argv[command + 1 :]
    if rest[:1] in (["-h"], ["--help"]):
        return argv, None
    return argv[: command + 1], rest[1:] if rest[:1] == ["--"] else rest


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 usage error).

    Example:
        >>> main(["models"])  # doctest: +SKIP
        0
    """
    parser = build_parser()
    argv, passthrough = _split_bench_args(list(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help and usage errors: argparse has already printed
        return e.code if isinstance(e.code, int) else 1
    if passthrough is not None:
        args.bench_args = passthrough
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        report_error(e, args.debug)
        return 1


if __name__ == "__main__":
    sys.exit(main())
