"""Argument checks shared by the op launchers: clear errors instead of bad launches."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import device
from ..kernel_config import PRECISIONS  # re-exported: the one list of precisions

__all__ = ["OpArgumentError", "check_array", "float_dtype", "check_out", "check_precision", "PRECISIONS",
           "INT32_MAX"]


class OpArgumentError(ValueError):
    """An op was called with an array of the wrong dtype, shape, layout or device."""


def check_array(op: str, name: str, a: Any, *, ndim: int | None = None,
                shape: Sequence[int] | None = None, dtype: Any = np.float32,
                like: Any = None) -> None:
    """Raise OpArgumentError unless ``a`` is a C-contiguous array as described.

    ``like``: another argument that ``a`` must share a device with.
    """
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise OpArgumentError(f"{op}: {name} must be an array, got {type(a).__name__}")
    if dtype is not None and a.dtype != np.dtype(dtype):
        raise OpArgumentError(f"{op}: {name} must be {np.dtype(dtype)}, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise OpArgumentError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(a.shape)}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise OpArgumentError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    if not a.flags.c_contiguous:
        raise OpArgumentError(f"{op}: {name} must be C-contiguous (NCHW); call ascontiguousarray first")
    if like is not None and device.is_gpu_array(a) != device.is_gpu_array(like):
        raise OpArgumentError(
            f"{op}: {name} is on {device.device_of(a)} but the other operands are on {device.device_of(like)}")
    if device.is_gpu_array(a) and like is not None and a.device != like.device:
        raise OpArgumentError(f"{op}: {name} is on GPU {a.device.id}, the other operands on GPU {like.device.id}")


def float_dtype(op: str, name: str, a: Any) -> np.dtype:
    """The dtype of ``a`` if it is float32/float64, else a clear OpArgumentError."""
    if not hasattr(a, "dtype") or not hasattr(a, "shape"):
        raise OpArgumentError(f"{op}: {name} must be an array, got {type(a).__name__}")
    dt = np.dtype(a.dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise OpArgumentError(f"{op}: {name} must be float32 or float64, got {dt}")
    return dt


def check_out(op: str, out: Any, shape: Sequence[int], like: Any, dtype: Any = np.float32) -> Any:
    """Return ``out`` after checking it, or a new empty array shaped ``shape`` next to ``like``."""
    xp = device.array_module(like)
    if out is None:
        return xp.empty(tuple(shape), dtype=dtype)
    check_array(op, "out", out, shape=shape, dtype=dtype, like=like)
    return out


# The GEMM/conv kernels index rows, columns and reductions with 32-bit arithmetic.
INT32_MAX = 2**31 - 1


def check_precision(op: str, precision: str) -> None:
    if precision not in PRECISIONS:
        raise OpArgumentError(f"{op}: precision must be one of {PRECISIONS}, got {precision!r}")
