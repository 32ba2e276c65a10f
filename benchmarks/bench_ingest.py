"""Folder -> Chroma: our ingestion vs the path Chroma's own OpenCLIP embedding function takes.

On a folder of photo-like JPEGs (1-12 MP, see ``_common.image_folder``), in one process:

* ``first ingest``: ``ChromaStore(client, name, ClipEF(...)).index_folder(folder)`` into a new
  collection with an empty embedding cache (model already loaded: load time is not ingest time);
* ``re-ingest``: the same call again; unchanged files are recognised from ``stat`` and the sqlite
  cache, so no file is read and the model never runs;
* ``one image per call``: what ``OpenCLIPEmbeddingFunction`` + Chroma's ``ImageLoader`` do, with
  openai/CLIP's model: ``np.array(PIL.Image.open(path))`` for every file, then per image
  ``preprocess(Image.fromarray(a)).unsqueeze(0)`` -> ``encode_image`` -> normalise, then one
  ``collection.add``. (Preprocessing is ours, equal value for value to torchvision's, so open_clip
  and torchvision are not needed.)
* ``model only``: our ``encode_image`` on the same images already decoded and preprocessed, in the
  same batches: the floor the pipeline is measured against (``wall/model``).
* ``fastembed``: Qdrant's fastembed (``ImageEmbedding``, ONNX Runtime) on the same weights exported
  to ONNX with CLIP's preprocessing (``peers.fastembed_images``), its default batch of 16, then one
  ``collection.add``; skipped, with the reason, where fastembed is not installed
  (``pip install 'clip-embeddings[bench]'``) or will not load the local model.

``model idle`` is the fraction of the first ingest's wall time during which no forward pass ran.
Agreement compares the stored vectors with the one-image-per-call path's (fp32 reference model,
full-size decode): ours decodes large JPEGs at reduced scale (draft mode), hence not exactly 1.

Run: ``.venv/bin/python benchmarks/bench_ingest.py --models ViT-B/32 --images 32``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import _common as c  # noqa: I001 (sets sys.path for tests.*)


class BusyClock:
    """Wraps a model's ``encode_image`` to add up the time spent in forward passes."""

    def __init__(self, model):
        self.model, self.busy, self.calls = model, 0.0, 0

    def __enter__(self):
        real = self.model.encode_image

        def timed(x):
            start = time.perf_counter()
            try:
                return real(x)
            finally:
                self.busy += time.perf_counter() - start
                self.calls += 1

        self.model.encode_image = timed  # instance attribute: shadows the method until __exit__
        return self

    def __exit__(self, *exc):
        del self.model.encode_image


def one_image_per_call(reference, preprocess, files, collection) -> np.ndarray:
    """Chroma's ImageLoader + OpenCLIPEmbeddingFunction, restated with openai/CLIP's model."""
    from PIL import Image

    arrays = [np.array(Image.open(p)) for p in files]  # ImageLoader: every image decoded in full, first
    vectors = []
    for array in arrays:
        with torch.no_grad():
            features = reference.encode_image(preprocess(Image.fromarray(array)).unsqueeze(0))
        features /= features.norm(dim=-1, keepdim=True)
        vectors.append(features.squeeze().cpu().numpy())
    collection.add(ids=[str(p) for p in files], embeddings=vectors)
    return np.stack(vectors)


DTYPE = "auto"  # what ClipEF() runs by default: the path clip_embeddings.runtime.auto chose for this CPU


def model_only(ours, tensors: torch.Tensor, batch: int) -> None:
    with torch.inference_mode():
        for start in range(0, len(tensors), batch):
            ours.encode_image(tensors[start : start + batch])


def first_ingest(weights, folder, workdir, args, client, label, *, num_workers, fast_decode):
    """One ingest into a new collection with a new, empty cache: (seconds, model busy s, peak MB, store)."""
    from clip_embeddings import ClipEF
    from clip_embeddings.adapters.chroma import ChromaStore
    from clip_embeddings.embedding.loaded import shared_model

    lm = shared_model(str(weights), "cpu", DTYPE)
    ef = ClipEF(model=str(weights), device="cpu", dtype=DTYPE, batch_size=args.batch,
                num_workers=num_workers, fast_decode=fast_decode, cache=workdir / f"cache-{label}.sqlite3")
    store = ChromaStore(client, f"first-{label}", ef)
    c.reset_peak_rss()
    with BusyClock(lm.model) as clock:
        start = time.perf_counter()
        report = store.index_folder(folder, progress=False)
        seconds = time.perf_counter() - start
    assert not report.skipped, str(report)
    return seconds, clock.busy, c.peak_rss_mb(), store


def ingest_entry(runs, n, **extra) -> dict:
    seconds, busy, peaks, _ = zip(*runs)
    return c.summarize(seconds, n) | {"peak_rss_mb": max(peaks), "model_busy_s": list(busy), **extra,
                                      "model_idle_fraction": statistics.median(1 - b / s for b, s in zip(busy, seconds))}


def run_model(name: str, args, workdir: Path) -> dict:
    import chromadb

    from clip_embeddings.embedding.loaded import shared_model
    from clip_embeddings.inputs.decode import decode_image
    from clip_embeddings.inputs.sources import read_image_source

    folder = c.image_folder(args.images, args.data_dir)
    files = c.folder_files(folder)
    reference, _, weights = c.model_pair(name, args.data_dir)
    lm = shared_model(str(weights), "cpu", DTYPE)  # loaded once, before any timing
    c.steady_state(lm, f"[ingest] {name}:")
    print(f"[ingest] {name}: dtype='auto' runs {lm.precision} ({lm.runtime.get('source', 'probe')})", flush=True)
    res = lm.preprocess.resolution
    print(f"[ingest] {name}: {len(files)} JPEGs in {folder} "
          f"({sum(p.stat().st_size for p in files) / 2**20:.0f} MiB)", flush=True)

    # warm-up: one small ingest through every code path, so no timing pays a first call
    warm = workdir / "warm"
    warm.mkdir()
    for p in files[:2]:
        shutil.copy(p, warm / p.name)
    client = chromadb.PersistentClient(str(workdir / "chroma"))
    first_ingest(weights, warm, workdir, args, client, "warm", num_workers=args.workers, fast_decode=True)
    tensors = torch.stack([lm.preprocess(decode_image(read_image_source(p), draft_resolution=res)) for p in files])
    model_only(lm.model, tensors[: args.batch], args.batch)

    import peers

    fastembed, fastembed_skip = peers.fastembed_images(reference, name, args.data_dir) if not args.no_peers \
        else (None, "--no-peers")
    if fastembed is not None:
        fastembed(files[:2])  # warm-up
    else:
        print(f"[ingest] {name}: fastembed row skipped: {fastembed_skip}", flush=True)

    # Interleaved (order alternating each repeat) so that load from other processes hits all alike.
    runs, base_s, base_peak, model_s, peer_s = [], [], [], [], []

    def ours():
        runs.append(first_ingest(weights, folder, workdir, args, client, f"main-{len(runs)}",
                                 num_workers=args.workers, fast_decode=True))

    def theirs():
        collection = client.create_collection(f"baseline-{len(base_s)}", configuration={"hnsw": {"space": "cosine"}})
        c.reset_peak_rss()
        start = time.perf_counter()
        theirs.vectors = one_image_per_call(reference, lm.preprocess, files, collection)
        base_s.append(time.perf_counter() - start)
        base_peak.append(c.peak_rss_mb())

    def model():
        start = time.perf_counter()
        model_only(lm.model, tensors, args.batch)
        model_s.append(time.perf_counter() - start)

    def peer():
        collection = client.create_collection(f"fastembed-{len(peer_s)}", configuration={"hnsw": {"space": "cosine"}})
        start = time.perf_counter()
        peer.vectors = fastembed(files)
        collection.add(ids=[str(p) for p in files], embeddings=list(peer.vectors))
        peer_s.append(time.perf_counter() - start)

    steps = (ours, theirs, model) + ((peer,) if fastembed is not None else ())
    for r in range(args.repeats):
        for step in (steps if r % 2 == 0 else steps[::-1]):
            step()
    baseline, store = theirs.vectors, runs[-1][3]
    out = {"first ingest": ingest_entry(runs, len(files), num_workers=args.workers, fast_decode=True)}
    out["first ingest"]["wall_over_model"] = statistics.median(r[0] / m for r, m in zip(runs, model_s))

    seconds, peaks = [], []
    for _ in range(max(3, args.repeats)):
        c.reset_peak_rss()
        start = time.perf_counter()
        report = store.index_folder(folder, progress=False)
        seconds.append(time.perf_counter() - start)
        peaks.append(c.peak_rss_mb())
        assert report.cache_hits == len(files), str(report)
    out["re-ingest (cache)"] = c.summarize(seconds, len(files)) | {"peak_rss_mb": max(peaks)}
    out["one image per call (reference)"] = c.summarize(base_s, len(files)) | {"peak_rss_mb": max(base_peak)}
    out["model only (ours, same batches)"] = c.summarize(model_s, len(files))
    if fastembed is not None:
        out["fastembed (same weights, ONNX)"] = c.summarize(peer_s, len(files)) | c.agreement(
            torch.from_numpy(peer.vectors), torch.from_numpy(baseline))
    else:
        out["fastembed (same weights, ONNX)"] = {"skipped": fastembed_skip}

    if args.sweep:
        for workers, fast in [(1, True), (2, True), (4, True), (8, True), (args.workers, False)]:
            if (workers, fast) == (args.workers, True):
                continue
            sweep = [first_ingest(weights, folder, workdir, args, client, f"w{workers}{fast}-{r}",
                                  num_workers=workers, fast_decode=fast) for r in range(args.repeats)]
            entry = ingest_entry(sweep, len(files), num_workers=workers, fast_decode=fast)
            entry["wall_over_model"] = statistics.median(entry["seconds"]) / statistics.median(model_s)
            out[f"first ingest, {workers} workers{'' if fast else ', no draft decode'}"] = entry

    stored = store.collection.get(include=["embeddings", "metadatas"])
    by_source = {m["source"]: np.asarray(e) for m, e in zip(stored["metadatas"], stored["embeddings"])}
    ours_vectors = torch.tensor(np.stack([by_source[str(p.resolve())] for p in files]))
    agree = c.agreement(ours_vectors, torch.from_numpy(baseline))

    base = out["one image per call (reference)"]["items_per_s"]
    for key, entry in out.items():
        if "items_per_s" not in entry:
            continue
        entry["ratio"] = entry["items_per_s"] / base
        if "fastembed (same weights, ONNX)" in out and "items_per_s" in out["fastembed (same weights, ONNX)"]:
            entry["vs_fastembed"] = entry["items_per_s"] / out["fastembed (same weights, ONNX)"]["items_per_s"]
        if key.startswith("first ingest"):
            entry |= agree
    out["re-ingest (cache)"]["speedup_over_first"] = (
        out["re-ingest (cache)"]["items_per_s"] / out["first ingest"]["items_per_s"])
    return out


def run(args) -> dict:
    out = {"environment": c.environment(), "settings": vars(args).copy(), "models": {}}
    for name in args.models:
        workdir = Path(tempfile.mkdtemp(prefix="clip-bench-ingest-"))
        try:
            out["models"][name] = run_model(name, args, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def print_results(result: dict) -> None:
    rows = []
    for name, variants in result["models"].items():
        for variant, e in variants.items():
            rate = c.fmt_rate(e) if "items_per_s" in e else f"skipped: {e.get('skipped')}"
            rows.append({"model": name, "variant": variant, "rate": rate, **e})
    cols = [("model", "model", str), ("variant", "variant", str), ("images/s median [IQR]", "rate", str),
            ("ratio", "ratio", lambda v: f"{v:.2f}x"), ("vs fastembed", "vs_fastembed", lambda v: f"{v:.2f}x"),
            ("peak RSS MB", "peak_rss_mb", lambda v: f"{v:.0f}"),
            ("wall/model", "wall_over_model", lambda v: f"{v:.2f}"),
            ("model idle", "model_idle_fraction", lambda v: f"{v:.0%}"),
            ("cos min", "cosine_min", lambda v: f"{v:.6f}"), ("max abs", "max_abs_diff", lambda v: f"{v:.1e}")]
    c.print_table("Folder -> Chroma (ratio = this / one-image-per-call images/s)", rows, cols)
    for name, variants in result["models"].items():
        print(f"  {name}: re-ingest is {variants['re-ingest (cache)']['speedup_over_first']:.0f}x faster than "
              "the first ingest")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=["ViT-B/32", "RN50"])
    parser.add_argument("--images", type=int, default=32, help="JPEGs in the folder (cycling 1, 3, 6, 12 MP)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="ClipEF batch_size")
    parser.add_argument("--workers", type=int, default=None, help="ClipEF num_workers (default: ClipEF's)")
    parser.add_argument("--sweep", action="store_true", help="also time other num_workers and no draft decode")
    parser.add_argument("--no-peers", action="store_true", help="skip the fastembed row")
    parser.add_argument("--quick", action="store_true", help="4 images, ViT-B/32 only, 1 repeat")
    parser.add_argument("--data-dir", type=Path, default=c.DEFAULT_DATA)


def apply_quick(args) -> None:
    if args.workers is None:
        import inspect

        from clip_embeddings import ClipEF

        args.workers = inspect.signature(ClipEF).parameters["num_workers"].default
    if args.quick:
        args.models = ["ViT-B/32"] if args.models == ["ViT-B/32", "RN50"] else args.models
        args.images, args.repeats = min(args.images, 4), 1


def main(argv=None) -> dict:
    return c.run_script(sys.modules[__name__], "ingest", argv)


if __name__ == "__main__":
    main()
