"""Batch-parallel execution of the NumPy path on all the cores this process may use.

NumPy runs a copy or a ufunc on one core; only BLAS is multi-threaded.  Half of a
CPU training step is memory-bound copying (im2col gather, col2im scatter-add,
layout transposes, pooling), so a 2-core machine idles one core for half the step.

Inside ``engine()`` (``Net.forward``/``backward`` enter it on the CPU) the big ops
split the batch into chunks and run them on a small thread pool: each chunk does
its whole pipeline (im2col -> GEMM -> epilogue) while its data is still in cache.
NumPy and BLAS release the GIL inside those calls.  BLAS itself is held at one
thread meanwhile (threadpoolctl), because OpenBLAS worker threads keep spinning
for a while after every multi-threaded call and would steal the cores from ours.
Outside ``engine()`` every op runs inline exactly as before (BLAS threads as the
user configured them), so calling an op directly never changes global state.

``GPUCONV_CPU_THREADS`` caps the thread count (default: the cores this process may
use); 1 disables the pool.
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")

_MIN_ELEMENTS_PER_CHUNK = 1 << 18   # below ~1 MiB of float32 per chunk a hand-off costs more than it saves
_MAX_ELEMENTS_PER_CHUNK = 1 << 22   # ~16 MiB: a chunk's working set stays near the last-level cache
_state = threading.local()
_pool: ThreadPoolExecutor | None = None
_controller: Any = None
_pool_lock = threading.Lock()


def cpu_threads() -> int:
    """Threads the CPU path may use: the kernel configuration's ``cpu_threads``
    (``GPUCONV_CPU_THREADS``) or the cores available to us."""
    from ..kernel_config import current  # noqa: PLC0415

    value = current().cpu_threads
    if value is not None:
        return value
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _blas_controller() -> Any:
    """threadpoolctl's controller, or None where it is not installed (then no pool is used)."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController  # noqa: PLC0415
            _controller = ThreadpoolController()
        except Exception:  # noqa: BLE001  (absent or broken: run single-threaded NumPy)
            _controller = False
    return _controller or None


def active() -> int:
    """Threads available to ``over_batch`` on this thread now (1 outside ``engine()``)."""
    return getattr(_state, "threads", 1)


@contextmanager
def engine() -> Iterator[None]:
    """Run the enclosed NumPy ops on gpuconv's thread pool with BLAS held at one thread."""
    if getattr(_state, "depth", 0) > 0:      # nested (predict -> forward): the outer one owns it
        _state.depth += 1
        try:
            yield
        finally:
            _state.depth -= 1
        return
    n = cpu_threads()
    ctl = _blas_controller() if n > 1 else None
    _state.depth = 1
    try:
        if ctl is None:
            _state.threads = 1
            yield
        else:
            with ctl.limit(limits=1, user_api="blas"):
                _state.threads = n
                yield
    finally:
        _state.depth, _state.threads = 0, 1


def _executor(n: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < n:  # noqa: SLF001  (grow once if the cap was raised)
            _pool = ThreadPoolExecutor(n, thread_name_prefix="gpuconv-cpu")
        return _pool


def chunk_bounds(batch: int, elements: int, threads: int) -> list[int]:
    """Chunk edges over ``range(batch)``: a multiple of ``threads`` chunks, each small enough to
    stay near the cache and big enough to be worth a hand-off."""
    if threads <= 1 or batch <= 1 or elements < 2 * _MIN_ELEMENTS_PER_CHUNK:
        return [0, batch]
    chunks = max(threads, math.ceil(elements / _MAX_ELEMENTS_PER_CHUNK))
    chunks = min(batch, math.ceil(chunks / threads) * threads, max(1, elements // _MIN_ELEMENTS_PER_CHUNK))
    return [batch * i // chunks for i in range(chunks + 1)]


def over_batch(job: Callable[[int, int], T], batch: int, elements: int) -> list[T]:
    """``[job(lo, hi) for each chunk]`` over disjoint slices of ``range(batch)``, in parallel
    inside ``engine()``, else one inline call ``job(0, batch)``.

    ``elements``: how many array elements the whole op touches (sets the chunking).
    Jobs must write disjoint slices; an exception in any chunk propagates to the caller.
    """
    bounds = chunk_bounds(batch, elements, active())
    if len(bounds) == 2:
        return [job(0, batch)]
    pool = _executor(active())
    futures = [pool.submit(job, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    wait(futures)   # every chunk has stopped writing before an error reaches the caller
    return [f.result() for f in futures]
