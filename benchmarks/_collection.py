"""What the collection-job benchmarks share: a store filled with synthetic vectors, no model run.

Vectors are written straight through ``Store._write`` in batches (so filling a 100k store never
holds it all): ``clusters`` centres on the unit sphere, each vector its centre plus noise, so a
nearest-neighbour search has real structure to find. The model is the tiny test architecture
with 512-d embeddings (ViT-B/32's width): the store needs an embedding function, not a forward
pass.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import _common as c  # noqa: I001
import numpy as np


def embedding_function(data_dir: Path, dim: int = 512):
    import clip_embeddings as ce
    from tests.model_factory import tiny_reference_clip

    model = tiny_reference_clip("vit", seed=0, embed_dim=dim)
    return ce.ClipEF(str(c.weights_file(f"tiny{dim}", data_dir, model=model)), cache=False)


def clustered_batches(n: int, dim: int, clusters: int, spread: float = 0.35, seed: int = 0,
                      batch: int = 1000, copy_every: int = 0) -> Iterator[list]:
    """``n`` image records in batches: unit vectors around ``clusters`` random centres.

    With ``copy_every=c``, every ``c``-th record is a near copy of the one before it (cosine
    about 0.9998), so a duplicate search has ``n / c`` pairs to find.
    """
    from clip_embeddings.adapters.base import Record

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    for start in range(0, n, batch):
        m = min(batch, n - start)
        v = centres[rng.integers(0, clusters, m)] + spread * rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        if copy_every:
            rows = [i for i in range(1, m) if (start + i) % copy_every == 0]
            v[rows] = v[[i - 1 for i in rows]] + 0.02 * rng.standard_normal((len(rows), dim)).astype(np.float32) / np.sqrt(dim)
            v[rows] /= np.linalg.norm(v[rows], axis=1, keepdims=True)
        yield [Record(str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-{start + i}")), "image", v[i], f"d{start + i}",
                      source=f"/photos/{start + i}.jpg", metadata={"n": start + i}) for i in range(m)]


def planted_pairs(n: int, copy_every: int, batch: int = 1000) -> int:
    """How many near-copy pairs :func:`clustered_batches` plants (none at a batch's first row)."""
    return sum(1 for j in range(n) if copy_every and j % copy_every == 0 and j % batch != 0)


def filled_store(kind: str, location: Path, n: int, data_dir: Path, clusters: int, seed: int = 0,
                 copy_every: int = 0):
    from clip_embeddings.adapters import open_store

    store = open_store(kind, str(location), "bench", embedding_function(data_dir))
    for records in clustered_batches(n, store.ef.dim, clusters, seed=seed, copy_every=copy_every):
        store._write(records)
    return store


def child_arguments(quick_help: str) -> Callable[[argparse.ArgumentParser], None]:
    """The flags of a collection benchmark beyond its settings, for ``c.run_script``: ``--quick``
    and ``--data-dir``, and the hidden ones its child processes take (``--child --n --kind``)."""
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--quick", action="store_true", help=quick_help)
        parser.add_argument("--data-dir", type=Path, default=c.DEFAULT_DATA)
        parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
        parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
        parser.add_argument("--kind", help=argparse.SUPPRESS)
    return extra


def run_children(script: str, child: Callable[[argparse.Namespace], None], label: str, args: argparse.Namespace,
                 *flags: str) -> list[dict] | None:
    """Each database and size of ``args`` measured in a fresh process (``script --child ...
    flags``), which prints its result as JSON on its last line; the results, in order. In that
    child process (``--child``), runs ``child(args)`` instead and returns None."""
    if getattr(args, "child", False):
        child(args)
        return None
    embedding_function(args.data_dir)  # weights made once, outside the measurement
    runs = []
    for kind in args.kinds:
        for n in args.sizes:
            print(f"[{label}] {kind}: {n} vectors in a fresh process", flush=True)
            cmd = [sys.executable, script, "--child", "--n", str(n), "--kind", kind, "--data-dir", str(args.data_dir),
                   *flags]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"child for {kind} n={n} failed:\n{done.stderr[-3000:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  {json.dumps(runs[-1])}", flush=True)  # each size as it finishes: the large one takes long
    return runs


def smallest_and_largest(runs: list[dict], kind: str) -> tuple[dict, dict]:
    """The runs of one database at its smallest and largest size (``run_children`` keeps the sizes' order)."""
    mine = [r for r in runs if r["kind"] == kind]
    return mine[0], mine[-1]
