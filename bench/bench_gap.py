"""Global average pooling: ours vs PyTorch's adaptive_avg_pool2d (the same inputs, the same
process), fp32.

    python bench/bench_gap.py [--quick]

GB/s = bytes read + written (forward: x and y; backward: dy and dx).  Every row is validated: our
result against PyTorch's on the same inputs (NumPy's without PyTorch), ``extra['result_rel_err']``,
``extra['invalid']`` past harness.REL_TOL.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (Row, guarded_case, main_quick, rel_err, set_torch_tf32, time_gpu, time_torch,  # noqa: E402
                           torch, validation)

# the heads of ResNet-50, GoogLeNet and a CIFAR ResNet (N, C, H, W)
SHAPES = [(64, 2048, 7, 7), (64, 1024, 7, 7), (128, 64, 8, 8)]
QUICK_SHAPES = [(32, 2048, 7, 7), (128, 64, 8, 8)]


def _check(cp: Any, ours: Any, ref: Any, by: str) -> dict[str, Any]:
    return {**validation("fp32", {"result": rel_err(ours, ref)}), "reference": by}


def run(quick: bool = False) -> list[Row]:
    from gpuconv import device  # noqa: PLC0415
    from gpuconv.ops import gap  # noqa: PLC0415

    cp = device.get_device("cuda").xp
    set_torch_tf32(False)
    have_torch = torch is not None and torch.cuda.is_available()
    rows: list[Row] = []
    for shape in QUICK_SHAPES if quick else SHAPES:
        label = "x".join(map(str, shape))

        def case(shape: tuple[int, ...] = shape, label: str = label) -> list[Row]:
            n, c = shape[:2]
            x = cp.random.standard_normal(shape, dtype=cp.float32)
            dy = cp.random.standard_normal((n, c), dtype=cp.float32)
            y, dx = cp.empty((n, c), dtype=cp.float32), cp.empty(shape, dtype=cp.float32)
            t_f = time_gpu(lambda: gap.gap_forward(x, out=y))
            t_b = time_gpu(lambda: gap.gap_backward(dy, shape, out=dx))
            gap.gap_forward(x, out=y)
            gap.gap_backward(dy, shape, out=dx)
            th_f = th_b = None
            if have_torch:
                F = torch.nn.functional
                tx, tdy = torch.from_dlpack(x), torch.from_dlpack(dy).reshape(n, c, 1, 1)
                th_f = time_torch(lambda: F.adaptive_avg_pool2d(tx, 1))
                th_b = time_torch(lambda: torch.ops.aten._adaptive_avg_pool2d_backward(tdy, tx))
                ref_y = cp.from_dlpack(F.adaptive_avg_pool2d(tx, 1).reshape(n, c))
                ref_dx = cp.from_dlpack(torch.ops.aten._adaptive_avg_pool2d_backward(tdy, tx).contiguous())
                by = "torch"
            else:
                ref_y = cp.asarray(gap.gap_forward(x.get()))
                ref_dx = cp.asarray(gap.gap_backward(dy.get(), shape))
                by = "numpy"
            return [Row("gap", f"gap {label} fwd", "fp32", t_f, th_f, x.nbytes + y.nbytes, "GB/s",
                        _check(cp, y, ref_y, by)),
                    Row("gap", f"gap {label} bwd", "fp32", t_b, th_b, dy.nbytes + dx.nbytes, "GB/s",
                        _check(cp, dx, ref_dx, by))]

        rows += guarded_case("gap", label, "fp32", cp, case)
    return rows


def main() -> None:
    main_quick(run, __doc__)


if __name__ == "__main__":
    main()
