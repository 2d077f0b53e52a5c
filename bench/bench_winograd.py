"""Benchmark the Winograd F(2x2,3x3) conv against our implicit GEMM and cuDNN (fp32 and TF32).

    python bench/bench_winograd.py [--quick] [--json] [--only "VGG conv3_2,..."] [--precision fp32,tf32]

The 3x3 stride-1 layers of bench_conv.py (L5, VGG conv1_2/conv3_2/conv5_2, CIFAR 64/128)
are the ones Winograd applies to.  Per layer and pass (fwd, bwd-data, bwd-filter (+ bias
grad), fwd+bwd), three timings on the same inputs: ours with ``algo="winograd"`` (the
row's "ours"), ours with the implicit GEMM (``extra['gemm_ms']``, and the ratio
gemm/winograd in ``extra['speedup_vs_gemm']``), and cuDNN with ``cudnn.benchmark=True``
(the row's "torch").  Precision modes are separate rows: "fp32" with TF32 off on both sides,
"tf32" with TF32 on both sides (ours: the 16 GEMMs on tensor cores).  Rates count the direct convolution's FLOPs
(2*N*K*Ho*Wo*C*9 per pass), so they compare with bench_conv's rows; Winograd's
multiplies are 1/2.25 of that.  Each row's result is validated against PyTorch's fp32
forward and gradients on the same inputs (``<pass>_rel_err``; ``invalid`` past
harness.REL_TOL); ``extra['ws_mib']`` is the workspace one pass allocated (the memory plan's figure).

Why this suite exists: in the first H100 pass of bench/RESULTS.md, cuDNN's fp32 fwd+bwd rates
for some layers are above the H100's fp32 FMA peak, i.e. cuDNN runs Winograd or FFT
there, which an implicit-GEMM kernel cannot match at any efficiency (docs/performance.md,
"cuDNN's fp32 rates above the FMA peak").

Importing this module needs no GPU; all GPU work happens inside ``run``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

if __package__ in (None, ""):  # run as a script: make `gpuconv` and `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import bench_conv  # noqa: E402  (its reference: one hook for both suites' validation)
from bench.bench_conv import LAYERS, only_arg, select_layers  # noqa: E402
from bench.harness import (Row, comma_choices, guarded_case, set_torch_tf32, streamer, time_gpu,  # noqa: E402
                           time_torch, torch, validation)

WINO_LAYERS = [L for L in LAYERS if L.f == 3 and L.s == 1 and L.d == 1 and L.p <= 2]
QUICK = ("CIFAR 64", "VGG conv5_2")


def _bench_layer(L, cp, conv, winograd, precision: str) -> list[Row]:  # noqa: ANN001
    n, c, h, w, k, p = L.n, L.c, L.h, L.w, L.k, L.p
    ho, wo = h + 2 * p - 2, w + 2 * p - 2
    flops = 2.0 * n * k * ho * wo * c * 9
    x = cp.random.standard_normal((n, c, h, w), dtype=cp.float32)
    wt = cp.random.standard_normal((k, c, 3, 3), dtype=cp.float32) * cp.float32(1.0 / (3 * c ** 0.5))
    b = cp.random.standard_normal((k,), dtype=cp.float32)
    dy = cp.random.standard_normal((n, k, ho, wo), dtype=cp.float32)
    y, dx = cp.empty((n, k, ho, wo), cp.float32), cp.empty_like(x)
    dw, db = cp.empty_like(wt), cp.empty_like(b)
    ws_elems = winograd.layer_workspace_elems(x.shape, wt.shape, p)
    ws = cp.empty(ws_elems, dtype=cp.float32)  # one planned workspace, as a net's executor passes it

    def passes(algo: str) -> dict[str, object]:
        kw = {"algo": algo, "workspace": ws if algo == "winograd" else None, "precision": precision}

        def fwd() -> None:
            conv.conv_forward(x, wt, b, 1, p, out=y, **kw)

        def bwdd() -> None:
            conv.conv_backward_data(dy, wt, x.shape, 1, p, out=dx, **kw)

        def bwdf() -> None:
            conv.conv_backward_filter(x, dy, wt.shape, 1, p, dw_out=dw, db_out=db, **kw)

        def all3() -> None:
            fwd()
            bwdd()
            bwdf()
        return {"fwd": fwd, "bwd-data": bwdd, "bwd-filter": bwdf, "fwd+bwd": all3}

    ours = {name: time_gpu(fn) for name, fn in passes("winograd").items()}
    gemm = {name: time_gpu(fn) for name, fn in passes("gemm").items()}
    theirs: dict[str, float | None] = dict.fromkeys(ours)
    if torch is not None and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        set_torch_tf32(precision == "tf32")
        tx = torch.from_dlpack(x).requires_grad_(True)
        tw = torch.from_dlpack(wt).requires_grad_(True)
        tb = torch.from_dlpack(b).requires_grad_(True)
        tdy = torch.from_dlpack(dy)
        F = torch.nn.functional

        def t_fwd() -> None:
            with torch.no_grad():
                F.conv2d(tx, tw, tb, 1, p)

        def t_bwdd() -> None:
            torch.nn.grad.conv2d_input(tx.shape, tw, tdy, 1, p)

        def t_bwdf() -> None:
            torch.nn.grad.conv2d_weight(tx, tw.shape, tdy, 1, p)
            tdy.sum(dim=(0, 2, 3))

        def t_all() -> None:
            out = F.conv2d(tx, tw, tb, 1, p)
            torch.autograd.grad(out, (tx, tw, tb), tdy)

        theirs = {"fwd": time_torch(t_fwd), "bwd-data": time_torch(t_bwdd), "bwd-filter": time_torch(t_bwdf),
                  "fwd+bwd": time_torch(t_all)}
        set_torch_tf32(False)
    # validate Winograd's three passes on the same inputs against the fp32 reference (bench_conv's)
    checked: dict[str, dict] = {}
    ref = bench_conv.reference(x, wt, b, dy, 1, p, 1)
    if ref is not None:
        passes("winograd")["fwd+bwd"]()
        errs = bench_conv.distances(ref, y, dx, dw, db)
        for name, keys in (("fwd", ("fwd",)), ("bwd-data", ("bwd_data",)), ("bwd-filter", ("bwd_filter", "bias_grad")),
                           ("fwd+bwd", tuple(errs))):
            checked[name] = validation(precision, {k: errs[k] for k in keys})
    rows = []
    for name in ours:
        work = flops * (3 if name == "fwd+bwd" else 1)
        extra = {"gemm_ms": gemm[name], "speedup_vs_gemm": gemm[name] / ours[name] if ours[name] else None,
                 "ws_mib": ws_elems * 4 / 2**20}
        extra.update(checked.get(name, {}))
        rows.append(Row("winograd", f"{L.label} {name}", precision, ours[name], theirs[name], work, extra=extra))
    return rows


def run(quick: bool = False, only: tuple[str, ...] | None = None,
        precisions: tuple[str, ...] = ("fp32", "tf32"), emit: Callable[[list[Row]], None] | None = None) -> list[Row]:
    """Time every eligible layer; a layer that fails gets a row carrying the error.  ``emit``:
    called with each layer's rows as they finish."""
    from gpuconv import device  # noqa: PLC0415
    from gpuconv.ops import conv, winograd  # noqa: PLC0415

    layers = select_layers(WINO_LAYERS, only if only else QUICK if quick else None)
    cp = device.get_device("cuda").xp
    rows: list[Row] = []
    for precision in precisions:
        for L in layers:
            got = guarded_case("winograd", L.label, precision, cp,
                               lambda L=L, pr=precision: _bench_layer(L, cp, conv, winograd, pr))
            rows += got
            if emit is not None:
                emit(got)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--json", action="store_true", help="also print one JSON object per row")
    ap.add_argument("--only", default=None, help="comma-separated layer names, e.g. 'VGG conv3_2,L5'")
    ap.add_argument("--precision", default="fp32,tf32", help="comma-separated modes: fp32 (TF32 off), tf32")
    args = ap.parse_args(argv)
    precisions = comma_choices(ap, "--precision", args.precision, ("fp32", "tf32"))
    rows = run(args.quick, only_arg(ap, args.only, WINO_LAYERS), precisions, emit=streamer(args.json))
    for r in rows:  # the GEMM comparison lives in extra: print it beside the table
        errs = ", ".join(f"{k} {v:.1e}" for k, v in r.extra.items() if k.endswith("_rel_err"))
        print(f"{r.name} [{r.mode}]: winograd {r.ours_ms} ms, gemm {r.extra.get('gemm_ms')} ms, "
              f"gemm/winograd {r.extra.get('speedup_vs_gemm')}{', ' + errs if errs else ''}")


if __name__ == "__main__":
    main()
