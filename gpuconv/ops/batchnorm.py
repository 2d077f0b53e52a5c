"""Batch normalization (Ioffe & Szegedy), PyTorch's conventions.

``x`` is [N, C, H, W] (statistics per channel over N, H, W) or [N, D] (per feature
over N).  Train mode normalizes with the batch mean and the *biased* batch variance
and updates the running statistics in place with the *unbiased* variance:
``running = (1 - momentum) * running + momentum * batch``.  Eval mode normalizes
with the running statistics.  ``save_mean`` / ``save_invstd`` (per channel) are what
the backward needs: ``invstd = 1 / sqrt(var + eps)``.

The CUDA path lives in kernels/batchnorm.cu: Welford partials over (channel, chunk)
blocks merged in double, then an elementwise pass.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import cuda, device
from ._checks import OpArgumentError, check_array, check_out
from ._checks import float_dtype as _float_dtype

_THREADS = 256          # must match BN_THREADS in kernels/batchnorm.cu
_TARGET_BLOCKS = 2048   # enough (channel, chunk) blocks to fill an H100 for the reductions
_MIN_PER_THREAD = 8     # don't split a channel so finely that a thread sees < 8 elements
_MAX_SPLIT = 1024


# ----------------------------------------------------------------------------- helpers



def _geometry(op: str, x: Any) -> tuple[int, int, int]:
    """(N, C, HW) of an [N, C, H, W] or [N, D] input."""
    if x.ndim == 4:
        n, c, h, w = (int(s) for s in x.shape)
        return n, c, h * w
    if x.ndim == 2:
        n, d = (int(s) for s in x.shape)
        return n, d, 1
    raise OpArgumentError(f"{op}: x must be [N, C, H, W] or [N, D], got shape {tuple(x.shape)}")


def _suffix(dt: np.dtype) -> str:
    return "f32" if dt == np.float32 else "f64"


def _f64_bits(v: float) -> np.int64:
    # cuda.launch narrows Python (and NumPy) floats to float32; kernels take doubles as
    # their bit pattern in a long long so float64 runs see the exact eps/momentum.
    return np.array(float(v), dtype=np.float64).view(np.int64)[()]


def _split(c: int, m: int) -> tuple[int, int]:
    """(S, chunk): how many blocks share one channel's M elements, and each one's share."""
    if m <= 0:
        return 1, 1
    s = max(1, min(_TARGET_BLOCKS // max(c, 1), cuda.cdiv(m, _THREADS * _MIN_PER_THREAD), _MAX_SPLIT))
    chunk = cuda.cdiv(m, s)
    return cuda.cdiv(m, chunk), chunk  # no empty trailing block


def workspace_elems(n: int, c: int, hw: int) -> int:
    """Scratch elements (x's dtype) of the GPU train-mode forward and backward: the per-block
    partial sums, [2, C, S] (S >= 1 blocks per channel)."""
    s, _ = _split(c, n * hw)
    return 2 * c * s


def _partials(x: Any, c: int, s: int, workspace: Any) -> Any:
    """The [2, C, S] partial sums: a view of the planned workspace, or a new array."""
    if workspace is None:
        return device.array_module(x).empty((2, c, s), dtype=x.dtype)
    return workspace[:2 * c * s].reshape(2, c, s)


def _elementwise_geometry(rows: int, hw: int) -> tuple[int, int, int]:
    """(grid, block, rows_mode) for bn_apply / bn_bwd_dx."""
    if hw >= 32:
        # One block per (n, c) row: the channel's parameters are loaded once per row.
        block = min(256, 32 * cuda.cdiv(hw, 32))
        return min(rows, 1 << 20), block, 1
    total = rows * hw
    return min(max(cuda.cdiv(total, 256), 1), 1 << 20), 256, 0


# ----------------------------------------------------------------------------- NumPy spec

def batchnorm_forward_cpu(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, running_mean: np.ndarray,
                          running_var: np.ndarray, train: bool, momentum: float, eps: float,
                          out: np.ndarray, save_mean: np.ndarray, save_invstd: np.ndarray) -> None:
    """NumPy forward into the given buffers (validated by the caller)."""
    n, c, hw = _geometry("batchnorm_forward", x)
    x3 = x.reshape(n, c, hw)
    if train:
        m = n * hw
        mean = x3.mean(axis=(0, 2))
        xc = x3 - mean[None, :, None]  # two-pass variance: no E[x^2] - E[x]^2 cancellation
        var = np.mean(xc * xc, axis=(0, 2))
        invstd = 1.0 / np.sqrt(var + eps)
        running_mean *= 1.0 - momentum
        running_mean += momentum * mean
        running_var *= 1.0 - momentum
        running_var += momentum * (var * (m / (m - 1)))
    else:
        mean = running_mean.copy()
        invstd = 1.0 / np.sqrt(running_var + eps)
        xc = x3 - mean[None, :, None]
    save_mean[...] = mean
    save_invstd[...] = invstd
    y3 = out.reshape(n, c, hw)
    np.multiply(xc, (invstd * gamma)[None, :, None], out=y3)
    y3 += beta[None, :, None]


def batchnorm_backward_cpu(dy: np.ndarray, x: np.ndarray, gamma: np.ndarray, save_mean: np.ndarray,
                           save_invstd: np.ndarray, out: np.ndarray, dgamma_out: np.ndarray,
                           dbeta_out: np.ndarray) -> None:
    """NumPy training-mode backward into the given buffers."""
    n, c, hw = _geometry("batchnorm_backward", x)
    m = n * hw
    x3, dy3 = x.reshape(n, c, hw), dy.reshape(n, c, hw)
    xhat = (x3 - save_mean[None, :, None]) * save_invstd[None, :, None]
    dbeta = dy3.sum(axis=(0, 2))
    dgamma = (dy3 * xhat).sum(axis=(0, 2))
    k = (gamma * save_invstd)[None, :, None]
    dx3 = out.reshape(n, c, hw)
    # dx = gamma*invstd * (dy - mean(dy) - xhat * mean(dy*xhat))
    np.multiply(k, dy3 - (dbeta[None, :, None] + xhat * dgamma[None, :, None]) / m, out=dx3)
    dgamma_out[...] = dgamma
    dbeta_out[...] = dbeta


# ----------------------------------------------------------------------------- CUDA path

def batchnorm_forward_gpu(x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any, train: bool,
                          momentum: float, eps: float, out: Any, save_mean: Any, save_invstd: Any,
                          workspace: Any = None) -> None:
    """CUDA forward into the given buffers (validated by the caller)."""
    n, c, hw = _geometry("batchnorm_forward", x)
    suf = _suffix(x.dtype)
    m = n * hw
    if train:
        s, chunk = _split(c, m)
        part = _partials(x, c, s, workspace)
        cuda.launch("batchnorm", f"bn_stats_partial_{suf}", (c, s), (_THREADS,),
                    (x, part[0], part[1], n, c, np.int64(hw), np.int64(chunk), s))
        cuda.launch("batchnorm", f"bn_stats_finalize_{suf}", (cuda.cdiv(c, 256),), (256,),
                    (part[0], part[1], save_mean, save_invstd, running_mean, running_var, c, s,
                     np.int64(m), np.int64(chunk), _f64_bits(eps), _f64_bits(momentum), 1))
    else:
        cuda.launch("batchnorm", f"bn_eval_stats_{suf}", (cuda.cdiv(c, 256),), (256,),
                    (running_mean, running_var, save_mean, save_invstd, c, _f64_bits(eps)))
    grid, block, rows_mode = _elementwise_geometry(n * c, hw)
    cuda.launch("batchnorm", f"bn_apply_{suf}", (grid,), (block,),
                (x, out, gamma, beta, save_mean, save_invstd, n, c, np.int64(hw), rows_mode))


def batchnorm_backward_gpu(dy: Any, x: Any, gamma: Any, save_mean: Any, save_invstd: Any, out: Any,
                           dgamma_out: Any, dbeta_out: Any, workspace: Any = None) -> None:
    """CUDA training-mode backward into the given buffers."""
    n, c, hw = _geometry("batchnorm_backward", x)
    suf = _suffix(x.dtype)
    s, chunk = _split(c, n * hw)
    part = _partials(x, c, s, workspace)
    cuda.launch("batchnorm", f"bn_bwd_partial_{suf}", (c, s), (_THREADS,),
                (dy, x, save_mean, part[0], part[1], n, c, np.int64(hw), np.int64(chunk), s))
    cuda.launch("batchnorm", f"bn_bwd_finalize_{suf}", (cuda.cdiv(c, 256),), (256,),
                (part[0], part[1], save_invstd, dgamma_out, dbeta_out, c, s))
    grid, block, rows_mode = _elementwise_geometry(n * c, hw)
    cuda.launch("batchnorm", f"bn_bwd_dx_{suf}", (grid,), (block,),
                (dy, x, gamma, save_mean, save_invstd, dgamma_out, dbeta_out, out, n, c, np.int64(hw), rows_mode))


# ----------------------------------------------------------------------------- public API

def batchnorm_forward(x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any, *, train: bool,
                      momentum: float = 0.1, eps: float = 1e-5, out: Any = None, save_mean: Any = None,
                      save_invstd: Any = None, workspace: Any = None) -> tuple[Any, Any, Any]:
    """Batch-normalize ``x``; returns ``(y, save_mean, save_invstd)``.

    Train mode updates ``running_mean`` / ``running_var`` in place.  All parameter and
    statistic arrays are [C] with x's dtype and device.  ``workspace``: planned GPU scratch
    of at least :func:`workspace_elems` elements (else the GPU path allocates it).
    """
    op = "batchnorm_forward"
    dt = _float_dtype(op, "x", x)
    check_array(op, "x", x, dtype=dt)
    n, c, hw = _geometry(op, x)
    for name, a in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                    ("running_var", running_var)):
        check_array(op, name, a, shape=(c,), dtype=dt, like=x)
    if train and n * hw <= 1:
        raise OpArgumentError(f"{op}: train mode needs more than 1 value per channel, got x of shape "
                              f"{tuple(x.shape)} ({n * hw} per channel)")
    if not eps > 0:
        raise OpArgumentError(f"{op}: eps must be > 0, got {eps}")
    out = check_out(op, out, x.shape, x, dt)
    save_mean = _check_vec(op, "save_mean", save_mean, c, x, dt)
    save_invstd = _check_vec(op, "save_invstd", save_invstd, c, x, dt)
    if device.is_gpu_array(x):
        _check_workspace(op, workspace, n, c, hw, x, dt)
        batchnorm_forward_gpu(x, gamma, beta, running_mean, running_var, bool(train), float(momentum),
                              float(eps), out, save_mean, save_invstd, workspace)
    else:
        batchnorm_forward_cpu(x, gamma, beta, running_mean, running_var, bool(train), float(momentum),
                              float(eps), out, save_mean, save_invstd)
    return out, save_mean, save_invstd


def batchnorm_backward(dy: Any, x: Any, gamma: Any, save_mean: Any, save_invstd: Any, out: Any = None,
                       dgamma_out: Any = None, dbeta_out: Any = None, workspace: Any = None) -> tuple[Any, Any, Any]:
    """Training-mode backward; returns ``(dx, dgamma, dbeta)`` (``workspace``: as in the forward)."""
    op = "batchnorm_backward"
    dt = _float_dtype(op, "x", x)
    check_array(op, "x", x, dtype=dt)
    n, c, hw = _geometry(op, x)
    check_array(op, "dy", dy, shape=x.shape, dtype=dt, like=x)
    for name, a in (("gamma", gamma), ("save_mean", save_mean), ("save_invstd", save_invstd)):
        check_array(op, name, a, shape=(c,), dtype=dt, like=x)
    out = check_out(op, out, x.shape, x, dt)
    dgamma_out = _check_vec(op, "dgamma_out", dgamma_out, c, x, dt)
    dbeta_out = _check_vec(op, "dbeta_out", dbeta_out, c, x, dt)
    if device.is_gpu_array(x):
        _check_workspace(op, workspace, n, c, hw, x, dt)
        batchnorm_backward_gpu(dy, x, gamma, save_mean, save_invstd, out, dgamma_out, dbeta_out, workspace)
    else:
        batchnorm_backward_cpu(dy, x, gamma, save_mean, save_invstd, out, dgamma_out, dbeta_out)
    return out, dgamma_out, dbeta_out


def _check_workspace(op: str, workspace: Any, n: int, c: int, hw: int, like: Any, dt: np.dtype) -> None:
    if workspace is None:
        return
    check_array(op, "workspace", workspace, ndim=1, dtype=dt, like=like)
    need = workspace_elems(n, c, hw)
    if workspace.size < need:
        raise OpArgumentError(f"{op}: workspace holds {workspace.size} elements, the kernels need {need}")


def _check_vec(op: str, name: str, a: Any, c: int, like: Any, dt: np.dtype) -> Any:
    """A [C] buffer: the given one after checks, or a new one."""
    if a is None:
        return device.array_module(like).empty((c,), dtype=dt)
    check_array(op, name, a, shape=(c,), dtype=dt, like=like)
    return a
