"""Benchmark: cross-channel LRN, AlexNet constants (ours vs F.local_response_norm), fp32.

    python bench/bench_lrn.py [--quick]

Rates are effective bandwidth from the minimal traffic, the same number for both
sides (fwd: read x, write y and scale; bwd: read dy, x, y, scale, write dx).
PyTorch's LRN is a composite (pad, avg_pool3d, pow, div); its backward is autograd's.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Row, main_quick, set_torch_tf32, time_gpu, time_torch, torch  # noqa: E402

SHAPES = [(128, 96, 55, 55), (128, 256, 27, 27)]      # AlexNet norm1, norm2
QUICK_SHAPES = [(32, 96, 55, 55), (32, 256, 27, 27)]
SIZE, ALPHA, BETA, K = 5, 1e-4, 0.75, 2.0


def _torch_times(shape: tuple[int, ...]) -> tuple[float | None, float | None]:
    if torch is None or not torch.cuda.is_available():
        return None, None
    import torch.nn.functional as F  # noqa: PLC0415

    x = torch.randn(shape, device="cuda", requires_grad=True)
    dy = torch.randn(shape, device="cuda")
    fwd = time_torch(lambda: F.local_response_norm(x.detach(), SIZE, ALPHA, BETA, K))
    y = F.local_response_norm(x, SIZE, ALPHA, BETA, K)
    bwd = time_torch(lambda: torch.autograd.grad(y, x, dy, retain_graph=True))
    return fwd, bwd


def run(quick: bool = False) -> list[Row]:
    """Time forward and backward on AlexNet's LRN shapes; returns the rows."""
    from gpuconv import device  # noqa: PLC0415
    from gpuconv.ops.lrn import lrn_backward, lrn_forward  # noqa: PLC0415

    cp = device.get_device("cuda").xp
    set_torch_tf32(False)
    rows: list[Row] = []
    for shape in QUICK_SHAPES if quick else SHAPES:
        x = cp.random.standard_normal(shape, dtype=cp.float32) * 3
        dy = cp.random.standard_normal(shape, dtype=cp.float32)
        y, sc, dx = cp.empty_like(x), cp.empty_like(x), cp.empty_like(x)
        fwd = time_gpu(lambda: lrn_forward(x, SIZE, ALPHA, BETA, K, out=y, scale_out=sc))
        lrn_forward(x, SIZE, ALPHA, BETA, K, out=y, scale_out=sc)
        bwd = time_gpu(lambda: lrn_backward(dy, x, y, sc, SIZE, ALPHA, BETA, K, out=dx))
        tf, tb = _torch_times(shape)
        name = "x".join(str(s) for s in shape)
        nbytes = x.size * 4
        rows.append(Row("lrn", f"{name} fwd", "fp32", fwd, tf, work=3.0 * nbytes, unit="GB/s"))
        rows.append(Row("lrn", f"{name} bwd", "fp32", bwd, tb, work=5.0 * nbytes, unit="GB/s"))
    return rows


def main() -> None:
    main_quick(run, __doc__)


if __name__ == "__main__":
    main()
