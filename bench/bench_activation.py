"""ReLU bandwidth: ours vs torch.relu / threshold_backward, fp32.

    python bench/bench_activation.py [--quick]

GB/s = bytes read + written (forward: x, y; backward: dy, y, dx).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Row, main_quick, set_torch_tf32, time_gpu, time_torch, torch  # noqa: E402


SHAPE, QUICK_SHAPE = (128, 64, 112, 112), (32, 64, 56, 56)


def run(quick: bool = False) -> list[Row]:
    from gpuconv import device  # noqa: PLC0415
    from gpuconv.ops import activation as act  # noqa: PLC0415

    cp = device.get_device("cuda").xp
    set_torch_tf32(False)
    shape = QUICK_SHAPE if quick else SHAPE
    rows: list[Row] = []
    have_torch = torch is not None and torch.cuda.is_available()
    for slope in (0.0, 0.1):
        x = cp.random.standard_normal(shape, dtype=cp.float32)
        dy = cp.random.standard_normal(shape, dtype=cp.float32)
        y = cp.empty_like(x)
        dx = cp.empty_like(x)
        act.relu_forward(x, slope, out=y)
        b = x.nbytes
        t_f = time_gpu(lambda: act.relu_forward(x, slope, out=y))
        t_b = time_gpu(lambda: act.relu_backward(dy, y, slope, out=dx))
        th_f = th_b = None
        if have_torch:
            xt = torch.randn(shape, device="cuda")
            gt = torch.randn(shape, device="cuda")
            if slope == 0.0:
                yt = torch.relu(xt)
                th_f = time_torch(lambda: torch.relu(xt))
                th_b = time_torch(lambda: torch.ops.aten.threshold_backward(gt, yt, 0.0))
            else:
                yt = torch.nn.functional.leaky_relu(xt, slope)
                th_f = time_torch(lambda: torch.nn.functional.leaky_relu(xt, slope))
                th_b = time_torch(lambda: torch.ops.aten.leaky_relu_backward(gt, yt, slope, True))
            del xt, gt, yt
        name = ("relu" if slope == 0.0 else f"leaky{slope:g}") + " " + "x".join(map(str, shape))
        rows.append(Row("activation", f"{name} fwd", "fp32", t_f, th_f, 2 * b, "GB/s"))
        rows.append(Row("activation", f"{name} bwd", "fp32", t_b, th_b, 3 * b, "GB/s"))
        del x, dy, y, dx
        cp.get_default_memory_pool().free_all_blocks()
    return rows


def main() -> None:
    main_quick(run, __doc__)


if __name__ == "__main__":
    main()
