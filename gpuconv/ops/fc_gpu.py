"""The GPU path of the FC ops: our tiled GEMM kernels (``kernels/fc.cu``, no cuBLAS), their
launchers, and the choice of the kernel that runs.

An FP32 FMA kernel and a TF32 tensor-core kernel (``precision="tf32"``), both with split-K for
skinny problems, bias + ReLU fused in the epilogue; float64 uses a simple kernel.  Which GEMM
kernel runs is a lookup in ``GEMM`` (an ``ops.selector.Selector``), from the problem and the
kernel configuration.  Opt-in variants, registered at the end of this file: with
``gemm_schedule="async"`` TF32 runs ``gemm_tf32_async_*`` (a cp.async 4-stage pipeline;
emulator-checked, not yet timed on a GPU); with ``wgmma`` on a compute-capability-9.0 GPU
(H100/H200) TF32 runs ``gemm_tf32_wgmma_*``: Hopper's warpgroup MMA, from the sm_90a module
variant (emulator-checked, not yet run on a GPU).  Its tensor cores truncate operands to TF32
where the mma.sync kernels round them to nearest.  The API and NumPy spec are in ``ops.fc``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import cuda, device
from ..kernel_config import KernelConfig, current
from . import autotune
from ._checks import PRECISIONS, OpArgumentError
from .fc import _gemm_dims
from .selector import Choice, Selector

_TILE = 128            # block tile of the f32/tf32 kernels (M and N)
_SLICE = {"fp32": 8, "tf32": 16, "tf32_async": 8, "tf32_wgmma": 32}  # K slice per shared-memory stage
WGMMA_SMEM = 3 * 2 * _TILE * 32 * 4 + 1024  # fc.cu WG_SMEM: 3 stages of A and B tiles + alignment slack


# ---------------------------------------------------------------- CUDA launchers
def _aligned(a: Any, nbytes: int) -> bool:
    return a.data.ptr % nbytes == 0


# What the memory plan sizes split-K workspaces for (fixed, so a plan made on a CPU is the
# plan made on the GPU).  On a GPU with more SMs the GEMM uses fewer splits than it would
# like rather than more memory than planned.
PLAN_SMS = device.SM_COUNT_HINT
MAX_SPLITS = 16


def _wanted_splits(m: int, n: int, k: int, sms: int) -> int:
    """Split K when the output tiles alone cannot fill the GPU (two resident blocks per SM)."""
    tiles = cuda.cdiv(m, _TILE) * cuda.cdiv(n, _TILE)
    if tiles < sms and k >= 1024:  # fewer tiles than SMs: most of the GPU would idle
        return max(1, min(cuda.cdiv(2 * sms, tiles), k // 512, MAX_SPLITS))
    return 1


def splitk_workspace_elems(m: int, n: int, k: int, sms: int = PLAN_SMS) -> int:
    """float32 elements of split-K scratch a float32 GEMM [m, k] x [k, n] may use (0: none)."""
    splits = _wanted_splits(m, n, k, sms)
    return splits * m * n if splits > 1 else 0


def _split_k(m: int, n: int, k: int, kslice: int, sms: int, max_splits: int = MAX_SPLITS) -> tuple[int, int]:
    """(splits, K per split), at most ``max_splits`` (what a given workspace holds)."""
    splits = min(_wanted_splits(m, n, k, sms), max(max_splits, 1))
    kps = cuda.cdiv(cuda.cdiv(max(k, 1), splits), kslice) * kslice
    splits = max(1, cuda.cdiv(k, kps))
    return splits, kps


# ---------------------------------------------------------------- kernel selection
@dataclass(frozen=True)
class GemmProblem:
    """One float32 GEMM out[m, n] = op(a)[m, k] @ op(b)[k, n] on the GPU; ``tag`` is nn/nt/tn/tt."""

    m: int
    n: int
    k: int
    tag: str
    dtype: str = "float32"
    precision: str = "fp32"
    dev_id: int | None = None


GEMM: Selector[GemmProblem] = Selector("gemm")


def _plain_plan(p: GemmProblem, cfg: KernelConfig, why: str) -> Choice:
    prec = "tf32" if p.precision == "tf32" else "f32"
    return Choice("fc", "", "gemm", (f"gemm_{prec}_{p.tag}",), p.precision, 0, why, {"kslice": _SLICE[p.precision]})


GEMM.register("gemm", priority=100, applies=lambda p, cfg: "default: tiled GEMM" if p.dtype == "float32" else None,
              plan=_plain_plan, launch=lambda p, c, g: _launch_tiled(p, c, g))


def fc_choices(n: int, d: int, m: int, precision: str | None = None, train: bool = True, with_bias: bool = True,
               dtype: Any = np.float32, cfg: KernelConfig | None = None) -> list[Choice]:
    """What an FC layer (batch n, D inputs, M outputs) launches per pass under ``cfg`` (default:
    current()): forward x @ w.T, backward-weight dy.T @ x (+ the bias column sums), backward-data
    dy @ w; the split-K scratch as the memory plan sizes it (``PLAN_SMS``)."""
    cfg = current() if cfg is None else cfg
    precision = cfg.precision if precision is None else precision
    f64 = np.dtype(dtype) == np.float64
    passes = [("fwd", n, m, d, "nt")]
    if train:
        passes += [("bwdw", m, d, n, "tn"), ("bwdd", n, d, m, "nn")]
    out = []
    for pass_, mm, nn, kk, tag in passes:
        c = GEMM.select(GemmProblem(mm, nn, kk, tag, "float64" if f64 else "float32", precision), cfg)[1]
        ws = 0 if f64 else splitk_workspace_elems(mm, nn, kk)
        extra = ("splitk_reduce_f32",) if ws else ()
        if pass_ == "bwdw" and with_bias:
            extra += (f"colsum_{'f64' if f64 else 'f32'}",)
        why = c.why + (f"; split-K x{-(-ws // (mm * nn))}" if ws else "")
        out.append(Choice("fc", pass_, c.variant, c.kernels + extra, precision, ws, why))
    return out


def gemm_gpu(a: Any, b: Any, out: Any, *, trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0,
             beta: float = 0.0, bias: Any = None, relu: bool = False, precision: str = "fp32",
             workspace: Any = None) -> Any:
    """Launch the GEMM kernels (arguments already validated); returns out.

    The kernel is the ``GEMM`` selector's choice for the problem and the kernel configuration.
    ``workspace`` (float32, 1-D, from the memory plan) holds split-K partial products; it
    bounds the number of splits.  Without it a split-K GEMM allocates its scratch."""
    m, n, k = _gemm_dims("gemm", a, b, trans_a, trans_b)
    if m == 0 or n == 0:
        return out
    tag = ("t" if trans_a else "n") + ("t" if trans_b else "n")
    p = GemmProblem(m, n, k, tag, np.dtype(a.dtype).name, precision, a.device.id)
    return GEMM.run(p, current(), {"a": a, "b": b, "out": out, "alpha": alpha, "beta": beta, "bias": bias,
                                   "relu": relu, "workspace": workspace})


def _launch_f64(p: GemmProblem, c: Choice, g: dict[str, Any]) -> Any:
    """The simple float64 kernel (it backs the GPU gradient checks)."""
    m, n, k, out, bias = p.m, p.n, p.k, g["out"], g["bias"]
    if cuda.cdiv(n, 16) > 65535:
        raise OpArgumentError(f"gemm: N={n} too large for the float64 kernel's grid")
    cuda.launch("fc", c.kernels[0], (cuda.cdiv(m, 16), cuda.cdiv(n, 16), 1), (16, 16, 1),
                (g["a"], g["b"], out, bias if bias is not None else out, m, n, k, np.float64(g["alpha"]),
                 np.float64(g["beta"]), bias is not None, g["relu"]))
    return out


def _launch_tiled(p: GemmProblem, c: Choice, g: dict[str, Any]) -> Any:
    """A 128x128-tile float32 GEMM kernel (``c``: its entry point, K slice, module variant and
    shared memory), with split-K through the workspace where the output tiles cannot fill the GPU."""
    m, n, k = p.m, p.n, p.k
    a, b, out, bias, workspace = g["a"], g["b"], g["out"], g["bias"], g["workspace"]
    if cuda.cdiv(n, _TILE) > 65535:
        raise OpArgumentError(f"gemm: N={n} too large for the kernel grid (max {65535 * _TILE})")
    kernel, kslice = c.kernels[0], c.params["kslice"]
    defines, smem = c.params.get("defines", ()), c.params.get("smem", 0)
    has_bias, relu = bias is not None, g["relu"]
    bias_arg = bias if has_bias else out  # never read when has_bias == 0 (a pointer is still needed)
    lda, ldb = (m if p.tag[0] == "t" else k), (k if p.tag[1] == "t" else n)
    flags = (1 if lda % 4 == 0 and _aligned(a, 16) else 0) | (2 if ldb % 4 == 0 and _aligned(b, 16) else 0)
    max_splits = MAX_SPLITS if workspace is None else workspace.size // max(m * n, 1)
    splits, kps = _split_k(m, n, k, kslice, cuda.sm_count(a.device.id), max_splits)
    grid = (cuda.cdiv(m, _TILE), cuda.cdiv(n, _TILE), splits)
    alpha, beta = np.float32(g["alpha"]), np.float32(g["beta"])
    if splits == 1:
        flags |= (4 if n % 4 == 0 and _aligned(out, 16) else 0) | (8 if n % 2 == 0 and _aligned(out, 8) else 0)
        cuda.launch("fc", kernel, grid, (256, 1, 1),
                    (a, b, out, bias_arg, m, n, k, kps, alpha, beta, has_bias, relu, flags),
                    shared_mem=smem, defines=defines)
        return out
    # Split-K: partial products into a workspace, then one pass sums them and runs the epilogue.
    if workspace is None:
        ws = device.array_module(a).empty((splits, m, n), dtype=np.float32)
    else:
        ws = workspace[:splits * m * n].reshape(splits, m, n)
    ws_ok = _aligned(ws, 16)  # pool allocations and planned tensors are 256-B aligned
    flags |= (4 if n % 4 == 0 and ws_ok else 0) | (8 if n % 2 == 0 and ws_ok else 0)
    cuda.launch("fc", kernel, grid, (256, 1, 1),
                (a, b, ws, ws, m, n, k, kps, np.float32(1.0), np.float32(0.0), 0, 0, flags), shared_mem=smem,
                defines=defines)
    mn = m * n
    cuda.launch("fc", "splitk_reduce_f32", (min(cuda.cdiv(mn, 256), 65536), 1, 1), (256, 1, 1),
                (ws, out, bias_arg, np.int64(mn), n, splits, alpha, beta, has_bias, relu))
    return out


GEMM.register("gemm-f64", priority=0, applies=lambda p, cfg: "float64: simple kernel" if p.dtype == "float64" else None,
              plan=lambda p, cfg, why: Choice("fc", "", "gemm-f64", (f"gemm_f64_{p.tag}",), p.precision, 0, why),
              launch=_launch_f64)


def gemm_batched_gpu(a: Any, b: Any, out: Any, *, trans_b: bool = False, splits: int = 1, beta: float = 0.0,
                     precision: str = "fp32") -> Any:
    """out[i] = a[i] @ op(b[i]) + beta * out[i] for a batch of float32 GEMMs on the device.

    a[batch, M, K]; b[batch, K, N], or b[batch, N, K] with ``trans_b``; out[batch, M, N],
    or with ``splits`` > 1 out[batch, splits, M, N]: split s of the reduction goes to
    out[i, s] and the caller sums the splits (the Winograd conv does it in its final
    transform).  All three C-contiguous.  No bias or ReLU (gemm_{f32,tf32}_batched_* in
    fc.cu).  ``precision="tf32"``: operands rounded to TF32, tensor cores, fp32 accumulation.
    """
    if precision not in PRECISIONS:
        raise OpArgumentError(f"gemm_batched: precision must be one of {PRECISIONS}, got {precision!r}")
    nb, m, k = a.shape
    n = b.shape[1] if trans_b else b.shape[2]
    want_b = (nb, n, k) if trans_b else (nb, k, n)
    want_out = (nb, splits, m, n) if splits > 1 else (nb, m, n)
    if tuple(b.shape) != want_b or tuple(out.shape) != want_out:
        raise OpArgumentError(f"gemm_batched: shapes a {tuple(a.shape)}, b {tuple(b.shape)}, out {tuple(out.shape)} "
                              f"do not match (want b {want_b}, out {want_out})")
    for name, arr in (("a", a), ("b", b), ("out", out)):
        if arr.dtype != np.float32 or not arr.flags.c_contiguous:
            raise OpArgumentError(f"gemm_batched: {name} must be a C-contiguous float32 array")
    if splits < 1 or nb * splits > 65535 or cuda.cdiv(n, _TILE) > 65535:
        raise OpArgumentError(f"gemm_batched: grid too large (batch {nb} x splits {splits}, N={n})")
    if nb == 0 or m == 0 or n == 0:
        return out
    # whole K slices per split; trailing splits may be empty (they write beta * out)
    kps = cuda.cdiv(cuda.cdiv(max(k, 1), splits), _SLICE[precision]) * _SLICE[precision]
    sa, sb, sc = m * k, n * k, splits * m * n
    # float4 loads need every batch's rows 16-B aligned: row length and batch stride % 4
    lda, ldb = k, (k if trans_b else n)
    flags = ((1 if lda % 4 == 0 and sa % 4 == 0 and _aligned(a, 16) else 0)
             | (2 if ldb % 4 == 0 and sb % 4 == 0 and _aligned(b, 16) else 0)
             | (4 if n % 4 == 0 and sc % 4 == 0 and _aligned(out, 16) else 0)
             | (8 if n % 2 == 0 and sc % 2 == 0 and _aligned(out, 8) else 0))
    cuda.launch("fc", f"gemm_{'tf32' if precision == 'tf32' else 'f32'}_batched_{'nt' if trans_b else 'nn'}",
                (cuda.cdiv(m, _TILE), cuda.cdiv(n, _TILE), nb * splits), (256, 1, 1),
                (a, b, out, m, n, k, kps, np.float32(1.0), np.float32(beta), flags, splits,
                 np.int64(sa), np.int64(sb), np.int64(sc)))
    return out


def fc_workspace_elems(n: int, d: int, m: int, train: bool = True, sms: int = PLAN_SMS) -> int:
    """float32 split-K scratch an FC layer (batch n, D inputs, M outputs) needs: the largest of
    its GEMMs' (forward; with ``train`` also backward-data and backward-weight), which run
    one after another and share it."""
    sizes = [splitk_workspace_elems(n, m, d, sms)]
    if train:
        sizes += [splitk_workspace_elems(n, d, m, sms), splitk_workspace_elems(m, d, n, sms)]
    return max(sizes)


def colsum_gpu(dy: Any, db: Any) -> Any:
    """db[m] = sum_n dy[n, m]."""
    n, m = dy.shape
    fn = "colsum_f64" if dy.dtype == np.float64 else "colsum_f32"
    cuda.launch("fc", fn, (cuda.cdiv(m, 32), 1, 1), (32, 8, 1), (dy, db, n, m))
    return db


# ---------------------------------------------------------------- opt-in GEMM variants
# Registered in front of the default kernels; each applies only when the kernel configuration
# asks for it (and, for wgmma, on a compute-capability-9.0 device).

def _wgmma_applies(p: GemmProblem, cfg: KernelConfig) -> str | None:
    if p.dtype == "float32" and p.precision == "tf32" and cfg.wgmma and cuda.wgmma_capable(p.dev_id):
        return "wgmma on, TF32, sm_90 device: Hopper warpgroup MMA"
    return None


def _async_applies(p: GemmProblem, cfg: KernelConfig) -> str | None:
    if p.dtype == "float32" and p.precision == "tf32" and cfg.gemm_schedule == "async":
        return "gemm_schedule=async: cp.async main loop"
    return None


GEMM.register("gemm-wgmma", priority=70, applies=_wgmma_applies, opt_in=True, launch=_launch_tiled,
              plan=lambda p, cfg, why: Choice("fc", "", "gemm-wgmma", (f"gemm_tf32_wgmma_{p.tag}",), p.precision, 0,
                                              why, {"kslice": _SLICE["tf32_wgmma"], "smem": WGMMA_SMEM,
                                                    "defines": autotune.WGMMA_DEFINES}))
GEMM.register("gemm-async", priority=80, applies=_async_applies, opt_in=True, launch=_launch_tiled,
              plan=lambda p, cfg, why: Choice("fc", "", "gemm-async", (f"gemm_tf32_async_{p.tag}",), p.precision, 0,
                                              why, {"kslice": _SLICE["tf32_async"],
                                                    "defines": autotune.SCHEDULE_DEFINES["async"]}))
