"""Device choice: the one place that decides between NumPy (CPU) and CuPy (CUDA).

Everything else asks this module for an array module (``xp``) instead of
importing cupy.  ``GPUCONV_DEVICE=cpu|cuda|auto`` (default ``auto``) picks the
device; ``auto`` falls back to the CPU silently when cupy is missing or no GPU
is usable.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

DEVICE_ENV = "GPUCONV_DEVICE"
VALID_DEVICES = ("auto", "cpu", "cuda")


class DeviceError(RuntimeError):
    """The requested device cannot be used."""


@functools.lru_cache(maxsize=1)
def _cupy() -> ModuleType | None:
    """Import cupy lazily; None when it is not installed or not importable."""
    try:
        import cupy  # noqa: PLC0415  (the only cupy import outside gpuconv/cuda.py)
    except Exception:  # ImportError, or a broken CUDA install raising at import
        return None
    if os.environ.get("GPUCONV_DEBUG_ALLOC") == "1":
        # One cudaMalloc per array, no pool: compute-sanitizer then sees every overrun.
        cupy.cuda.set_allocator(None)
    return cupy


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
            self.xp.cuda.get_current_stream().synchronize()

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
    return Device("cuda", cp)


def is_gpu_array(a: Any) -> bool:
    """True for a cupy ndarray (without importing cupy when it is absent)."""
    cp = _cupy()
    return cp is not None and isinstance(a, cp.ndarray)


def array_module(a: Any) -> ModuleType:
    """numpy or cupy, whichever owns ``a``."""
    return _cupy() if is_gpu_array(a) else np  # type: ignore[return-value]


def device_of(a: Any) -> Device:
    """The Device an array lives on."""
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
