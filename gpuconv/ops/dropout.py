"""DROPOUT ops: inverted dropout with a counter-based hash mask (no RNG state).

Keep each element with probability 1-p and scale kept values by 1/(1-p), so the layer is the
identity at test time.  The keep/drop decision for flat element i is a pure function of
(seed, counter, i):

    k0, k1 = dropout_keys(seed, counter)                    # MurmurHash3 fmix32 chain
    h(i)   = fmix32(fmix32(lo(i) ^ k0) ^ k1 ^ (hi(i) * 0x9E3779B1))   (uint32, wrapping)
    keep   = h(i) >= floor(p * 2**32)

The NumPy path below and ``kernels/dropout.cu`` compute exactly this in uint32 arithmetic, so
masks are bit-identical across CPU and GPU for the same (seed, counter): a resumed or
re-run step draws the same mask wherever it runs.  The mask is uint8 (1 = kept).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import cuda, device
from ._checks import OpArgumentError, check_array, check_out

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_BLOCK = 256
_UNROLL = 4
_MAX_GRID = 65536
_CHUNK = 1 << 20  # CPU path: hash this many elements at a time (bounded temporaries)
_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B1


# ---------------------------------------------------------------------------- the hash

def fmix32_int(h: int) -> int:
    """MurmurHash3's 32-bit finalizer on a Python int (for the per-call keys)."""
    h &= _M32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


def _fmix32(h: np.ndarray) -> np.ndarray:
    """fmix32 on a uint32 array, in place (uint32 multiplies wrap mod 2^32 like CUDA's)."""
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def dropout_keys(seed: int, counter: int) -> tuple[int, int]:
    """(k0, k1): two 32-bit keys mixing all 64 bits of seed and counter."""
    a = fmix32_int((seed & _M32) ^ 0x9E3779B9)
    a = fmix32_int(a ^ (seed >> 32))
    k0 = fmix32_int(a ^ (counter & _M32))
    k1 = fmix32_int(k0 ^ (counter >> 32) ^ 0x85EBCA6B)
    return k0, k1


def dropout_threshold(p: float) -> int:
    """floor(p * 2^32): hashes below it are dropped, so P(keep) = 1 - p (to within 2^-32)."""
    return min(int(p * 4294967296.0), _M32)


def keep_hash(index: np.ndarray, k0: int, k1: int) -> np.ndarray:
    """h(i) for an array of uint64 flat indices (the NumPy twin of the kernel's ``keep``)."""
    lo = (index & np.uint64(_M32)).astype(np.uint32)
    hi = (index >> np.uint64(32)).astype(np.uint32)
    h = _fmix32(lo ^ np.uint32(k0))
    h ^= np.uint32(k1)
    hi *= np.uint32(_GOLDEN)
    h ^= hi
    return _fmix32(h)


def _keep_mask(n: int, start: int, k0: int, k1: int, thr: int) -> np.ndarray:
    idx = np.arange(start, start + n, dtype=np.uint64)
    return keep_hash(idx, k0, k1) >= np.uint32(thr)


# ---------------------------------------------------------------------------- validation

def _check_p(op: str, p: Any) -> float:
    try:
        pf = float(p)
    except (TypeError, ValueError):
        raise OpArgumentError(f"{op}: p must be a number, got {p!r}") from None
    if not (math.isfinite(pf) and 0.0 <= pf < 1.0):
        raise OpArgumentError(f"{op}: dropout probability p={p!r} must be in [0, 1)")
    return pf


def _check_u64(op: str, name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) < 2**64:
        raise OpArgumentError(f"{op}: {name}={v!r} must be an integer in [0, 2**64)")
    return int(v)


def _check_float(op: str, name: str, a: Any) -> None:
    check_array(op, name, a, dtype=None)
    if a.dtype not in _FLOATS:
        raise OpArgumentError(f"{op}: {name} must be float32 or float64, got {a.dtype}")


def _scale(p: float) -> float:
    return 1.0 / (1.0 - p)


def _suffix(dtype: np.dtype) -> str:
    return "f32" if dtype == np.float32 else "f64"


def _grid(n: int) -> tuple[int, int, int]:
    return (min(cuda.cdiv(n, _BLOCK * _UNROLL), _MAX_GRID), 1, 1)


# ---------------------------------------------------------------------------- NumPy reference

def dropout_forward_cpu(x: np.ndarray, k0: int, k1: int, thr: int, scale: float,
                        y: np.ndarray, mask: np.ndarray) -> None:
    xf, yf, mf = x.reshape(-1), y.reshape(-1), mask.reshape(-1)
    s = x.dtype.type(scale)
    for start in range(0, xf.size, _CHUNK):
        sl = slice(start, min(start + _CHUNK, xf.size))
        keep = _keep_mask(sl.stop - start, start, k0, k1, thr)
        v = xf[sl] * s
        yf[sl] = np.where(keep, v, x.dtype.type(0))  # a select, as in the kernel
        mf[sl] = keep


def dropout_backward_cpu(dy: np.ndarray, mask: np.ndarray, scale: float, dx: np.ndarray) -> None:
    s = dy.dtype.type(scale)
    v = dy * s
    np.copyto(dx, np.where(mask != 0, v, dy.dtype.type(0)))


# ---------------------------------------------------------------------------- CUDA launchers

def dropout_forward_gpu(x: Any, k0: int, k1: int, thr: int, scale: float, y: Any, mask: Any,
                        keys: Any = None) -> None:
    """With ``keys`` (device uint32[2]) the kernel reads (k0, k1) from it when it runs."""
    n = x.size
    if keys is not None:
        cuda.launch("dropout", f"dropout_fwd_dev_{_suffix(x.dtype)}", _grid(n), (_BLOCK, 1, 1),
                    (x, y, mask, np.int64(n), keys, np.uint32(thr), x.dtype.type(scale)))
        return
    cuda.launch("dropout", f"dropout_fwd_{_suffix(x.dtype)}", _grid(n), (_BLOCK, 1, 1),
                (x, y, mask, np.int64(n), np.uint32(k0), np.uint32(k1), np.uint32(thr), x.dtype.type(scale)))


def dropout_backward_gpu(dy: Any, mask: Any, scale: float, dx: Any) -> None:
    n = dy.size
    cuda.launch("dropout", f"dropout_bwd_{_suffix(dy.dtype)}", _grid(n), (_BLOCK, 1, 1),
                (dy, mask, dx, np.int64(n), dy.dtype.type(scale)))


# ---------------------------------------------------------------------------- public ops

def dropout_forward(x: Any, p: float, seed: int, counter: int, out: Any = None,
                    mask_out: Any = None, keys: Any = None) -> tuple[Any, Any]:
    """(y, mask): y = x * mask / (1-p); mask uint8 shaped like x, a hash of (seed, counter, i).

    ``out`` may be x (in place).  p == 0 keeps everything (y is a copy of x, mask all ones).
    ``keys``: a uint32[2] array on x's device holding ``dropout_keys(seed, counter)``, which
    the kernel reads when it runs (seed and counter are then ignored): a planned training
    step writes it before each step, so a captured CUDA graph draws new masks.
    """
    op = "dropout_forward"
    _check_float(op, "x", x)
    p = _check_p(op, p)
    seed = _check_u64(op, "seed", seed)
    counter = _check_u64(op, "counter", counter)
    y = check_out(op, out, x.shape, x, dtype=x.dtype)
    if mask_out is None:
        mask = device.array_module(x).empty(x.shape, dtype=np.uint8)
    else:
        check_array(op, "mask_out", mask_out, shape=x.shape, dtype=np.uint8, like=x)
        mask = mask_out
    thr = dropout_threshold(p)
    if keys is not None:
        check_array(op, "keys", keys, shape=(2,), dtype=np.uint32, like=x)
        if device.is_gpu_array(x):
            dropout_forward_gpu(x, 0, 0, thr, _scale(p), y, mask, keys=keys)
        else:
            dropout_forward_cpu(x, int(keys[0]), int(keys[1]), thr, _scale(p), y, mask)
        return y, mask
    k0, k1 = dropout_keys(seed, counter)
    if device.is_gpu_array(x):
        dropout_forward_gpu(x, k0, k1, thr, _scale(p), y, mask)
    else:
        dropout_forward_cpu(x, k0, k1, thr, _scale(p), y, mask)
    return y, mask


def dropout_backward(dy: Any, mask: Any, p: float, out: Any = None) -> Any:
    """dx = dy * mask / (1-p).  ``out`` may be dy (in place)."""
    op = "dropout_backward"
    _check_float(op, "dy", dy)
    check_array(op, "mask", mask, shape=dy.shape, dtype=np.uint8, like=dy)
    p = _check_p(op, p)
    dx = check_out(op, out, dy.shape, dy, dtype=dy.dtype)
    if device.is_gpu_array(dy):
        dropout_backward_gpu(dy, mask, _scale(p), dx)
    else:
        dropout_backward_cpu(dy, mask, _scale(p), dx)
    return dx
