"""Batch augmentation as one op: gather images from a data set with a padded random crop and a flip.

``augment_gather(src, idx, draws, pad, out)``: ``out[i]`` is image ``idx[i]`` of ``src``
(S, C, H, W), zero-padded by ``pad`` on every side, cropped back to H x W at row/column
offset ``draws[i, 0:2]`` (``pad``: no shift) and mirrored left-right when ``draws[i, 2]``.
The draws come from the host (:func:`gpuconv.augment.draw`); the op only copies and
zeros, so the NumPy and CUDA paths agree bit for bit.  The batch is written into ``out``
(a planned training run's input batch) and nothing else is allocated on the device.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import cuda, device
from ._checks import OpArgumentError, check_array

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_BLOCK = 256
_MAX_GRID = 65536


def _suffix(dtype: np.dtype) -> str:
    return "f32" if dtype == np.float32 else "f64"


# ---------------------------------------------------------------------------- NumPy reference

def augment_gather_cpu(src: np.ndarray, idx: np.ndarray, draws: np.ndarray, pad: int, out: np.ndarray) -> np.ndarray:
    _, c, h, w = out.shape
    oy, ox, flip = (draws[:, k].astype(np.int64) for k in range(3))
    rows = (oy - pad)[:, None] + np.arange(h)                                            # (n, H)
    cols = (ox - pad)[:, None] + np.where(flip[:, None] != 0, np.arange(w)[::-1], np.arange(w))  # (n, W)
    valid = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
    gathered = src[idx[:, None, None, None], np.arange(c)[None, :, None, None],
                   np.clip(rows, 0, h - 1)[:, None, :, None], np.clip(cols, 0, w - 1)[:, None, None, :]]
    np.copyto(out, np.where(valid, gathered, out.dtype.type(0)))
    return out


# ---------------------------------------------------------------------------- CUDA launcher

def augment_gather_gpu(src: Any, idx: Any, draws: Any, pad: int, out: Any) -> Any:
    n, c, h, w = out.shape
    total = n * c * h * w
    cuda.launch("augment", f"augment_gather_{_suffix(out.dtype)}", (min(cuda.cdiv(total, _BLOCK), _MAX_GRID), 1, 1),
                (_BLOCK, 1, 1), (src, idx, draws, out, np.int64(total), np.int32(c), np.int32(h), np.int32(w),
                                 np.int32(pad)))
    return out


# ---------------------------------------------------------------------------- public op

def augment_gather(src: Any, idx: Any, draws: Any, pad: int, out: Any) -> Any:
    """``out[i]`` = image ``idx[i]`` of ``src``, padded, cropped at ``draws[i, :2]`` and flipped when
    ``draws[i, 2]`` (see the module docstring); returns ``out``.

    ``src`` (S, C, H, W) and ``out`` (n, C, H, W) float32/float64, ``idx`` (n,) int64 in [0, S),
    ``draws`` (n, 3) int32 with offsets in [0, 2 * pad]: all C-contiguous, on one device.
    Indices and offsets are not checked on the GPU (that would need a sync): draw them with
    :func:`gpuconv.augment.draw` and a permutation of the data set."""
    op = "augment_gather"
    if not hasattr(src, "dtype") or np.dtype(src.dtype) not in _FLOATS:
        raise OpArgumentError(f"{op}: src must be a float32 or float64 array, got {getattr(src, 'dtype', type(src))}")
    check_array(op, "src", src, ndim=4, dtype=src.dtype)
    check_array(op, "out", out, ndim=4, dtype=src.dtype, like=src)
    if tuple(out.shape[1:]) != tuple(src.shape[1:]):
        raise OpArgumentError(f"{op}: out images {tuple(out.shape[1:])} differ from src images {tuple(src.shape[1:])}")
    n = out.shape[0]
    check_array(op, "idx", idx, shape=(n,), dtype=np.int64, like=src)
    check_array(op, "draws", draws, shape=(n, 3), dtype=np.int32, like=src)
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise OpArgumentError(f"{op}: pad must be an integer >= 0, got {pad!r}")
    if n == 0:
        return out
    if device.is_gpu_array(out):
        return augment_gather_gpu(src, idx, draws, int(pad), out)
    if idx.min() < 0 or idx.max() >= src.shape[0]:
        raise OpArgumentError(f"{op}: idx must be in [0, {src.shape[0]})")
    if draws[:, :2].min() < 0 or draws[:, :2].max() > 2 * pad:
        raise OpArgumentError(f"{op}: crop offsets must be in [0, {2 * pad}]")
    return augment_gather_cpu(src, idx, draws, int(pad), out)
