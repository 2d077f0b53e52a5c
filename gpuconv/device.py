"""Device choice: the one place that decides between NumPy (CPU) and CuPy (CUDA).

Everything else asks this module for an array module (``xp``) instead of
importing cupy.  ``GPUCONV_DEVICE=cpu|cuda|auto`` (default ``auto``) picks the
device; ``auto`` falls back to the CPU silently when cupy is missing or no GPU
is usable.

Kernels reach the GPU through a :class:`Backend`: launch, zero, capture, the SM count,
timing and the allocator (its array module) behind one interface.  The CUDA backend
(``gpuconv.cuda.CUDA``) is the default; ``use_backend`` puts another in front for a scope
(the kernel emulator, ``gpuconv.emu``, is one: its arrays count as device arrays there).
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, ContextManager, Iterator, Sequence

import numpy as np

DEVICE_ENV = "GPUCONV_DEVICE"
VALID_DEVICES = ("auto", "cpu", "cuda")
# An H100 SXM's SM count: what the launch heuristics assume where no GPU can be asked (a plan
# made on a CPU, the emulator).  It shapes tile and split choices only, never results.
SM_COUNT_HINT = 132


class DeviceError(RuntimeError):
    """The requested device cannot be used."""


@functools.lru_cache(maxsize=1)
def _cupy() -> ModuleType | None:
    """Import cupy lazily; None when it is not installed or not importable."""
    try:
        import cupy  # noqa: PLC0415  (the only cupy import outside gpuconv/cuda.py)
    except Exception:  # ImportError, or a broken CUDA install raising at import
        return None
    return cupy


def debug_alloc() -> bool:
    """The one debug-allocation rule: the kernel configuration's ``debug_alloc``
    (``GPUCONV_DEBUG_ALLOC=1``): one allocation per tensor, no pool and no arena."""
    from .kernel_config import current  # noqa: PLC0415

    return current().debug_alloc


_debug_allocator = False


def _apply_allocator(cp: ModuleType) -> None:
    """The allocator the kernel configuration asks for: with ``debug_alloc`` one cudaMalloc per
    array and no pool, so compute-sanitizer sees every overrun; else CuPy's memory pool."""
    global _debug_allocator
    debug = debug_alloc()
    if debug != _debug_allocator:
        cp.cuda.set_allocator(None if debug else cp.get_default_memory_pool().malloc)
        _debug_allocator = debug


@functools.lru_cache(maxsize=1)
def gpu_available() -> bool:
    """True when cupy imports and at least one CUDA device answers."""
    cp = _cupy()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@dataclass(frozen=True)
class Device:
    """A compute device and its array module."""

    name: str  # "cpu" or "cuda"
    xp: ModuleType

    @property
    def is_gpu(self) -> bool:
        return self.name == "cuda"

    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Copy host data onto this device (no copy if already there)."""
        return self.xp.asarray(a, dtype=dtype)

    def synchronize(self) -> None:
        if self.is_gpu:
            backend().synchronize()

    def __str__(self) -> str:
        return self.name


CPU = Device("cpu", np)


def resolve_device_name(name: str | None = None) -> str:
    """Turn a requested name (or the env var, or 'auto') into 'cpu' or 'cuda'."""
    requested = (name or os.environ.get(DEVICE_ENV) or "auto").strip().lower()
    if requested not in VALID_DEVICES:
        raise DeviceError(
            f"unknown device {requested!r}: choose one of {', '.join(VALID_DEVICES)} "
            f"(argument --device or environment variable {DEVICE_ENV})"
        )
    if requested == "auto":
        return "cuda" if gpu_available() else "cpu"
    if requested == "cuda" and not gpu_available():
        why = "cupy is not installed" if _cupy() is None else "no CUDA device is usable"
        raise DeviceError(f"device 'cuda' was requested but {why}; use --device cpu or auto")
    return requested


def get_device(name: str | None = None) -> Device:
    """The Device for ``name`` ('auto', 'cpu', 'cuda'; None reads $GPUCONV_DEVICE)."""
    resolved = resolve_device_name(name)
    if resolved == "cpu":
        return CPU
    cp = _cupy()
    assert cp is not None
    _apply_allocator(cp)
    return Device("cuda", cp)


# ---------------------------------------------------------------- backends
class Backend:
    """What the ops need from a GPU.  Subclasses: ``gpuconv.cuda.CudaBackend`` (CuPy) and
    ``gpuconv.emu.EmuBackend`` (the kernels compiled for the CPU)."""

    name = "backend"

    @property
    def xp(self) -> Any:
        """The array module that allocates this backend's device arrays."""
        raise NotImplementedError

    def owns(self, a: Any) -> bool:
        """True for an array of this backend's device."""
        raise NotImplementedError

    def launch(self, module: str, function: str, grid: Sequence[int], block: Sequence[int],
               args: Sequence[Any], shared_mem: int = 0, defines: Sequence[str] = ()) -> None:
        raise NotImplementedError

    def zero(self, a: Any) -> None:
        raise NotImplementedError

    def capture(self, fn: Callable[[], None]) -> Any:
        """Record what ``fn`` enqueues as a graph (``.launch()`` replays it)."""
        raise NotImplementedError

    def capture_stream(self) -> ContextManager[Any]:
        raise NotImplementedError

    def sm_count(self, dev_id: int | None = None) -> int:
        return SM_COUNT_HINT

    def wgmma_capable(self, dev_id: int | None = None) -> bool:
        """Whether the sm_90a (Hopper wgmma) module variants run here."""
        return False

    def time_ms(self, fn: Callable[[], None], reps: int = 5, warmup: int = 1) -> float:
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait until the work enqueued so far has run."""
        raise NotImplementedError

    def device_key(self) -> str:
        """Which GPU this is, for caches of tuned choices."""
        raise NotImplementedError


_backends: list[Backend] = []     # scoped backends, innermost last (process-wide, like the GPU itself)
_backends_lock = threading.Lock()


def backend() -> Backend:
    """The backend kernels go to: the innermost ``use_backend``, else CUDA."""
    if _backends:
        return _backends[-1]
    from .cuda import CUDA  # noqa: PLC0415  (cuda imports this module)
    return CUDA


@contextlib.contextmanager
def use_backend(b: Backend) -> Iterator[Backend]:
    """Within: launches, zeroing, capture and timing go to ``b``, and its arrays are device arrays."""
    with _backends_lock:
        _backends.append(b)
    try:
        yield b
    finally:
        with _backends_lock:
            _backends.remove(b)


def _owner(a: Any) -> Backend | None:
    for b in reversed(_backends):
        if b.owns(a):
            return b
    return None


def is_gpu_array(a: Any) -> bool:
    """True for a device array: cupy's (without importing cupy when it is absent), or a scoped
    backend's."""
    cp = _cupy()
    return (cp is not None and isinstance(a, cp.ndarray)) or (bool(_backends) and _owner(a) is not None)


def array_module(a: Any) -> ModuleType:
    """numpy, cupy or a scoped backend's array module, whichever owns ``a``."""
    b = _owner(a) if _backends else None
    if b is not None:
        return b.xp
    return _cupy() if is_gpu_array(a) else np  # type: ignore[return-value]


def device_of(a: Any) -> Device:
    """The Device an array lives on."""
    b = _owner(a) if _backends else None
    if b is not None:
        return Device("cuda", b.xp)
    return Device("cuda", _cupy()) if is_gpu_array(a) else CPU  # type: ignore[arg-type]


class _SyncCounter:
    """Counts device->host copies made through ``to_host`` (each one is a sync point)."""

    def __init__(self) -> None:
        self.count = 0


SYNCS = _SyncCounter()


def to_host(a: Any) -> np.ndarray:
    """A NumPy copy of ``a``: the one way data reaches the host, so syncs can be counted."""
    if is_gpu_array(a):
        SYNCS.count += 1
        return a.get()
    return np.asarray(a)


def copy_into(dst: Any, src: Any) -> None:
    """dst[...] = src, where a host ``src`` goes straight into device memory.

    ``cupy_array[...] = numpy_array`` would first upload ``src`` into a temporary
    device array of the same size, which the memory pool then keeps: invisible to
    the memory plan (for VGG16's weights, 528 MiB).  ``ndarray.set`` copies directly.

    The copy is queued on the current stream (an async copy from pageable memory is
    staged before the call returns, so ``src`` may change right after): it lands after
    the work already queued there, e.g. a replayed CUDA graph still reading the old
    values.  (CuPy versions differ on which stream ``set()`` uses without one.)
    """
    if is_gpu_array(dst) and not is_gpu_array(src):
        host = np.ascontiguousarray(np.asarray(src), dtype=dst.dtype)
        if host.shape != dst.shape:
            host = np.broadcast_to(host, dst.shape).copy()
        if dst.flags.c_contiguous:
            cp = _cupy()
            if cp is not None and isinstance(dst, cp.ndarray):
                dst.set(host, stream=cp.cuda.get_current_stream())
            else:
                dst.set(host)  # an emulated device array
            return
    dst[...] = src


def scalar(a: Any) -> float:
    """A 0-d device value as a Python float (a sync point on the GPU)."""
    return float(to_host(a))
