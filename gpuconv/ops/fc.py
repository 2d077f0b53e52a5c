"""Fully-connected layer ops and the GEMM they are built on.

Conventions (the notes' ``W x + b``, batched over rows): ``x[N, D]``, weights
``w[M, D]`` (out, in), bias ``b[M]``, output ``y[N, M] = x @ w.T + b``.

The GPU path is our own tiled GEMM in ``kernels/fc.cu`` (no cuBLAS): an FP32 FMA
kernel and a TF32 tensor-core kernel (``precision="tf32"``), both with split-K for
skinny problems, bias + ReLU fused in the epilogue; float64 uses a simple kernel.
The launchers and the choice of GEMM kernel (the ``GEMM`` selector, its opt-in variants, the
split-K plan) are in ``ops.fc_gpu`` and re-exported here; this file holds the API, the
argument checks and the NumPy spec.  ``precision`` only affects float32 GPU arrays (the CPU
path is plain NumPy); None: the kernel configuration's.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import device
from ..kernel_config import current
from . import cpu_threads
from ._checks import INT32_MAX, PRECISIONS, OpArgumentError, check_array, check_out, check_precision  # noqa: F401

# ---------------------------------------------------------------- validation helpers
def _float_dtype(op: str, name: str, a: Any) -> np.dtype:
    if not hasattr(a, "dtype"):
        raise OpArgumentError(f"{op}: {name} must be an array, got {type(a).__name__}")
    if a.dtype not in (np.float32, np.float64):
        raise OpArgumentError(f"{op}: {name} must be float32 or float64, got {a.dtype}")
    return a.dtype


def _gemm_dims(op: str, a: Any, b: Any, trans_a: bool, trans_b: bool) -> tuple[int, int, int]:
    m, k = (a.shape[1], a.shape[0]) if trans_a else (a.shape[0], a.shape[1])
    kb, n = (b.shape[1], b.shape[0]) if trans_b else (b.shape[0], b.shape[1])
    if k != kb:
        raise OpArgumentError(
            f"{op}: inner dimensions differ: op(a) is {m}x{k} (a shape {tuple(a.shape)}, trans_a={trans_a}) "
            f"but op(b) is {kb}x{n} (b shape {tuple(b.shape)}, trans_b={trans_b})")
    for name, v in (("M", m), ("N", n), ("K", k)):
        if v > INT32_MAX:
            raise OpArgumentError(f"{op}: {name}={v} exceeds the kernels' 32-bit dimension limit")
    return m, n, k


# ---------------------------------------------------------------- NumPy reference
def gemm_cpu(a: np.ndarray, b: np.ndarray, out: np.ndarray, *, trans_a: bool = False, trans_b: bool = False,
             alpha: float = 1.0, beta: float = 0.0, bias: np.ndarray | None = None,
             relu: bool = False) -> np.ndarray:
    """out = alpha * op(a) @ op(b) + beta * out (+ bias per column) (ReLU): the spec of the kernels."""
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    if cpu_threads.active() > 1 and out.shape[0] > 1:
        # output rows are independent: split them over gpuconv's CPU threads (BLAS is at one)
        def rows(lo: int, hi: int) -> None:
            _gemm_rows(opa[lo:hi], opb, out[lo:hi], alpha, beta, bias, relu)
        cpu_threads.over_batch(rows, out.shape[0], out.size + opb.size + opa.size)
        return out
    return _gemm_rows(opa, opb, out, alpha, beta, bias, relu)


def _gemm_rows(opa: np.ndarray, opb: np.ndarray, out: np.ndarray, alpha: float, beta: float,
               bias: np.ndarray | None, relu: bool) -> np.ndarray:
    if beta != 0.0:
        prod = opa @ opb
        out *= out.dtype.type(beta)
        out += out.dtype.type(alpha) * prod
    else:
        # beta == 0 never reads out (it may hold garbage/NaN), like the kernels.
        np.matmul(opa, opb, out=out)
        if alpha != 1.0:
            out *= out.dtype.type(alpha)
    if bias is not None:
        out += bias
    if relu:
        np.maximum(out, 0, out=out)  # keeps NaN, like the kernels
    return out


def fc_forward_cpu(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, relu: bool, out: np.ndarray) -> np.ndarray:
    """y = x @ w.T + b, optionally ReLU."""
    return gemm_cpu(x, w, out, trans_b=True, bias=b, relu=relu)


def fc_backward_data_cpu(dy: np.ndarray, w: np.ndarray, out: np.ndarray) -> np.ndarray:
    """dx = dy @ w."""
    return gemm_cpu(dy, w, out)


def fc_backward_weight_cpu(x: np.ndarray, dy: np.ndarray, dw: np.ndarray,
                           db: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """dw = dy.T @ x, db = sum of dy over the batch."""
    gemm_cpu(dy, x, dw, trans_a=True)
    if db is not None:
        np.sum(dy, axis=0, out=db)
    return dw, db


def _check_workspace(op: str, workspace: Any, like: Any) -> None:
    if workspace is not None:
        check_array(op, "workspace", workspace, ndim=1, dtype=np.float32, like=like)


# ---------------------------------------------------------------- public API
def _gemm_impl(a: Any, b: Any, out: Any, *, trans_a: bool, trans_b: bool, alpha: float, beta: float,
               bias: Any, relu: bool, precision: str) -> Any:
    if device.is_gpu_array(a):
        return fc_gpu.gemm_gpu(a, b, out, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, bias=bias,
                        relu=relu, precision=precision)
    return gemm_cpu(a, b, out, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, bias=bias, relu=relu)


def gemm(a: Any, b: Any, *, trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0, beta: float = 0.0,
         out: Any = None, precision: str | None = None) -> Any:
    """c = alpha * op(a) @ op(b) + beta * c, with op(x) = x.T when trans_x.

    a, b: 2-D C-contiguous float32/float64 on one device (a transposed operand is
    passed as the untransposed array plus the flag).  beta != 0 needs ``out``
    (its current contents are the c being accumulated into).
    """
    op = "gemm"
    precision = current().precision if precision is None else precision
    check_precision(op, precision)
    dt = _float_dtype(op, "a", a)
    check_array(op, "a", a, ndim=2, dtype=dt)
    check_array(op, "b", b, ndim=2, dtype=dt, like=a)
    m, n, _ = _gemm_dims(op, a, b, trans_a, trans_b)
    if beta != 0.0 and out is None:
        raise OpArgumentError(f"{op}: beta={beta} accumulates into out, so out must be given")
    out = check_out(op, out, (m, n), like=a, dtype=dt)
    return _gemm_impl(a, b, out, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, bias=None,
                      relu=False, precision=precision)


def fc_forward(x: Any, w: Any, b: Any = None, relu: bool = False, out: Any = None,
               precision: str | None = None, workspace: Any = None) -> Any:
    """y[N, M] = x[N, D] @ w[M, D].T (+ b[M]) (then ReLU), bias and ReLU fused on the GPU.

    ``workspace``: planned float32 split-K scratch (see :func:`fc_workspace_elems`)."""
    op = "fc_forward"
    precision = current().precision if precision is None else precision
    check_precision(op, precision)
    dt = _float_dtype(op, "x", x)
    check_array(op, "x", x, ndim=2, dtype=dt)
    check_array(op, "w", w, ndim=2, dtype=dt, like=x)
    n, d = x.shape
    mo = w.shape[0]
    if w.shape[1] != d:
        raise OpArgumentError(f"{op}: w must have shape (out, {d}) to match x of shape {tuple(x.shape)}, "
                              f"got {tuple(w.shape)}")
    if b is not None:
        check_array(op, "b", b, shape=(mo,), dtype=dt, like=x)
    out = check_out(op, out, (n, mo), like=x, dtype=dt)
    if device.is_gpu_array(x):
        _check_workspace(op, workspace, x)
        return fc_gpu.gemm_gpu(x, w, out, trans_b=True, bias=b, relu=relu, precision=precision, workspace=workspace)
    return fc_forward_cpu(x, w, b, relu, out)


def fc_backward_data(dy: Any, w: Any, out: Any = None, precision: str | None = None, workspace: Any = None) -> Any:
    """dx[N, D] = dy[N, M] @ w[M, D]."""
    op = "fc_backward_data"
    precision = current().precision if precision is None else precision
    check_precision(op, precision)
    dt = _float_dtype(op, "dy", dy)
    check_array(op, "dy", dy, ndim=2, dtype=dt)
    check_array(op, "w", w, ndim=2, dtype=dt, like=dy)
    n, mo = dy.shape
    if w.shape[0] != mo:
        raise OpArgumentError(f"{op}: w must have shape ({mo}, in) to match dy of shape {tuple(dy.shape)}, "
                              f"got {tuple(w.shape)}")
    out = check_out(op, out, (n, w.shape[1]), like=dy, dtype=dt)
    if device.is_gpu_array(dy):
        _check_workspace(op, workspace, dy)
        return fc_gpu.gemm_gpu(dy, w, out, precision=precision, workspace=workspace)
    return fc_backward_data_cpu(dy, w, out)


def fc_backward_weight(x: Any, dy: Any, with_bias: bool = True, dw_out: Any = None, db_out: Any = None,
                       precision: str | None = None, workspace: Any = None) -> tuple[Any, Any]:
    """(dw[M, D] = dy.T @ x, db[M] = dy summed over the batch, or None when not with_bias)."""
    op = "fc_backward_weight"
    precision = current().precision if precision is None else precision
    check_precision(op, precision)
    dt = _float_dtype(op, "x", x)
    check_array(op, "x", x, ndim=2, dtype=dt)
    check_array(op, "dy", dy, ndim=2, dtype=dt, like=x)
    n, d = x.shape
    if dy.shape[0] != n:
        raise OpArgumentError(f"{op}: dy must have {n} rows to match x of shape {tuple(x.shape)}, "
                              f"got {tuple(dy.shape)}")
    mo = dy.shape[1]
    dw = check_out(op, dw_out, (mo, d), like=x, dtype=dt)
    db = check_out(op, db_out, (mo,), like=x, dtype=dt) if with_bias else None
    if device.is_gpu_array(x):
        _check_workspace(op, workspace, x)
        fc_gpu.gemm_gpu(dy, x, dw, trans_a=True, precision=precision, workspace=workspace)
        if db is not None:
            fc_gpu.colsum_gpu(dy, db)
        return dw, db
    return fc_backward_weight_cpu(x, dy, dw, db)


# The GPU path (imported last: it builds on the helpers above).
from . import fc_gpu  # noqa: E402


def __getattr__(name: str) -> Any:
    """The GPU path's names (gemm_gpu, gemm_batched_gpu, GEMM, fc_choices, fc_workspace_elems,
    PLAN_SMS, ...), from ``ops.fc_gpu``."""
    if not name.startswith("__"):
        try:
            return getattr(fc_gpu, name)
        except AttributeError:
            pass
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
