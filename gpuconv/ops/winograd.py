"""3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, 2016).

A 2x2 output tile of a 3x3 convolution is ``A^T [(G g G^T) * (B^T d B)] A`` for the 4x4
input patch d under it: 16 multiplies per (filter, channel) pair instead of 36, so the
GEMM work of the convolution falls by 2.25x, at the price of transforming inputs, filters
and outputs (memory-bound passes) and of a workspace for the transformed tensors.

This module is the spec and the launcher of ``kernels/winograd.cu``:

* the transforms in NumPy (float64 matrices ``BT``, ``G``, ``AT``), with the kernels'
  layouts: filters ``U[16, K, C]``, inputs ``V[16, C, P]``, products ``M[16, K, P]``,
  component ``b = 4*xi + nu``, tile ``p = n*TH*TW + ti*TW + tj`` (TH x TW 2x2-tiles per
  image cover the output);
* the three passes composed from them (``*_winograd_cpu``): tested against the direct
  convolution (``ops.conv``), they are what the GPU kernels are checked against;
* the GPU passes (``*_winograd_gpu``): transform kernels + the batched GEMM of fc.cu
  (16 GEMMs per launch), over chunks of the batch so the workspace stays bounded.

Backward-data is the forward pass of dy with the filters rotated by 180 degrees and
transposed (``w'[c, k] = w[k, c, ::-1, ::-1]``) and padding 2 - P; backward-filter is
``G^T [sum_p (A dy_p A^T) * (B^T d_p B)] G``, the sum over tiles p being a batched GEMM.

Applies to float32, 3x3 filters, stride 1, dilation 1, padding <= 2 (``eligible``), at
fp32 or TF32 precision (TF32: the 16 GEMMs run on the tensor cores, their operands, the
transformed filters and inputs, rounded to TF32; the transforms themselves stay fp32).  The
conv ops use it when asked (``algo="winograd"``, or the kernel configuration's ``conv_algo``:
``GPUCONV_CONV_ALGO=winograd``; it registers itself below as the ``winograd`` variant of
``ops.conv_gpu.CONV``), or time it against the implicit GEMM per layer shape and keep the faster
(``algo="auto"``, ``ops.conv_variants``); the
default stays the implicit GEMM until the benchmark (bench/bench_winograd.py) has shown on
a GPU which layers it speeds up.  In float32 its error is a small multiple of the direct
convolution's (the transforms add and halve; no large constants as in F(4x4, 3x3)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .. import cuda, device
from ..kernel_config import CONV_ALGOS, ENV, KernelConfig, current
from . import _views
from ._checks import OpArgumentError

__all__ = [
    "BT", "G", "AT", "ALGOS", "eligible", "chosen_algo", "tiles",
    "filter_transform", "input_transform", "output_transform", "grad_output_transform",
    "filter_grad_transform",
    "conv_forward_winograd_cpu", "conv_backward_data_winograd_cpu", "conv_backward_filter_winograd_cpu",
    "Workspace", "workspace_plan", "layer_workspace_elems",
    "conv_forward_winograd_gpu", "conv_backward_data_winograd_gpu", "conv_backward_filter_winograd_gpu",
]

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)

# gemm: the implicit GEMM; winograd: F(2x2,3x3) where eligible; auto: where eligible, the
# faster of the two for this GPU and shape, timed on first use and cached (ops.autotune).
ALGOS = CONV_ALGOS
ALGO_ENV = ENV["conv_algo"]
WS_ENV = ENV["winograd_ws_mb"]  # workspace cap per call (KernelConfig.winograd_ws_mb): chunks stay under it
_SMS_HINT = device.SM_COUNT_HINT  # split-K heuristic only; fixed (not the device's) so plans are reproducible
_TILE = 128               # fc.cu block tile (M and N)
_SLICE = 8                # fc.cu fp32 K slice


def eligible(w_shape: Any, stride: int, pad: int, dilation: int) -> bool:
    """True for the geometry F(2x2, 3x3) covers: 3x3 filters, stride 1, dilation 1, pad <= 2."""
    return (int(w_shape[2]), int(w_shape[3])) == (3, 3) and stride == 1 and dilation == 1 and 0 <= pad <= 2


def chosen_algo(algo: str | None, cfg: KernelConfig | None = None) -> str:
    """The algorithm a conv op was asked for: ``algo``, else the kernel configuration's
    ``conv_algo`` (``cfg``, default current(): $GPUCONV_CONV_ALGO, else 'gemm')."""
    if algo is None:
        return (current() if cfg is None else cfg).conv_algo
    if algo not in ALGOS:
        raise OpArgumentError(f"conv: algo must be one of {ALGOS}, got {algo!r}")
    return algo


def tiles(ho: int, wo: int) -> tuple[int, int]:
    """(TH, TW): 2x2 tiles per image covering an Ho x Wo output."""
    return -(-ho // 2), -(-wo // 2)


# ----------------------------------------------------------------------------------
# The transforms (NumPy, float64 matrices; the spec of kernels/winograd.cu)
# ----------------------------------------------------------------------------------

def filter_transform(w: np.ndarray, flip: bool = False) -> np.ndarray:
    """U[16, K, C] = G g G^T per filter; flip: U[16, C, K] of the 180-degree-rotated filters."""
    g = w[:, :, ::-1, ::-1] if flip else w
    u = np.einsum("iu,kcuv,jv->ijkc", G, g, G)  # [4, 4, K, C]
    if flip:
        u = u.transpose(0, 1, 3, 2)
    return np.ascontiguousarray(u.reshape(16, *u.shape[2:]))


def _patches(x: np.ndarray, pad: int, th: int, tw: int) -> np.ndarray:
    """[N, C, TH, TW, 4, 4]: the input patch under each output tile (zeros past the edges)."""
    n, c, h, w = x.shape
    xp = np.zeros((n, c, 2 * th + 2, 2 * tw + 2), dtype=x.dtype)
    hh, ww = min(h, 2 * th + 2 - pad), min(w, 2 * tw + 2 - pad)
    xp[:, :, pad:pad + hh, pad:pad + ww] = x[:, :, :hh, :ww]
    s = xp.strides
    return np.lib.stride_tricks.as_strided(xp, (n, c, th, tw, 4, 4), (s[0], s[1], 2 * s[2], 2 * s[3], s[2], s[3]))


def input_transform(x: np.ndarray, pad: int, th: int, tw: int) -> np.ndarray:
    """V[16, C, P] = B^T d B for the patch d under every tile (P = N*TH*TW)."""
    n, c = x.shape[:2]
    v = np.einsum("ia,nctsab,jb->ijcnts", BT, _patches(x, pad, th, tw), BT)
    return np.ascontiguousarray(v.reshape(16, c, n * th * tw))


def output_transform(m: np.ndarray, n: int, ho: int, wo: int, bias: np.ndarray | None = None,
                     relu: bool = False, residual: np.ndarray | None = None) -> np.ndarray:
    """y[N, K, Ho, Wo] from products M[16, K, P]: A^T m A per tile (+ bias, + residual, then ReLU)."""
    k = m.shape[1]
    th, tw = tiles(ho, wo)
    t = np.einsum("ia,abknts,jb->kntsij", AT, m.reshape(4, 4, k, n, th, tw), AT)  # [K, N, TH, TW, 2, 2]
    y = t.transpose(1, 0, 2, 4, 3, 5).reshape(n, k, 2 * th, 2 * tw)[:, :, :ho, :wo]
    if bias is not None:
        y = y + bias.reshape(1, k, 1, 1)
    if residual is not None:
        y = y + residual
    if relu:
        y = np.maximum(y, 0)
    return np.ascontiguousarray(y)


def grad_output_transform(dy: np.ndarray, th: int, tw: int) -> np.ndarray:
    """Y[16, K, P] = A e A^T for each 2x2 tile e of dy (zeros past Ho/Wo)."""
    n, k, ho, wo = dy.shape
    e = np.zeros((n, k, 2 * th, 2 * tw), dtype=dy.dtype)
    e[:, :, :ho, :wo] = dy
    e = e.reshape(n, k, th, 2, tw, 2)
    y = np.einsum("ai,nktiuj,bj->abkntu", AT.T, e, AT.T)
    return np.ascontiguousarray(y.reshape(16, k, n * th * tw))


def filter_grad_transform(d: np.ndarray) -> np.ndarray:
    """dW[K, C, 3, 3] = G^T s G from D[16, K, C] or D[16, splits, K, C] (splits summed)."""
    if d.ndim == 4:
        d = d.sum(axis=1)
    k, c = d.shape[1:]
    return np.ascontiguousarray(np.einsum("ai,abkc,bj->kcij", G, d.reshape(4, 4, k, c), G))


# ----------------------------------------------------------------------------------
# The three passes, composed (NumPy; float64 in the tests).  ``rounding`` models a
# precision mode: applied to both operands of the 16 GEMMs (the TF32 kernels round the
# transformed filters, inputs and gradients when they load them), None for exact products.
# ----------------------------------------------------------------------------------

Rounding = Callable[[np.ndarray], np.ndarray] | None


def _gemm(a: np.ndarray, b: np.ndarray, rounding: Rounding) -> np.ndarray:
    if rounding is not None:
        a, b = rounding(a), rounding(b)
    return a @ b

def _check_geometry(op: str, w_shape: Any, pad: int) -> None:
    if not eligible(w_shape, 1, pad, 1):
        raise OpArgumentError(f"{op}: Winograd F(2x2,3x3) needs 3x3 filters and pad <= 2 (stride 1, dilation 1), "
                              f"got filters {tuple(w_shape)}, pad {pad}")


def conv_forward_winograd_cpu(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pad: int,
                              relu: bool = False, rounding: Rounding = None,
                              residual: np.ndarray | None = None) -> np.ndarray:
    """y = conv(x, w) + b (stride 1), by the transforms: the reference of the GPU pass."""
    _check_geometry("conv_forward_winograd", w.shape, pad)
    n, _, h, wd = x.shape
    ho, wo = h + 2 * pad - 2, wd + 2 * pad - 2
    th, tw = tiles(ho, wo)
    m = _gemm(filter_transform(w), input_transform(x, pad, th, tw), rounding)  # 16 GEMMs [K,C] x [C,P]
    return output_transform(m, n, ho, wo, b, relu, residual)


def conv_backward_data_winograd_cpu(dy: np.ndarray, w: np.ndarray, pad: int,
                                    rounding: Rounding = None) -> np.ndarray:
    """dx: the forward pass of dy with rotated, transposed filters and padding 2 - pad."""
    _check_geometry("conv_backward_data_winograd", w.shape, pad)
    n, _, ho, wo = dy.shape
    h, wd = ho + 2 - 2 * pad, wo + 2 - 2 * pad
    th, tw = tiles(h, wd)
    m = _gemm(filter_transform(w, flip=True), input_transform(dy, 2 - pad, th, tw), rounding)
    return output_transform(m, n, h, wd)


def conv_backward_filter_winograd_cpu(x: np.ndarray, dy: np.ndarray, pad: int,
                                      rounding: Rounding = None) -> np.ndarray:
    """dW[K, C, 3, 3] = G^T [sum_p (A dy_p A^T) * (B^T d_p B)] G."""
    _check_geometry("conv_backward_filter_winograd", (dy.shape[1], x.shape[1], 3, 3), pad)
    _, _, ho, wo = dy.shape
    th, tw = tiles(ho, wo)
    d = _gemm(grad_output_transform(dy, th, tw), input_transform(x, pad, th, tw).transpose(0, 2, 1), rounding)
    return filter_grad_transform(d)


# ----------------------------------------------------------------------------------
# GPU passes: workspace plan, chunks of the batch, launches
# ----------------------------------------------------------------------------------

def _ws_cap_elems() -> int:
    """The workspace cap in float32 elements: the kernel configuration's ``winograd_ws_mb``."""
    return int(current().winograd_ws_mb * 2**20) // 4


def _bwdf_splits(k: int, c: int, p: int) -> int:
    """Split-K of the backward-filter GEMMs (reduction over P tiles, output 16 x K x C)."""
    blocks = 16 * -(-k // _TILE) * -(-c // _TILE)
    if blocks >= 2 * _SMS_HINT or p < 4096:
        return 1
    return max(1, min(-(-2 * _SMS_HINT // blocks), p // 2048, 16))


@dataclass(frozen=True)
class Workspace:
    """How one pass lays out its float32 workspace: fixed part, per-image part, chunk."""

    pass_: str          # fwd | bwdd | bwdf
    fixed: int          # elements independent of the chunk (filters; backward-filter's D)
    per_image: int      # elements per image in a chunk (transformed inputs and products)
    chunk: int          # images per chunk
    splits: int = 1     # backward-filter split-K

    @property
    def elems(self) -> int:
        return self.fixed + self.per_image * self.chunk


def workspace_plan(pass_: str, x_shape: Any, w_shape: Any, pad: int, cap_elems: int | None = None) -> Workspace:
    """The workspace of one Winograd pass of conv(x[N,C,H,W], w[K,C,3,3]), chunked so it stays
    under the cap (``KernelConfig.winograd_ws_mb``, default 256 MiB) where one image allows."""
    n, c, h, wd = (int(v) for v in x_shape)
    k = int(w_shape[0])
    ho, wo = h + 2 * pad - 2, wd + 2 * pad - 2
    cap = _ws_cap_elems() if cap_elems is None else cap_elems
    if pass_ == "fwd":
        th, tw = tiles(ho, wo)
        fixed, per_image, splits = 16 * k * c, 16 * (c + k) * th * tw, 1
    elif pass_ == "bwdd":
        th, tw = tiles(h, wd)
        fixed, per_image, splits = 16 * c * k, 16 * (k + c) * th * tw, 1
    elif pass_ == "bwdf":
        th, tw = tiles(ho, wo)
        per_image = 16 * (c + k) * th * tw
        chunk0 = max(1, min(n, (cap - 16 * k * c) // max(per_image, 1)))
        splits = _bwdf_splits(k, c, chunk0 * th * tw)
        fixed = 16 * splits * k * c
    else:
        raise ValueError(pass_)
    most = max(1, min(n, (cap - fixed) // max(per_image, 1)))
    chunk = -(-n // -(-n // most))  # as many chunks as the cap needs, of even sizes (no 1-image tail)
    return Workspace(pass_, fixed, per_image, chunk, splits)


def layer_workspace_elems(x_shape: Any, w_shape: Any, pad: int, train: bool = True) -> int:
    """The float32 elements a conv layer's Winograd passes need (the largest of its passes)."""
    passes = ("fwd", "bwdd", "bwdf") if train else ("fwd",)
    return max(workspace_plan(p, x_shape, w_shape, pad).elems for p in passes)


def _grid(total: int) -> tuple[int, int, int]:
    return (max(1, min(cuda.cdiv(total, 256), 1 << 20)), 1, 1)


def _workspace(xp: Any, ws: Workspace, given: Any) -> Any:
    """A flat float32 array of ws.elems: the caller's (planned) workspace, or a fresh one."""
    if given is None:
        return xp.empty(ws.elems, dtype=np.float32)
    if given.dtype != np.float32 or given.size < ws.elems or not given.flags.c_contiguous:
        raise OpArgumentError(f"conv ({ws.pass_}, Winograd): workspace must be a contiguous float32 array of "
                              f">= {ws.elems} elements, got {given.dtype} x {given.size}")
    return given.reshape(-1)


def _take(flat: Any, start: int, shape: tuple[int, ...]) -> tuple[Any, int]:
    size = int(np.prod(shape))
    return flat[start:start + size].reshape(shape), start + size


def _chunks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(n0, min(chunk, n - n0)) for n0 in range(0, n, chunk)]


def _transformed_conv_gpu(src: Any, w: Any, bias: Any, pad: int, relu: bool, out: Any, flip: bool,
                          ws: Workspace, flat: Any, precision: str, residual: Any = None) -> Any:
    """out = conv(src, w') (+ bias, + residual, ReLU) by F(2x2,3x3): w' = w (forward) or
    rotated+transposed (flip).  ``residual`` may be ``out`` (in place).  ``src`` and ``out`` may
    be channel slices of bigger buffers (``_views``; the residual has out's layout)."""
    from .fc_gpu import gemm_batched_gpu  # noqa: PLC0415
    n, c_in, h, wd = src.shape
    _, c_out, ho, wo = out.shape
    src_lay, out_lay = _views.layout("conv (winograd)", "x", src), _views.layout("conv (winograd)", "out", out)
    src, out_k = _views.span(src, src_lay), _views.span(out, out_lay)
    if residual is not None:
        res_lay = _views.layout("conv_forward", "residual", residual)
        if res_lay.batch_stride != out_lay.batch_stride:
            raise OpArgumentError(f"conv_forward: residual must have the layout of out (batch stride "
                                  f"{out_lay.batch_stride} elements), got batch stride {res_lay.batch_stride}")
        residual = _views.span(residual, res_lay)
    k0, c0 = w.shape[:2]
    th, tw = tiles(ho, wo)
    u, pos = _take(flat, 0, (16, c_out, c_in))
    cuda.launch("winograd", "wino_filter_f32", _grid(k0 * c0), (256, 1, 1), [w, u, k0, c0, int(flip)])
    has_bias, has_res = bias is not None, residual is not None
    for n0, nb in _chunks(n, ws.chunk):
        p = nb * th * tw
        v, end = _take(flat, pos, (16, c_in, p))
        m, _ = _take(flat, end, (16, c_out, p))
        cuda.launch("winograd", "wino_input_f32", _grid(c_in * p), (256, 1, 1),
                    [src, v, n0, nb, c_in, h, wd, pad, th, tw, src_lay.batch_stride])
        gemm_batched_gpu(u, v, m, precision=precision)
        cuda.launch("winograd", "wino_output_f32", _grid(c_out * p), (256, 1, 1),
                    [m, out_k, bias if has_bias else out_k, residual if has_res else out_k, n0, nb, c_out, ho, wo,
                     th, tw, int(has_bias), int(has_res), int(relu), out_lay.batch_stride])
    return out


def conv_forward_winograd_gpu(x: Any, w: Any, b: Any, pad: int, relu: bool, out: Any, workspace: Any = None,
                              precision: str = "fp32", residual: Any = None) -> Any:
    """Forward pass into ``out`` (arguments validated by ops.conv): filters, then per chunk of
    the batch input transform -> 16 GEMMs -> output transform with bias, residual and ReLU."""
    ws = workspace_plan("fwd", x.shape, w.shape, pad)
    flat = _workspace(device.array_module(x), ws, workspace)
    return _transformed_conv_gpu(x, w, b, pad, relu, out, False, ws, flat, precision, residual)


def conv_backward_data_winograd_gpu(dy: Any, w: Any, pad: int, out: Any, workspace: Any = None,
                                    precision: str = "fp32") -> Any:
    """dx into ``out``: the forward pass of dy with rotated, transposed filters, padding 2 - pad."""
    ws = workspace_plan("bwdd", out.shape, w.shape, pad)
    flat = _workspace(device.array_module(dy), ws, workspace)
    return _transformed_conv_gpu(dy, w, None, 2 - pad, False, out, True, ws, flat, precision)


def conv_backward_filter_winograd_gpu(x: Any, dy: Any, pad: int, dw: Any, workspace: Any = None,
                                      precision: str = "fp32") -> Any:
    """dW into ``dw`` (overwritten): per chunk, transforms of x and dy and the 16 GEMMs
    D += Y V^T (split-K slices kept apart), then dW = G^T (sum of slices) G."""
    from .fc_gpu import gemm_batched_gpu  # noqa: PLC0415
    n, c, h, wd = x.shape
    k = dw.shape[0]
    _, _, ho, wo = dy.shape
    th, tw = tiles(ho, wo)
    dy_lay = _views.layout("conv_backward_filter", "dy", dy)  # dy may be a channel slice
    dy_k = _views.span(dy, dy_lay)
    ws = workspace_plan("bwdf", x.shape, dw.shape, pad)
    flat = _workspace(device.array_module(x), ws, workspace)
    shape_d = (16, ws.splits, k, c) if ws.splits > 1 else (16, k, c)
    d, pos = _take(flat, 0, shape_d)
    for i, (n0, nb) in enumerate(_chunks(n, ws.chunk)):
        p = nb * th * tw
        v, end = _take(flat, pos, (16, c, p))
        y, _ = _take(flat, end, (16, k, p))
        cuda.launch("winograd", "wino_input_f32", _grid(c * p), (256, 1, 1),
                    [x, v, n0, nb, c, h, wd, pad, th, tw, c * h * wd])
        cuda.launch("winograd", "wino_grad_output_f32", _grid(k * p), (256, 1, 1),
                    [dy_k, y, n0, nb, k, ho, wo, th, tw, dy_lay.batch_stride])
        gemm_batched_gpu(y, v, d, trans_b=True, splits=ws.splits, beta=0.0 if i == 0 else 1.0,
                         precision=precision)
    cuda.launch("winograd", "wino_filter_grad_f32", _grid(k * c), (256, 1, 1), [d, dw, k, c, ws.splits])
    return dw


# ----------------------------------------------------------------------------------
# The ``winograd`` variant of the conv ops (opt-in: conv_algo="winograd")
# ----------------------------------------------------------------------------------
from .conv_gpu import CONV, ConvProblem  # noqa: E402  (conv_gpu imports this module last)
from .selector import Choice  # noqa: E402


def _variant_applies(p: ConvProblem, cfg: KernelConfig) -> str | None:
    return "conv_algo=winograd: F(2x2,3x3) for this 3x3 stride-1 layer" if p.winograd_mode == "winograd" else None


def _variant_plan(p: ConvProblem, cfg: KernelConfig, why: str) -> Choice:
    gemm = f"gemm_{'tf32' if p.precision == 'tf32' else 'f32'}_batched_{'nt' if p.pass_ == 'bwdf' else 'nn'}"
    if p.pass_ == "bwdf":
        kernels = ("wino_input_f32", "wino_grad_output_f32", gemm, "wino_filter_grad_f32") + \
            (("conv_bias_grad_f32",) if p.has_bias else ())
    else:
        kernels = ("wino_filter_f32", "wino_input_f32", gemm, "wino_output_f32")
    x_shape = p.x_shape
    return Choice("conv", p.pass_, "winograd", kernels, p.precision,
                  workspace_plan(p.pass_, x_shape, p.w_shape, p.pad).elems, why)


def _variant_launch(p: ConvProblem, c: Choice, a: dict[str, Any]) -> Any:
    ws = a.get("workspace")
    if p.pass_ == "fwd":
        return conv_forward_winograd_gpu(a["x"], a["w"], a["b"], p.pad, p.relu, a["y"], ws, p.precision, a.get("r"))
    if p.pass_ == "bwdd":
        return conv_backward_data_winograd_gpu(a["dy"], a["w"], p.pad, a["dx"], ws, p.precision)
    conv_backward_filter_winograd_gpu(a["x"], a["dy"], p.pad, a["dw"], ws, p.precision)
    if a.get("db") is not None:
        from .conv_gpu import conv_bias_grad_gpu  # noqa: PLC0415
        conv_bias_grad_gpu(a["dy"], a["db"])
    return a["dw"], a.get("db")


CONV.register("winograd", priority=10, applies=_variant_applies, plan=_variant_plan, launch=_variant_launch,
              opt_in=True)
