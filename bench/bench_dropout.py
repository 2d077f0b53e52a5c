"""Dropout bandwidth: ours (hash mask, uint8) vs torch native_dropout (Philox, bool mask), fp32.

    python bench/bench_dropout.py [--quick]

GB/s = bytes read + written (forward: x, y, mask; backward: dy, mask, dx).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Row, main_quick, set_torch_tf32, time_gpu, time_torch, torch  # noqa: E402


SHAPES, QUICK_SHAPES = [(128, 64, 112, 112), (128, 4096)], [(32, 64, 56, 56), (128, 4096)]


def run(quick: bool = False) -> list[Row]:
    from gpuconv import device  # noqa: PLC0415
    from gpuconv.ops import dropout as do  # noqa: PLC0415

    cp = device.get_device("cuda").xp
    set_torch_tf32(False)
    rows: list[Row] = []
    have_torch = torch is not None and torch.cuda.is_available()
    shapes = QUICK_SHAPES if quick else SHAPES
    p = 0.5
    for shape in shapes:
        x = cp.random.standard_normal(shape, dtype=cp.float32)
        dy = cp.random.standard_normal(shape, dtype=cp.float32)
        y = cp.empty_like(x)
        dx = cp.empty_like(x)
        mask = cp.empty(shape, cp.uint8)
        step = iter(range(1 << 62))  # a fresh mask every call, like training steps
        t_f = time_gpu(lambda: do.dropout_forward(x, p, 1234, next(step), out=y, mask_out=mask))
        t_b = time_gpu(lambda: do.dropout_backward(dy, mask, p, out=dx))
        keys = cp.asarray(np.array(do.dropout_keys(1234, 5), dtype=np.uint32))   # as a planned step reads them
        t_k = time_gpu(lambda: do.dropout_forward(x, p, 0, 0, out=y, mask_out=mask, keys=keys))
        th_f = th_b = None
        if have_torch:
            xt = torch.randn(shape, device="cuda")
            gt = torch.randn(shape, device="cuda")
            _, mt = torch.ops.aten.native_dropout(xt, p, True)
            th_f = time_torch(lambda: torch.ops.aten.native_dropout(xt, p, True))
            th_b = time_torch(lambda: torch.ops.aten.native_dropout_backward(gt, mt, 1.0 / (1.0 - p)))
            del xt, gt, mt
        b, mb = x.nbytes, mask.nbytes
        name = f"p={p} " + "x".join(map(str, shape))
        rows.append(Row("dropout", f"{name} fwd", "fp32", t_f, th_f, 2 * b + mb, "GB/s"))
        rows.append(Row("dropout", f"{name} fwd, keys from memory", "fp32", t_k, th_f, 2 * b + mb, "GB/s"))
        rows.append(Row("dropout", f"{name} bwd", "fp32", t_b, th_b, 2 * b + mb, "GB/s"))
        del x, dy, y, dx, mask
        cp.get_default_memory_pool().free_all_blocks()
    return rows


def main() -> None:
    main_quick(run, __doc__)


if __name__ == "__main__":
    main()
