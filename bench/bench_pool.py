"""Pooling bandwidth: ours vs PyTorch (cuDNN / ATen) on the same shapes, fp32.

    python bench/bench_pool.py [--quick]

Rates are GB/s of OUR traffic (bytes read + written by our kernels: max forward reads x and
writes y plus uint8 switches; PyTorch writes int64 indices instead, so its row's rate uses our
byte count and the time ratio is the fair comparison).  F=3, S=2 runs on 113x113 inputs because
(112 - 3)/2 + 1 is not an integer and our geometry refuses to floor it.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `gpuconv` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Row, main_quick, set_torch_tf32, time_gpu, time_torch, torch  # noqa: E402


def _torch_ok() -> bool:
    return torch is not None and torch.cuda.is_available()


# (batch, channels, side of the 2/2 windows' input; the 3/2 windows get side + 1)
SIZE, QUICK_SIZE = (128, 64, 112), (32, 64, 56)


def run(quick: bool = False) -> list[Row]:
    from gpuconv import device  # noqa: PLC0415
    from gpuconv.ops import pool  # noqa: PLC0415

    cp = device.get_device("cuda").xp
    set_torch_tf32(False)
    n, c, hw2 = QUICK_SIZE if quick else SIZE
    hw3 = hw2 + 1
    rows: list[Row] = []
    have_torch = _torch_ok()
    if have_torch:
        import torch.nn.functional as tF  # noqa: PLC0415

    for kind, F, S, hw in [("max", 2, 2, hw2), ("max", 3, 2, hw3), ("avg", 2, 2, hw2),
                           ("avg", 3, 2, hw3), ("l2", 2, 2, hw2)]:
        shape = (n, c, hw, hw)
        y_shape = pool.pool_output_shape(shape, F, S)
        x = cp.random.standard_normal(shape, dtype=cp.float32)
        dy = cp.random.standard_normal(y_shape, dtype=cp.float32)
        y = cp.empty(y_shape, cp.float32)
        sw = cp.empty(y_shape, cp.uint8)
        dx = cp.empty(shape, cp.float32)
        xb, yb, swb = x.nbytes, y.nbytes, sw.nbytes
        label = f"{kind} {F}/{S} {n}x{c}x{hw}x{hw}"

        if kind == "max":
            fwd = lambda: pool.maxpool_forward(x, F, S, out=y, switches_out=sw)  # noqa: E731
            fwd()
            bwd = lambda: pool.maxpool_backward(dy, sw, shape, F, S, out=dx)  # noqa: E731
            fwd_bytes, bwd_bytes = xb + yb + swb, yb + swb + xb
        elif kind == "avg":
            fwd = lambda: pool.avgpool_forward(x, F, S, out=y)  # noqa: E731
            bwd = lambda: pool.avgpool_backward(dy, shape, F, S, out=dx)  # noqa: E731
            fwd_bytes, bwd_bytes = xb + yb, yb + xb
        else:
            fwd = lambda: pool.l2pool_forward(x, F, S, out=y)  # noqa: E731
            fwd()
            bwd = lambda: pool.l2pool_backward(dy, x, y, F, S, out=dx)  # noqa: E731
            fwd_bytes, bwd_bytes = xb + yb, 2 * yb + 2 * xb

        t_fwd, t_bwd = time_gpu(fwd), time_gpu(bwd)
        th_fwd = th_bwd = None
        extra: dict = {}
        if have_torch:
            xt = torch.randn(shape, device="cuda", dtype=torch.float32)
            gt = torch.randn(y_shape, device="cuda", dtype=torch.float32)
            k, s, p = [F, F], [S, S], [0, 0]
            try:
                if kind == "max":
                    _, idx = tF.max_pool2d(xt, F, S, return_indices=True)
                    th_fwd = time_torch(lambda: tF.max_pool2d(xt, F, S, return_indices=True))
                    extra["torch_fwd_no_indices_ms"] = time_torch(lambda: tF.max_pool2d(xt, F, S))
                    th_bwd = time_torch(lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                        gt, xt, k, s, p, [1, 1], False, idx))
                elif kind == "avg":
                    th_fwd = time_torch(lambda: tF.avg_pool2d(xt, F, S))
                    th_bwd = time_torch(lambda: torch.ops.aten.avg_pool2d_backward(
                        gt, xt, k, s, p, False, True, None))
                else:
                    th_fwd = time_torch(lambda: tF.lp_pool2d(xt, 2.0, F, S))
            except Exception as exc:  # noqa: BLE001  an ATen signature change must not kill the bench
                extra["torch_error"] = repr(exc)
            del xt, gt
        rows.append(Row("pool", f"{label} fwd", "fp32", t_fwd, th_fwd, fwd_bytes, "GB/s", extra))
        rows.append(Row("pool", f"{label} bwd", "fp32", t_bwd, th_bwd, bwd_bytes, "GB/s"))
        del x, dy, y, sw, dx
        cp.get_default_memory_pool().free_all_blocks()
    return rows


def main() -> None:
    main_quick(run, __doc__)


if __name__ == "__main__":
    main()
