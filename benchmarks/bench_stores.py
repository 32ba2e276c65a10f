"""Folder -> each database: ingest throughput of one pipeline into Chroma, pgvector, Milvus Lite,
as a ratio to the same pipeline writing nowhere.

``Store.index_folder(folder)`` with the same ``ClipEF`` (embedding cache off, so the model runs
every time) into a fresh collection per run: Chroma ``PersistentClient`` (a temporary folder),
PostgreSQL with pgvector (``pgserver``: a local server on a Unix socket, the HNSW indexes
maintained while writing), Milvus Lite (a local ``.db``), and a store whose writes are dropped
(``nowhere``: decode, preprocess, model and the ingest bookkeeping, no database). ``ratio`` is the
median over repeats of nowhere's time / the store's time: 1.0 means the database costs nothing.

The runs alternate between stores, repeat by repeat (order reversed every other repeat), after
one untimed warm-up each, in one process.

Run: ``.venv/bin/python benchmarks/bench_stores.py --models tiny ViT-B/32 --images 256``
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import _common as c  # noqa: I001 (sets sys.path for tests.*)

STORES = ("nowhere", "chroma", "pgvector", "milvus")


def null_store(ef):
    """A Store that drops its writes: the pipeline's own cost."""
    from clip_embeddings.adapters.base import Store

    class Nowhere(Store):
        def _write(self, records):
            pass

        def _search(self, vector, k, modality, where):
            return []

        def _stored(self, keys):
            return {}

        def count(self, modality=None):
            return 0

        def _stored_config(self):
            return None

        def _scan(self, modality=None, *, batch_size=512, with_vectors=True):
            return iter(())

        def _delete(self, keys):
            pass

    store = Nowhere()
    store.ef = ef
    return store


class Places:
    """Where each store's fresh collection of run ``r`` lives (one server / folder per kind)."""

    def __init__(self, workdir: Path, kinds: tuple[str, ...]):
        self.workdir, self.server = workdir, None
        if "pgvector" in kinds:
            import pgserver

            self.server = pgserver.get_server(tempfile.mkdtemp(prefix="bench-postgres-"), cleanup_mode="delete")

    def open(self, kind: str, ef, run: int):
        from clip_embeddings.adapters import open_store

        if kind == "nowhere":
            return null_store(ef)
        if kind == "pgvector":
            return open_store("pgvector", self.server.get_uri(), f"photos_{run}", ef)
        location = str(self.workdir / (f"milvus-{run}.db" if kind == "milvus" else f"{kind}-{run}"))
        return open_store(kind, location, "photos", ef)

    def close(self) -> None:
        if self.server is not None:
            self.server.cleanup()


def run_model(name: str, args, workdir: Path) -> dict:
    import clip_embeddings as ce

    weights = c.weights_file(name, Path(args.data_dir))
    folder = c.image_folder(args.images, Path(args.data_dir), sizes=[(640, 480), (1024, 768)], tag="stores")
    ef = ce.ClipEF(str(weights), device="cpu", cache=False, batch_size=args.batch_size)
    ef.dim  # noqa: B018 - load the model before timing
    workdir.mkdir(parents=True)
    places = Places(workdir, tuple(args.stores))
    times: dict[str, list[float]] = {k: [] for k in args.stores}
    try:
        for r in range(-1, args.repeats):  # run -1: warm-up, untimed
            for kind in (args.stores if r % 2 == 0 else args.stores[::-1]):
                store = places.open(kind, ef, r + 1)
                start = time.perf_counter()
                report = store.index_folder(folder, progress=False)
                seconds = time.perf_counter() - start
                assert report.new == args.images, (kind, str(report))
                if r >= 0:
                    times[kind].append(seconds)
                if hasattr(store, "close"):
                    store.close()
    finally:
        places.close()
    results = {k: c.summarize(v, args.images) for k, v in times.items()}
    c.ratio_to(results, "nowhere")
    return {"model": name, "images": args.images, "stores": results}


def run(args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bench-stores-"))
    try:
        return {"environment": c.environment(), "runs": [run_model(m, args, workdir / f"model-{i}")  # fresh collections per run
                                                         for i, m in enumerate(args.models)],
                "loadavg_at_end": list(os.getloadavg())}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def print_results(result: dict) -> None:
    env = result["environment"]
    print(f"{env['cpu']}, {env['cores']} cores, load {env['loadavg_at_start']} -> {result['loadavg_at_end']}")
    for entry in result["runs"]:
        rows = [{"store": k, "rate": c.fmt_rate(v), "ratio": f"{v['ratio']:.2f}"} for k, v in entry["stores"].items()]
        c.print_table(f"{entry['model']}: ingest {entry['images']} images", rows,
                      [("store", "store", str), ("images/s median [IQR]", "rate", str), ("ratio to nowhere", "ratio", str)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=["tiny"], help="tiny (the test model) or a CLIP name")
    parser.add_argument("--images", type=int, default=256, help="images in the folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--stores", nargs="+", default=list(STORES), choices=STORES)
    parser.add_argument("--data-dir", default=str(c.DEFAULT_DATA))
    parser.add_argument("--quick", action="store_true", help="32 images, one repeat")


def apply_quick(args) -> None:
    if args.quick:
        args.images, args.repeats = 32, 1


def main(argv=None) -> dict | None:
    return c.run_script(__import__(__name__), "stores", argv)


if __name__ == "__main__":
    main()
