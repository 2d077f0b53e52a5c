"""Benchmark fc (our tiled GEMM) against PyTorch/cuBLAS: forward, backward-data, backward-weight.

Usage: python bench/bench_fc.py [--quick] [--json] [--wgmma auto|off|only]   (needs a CUDA GPU; imports cleanly without one)
Rows: fp32 (TF32 off on both sides) and tf32 (TF32 on both sides), TFLOP/s = 2*N*D*M / time;
"[async]" rows: our cp.async TF32 kernel (GPUCONV_GEMM_SCHEDULE=async) against the same cuBLAS time;
"[wgmma]" rows (compute capability 9.0 only): our Hopper wgmma TF32 kernel (GPUCONV_GEMM_WGMMA=1).
Both sides read the same random inputs (DLPack); every row's result is validated against
cuBLAS's fp32 result on them (``extra['result_rel_err']``; ``extra['invalid']`` past harness.REL_TOL).
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.harness import (Row, rel_err, set_torch_tf32, streamer, time_gpu, time_torch, torch,  # noqa: E402
                           validation, with_schedule, with_wgmma)

# (batch N, in D, out M)
SHAPES = [(128, 4096, 4096), (128, 25088, 4096), (1024, 4096, 4096)]


def reference(x, w, b, dy) -> dict[str, object] | None:  # noqa: ANN001
    """cuBLAS's results on our inputs (PyTorch through DLPack, TF32 off: the fp32 truth both
    precisions are checked against), keyed by case label; None without PyTorch and CUDA."""
    if torch is None or not torch.cuda.is_available():
        return None
    import cupy as cp  # noqa: PLC0415

    set_torch_tf32(False)
    tx, tw, tb, tdy = (torch.from_dlpack(a) for a in (x, w, b, dy))
    refs = {"fwd+bias": (torch.nn.functional.linear(tx, tw, tb),), "bwd data": (tdy @ tw,),
            "bwd weight+bias": (tdy.t() @ tx, tdy.sum(0))}
    return {k: tuple(cp.from_dlpack(t.contiguous()) for t in v) for k, v in refs.items()}


def _row(name: str, mode: str, fn: Callable[[], object], theirs_ms: float | None, flops: float, iters: int,
         check: Callable[[], dict] | None) -> Row:
    """Our time of fn in a row, validated by ``check`` (run after the timing), or a row carrying
    the error (the other cases go on)."""
    try:
        ms = time_gpu(fn, iters=iters)
        return Row("fc", name, mode, ms, theirs_ms, work=flops, extra=check() if check is not None else {})
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        return Row("fc", name, mode, None, theirs_ms, work=flops, extra={"error": f"{type(exc).__name__}: {exc}"})


def run(quick: bool = False, wgmma: bool | None = None, wgmma_only: bool = False,
        emit: Callable[[list[Row]], None] | None = None) -> list[Row]:
    """``wgmma``: add the [wgmma] rows (None: where the GPU has wgmma, compute capability 9.0);
    ``wgmma_only``: only those rows (a process of their own: a fault in the never-timed kernels
    cannot take the default rows with it).  Every row's result is checked against ``reference``
    (``extra['result_rel_err']``, ``extra['invalid']`` over harness.REL_TOL).  ``emit``: called
    with each row as it finishes (default: print its markdown)."""
    from gpuconv import cuda, device  # noqa: PLC0415
    from gpuconv.ops import fc  # noqa: PLC0415

    cp = device.get_device("cuda").xp
    iters = 5 if quick else 20
    shapes = SHAPES[:1] if quick else SHAPES
    rows: list[Row] = []
    rs = cp.random.default_rng()
    hopper = cuda.wgmma_capable() if wgmma is None else wgmma
    if wgmma_only and not hopper:
        raise ValueError("wgmma_only: the [wgmma] rows need a compute capability 9.0 GPU (H100/H200)")
    emit = emit or streamer()
    for n, d, m in shapes:
        x = rs.standard_normal((n, d), dtype=cp.float32)
        w = rs.standard_normal((m, d), dtype=cp.float32) * (1.0 / d**0.5)
        b = rs.standard_normal((m,), dtype=cp.float32)
        dy = rs.standard_normal((n, m), dtype=cp.float32)
        y, dx, dw, db = (cp.empty(s, cp.float32) for s in ((n, m), (n, d), (m, d), (m,)))
        flops = 2.0 * n * d * m
        ref = reference(x, w, b, dy)
        tx = tw = tb = tdy = None
        if torch is not None and torch.cuda.is_available():   # the same data on both sides
            tx, tw, tb, tdy = (torch.from_dlpack(a) for a in (x, w, b, dy))
        for mode in ("fp32", "tf32") if not wgmma_only else ("tf32",):
            set_torch_tf32(mode == "tf32")
            name = f"{n}x{d}->{m}"
            cases = [
                ("fwd+bias", lambda: fc.fc_forward(x, w, b, out=y, precision=mode), (y,),
                 (lambda: torch.nn.functional.linear(tx, tw, tb)) if tx is not None else None),
                ("bwd data", lambda: fc.fc_backward_data(dy, w, out=dx, precision=mode), (dx,),
                 (lambda: tdy @ tw) if tx is not None else None),
                ("bwd weight+bias", lambda: fc.fc_backward_weight(x, dy, dw_out=dw, db_out=db, precision=mode), (dw, db),
                 (lambda: (tdy.t() @ tx, tdy.sum(0))) if tx is not None else None),
            ]
            for label, ours, outs, theirs in cases:
                theirs_ms = time_torch(theirs, iters=iters) if theirs is not None else None
                check = None if ref is None else (
                    lambda label=label, outs=outs, mode=mode: validation(mode, {
                        "result": max(rel_err(o, r) for o, r in zip(outs, ref[label]))}))
                variants = [("", ours)] if not wgmma_only else []
                if mode == "tf32":  # the cp.async TF32 kernel beside the default one, same cuBLAS time
                    variants += [(" [async]", with_schedule("async", ours))] if not wgmma_only else []
                    variants += [(" [wgmma]", with_wgmma(ours))] if hopper else []
                for tag, fn in variants:
                    row = _row(f"{name} {label}{tag}", mode, fn, theirs_ms, flops, iters, check)
                    rows.append(row)
                    emit([row])
        set_torch_tf32(False)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="one shape, few iterations")
    ap.add_argument("--json", action="store_true", help="also print one JSON object per row")
    ap.add_argument("--wgmma", choices=("auto", "off", "only"), default="auto",
                    help="[wgmma] rows: auto = on a compute capability 9.0 GPU; off = never (kernels without them); "
                         "only = those rows alone")
    args = ap.parse_args(argv)
    run(quick=args.quick, wgmma=False if args.wgmma == "off" else None, wgmma_only=args.wgmma == "only",
        emit=streamer(args.json))


if __name__ == "__main__":
    main()
