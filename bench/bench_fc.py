"""Benchmark fc (our tiled GEMM) against PyTorch/cuBLAS: forward, backward-data, backward-weight.

Usage: python bench/bench_fc.py [--quick]   (needs a CUDA GPU; imports cleanly without one)
Rows: fp32 (TF32 off on both sides) and tf32 (TF32 on both sides), TFLOP/s = 2*N*D*M / time;
"[async]" rows: our cp.async TF32 kernel (GPUCONV_GEMM_SCHEDULE=async) against the same cuBLAS time;
"[wgmma]" rows (compute capability 9.0 only): our Hopper wgmma TF32 kernel (GPUCONV_GEMM_WGMMA=1).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.harness import (Row, print_rows, set_torch_tf32, time_gpu, time_torch, torch,  # noqa: E402
                           with_schedule, with_wgmma)

# (batch N, in D, out M)
SHAPES = [(128, 4096, 4096), (128, 25088, 4096), (1024, 4096, 4096)]


def run(quick: bool = False) -> list[Row]:
    import cupy as cp  # noqa: PLC0415  (GPU-only)

    from gpuconv import cuda  # noqa: PLC0415
    from gpuconv.ops import fc  # noqa: PLC0415

    iters = 5 if quick else 20
    shapes = SHAPES[:1] if quick else SHAPES
    rows: list[Row] = []
    rs = cp.random.default_rng()
    hopper = cuda.wgmma_capable(cp.cuda.Device().id)
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
                ours_ms = time_gpu(ours, iters=iters)
                theirs_ms = time_torch(theirs, iters=iters) if theirs is not None else None
                new = [Row("fc", f"{name} {label}", mode, ours_ms, theirs_ms, work=flops)]
                if mode == "tf32":  # the cp.async TF32 kernel beside the default one, same cuBLAS time
                    async_ms = time_gpu(with_schedule("async", ours), iters=iters)
                    new.append(Row("fc", f"{name} {label} [async]", mode, async_ms, theirs_ms, work=flops))
                    if hopper:
                        wgmma_ms = time_gpu(with_wgmma(ours), iters=iters)
                        new.append(Row("fc", f"{name} {label} [wgmma]", mode, wgmma_ms, theirs_ms, work=flops))
                if not rows:
                    print_rows([])  # header once; rows stream as they finish
                for row in new:
                    rows.append(row)
                    print(row.markdown(), flush=True)
        set_torch_tf32(False)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="one shape, few iterations")
    args = ap.parse_args()
    rows = run(quick=args.quick)
    print()
    print_rows(rows)


if __name__ == "__main__":
    main()
