"""Benchmark: locally-connected layer (ours vs an F.unfold + bmm PyTorch version), fp32.

    python bench/bench_local.py [--quick]

PyTorch has no locally-connected layer; the yardstick is unfold (im2col) followed by
one batched GEMM over positions, with autograd for the backward passes.  FLOPs are
2*N*K*Ho*Wo*C*FH*FW for each of fwd, bwd-data and bwd-filter.  Our kernels use CUDA
cores only, so there are fp32 rows (TF32 off on both sides) and no TF32 rows.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Row, main_quick, set_torch_tf32, time_gpu, time_torch, torch  # noqa: E402

# (N, C, H, W, K, F, stride, pad)
SHAPES = [
    (64, 32, 16, 16, 32, 3, 1, 1),
    (32, 3, 32, 32, 16, 5, 1, 2),
    (128, 64, 8, 8, 64, 3, 1, 1),
    (16, 16, 33, 33, 16, 3, 2, 1),
]
QUICK_SHAPES = [(16, 32, 16, 16, 32, 3, 1, 1), (32, 64, 8, 8, 64, 3, 1, 1)]


def _torch_times(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: int,
                 pad: int) -> tuple[float | None, float | None, float | None]:
    if torch is None or not torch.cuda.is_available():
        return None, None, None
    import torch.nn.functional as F  # noqa: PLC0415

    ho, wo, k, c, fh, fw = w_shape
    p, r = ho * wo, c * fh * fw
    x = torch.randn(x_shape, device="cuda", requires_grad=True)
    w = (torch.randn(w_shape, device="cuda") / r ** 0.5).requires_grad_(True)

    def fwd(xx: "torch.Tensor", ww: "torch.Tensor") -> "torch.Tensor":
        cols = F.unfold(xx, (fh, fw), padding=pad, stride=stride)               # [N, R, P]
        y = torch.bmm(cols.permute(2, 0, 1), ww.view(p, k, r).transpose(1, 2))  # [P, N, K]
        return y.permute(1, 2, 0).reshape(x_shape[0], k, ho, wo)

    with torch.no_grad():
        t_fwd = time_torch(lambda: fwd(x, w))
    y = fwd(x, w)
    dy = torch.randn_like(y)
    t_data = time_torch(lambda: torch.autograd.grad(y, x, dy, retain_graph=True))
    t_filt = time_torch(lambda: torch.autograd.grad(y, w, dy, retain_graph=True))
    return t_fwd, t_data, t_filt


def run(quick: bool = False) -> list[Row]:
    """Time fwd, bwd-data, bwd-filter on each shape; returns the rows."""
    from gpuconv import device  # noqa: PLC0415
    from gpuconv.ops.local import (local_backward_data, local_backward_filter,  # noqa: PLC0415
                                   local_forward, local_output_shape)

    cp = device.get_device("cuda").xp
    set_torch_tf32(False)
    rows: list[Row] = []
    for n, c, h, wd, k, f, stride, pad in QUICK_SHAPES if quick else SHAPES:
        _, _, ho, wo = local_output_shape((n, c, h, wd), k, f, f, stride, pad)
        w_shape = (ho, wo, k, c, f, f)
        x = cp.random.standard_normal((n, c, h, wd), dtype=cp.float32)
        w = cp.random.standard_normal(w_shape, dtype=cp.float32) / (c * f * f) ** 0.5
        b = cp.random.standard_normal((k, ho, wo), dtype=cp.float32)
        dy = cp.random.standard_normal((n, k, ho, wo), dtype=cp.float32)
        y, dx, dw, db = cp.empty_like(dy), cp.empty_like(x), cp.empty_like(w), cp.empty_like(b)
        t_fwd = time_gpu(lambda: local_forward(x, w, b, stride, pad, out=y))
        t_data = time_gpu(lambda: local_backward_data(dy, w, x.shape, stride, pad, out=dx))
        t_filt = time_gpu(lambda: local_backward_filter(x, dy, w_shape, stride, pad, dw_out=dw, db_out=db))
        th = _torch_times((n, c, h, wd), w_shape, stride, pad)
        flops = 2.0 * n * k * ho * wo * c * f * f
        name = f"N{n} {c}->{k} {f}x{f}/{stride} p{pad} {h}x{wd}"
        for case, ours, theirs in (("fwd", t_fwd, th[0]), ("bwd_data", t_data, th[1]), ("bwd_filter", t_filt, th[2])):
            rows.append(Row("local", f"{name} {case}", "fp32", ours, theirs, work=flops, unit="TFLOP/s"))
    return rows


def main() -> None:
    main_quick(run, __doc__)


if __name__ == "__main__":
    main()
