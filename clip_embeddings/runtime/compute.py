"""One thread runs the shared models' work, whichever thread asks for it.

torch's CPU kernels run on OpenMP, and libgomp (the OpenMP of torch's Linux wheels) keeps a pool
of worker threads for *each* thread that starts parallel work. Once two threads have done so the
process holds more OpenMP threads than cores, and libgomp stops letting idle workers spin: every
parallel region then wakes its workers through the kernel, and a forward pass has hundreds of
regions. That is what happens when a model is loaded in one thread and used from another: a
server's worker, a web framework's thread pool, LangChain's async methods, a notebook's
executor.

So a process that runs the models for others (``clip-embeddings serve``) calls :func:`use_one_thread`
first: from then on :func:`run` hands the loading of the shared models and every forward pass
``ClipEF`` makes to one long-lived thread, ``clip-compute``, and nothing else in the process
touches torch. Measured through a real ``serve`` on a 2-core AMD EPYC (ViT-B/32, bf16, sequential
``/embed`` requests, median, two runs each): one caption 30.7-34.2 ms before, 19.4-21.4 ms after;
eight captions 41-45 ms before, 23-25 ms after. It is not the default because it helps only where
no other thread runs torch: in a script whose main thread does torch work of its own (a similarity
matrix, a reference model), the compute thread's pool is the second one, and one caption through
``ClipEF`` from that main thread measured 21.7-28.5 ms with it and 11.3-14.8 ms without. Without
it, :func:`run` calls in the caller's thread, as before.

The caller's thread count crosses over (:func:`run` carries ``torch.get_num_threads()`` with each
job); grad mode does not: the jobs open their own ``torch.inference_mode()``.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import torch

__all__ = ["on_compute_thread", "run", "use_one_thread"]

T = TypeVar("T")
THREAD_NAME = "clip-compute"

_start_lock = threading.Lock()
_enabled = False
_thread: threading.Thread | None = None
_jobs: queue.SimpleQueue = queue.SimpleQueue()


def use_one_thread() -> None:
    """From now on, run the shared models' loading and forward passes on the ``clip-compute`` thread.

    Call it before the first model is loaded, in a process where only ``ClipEF`` runs torch.
    ``CLIP_COMPUTE_THREAD=0`` in the environment turns it into a no-op (to compare, or to opt out).

    Example:
        >>> use_one_thread()  # doctest: +SKIP
        >>> run(lambda: threading.current_thread().name)  # doctest: +SKIP
        'clip-compute'
    """
    global _enabled
    if os.environ.get("CLIP_COMPUTE_THREAD", "1").strip() != "0":
        _enabled = True


def on_compute_thread() -> bool:
    """Whether the calling thread is the compute thread (where :func:`run` calls directly).

    Example:
        >>> on_compute_thread()
        False
    """
    return threading.current_thread() is _thread


def run(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on the compute thread after :func:`use_one_thread`, else right here.

    Its result, or its exception raised here. Called from the compute thread itself, it calls
    ``fn`` directly, so a job may use what uses :func:`run`. An interrupted caller (Ctrl-C) stops
    waiting; the job finishes on its own.

    Example:
        >>> run(sum, [1, 2, 3])
        6
    """
    if not _enabled or on_compute_thread():
        return fn(*args, **kwargs)
    future: Future = Future()
    _started().put((future, torch.get_num_threads(), fn, args, kwargs))
    return future.result()


def _started() -> queue.SimpleQueue:
    global _thread
    with _start_lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_work, args=(_jobs,), name=THREAD_NAME, daemon=True)
            _thread.start()
    return _jobs


def _work(jobs: queue.SimpleQueue) -> None:
    while True:
        future, threads, fn, args, kwargs = jobs.get()  # run() never hands out its future: none is cancelled
        if torch.get_num_threads() != threads:  # the caller's setting, as if it had run the job itself
            torch.set_num_threads(threads)
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the caller, who raises it
            future.set_exception(e)
        del future, fn, args, kwargs  # a finished job's inputs and outputs are the caller's to keep or free


def _forget_after_fork() -> None:
    # A forked child has only the forking thread: start a compute thread of its own when asked.
    global _thread, _jobs, _start_lock
    _thread, _jobs, _start_lock = None, queue.SimpleQueue(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
