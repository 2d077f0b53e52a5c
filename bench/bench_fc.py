"""Benchmark fc (our tiled GEMM) against PyTorch/cuBLAS: forward, backward-data, backward-weight.

Usage: python bench/bench_fc.py [--quick] [--wgmma auto|off]   (needs a CUDA GPU; imports cleanly without one)
Rows: fp32 (TF32 off on both sides) and tf32 (TF32 on both sides), TFLOP/s = 2*N*D*M / time;
"[async]" rows: our cp.async TF32 kernel (GPUCONV_GEMM_SCHEDULE=async) against the same cuBLAS time;
"[wgmma]" rows (compute capability 9.0 only): our Hopper wgmma TF32 kernel (GPUCONV_GEMM_WGMMA=1).
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.harness import (Row, print_rows, set_torch_tf32, time_gpu, time_torch, torch,  # noqa: E402
                           with_schedule, with_wgmma)

# (batch N, in D, out M)
SHAPES = [(128, 4096, 4096), (128, 25088, 4096), (1024, 4096, 4096)]


def _row(name: str, mode: str, fn: Callable[[], object], theirs_ms: float | None, flops: float, iters: int) -> Row:
    """Our time of fn in a row, or a row carrying the error (the other cases go on)."""
    try:
        return Row("fc", name, mode, time_gpu(fn, iters=iters), theirs_ms, work=flops)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        return Row("fc", name, mode, None, theirs_ms, work=flops, extra={"error": f"{type(exc).__name__}: {exc}"})


def run(quick: bool = False, wgmma: bool | None = None) -> list[Row]:
    """``wgmma``: add the [wgmma] rows (None: where the GPU has wgmma, compute capability 9.0)."""
    from gpuconv import cuda, device  # noqa: PLC0415
    from gpuconv.ops import fc  # noqa: PLC0415

    cp = device.get_device("cuda").xp
    iters = 5 if quick else 20
    shapes = SHAPES[:1] if quick else SHAPES
    rows: list[Row] = []
    rs = cp.random.default_rng()
    hopper = cuda.wgmma_capable() if wgmma is None else wgmma
    for n, d, m in shapes:
        x = rs.standard_normal((n, d), dtype=cp.float32)
        w = rs.standard_normal((m, d), dtype=cp.float32) * (1.0 / d**0.5)
        b = rs.standard_normal((m,), dtype=cp.float32)
        dy = rs.standard_normal((n, m), dtype=cp.float32)
        y, dx, dw, db = (cp.empty(s, cp.float32) for s in ((n, m), (n, d), (m, d), (m,)))
        flops = 2.0 * n * d * m
        tx = tw = tb = tdy = None
        if torch is not None and torch.cuda.is_available():
            tx, tw, tb, tdy = (torch.randn(*s, device="cuda") for s in ((n, d), (m, d), (m,), (n, m)))
        for mode in ("fp32", "tf32"):
            set_torch_tf32(mode == "tf32")
            name = f"{n}x{d}->{m}"
            cases = [
                ("fwd+bias", lambda: fc.fc_forward(x, w, b, out=y, precision=mode),
                 (lambda: torch.nn.functional.linear(tx, tw, tb)) if tx is not None else None),
                ("bwd data", lambda: fc.fc_backward_data(dy, w, out=dx, precision=mode),
                 (lambda: tdy @ tw) if tx is not None else None),
                ("bwd weight+bias", lambda: fc.fc_backward_weight(x, dy, dw_out=dw, db_out=db, precision=mode),
                 (lambda: (tdy.t() @ tx, tdy.sum(0))) if tx is not None else None),
            ]
            for label, ours, theirs in cases:
                theirs_ms = time_torch(theirs, iters=iters) if theirs is not None else None
                new = [_row(f"{name} {label}", mode, ours, theirs_ms, flops, iters)]
                if mode == "tf32":  # the cp.async TF32 kernel beside the default one, same cuBLAS time
                    new.append(_row(f"{name} {label} [async]", mode, with_schedule("async", ours), theirs_ms, flops,
                                    iters))
                    if hopper:
                        new.append(_row(f"{name} {label} [wgmma]", mode, with_wgmma(ours), theirs_ms, flops, iters))
                if not rows:
                    print_rows([])  # header once; rows stream as they finish
                for row in new:
                    rows.append(row)
                    print(row.markdown(), flush=True)
        set_torch_tf32(False)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="one shape, few iterations")
    ap.add_argument("--wgmma", choices=("auto", "off"), default="auto",
                    help="[wgmma] rows: auto = on a compute capability 9.0 GPU; off = never (kernels without them)")
    args = ap.parse_args(argv)
    rows = run(quick=args.quick, wgmma=False if args.wgmma == "off" else None)
    print()
    print_rows(rows)


if __name__ == "__main__":
    main()
