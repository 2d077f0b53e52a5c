"""NCCL through ``cupy.cuda.nccl``: the GPU transport of data-parallel training.

This module imports cupy (lazily, inside its functions), like ``gpuconv/device.py`` and
``gpuconv/cuda.py``: it is the third place allowed to, and it holds only the calls that
must touch cupy or NCCL themselves — device selection by local rank, the communicator,
the all-reduce launches and the stream/event plumbing that lets them overlap backward.
Which buckets to reduce, and when, is decided in :mod:`gpuconv.distributed`.

NCCL comes from the ``nvidia-nccl-cu13`` wheel (the ``nccl`` extra: CuPy 14 loads
``libnccl.so.2`` from it).  The unique id that joins ranks into one communicator is
made on rank 0 and broadcast over MPI by the caller (:meth:`gpuconv.distributed.World.init_nccl`).

All-reduces run on a stream of their own: a bucket's reduce waits (an event) for the
backward launches that produced its gradients on the compute stream, and the compute
stream waits (another event) for every bucket before the optimizer reads the gradients.
The reduce is in place, on views of the flat gradient buffer, with ``ncclAvg``: no copy,
no staging memory, and the mean comes out of the reduction itself.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence


def _cupy() -> Any:
    import cupy  # noqa: PLC0415  (cupy is imported only here, in device.py and in cuda.py)

    return cupy


def _nccl() -> Any:
    from cupy.cuda import nccl  # noqa: PLC0415

    return nccl


def available() -> bool:
    """Whether cupy and an NCCL library it can load are installed (no GPU needed to ask)."""
    try:
        return bool(_nccl().available)
    except Exception:  # noqa: BLE001  (cupy missing or broken: no NCCL)
        return False


def why_unavailable() -> str:
    try:
        _cupy()
    except Exception as e:  # noqa: BLE001
        return f"cupy cannot be imported ({type(e).__name__}: {e})"
    return "cupy finds no NCCL library: pip install 'nvidia-nccl-cu13>=2.27.7,<3' (the nccl extra)"


def version() -> int:
    """The loaded NCCL's version code, e.g. 23206 for 2.32.6."""
    return int(_nccl().get_version())


def unique_id() -> bytes:
    """A new NCCL unique id (128 bytes): made on rank 0, broadcast to every rank."""
    uid = _nccl().get_unique_id()
    return bytes(uid) if not isinstance(uid, bytes) else uid


def use_device(local_rank: int) -> int:
    """Make GPU ``local_rank`` current for this process (before anything is allocated); its index."""
    cp = _cupy()
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001  (no driver, or a driver too old for this CUDA)
        raise RuntimeError(f"local rank {local_rank} finds no usable GPU ({e})") from e
    if not 0 <= local_rank < count:
        raise RuntimeError(f"local rank {local_rank} has no GPU of its own: this machine has {count} "
                           f"GPU{'s' if count != 1 else ''}; start at most {count} ranks per machine")
    cp.cuda.Device(local_rank).use()
    return local_rank


_DTYPES = {"float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64", "float16": "NCCL_FLOAT16"}


class Communicator:
    """One NCCL communicator of ``size`` ranks on the current GPU, and its reduce stream."""

    def __init__(self, size: int, uid: bytes, rank: int) -> None:
        cp, nccl = _cupy(), _nccl()
        self.size, self.rank = int(size), int(rank)
        self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self.stream = cp.cuda.Stream(non_blocking=True)  # the reduces' own stream (see module docstring)
        self._avg = nccl.NCCL_AVG

    def _dtype(self, a: Any) -> int:
        name = _DTYPES.get(str(a.dtype))
        if name is None:
            raise TypeError(f"NCCL all-reduce of {a.dtype} arrays is not supported here (float32/64/16 are)")
        return int(getattr(_nccl(), name))

    def _check(self, a: Any) -> None:
        if not a.flags.c_contiguous:
            raise ValueError("NCCL reduces contiguous memory: pass a contiguous slice of the flat buffer")

    def allreduce_mean_(self, views: Sequence[Any], *, overlap: bool = True) -> None:
        """Average ``views`` (contiguous device arrays) across ranks, in place, as one NCCL group.

        ``overlap``: on the reduce stream, after what the compute stream has launched so far
        (returns at once; :meth:`join` makes the compute stream wait).  Else on the compute
        stream itself, ordered like any kernel."""
        cp, nccl = _cupy(), _nccl()
        compute = cp.cuda.get_current_stream()
        stream = self.stream if overlap else compute
        if overlap:
            ready = cp.cuda.Event(disable_timing=True)
            ready.record(compute)
            stream.wait_event(ready)
        with self._group(nccl, len(views)):
            for v in views:
                self._check(v)
                if v.size:
                    self.comm.allReduce(v.data.ptr, v.data.ptr, v.size, self._dtype(v), self._avg, stream.ptr)

    @staticmethod
    @contextlib.contextmanager
    def _group(nccl: Any, n: int) -> Iterator[None]:
        """Several reduces launched as one NCCL operation (one kernel for a bucket's segments)."""
        if n <= 1:
            yield
            return
        nccl.groupStart()
        try:
            yield
        finally:
            nccl.groupEnd()

    def join(self) -> None:
        """The compute stream waits for every reduce launched so far (before the optimizer step)."""
        cp = _cupy()
        done = cp.cuda.Event(disable_timing=True)
        done.record(self.stream)
        cp.cuda.get_current_stream().wait_event(done)

    def broadcast_(self, a: Any, root: int = 0) -> None:
        """Rank ``root``'s ``a`` into every rank's ``a`` (the parameters at the start), on the compute stream."""
        self._check(a)
        cp = _cupy()
        self.comm.broadcast(a.data.ptr, a.data.ptr, a.size, self._dtype(a), root, cp.cuda.get_current_stream().ptr)

    def abort(self) -> None:
        """Tear the communicator down without waiting for the other ranks (a rank failed)."""
        with contextlib.suppress(Exception):
            self.comm.abort()
