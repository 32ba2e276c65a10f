"""Dynamic batching: one worker thread owns the model; requests that arrive together share a pass.

A request is a *job* (some texts, or some images). The worker takes the first waiting job, then
keeps collecting for at most ``max_wait`` seconds or until ``max_batch`` items are gathered, and
runs all the texts through one ``ClipEF.embed_texts`` call and all the images through one
``ClipEF.encode_images`` call. Each job gets back exactly its own rows.

Rows do not depend on their batch neighbours: texts are padded per batch but CLIP reads each at
its own end-of-text token under a causal mask, and images are preprocessed one by one, so a row
computed in a shared pass equals the row computed alone (up to float summation order in the
matrix kernels, which the tests bound).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...embedding.function import ClipEF, ImageEmbeddings, SkippedItem
from ...errors import QueueFull  # re-exported: its old import path


@dataclass
class _Job:
    kind: str  # "texts", "images" or "call"
    items: Any
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    """What the worker has done: shared passes are ``jobs > passes``."""

    passes: int = 0  # worker rounds (each one text call and/or one image call)
    jobs: int = 0
    items: int = 0
    largest: int = 0  # most jobs served by one round


class Batcher:
    """Queue embedding jobs from any thread; one worker thread runs them in shared batches.

    Args:
        ef: the embedding function whose model the worker owns.
        max_batch: most items (texts + images) per round; a larger single job runs alone.
        max_wait: seconds to wait for company after the first job of a round arrives.
        max_queue: most jobs waiting; :meth:`submit` raises :class:`QueueFull` beyond it.

    Example:
        >>> batcher = Batcher(ClipEF())
        >>> batcher.submit("texts", ["a cat"]).result().shape
        (1, 512)
        >>> batcher.close()
    """

    def __init__(self, ef: ClipEF, max_batch: int = 64, max_wait: float = 0.005, max_queue: int = 256):
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be at least 1 and max_wait at least 0")
        self.ef, self.max_batch, self.max_wait, self.max_queue = ef, max_batch, max_wait, max_queue
        self.stats = BatchStats()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._carry: _Job | None = None  # a job that did not fit the last round opens the next one
        self._worker = threading.Thread(target=self._run, name="clip-batcher", daemon=True)
        self._worker.start()

    @property
    def depth(self) -> int:
        """Jobs waiting for the worker."""
        return self._queue.qsize() + (self._carry is not None)

    def submit(self, kind: str, items: Any) -> Future:
        """Queue a job: ``("texts", [str])`` resolves to an ``[N, dim]`` array, ``("images", [bytes
        or URL or path])`` to an :class:`ImageEmbeddings` (bad items skipped, with reasons), and
        ``("call", fn)`` to ``fn()`` run on the worker thread (for anything else that needs the model).
        """
        if kind not in ("texts", "images", "call"):
            raise ValueError(f"kind must be 'texts', 'images' or 'call', not {kind!r}")
        if self.depth >= self.max_queue:
            raise QueueFull(f"the server is busy: {self.depth} requests are waiting (limit {self.max_queue}); retry later")
        job = _Job(kind, items)
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        """Finish the queued jobs, then stop the worker."""
        self._queue.put(None)
        self._worker.join()

    # -- the worker --

    def _run(self) -> None:
        while True:
            first = self._carry or self._queue.get()
            self._carry = None
            if first is None:
                return
            round_ = self._gather(first)
            if round_ is None:
                return
            self._serve(round_)

    def _gather(self, first: _Job) -> list[_Job] | None:
        jobs, size = [first], _size(first)
        if first.kind == "call":
            return jobs
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self._serve(jobs)
                return None
            if job.kind == "call" or size + _size(job) > self.max_batch:
                self._carry = job
                break
            jobs.append(job)
            size += _size(job)
        return jobs

    def _serve(self, jobs: list[_Job]) -> None:
        # A job whose request gave up (timeout, disconnect) costs nothing more.
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        self.stats.passes += 1
        self.stats.jobs += len(jobs)
        self.stats.items += sum(_size(job) for job in jobs)
        self.stats.largest = max(self.stats.largest, len(jobs))
        if jobs[0].kind == "call":
            _settle(jobs[0].future, jobs[0].items)
            return
        for kind, run in (("texts", self._texts), ("images", self._images)):
            group = [job for job in jobs if job.kind == kind]
            if group:
                try:
                    run(group)
                except BaseException as e:  # noqa: BLE001 - the worker must outlive any request
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(e)

    def _texts(self, jobs: list[_Job]) -> None:
        vectors = self.ef.embed_texts([text for job in jobs for text in job.items])
        start = 0
        for job in jobs:
            job.future.set_result(vectors[start : start + len(job.items)])
            start += len(job.items)

    def _images(self, jobs: list[_Job]) -> None:
        result = self.ef.encode_images([item for job in jobs for item in job.items], on_error="skip")
        for job, part in zip(jobs, split_images(result, [len(job.items) for job in jobs]), strict=True):
            job.future.set_result(part)


def split_images(result: ImageEmbeddings, sizes: Sequence[int]) -> list[ImageEmbeddings]:
    """Cut one :class:`ImageEmbeddings` over concatenated inputs back into one per job.

    Example:
        >>> r = ImageEmbeddings(np.eye(2, dtype=np.float32), [0, 2], ["a", "c"], [SkippedItem(1, "b", "bad")])
        >>> [(p.indices, [s.index for s in p.skipped]) for p in split_images(r, [2, 1])]
        [([0], [1]), ([0], [])]
    """
    parts, start = [], 0
    for size in sizes:
        end = start + size
        rows = [r for r, i in enumerate(result.indices) if start <= i < end]
        parts.append(ImageEmbeddings(
            result.embeddings[rows] if rows else np.zeros((0, result.embeddings.shape[1]), np.float32),
            [result.indices[r] - start for r in rows], [result.digests[r] for r in rows],
            [SkippedItem(s.index - start, s.source, s.reason) for s in result.skipped if start <= s.index < end],
        ))
        start = end
    return parts


def _size(job: _Job) -> int:
    return 1 if job.kind == "call" else len(job.items)


def _settle(future: Future, fn: Callable[[], Any]) -> None:
    try:
        future.set_result(fn())
    except BaseException as e:  # noqa: BLE001 - reported to the request that asked
        future.set_exception(e)
