"""Batch-strided views: how an op reads or writes a channel slice of a bigger buffer in place.

A concatenation along channels costs nothing when each branch writes its output straight into
its slice of the concat buffer and the consumers read the buffer (or their slice of it) where it
lies.  An NCHW channel slice ``buf[:, c0:c1]`` of a C-contiguous (N, Ctot, H, W) buffer is not
C-contiguous, but it is simple: per sample one contiguous block of (c1-c0)*H*W elements, the
samples ``Ctot*H*W`` elements apart.  The kernels that accept such views take each operand as
``(pointer, batch_stride)`` and loop over ``batches`` blocks of ``inner`` contiguous elements.

``layout`` accepts exactly the arrays whose samples (``a[n]``) are each C-contiguous and do not
overlap: C-contiguous arrays, channel slices, and batch slices with a step (``buf[::2]``) alike.
Anything else (a spatial crop, a transposed or broadcast array, a negative step) is rejected with
a clear error rather than copied behind the caller's back.

The kernel receives the *span* of a view: the contiguous 1-D array from its first element to its
last (other branches' channels included, which the kernel never touches), so the pointer is the
view's start and the emulator's bounds checks cover exactly what the kernel may address.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .. import device
from ._checks import OpArgumentError

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_LAYOUT_HINT = ("must be C-contiguous, or a view whose samples are contiguous blocks such as a channel "
                "slice buf[:, c0:c1] of a C-contiguous NCHW buffer")


@dataclass(frozen=True)
class Layout:
    """``batches`` blocks of ``inner`` contiguous elements, ``batch_stride`` elements apart."""
    batches: int
    inner: int
    batch_stride: int

    @property
    def contiguous(self) -> bool:
        return self.batches <= 1 or self.batch_stride == self.inner

    @property
    def span(self) -> int:
        """Elements from the first to one past the last (0 for an empty array)."""
        if self.batches == 0 or self.inner == 0:
            return 0
        return (self.batches - 1) * self.batch_stride + self.inner


def layout(op: str, name: str, a: Any) -> Layout:
    """The batch-strided layout of ``a``, or OpArgumentError when it has none."""
    if a.ndim == 0 or a.size == 0 or a.flags.c_contiguous:
        n = int(a.shape[0]) if a.ndim else 1
        inner = math.prod(int(d) for d in a.shape[1:]) if a.ndim else 1
        return Layout(n, inner, inner)
    n = int(a.shape[0])
    inner = math.prod(int(d) for d in a.shape[1:])
    step, item = int(a.strides[0]), a.dtype.itemsize
    if not a[0].flags.c_contiguous or step % item or step // item < inner:
        raise OpArgumentError(f"{op}: {name} {_LAYOUT_HINT}; got shape {tuple(a.shape)}, strides {tuple(a.strides)}")
    return Layout(n, inner, step // item)


def check_view(op: str, name: str, a: Any, *, shape: Sequence[int] | None = None, like: Any = None,
               dtype: Any = None, ndim: int | None = None) -> Layout:
    """Like ``_checks.check_array`` (array, float32/float64 or ``dtype``, ``shape``, the device of
    ``like``), but accepting batch-strided views; returns the layout."""
    if not hasattr(a, "shape") or not hasattr(a, "dtype") or not hasattr(a, "strides"):
        raise OpArgumentError(f"{op}: {name} must be an array, got {type(a).__name__}")
    if dtype is not None and a.dtype != np.dtype(dtype):
        raise OpArgumentError(f"{op}: {name} must be {np.dtype(dtype)}, got {a.dtype}")
    if a.dtype not in _FLOATS:
        raise OpArgumentError(f"{op}: {name} must be float32 or float64, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise OpArgumentError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(a.shape)}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise OpArgumentError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(a.shape)}")
    if like is not None:
        if device.is_gpu_array(a) != device.is_gpu_array(like):
            raise OpArgumentError(f"{op}: {name} is on {device.device_of(a)} but the other operands are on "
                                  f"{device.device_of(like)}")
        if device.is_gpu_array(a) and a.device != like.device:
            raise OpArgumentError(f"{op}: {name} is on GPU {a.device.id}, the other operands on GPU {like.device.id}")
        if a.dtype != like.dtype:
            raise OpArgumentError(f"{op}: {name} must be {like.dtype} like the other operands, got {a.dtype}")
    return layout(op, name, a)


def span(a: Any, lay: Layout) -> Any:
    """The contiguous 1-D array a kernel is handed for ``a``: from its first element to its last.

    No copy: a view of the same memory (cupy or NumPy/emulator alike), safe while capturing."""
    if a.flags.c_contiguous:
        return a
    xp = device.array_module(a)
    return xp.lib.stride_tricks.as_strided(a, shape=(lay.span,), strides=(a.dtype.itemsize,))


def collapse(layouts: Sequence[Layout]) -> tuple[int, int, list[int]]:
    """(batches, inner, batch strides) for one launch over operands of one shape: a single block
    of every element when all are contiguous (no per-sample loop), else per sample."""
    first = layouts[0]
    if all(lay.contiguous for lay in layouts):
        total = first.batches * first.inner
        return 1, total, [total] * len(layouts)
    return first.batches, first.inner, [lay.batch_stride for lay in layouts]


def address(a: Any) -> int:
    """The address of ``a``'s first element (device or host)."""
    if device.is_gpu_array(a):
        return int(a.data.ptr)
    return int(a.__array_interface__["data"][0])


def same_view(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are the same elements of the same memory (one may be a fresh view
    object of the other): then copying one into the other is a no-op."""
    return (device.is_gpu_array(a) == device.is_gpu_array(b) and tuple(a.shape) == tuple(b.shape)
            and a.dtype == b.dtype and address(a) == address(b)
            and all(s == t for s, t, d in zip(a.strides, b.strides, a.shape) if d > 1))


BLOCK = 256
UNROLL = 4          # elements per thread per grid-stride step in the elementwise kernels
_MAX_BLOCKS = 65536  # per launch: the grid-stride loops cover the rest, plenty to fill any GPU
_MAX_GRID_Y = 65535


def elementwise_grid(batches: int, inner: int) -> tuple[int, int, int]:
    """Grid of the batch-strided elementwise kernels: y over the blocks (samples), x over a
    block's elements (UNROLL per thread); about _MAX_BLOCKS blocks at most."""
    gy = max(1, min(batches, _MAX_GRID_Y))
    gx = max(1, min(-(-inner // (BLOCK * UNROLL)), _MAX_BLOCKS // gy))
    return gx, gy, 1
