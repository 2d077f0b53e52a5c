"""The GPU path of the conv ops: implicit-GEMM launchers and the selection of the kernel that runs.

Implicit GEMM kernels from ``kernels/conv.cu`` (no im2col buffer), bias, residual and ReLU fused
into the forward epilogue; ``precision="tf32"`` uses tensor cores (mma.sync m16n8k8 tf32).  float64
runs simple direct kernels (they back the GPU gradient checks).  Backward-data with few input
channels or stride >= 2 uses a direct "gather" kernel instead of the GEMM (``_choose_bwdd``):
it visits only the filter taps that land on the output grid.

Which kernel runs is a lookup: ``CONV`` (an ``ops.selector.Selector``) holds the variants,
each with the condition under which it applies; ``select(problem, cfg)`` returns the first
that applies and what it will launch (a ``Choice``: kernels, workspace, why), from the call's
shapes and the kernel configuration (``gpuconv.kernel_config.current()``).  This file
registers the default kernels.  The opt-in variants register themselves from their own
modules: Winograd F(2x2,3x3) (``ops.winograd``: ``conv_algo="winograd"``), and in
``ops.conv_variants`` the cp.async and Hopper wgmma GEMM schedules, the autotuner and
``conv_algo="auto"``.  The memory plan records the same ``select`` per layer and pass.
The API, argument checks and NumPy spec are in ``ops.conv``.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from typing import Any, Sequence

import numpy as np

from .. import cuda, device
from ..kernel_config import KernelConfig, current
from . import _views, autotune
from ._checks import INT32_MAX, OpArgumentError
from .conv import conv_output_shape, winograd_mode
from .selector import Choice, Selector

_BK = 8  # reduction slice depth of the GEMM kernels (kernels/conv.cu BK)
_TILES = ((128, 128), (128, 64), (64, 128), (64, 64))  # (BM, BN) entry points compiled in conv.cu
# (BM, BN, schedule): every tile is compiled in both autotune.SCHEDULES, and for TF32 in the
# sm_90a variant as schedule "wgmma" (conv_*_tf32_wgmma: Hopper's warpgroup MMA).
Variant = tuple[int, int, str]
WGMMA = "wgmma"
_WG_BK, _WG_STAGES = 32, 3  # conv.cu WG_BK, WG_STAGES (wgmma_layout.cuh)


def wgmma_smem(bm: int, bn: int) -> int:
    """Dynamic shared memory of a conv_*_tf32_wgmma launch: WG_STAGES stages of the A (bm rows)
    and B (bn rows) tiles, 128 bytes (32 fp32) per row, + 1 KB to align them to 1024 bytes."""
    return _WG_STAGES * (bm + bn) * _WG_BK * 4 + 1024


def _launch_opts(v: Variant) -> dict[str, Any]:
    """cuda.launch's module variant and dynamic shared memory for a variant's entry point."""
    if v[2] == WGMMA:
        return {"defines": autotune.WGMMA_DEFINES, "shared_mem": wgmma_smem(v[0], v[1])}
    return {"defines": autotune.SCHEDULE_DEFINES[v[2]]}



# ----------------------------------------------------------------------------------
# Kernel selection: the problem one GPU call solves, and the registry of variants
# ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConvProblem:
    """One conv pass on the GPU, as the selector sees it: shapes, dtype and the requested
    precision and algorithm (already resolved against the kernel configuration)."""

    pass_: str                               # fwd | bwdd | bwdf
    x_shape: tuple[int, int, int, int]
    w_shape: tuple[int, int, int, int]
    stride: int = 1
    pad: int = 0
    dilation: int = 1
    dtype: str = "float32"
    precision: str = "fp32"
    algo: str = "gemm"                       # gemm | winograd | auto
    has_bias: bool = False                   # fwd: bias added; bwdf: bias gradient computed
    relu: bool = False                       # fwd: fused ReLU
    rounding: str = "exact"                  # the output size's (geometry.window_output_size)
    residual: bool = False                   # fwd: a residual added in the epilogue (before the ReLU)

    @property
    def y_shape(self) -> tuple[int, int, int, int]:
        return conv_output_shape(self.x_shape, self.w_shape, self.stride, self.pad, self.dilation, self.rounding)

    @property
    def geo(self) -> list[int]:
        return _geo_args(self.x_shape, self.w_shape, self.y_shape, self.stride, self.pad, self.dilation)

    def gemm_dims(self) -> tuple[int, int, int]:
        """(rows, cols, reduction) of the pass's implicit GEMM."""
        n, c, h, wd = self.x_shape
        k, _, fh, fw = self.w_shape
        _, _, ho, wo = self.y_shape
        return {"fwd": (k, n * ho * wo, c * fh * fw), "bwdd": (c, n * h * wd, k * fh * fw),
                "bwdf": (k, c * fh * fw, n * ho * wo)}[self.pass_]

    @property
    def winograd_mode(self) -> str | None:
        return winograd_mode(self.algo, np.dtype(self.dtype), self.precision, self.w_shape, self.stride, self.pad,
                             self.dilation)


def problem(pass_: str, x_shape: Sequence[int], w_shape: Sequence[int], stride: int = 1, pad: int = 0,
            dilation: int = 1, dtype: Any = np.float32, precision: str | None = None, algo: str | None = None,
            has_bias: bool = False, relu: bool = False, cfg: KernelConfig | None = None,
            rounding: str = "exact", residual: bool = False) -> ConvProblem:
    """A ConvProblem with ``precision``/``algo`` None taken from ``cfg`` (default: current())."""
    cfg = current() if cfg is None else cfg
    return ConvProblem(pass_, tuple(int(v) for v in x_shape), tuple(int(v) for v in w_shape),  # type: ignore[arg-type]
                       int(stride), int(pad), int(dilation), np.dtype(dtype).name,
                       cfg.precision if precision is None else precision, winograd.chosen_algo(algo, cfg),
                       bool(has_bias), bool(relu), rounding, residual=bool(residual))


CONV: Selector[ConvProblem] = Selector("conv")


def select(p: ConvProblem, cfg: KernelConfig | None = None) -> Choice:
    """What a GPU call of ``p`` launches under ``cfg`` (default: current())."""
    return CONV.select(p, current() if cfg is None else cfg)[1]


def run(p: ConvProblem, arrays: dict[str, Any]) -> Any:
    """Select the variant for ``p`` under the kernel configuration in force and launch it on
    ``arrays`` (x, w, b, y / dy, w, dx / x, dy, dw, db, and the workspace)."""
    return CONV.run(p, current(), arrays)


# ----------------------------------------------------------------------------------
# GPU path: implicit-GEMM kernels
# ----------------------------------------------------------------------------------

def _choose_variant(kind: str, rows: int, cols: int, red: int, precision: str,
                    num_sms: int = device.SM_COUNT_HINT) -> tuple[int, int, int]:
    """(BM, BN, splits) for a GEMM of rows x cols reducing over red.

    kind is 'fwd', 'bwdd' or 'bwdf'; only 'bwdf' splits the reduction (its output,
    dW, is small while the reduction N*Ho*Wo is long).  Any (BM, BN) in _TILES and any
    splits >= 1 are valid for any shape (the autotuner, ``ops.conv_variants``, times them).
    """
    bm = 64 if rows <= 64 else 128
    bn = 64 if cols <= 64 else 128
    target = 2 * num_sms  # at least two resident blocks per SM worth of tiles
    blocks = -(-rows // bm) * -(-cols // bn)
    if blocks < target and bn == 128:
        bn = 64
        blocks = -(-rows // bm) * -(-cols // bn)
    if blocks < target and bm == 128:
        bm = 64
        blocks = -(-rows // bm) * -(-cols // bn)
    splits = 1
    if kind == "bwdf" and blocks < 4 * num_sms:
        max_splits = max(1, red // (16 * _BK))  # keep >= 16 reduction slices per split
        splits = max(1, min(-(-4 * num_sms // blocks), max_splits, 4096))
    return bm, bn, splits


def _kernel(kind: str, variant: Variant, precision: str) -> str:
    """Entry-point name in conv.cu, e.g. conv_fwd_f32_128x64_tf32_async."""
    tm, tn, schedule = variant
    return f"conv_{kind}_f32_{tm}x{tn}_{precision}" + ("" if schedule == "reg" else f"_{schedule}")


def _geo_args(x_shape: Sequence[int], w_shape: Sequence[int], y_shape: Sequence[int], stride: int, pad: int,
              dilation: int) -> list[int]:
    n, c, h, wd = x_shape
    k, _, fh, fw = w_shape
    _, _, ho, wo = y_shape
    # plain ints: cuda.launch turns them into int32 (a numpy int64 would be passed as 64-bit)
    return [int(v) for v in (n, c, h, wd, k, fh, fw, ho, wo, stride, pad, dilation)]


def _check_int32(op: str, **sizes: int) -> None:
    # the GEMM kernels index rows/cols/reduction with 32-bit unsigned arithmetic
    for name, v in sizes.items():
        if v > INT32_MAX:
            raise OpArgumentError(f"{op}: {name} = {v} exceeds 2^31-1, too large for the conv kernels; "
                                  f"split the batch")


# --- direct ("gather") backward-data: kernels/conv.cu conv_bwdd_direct_f32_c<CT>_<TI>x<TJ> ---

_DIRECT_CTS = (1, 2, 3, 4, 8)          # channels per thread compiled in conv.cu
_DIRECT_TILES = ((16, 16), (32, 8))    # (TY, TX) thread shapes; the tile is TY x 4*TX sub-grid pixels
_DIRECT_SMEM_MAX = 48 * 1024           # dynamic shared memory usable without an opt-in
_DIRECT_SMEM_TARGET = 27 * 1024        # ~8 resident 256-thread blocks per SM (228 KiB)
_DIRECT_KC_MAX = 8


def _direct_ct_cost(c: int, ct: int) -> int:
    # per tap and thread: shared loads (w vector(s) + 4 dy) + FMA issue slots (4*CT/4), per group
    ctp = ct if ct <= 2 else -(-ct // 4) * 4
    return -(-c // ct) * (max(1, ctp // 4) + 4 + ct)


def _bwdd_direct_plan(n: int, c: int, h: int, wd: int, k: int, fh: int, fw: int, stride: int,
                      dilation: int, ct: int | None = None,
                      tile: tuple[int, int] | None = None) -> dict[str, Any] | None:
    """Launch plan of the direct backward-data kernel, or None where it does not apply.

    Per axis, with g = gcd(stride, dilation), a residue class has at most
    cdiv(F, stride/g) valid taps whose output coordinates step by dilation/g, which
    bounds the shared-memory tiles (RS rows, row pitch P, TS taps) for every block.
    ``ct`` / ``tile`` force a variant (tests).
    """
    g = gcd(stride, dilation)
    step, dstep = stride // g, dilation // g
    nvh, nvw = -(-fh // step), -(-fw // step)
    hs, ws = -(-h // stride), -(-wd // stride)  # the largest residue sub-grid
    if ct is None:
        ct = min(_DIRECT_CTS, key=lambda t: (_direct_ct_cost(c, t), -t))
    if tile is None:
        def padded(t: tuple[int, int]) -> int:
            ti, tj = t[0], 4 * t[1]
            return -(-hs // ti) * ti * (-(-ws // tj) * tj)
        tile = min(_DIRECT_TILES, key=padded)  # ties keep the first (16 x 64)
    ty, tx = tile
    ti, tj = ty, 4 * tx
    ctp = ct if ct <= 2 else -(-ct // 4) * 4
    rs = ti + (nvh - 1) * dstep
    cols = tj + (nvw - 1) * dstep
    pitch = cols + (tx - cols) % 32  # smallest >= cols with pitch == TX (mod 32): a warp's rows in distinct banks
    ts = nvh * nvw
    per_k = 4 * (rs * pitch + ts * ctp)
    if per_k > _DIRECT_SMEM_MAX:
        return None
    kc = max(1, min(_DIRECT_KC_MAX, k, _DIRECT_SMEM_TARGET // per_k))
    groups = -(-c // ct)
    blocks = n * groups * stride * stride * -(-hs // ti) * -(-ws // tj)
    if blocks > INT32_MAX:
        return None
    return {"func": f"conv_bwdd_direct_f32_c{ct}_{ti}x{tj}", "ct": ct, "tile": (ti, tj), "kc": kc,
            "rs": rs, "pitch": pitch, "ts": ts, "ctp": ctp, "blocks": blocks, "smem": kc * per_k}


def _bwdd_use_direct(c: int, k: int, fh: int, fw: int, stride: int, dilation: int) -> bool:
    """Heuristic: the direct kernel wins when the GEMM wastes most of its work.

    The GEMM's M dimension is C, padded to a 64-row tile (C < 32 wastes over half of
    it), and with stride S only ~1/S^2 of its reduction K*FH*FW is non-zero; the
    direct kernel pays neither.  For C >= 32 at stride 1 the GEMM's reuse wins.
    """
    return c < 32 or stride >= 2


def _choose_bwdd(n: int, c: int, h: int, wd: int, k: int, fh: int, fw: int, stride: int,
                 dilation: int) -> dict[str, Any] | None:
    """The direct backward-data plan when the heuristic picks it and it fits, else None (GEMM)."""
    if not _bwdd_use_direct(c, k, fh, fw, stride, dilation):
        return None
    return _bwdd_direct_plan(n, c, h, wd, k, fh, fw, stride, dilation)


def _direct_grid(total: int) -> tuple[int, int, int]:
    return (max(1, min(cuda.cdiv(total, 256), 65535)), 1, 1)


# --- the implicit GEMM: one launch of a (BM, BN, schedule) variant for a pass ---

def strided(p: ConvProblem, a: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
    """(the arrays as the kernels take them, the geometry arguments).  y (forward; the residual
    has its layout) or dy (backward) may be a channel slice of a bigger buffer (``_views``):
    the kernel gets its span and, as the last geometry argument, its batch stride ys."""
    op = {"fwd": "conv_forward", "bwdd": "conv_backward_data", "bwdf": "conv_backward_filter"}[p.pass_]
    name = "y" if p.pass_ == "fwd" else "dy"
    lay = _views.layout(op, "out" if name == "y" else name, a[name])
    _check_int32(op, **{f"the batch stride of {name}": lay.batch_stride})
    out = dict(a)
    out[name] = _views.span(a[name], lay)
    r = a.get("r")
    if name == "y" and r is not None:
        rl = _views.layout(op, "residual", r)
        if rl.batch_stride != lay.batch_stride:
            raise OpArgumentError(f"{op}: residual must have the layout of out (batch stride {lay.batch_stride} "
                                  f"elements), got batch stride {rl.batch_stride}")
        out["r"] = _views.span(r, rl)
    return out, [*p.geo, lay.batch_stride]


def gemm_launch(p: ConvProblem, a: dict[str, Any], v: Variant, splits: int) -> None:
    """Launch the implicit GEMM of pass ``p`` with tile/schedule ``v`` (writes only the pass's
    output, so the autotuner may call it repeatedly)."""
    rows, cols, red = p.gemm_dims()
    a, geo = strided(p, a)
    grid = (cuda.cdiv(cols, v[1]), cuda.cdiv(rows, v[0]), 1)
    if p.pass_ == "fwd":
        _check_int32("conv_forward", **{"N*Ho*Wo": cols, "C*FH*FW": red})
        cuda.launch("conv", _kernel("fwd", v, p.precision), grid, (256, 1, 1), _fwd_args(p, a, geo),
                    **_launch_opts(v))
    elif p.pass_ == "bwdd":
        _check_int32("conv_backward_data", **{"N*H*W": cols, "K*FH*FW": red})
        cuda.launch("conv", _kernel("bwdd", v, p.precision), grid, (256, 1, 1), [a["dy"], a["w"], a["dx"], *geo],
                    **_launch_opts(v))
    else:
        _check_int32("conv_backward_filter", **{"N*Ho*Wo": red, "C*FH*FW": cols})
        if splits > 1:
            cuda.zero(a["dw"])  # the splits accumulate with atomicAdd
        cuda.launch("conv", _kernel("bwdf", v, p.precision), (grid[0], grid[1], splits), (256, 1, 1),
                    [a["x"], a["dy"], a["dw"], *geo, int(splits > 1)], **_launch_opts(v))


def _fwd_args(p: ConvProblem, a: dict[str, Any], geo: list[int]) -> list[Any]:
    """Arguments of the forward entries (GEMM and float64 direct): x, w, b, r, y, geometry (ys
    last, ``strided``), has_bias, has_res, relu.  An absent bias or residual is passed as y
    (never read)."""
    b, r = a.get("b"), a.get("r")
    if (r is not None) != p.residual:
        raise OpArgumentError(f"conv_forward: the problem says residual={p.residual} but r is "
                              f"{'absent' if r is None else 'given'}")
    return [a["x"], a["w"], b if b is not None else a["y"], r if r is not None else a["y"], a["y"], *geo,
            int(b is not None), int(r is not None), int(bool(p.relu))]


def _result(p: ConvProblem, a: dict[str, Any]) -> Any:
    """What the op returns: y, dx or (dw, db); bwdf also computes the bias gradient here."""
    if p.pass_ == "fwd":
        return a["y"]
    if p.pass_ == "bwdd":
        return a["dx"]
    if a.get("db") is not None:
        conv_bias_grad_gpu(a["dy"], a["db"])
    return a["dw"], a.get("db")


def _bias_kernels(p: ConvProblem) -> tuple[str, ...]:
    suffix = "f64" if p.dtype == "float64" else "f32"
    return (f"conv_bias_grad_{suffix}",) if p.pass_ == "bwdf" and p.has_bias else ()


def gemm_choice(p: ConvProblem, name: str, why: str, schedule: str) -> Choice:
    """The implicit GEMM with the heuristic tile for this GPU's SM count and ``schedule``."""
    rows, cols, red = p.gemm_dims()
    bm, bn, splits = _choose_variant(p.pass_, rows, cols, red, p.precision, cuda.sm_count())
    v = (bm, bn, schedule)
    kernels = (_kernel(p.pass_, v, p.precision), *_bias_kernels(p))
    return Choice("conv", p.pass_, name, kernels, p.precision, 0, why, {"variant": v, "splits": splits})


def launch_gemm_choice(p: ConvProblem, c: Choice, a: dict[str, Any]) -> Any:
    gemm_launch(p, a, c.params["variant"], c.params["splits"])
    return _result(p, a)


# --- the default variants ---

def _f64_applies(p: ConvProblem, cfg: KernelConfig) -> str | None:
    return "float64: direct kernel (the GPU gradient checks)" if p.dtype == "float64" else None


def _f64_plan(p: ConvProblem, cfg: KernelConfig, why: str) -> Choice:
    return Choice("conv", p.pass_, "direct-f64", (f"conv_{p.pass_}_direct_f64", *_bias_kernels(p)), p.precision, 0,
                  why)


def _f64_launch(p: ConvProblem, c: Choice, a: dict[str, Any]) -> Any:
    k, geo = strided(p, a)
    if p.pass_ == "fwd":
        n, kk, ho, wo = p.y_shape
        cuda.launch("conv", "conv_fwd_direct_f64", _direct_grid(n * kk * ho * wo), (256, 1, 1), _fwd_args(p, k, geo))
    elif p.pass_ == "bwdd":
        cuda.launch("conv", "conv_bwdd_direct_f64", _direct_grid(a["dx"].size), (256, 1, 1),
                    [k["dy"], k["w"], k["dx"], *geo])
    else:
        cuda.launch("conv", "conv_bwdf_direct_f64", _direct_grid(a["dw"].size), (256, 1, 1),
                    [k["x"], k["dy"], k["dw"], *geo])
    return _result(p, a)


def _direct_bwdd_plan_of(p: ConvProblem) -> dict[str, Any] | None:
    n, c, h, wd = p.x_shape
    k, _, fh, fw = p.w_shape
    return _choose_bwdd(n, c, h, wd, k, fh, fw, p.stride, p.dilation)


def _direct_bwdd_applies(p: ConvProblem, cfg: KernelConfig) -> str | None:
    if p.pass_ != "bwdd" or p.dtype != "float32" or _direct_bwdd_plan_of(p) is None:
        return None
    return f"C={p.x_shape[1]} < 32 or stride {p.stride} >= 2: direct gather (the GEMM would waste most of its work)"


def _direct_bwdd_plan(p: ConvProblem, cfg: KernelConfig, why: str) -> Choice:
    plan = _direct_bwdd_plan_of(p)
    assert plan is not None
    # float32 and tf32 requests alike: the direct kernel is exact fp32
    return Choice("conv", "bwdd", "direct-bwdd", (plan["func"],), p.precision, 0, why, {"plan": plan})


def _direct_bwdd_launch(p: ConvProblem, c: Choice, a: dict[str, Any]) -> Any:
    plan = c.params["plan"]
    k, geo = strided(p, a)
    cuda.launch("conv", plan["func"], (plan["blocks"], 1, 1), (256, 1, 1),
                [k["dy"], k["w"], k["dx"], *geo, plan["kc"], plan["rs"], plan["pitch"], plan["ts"]],
                shared_mem=plan["smem"])
    return a["dx"]


def _gemm_applies(p: ConvProblem, cfg: KernelConfig) -> str | None:
    return "default: implicit GEMM, tile by heuristic" if p.dtype == "float32" else None


CONV.register("direct-f64", priority=0, applies=_f64_applies, plan=_f64_plan, launch=_f64_launch)
CONV.register("direct-bwdd", priority=50, applies=_direct_bwdd_applies, plan=_direct_bwdd_plan,
              launch=_direct_bwdd_launch)
CONV.register("gemm", priority=100, applies=_gemm_applies,
              plan=lambda p, cfg, why: gemm_choice(p, "gemm", why, "reg"), launch=launch_gemm_choice)


# --- the launchers of one pass without Winograd (the GEMM path: direct kernels where they apply) ---

def conv_forward_gpu(x: Any, w: Any, b: Any, stride: int, pad: int, dilation: int, relu: bool, out: Any,
                     precision: str = "fp32", residual: Any = None) -> Any:
    """Forward into ``out`` with the bias + residual + ReLU epilogue (implicit GEMM, or float64's
    direct kernel); ``residual`` may be ``out`` (in place)."""
    p = problem("fwd", x.shape, w.shape, stride, pad, dilation, x.dtype, precision, "gemm", b is not None, relu,
                residual=residual is not None)
    return run(p, {"x": x, "w": w, "b": b, "r": residual, "y": out})


def conv_backward_data_gpu(dy: Any, w: Any, stride: int, pad: int, dilation: int, out: Any,
                           precision: str = "fp32") -> Any:
    """Backward-data into ``out`` (every element written).

    float32: the direct gather kernel where ``_choose_bwdd`` picks it (small C or
    stride >= 2), else the implicit GEMM.
    """
    p = problem("bwdd", out.shape, w.shape, stride, pad, dilation, dy.dtype, precision, "gemm")
    return run(p, {"dy": dy, "w": w, "dx": out})


def conv_backward_filter_gpu(x: Any, dy: Any, stride: int, pad: int, dilation: int, dw: Any, db: Any,
                             precision: str = "fp32") -> tuple[Any, Any]:
    """Implicit-GEMM backward-filter (split reduction + atomicAdd) and the bias reduction."""
    p = problem("bwdf", x.shape, dw.shape, stride, pad, dilation, x.dtype, precision, "gemm", db is not None)
    return run(p, {"x": x, "dy": dy, "dw": dw, "db": db})


def conv_bias_grad_gpu(dy: Any, db: Any) -> Any:
    """db[k] = sum of dy[:, k] (overwritten); dy may be a channel slice of a bigger buffer."""
    n, k, ho, wo = dy.shape
    lay = _views.layout("conv_backward_filter", "dy", dy)
    _check_int32("conv_backward_filter", **{"the batch stride of dy": lay.batch_stride})
    cuda.zero(db)
    per_k = n * ho * wo
    gy = max(1, min(cuda.cdiv(per_k, 256 * 16), max(1, 1024 // max(k, 1)), 65535))
    suffix = "f64" if dy.dtype == np.float64 else "f32"
    cuda.launch("conv", f"conv_bias_grad_{suffix}", (k, gy, 1), (256, 1, 1),
                [_views.span(dy, lay), db, n, k, ho, wo, lay.batch_stride])
    return db


# The opt-in variants register themselves with CONV (imported last: they build on the above).
from . import conv_variants, winograd  # noqa: E402,F401
