"""Benchmark conv (forward and forward+backward) against torch.nn.functional.conv2d / cuDNN.

    python bench/bench_conv.py [--quick] [--json] [--only L1,...] [--precision fp32,tf32]
                               [--schedules reg,async] [--wgmma auto|off|only]

Layers: convnet-benchmarks L1-L5, VGG16 conv1_2/conv3_2/conv5_2, CIFAR-size 3x3,
dilated 3x3, AlexNet conv1, a 1x1.  Each layer gets fp32 rows (TF32 off on both
sides) and tf32 rows (our mma.sync kernels vs cuDNN with TF32 on), for the forward
alone and for forward + backward-data + backward-filter (+ bias grad).  FLOPs:
2*N*K*Ho*Wo*C*FH*FW per forward, 3x that for forward+backward.  Inputs are fresh
random normals, shared with torch through DLPack so both sides see the same data.
Every timed variant is validated on those inputs against PyTorch's fp32 forward and
gradients (``reference``): ``extra['fwd_rel_err']`` and, on the fwd+bwd rows,
``bwd_data_rel_err``, ``bwd_filter_rel_err``, ``bias_grad_rel_err``; a distance over
``harness.REL_TOL`` lists the pass in ``extra['invalid']`` (bench/targets.py leaves such
rows out).  The fwd+bwd rows name the backward-data kernel in ``extra['variant_bwdd']``
(the direct gather kernel for few input channels or stride >= 2, else the GEMM tile).
``--schedules reg,async`` adds rows "... [async]" for the cp.async 4-stage main loop beside
the default "reg" rows (same inputs, same cuDNN timing).  On an sm_90 GPU (H100/H200)
every tf32 layer also gets "... [wgmma]" rows: the Hopper warpgroup-MMA kernels
(GPUCONV_GEMM_WGMMA=1); ``--wgmma only`` times those alone.

Importing this module needs no GPU; all GPU work happens inside ``run``.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable

if __package__ in (None, ""):  # run as a script: make `gpuconv` and `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from bench.harness import (Row, comma_choices, guarded_case, rel_err, set_torch_tf32, streamer, time_gpu, time_torch,
                           torch, validation, with_schedule, with_wgmma)


@dataclass(frozen=True)
class Layer:
    name: str
    n: int
    c: int
    h: int
    w: int
    k: int
    f: int
    s: int = 1
    p: int = 0
    d: int = 1

    @property
    def label(self) -> str:
        extra = "".join([f"/{self.s}" if self.s != 1 else "", f" p{self.p}" if self.p else "",
                         f" d{self.d}" if self.d != 1 else ""])
        return f"{self.name} {self.c}->{self.k} {self.f}x{self.f}{extra} {self.h}^2 b{self.n}"


LAYERS = [
    Layer("L1", 128, 3, 128, 128, 96, 11),
    Layer("L2", 128, 64, 64, 64, 128, 9),
    Layer("L3", 128, 128, 32, 32, 128, 9),
    Layer("L4", 128, 128, 16, 16, 128, 7),
    Layer("L5", 128, 384, 13, 13, 384, 3, 1, 1),
    Layer("VGG conv1_2", 64, 64, 224, 224, 64, 3, 1, 1),
    Layer("VGG conv3_2", 64, 256, 56, 56, 256, 3, 1, 1),
    Layer("VGG conv5_2", 64, 512, 14, 14, 512, 3, 1, 1),
    Layer("CIFAR 64", 128, 64, 32, 32, 64, 3, 1, 1),
    Layer("CIFAR 128", 128, 128, 16, 16, 128, 3, 1, 1),
    Layer("dilated d2", 32, 64, 56, 56, 64, 3, 1, 2, 2),
    Layer("dilated d4", 32, 64, 56, 56, 64, 3, 1, 4, 4),
    Layer("AlexNet conv1", 128, 3, 227, 227, 96, 11, 4, 0),
    Layer("1x1", 64, 256, 56, 56, 64, 1),
]
QUICK = ("L5", "CIFAR 64", "1x1")
MODES = ("fp32", "tf32")
WGMMA = "wgmma"  # a row tag beside the schedules: TF32 on the sm_90a wgmma kernels


def _with(sc: str, fn):  # noqa: ANN001, ANN202
    return with_wgmma(fn) if sc == WGMMA else with_schedule(sc, fn)


def reference(x, wt, b, dy, s: int, p: int, d: int) -> dict[str, object] | None:  # noqa: ANN001
    """cuDNN's forward and gradients on our inputs (PyTorch through DLPack, TF32 off: the fp32
    truth both precisions are checked against), as cupy arrays; None without PyTorch and CUDA."""
    if torch is None or not torch.cuda.is_available():
        return None
    import cupy as cp  # noqa: PLC0415

    set_torch_tf32(False)
    tx, tw, tb = (torch.from_dlpack(a).detach().requires_grad_(True) for a in (x, wt, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, s, p, d)
    gx, gw, gb = torch.autograd.grad(ty, (tx, tw, tb), torch.from_dlpack(dy))
    return {k: cp.from_dlpack(v.detach().contiguous()) for k, v in
            (("fwd", ty), ("bwd_data", gx), ("bwd_filter", gw), ("bias_grad", gb))}


PASSES = ("fwd", "bwd_data", "bwd_filter", "bias_grad")   # the results ``reference`` returns


def distances(ref: dict[str, object], y, dx, dw, db) -> dict[str, float]:  # noqa: ANN001
    """Each pass's result's distance from ``reference``'s (harness.rel_err), keyed like PASSES."""
    return {key: rel_err(got, ref[key]) for key, got in zip(PASSES, (y, dx, dw, db))}


def _bench_layer(L: Layer, mode: str, cp, conv, schedules: tuple[str, ...] = ("reg",)) -> list[Row]:  # noqa: ANN001
    n, c, h, w, k, f, s, p, d = L.n, L.c, L.h, L.w, L.k, L.f, L.s, L.p, L.d
    yshape = conv.conv_output_shape((n, c, h, w), (k, c, f, f), s, p, d)
    _, _, ho, wo = yshape
    flops = 2.0 * n * k * ho * wo * c * f * f
    x = cp.random.standard_normal((n, c, h, w), dtype=cp.float32)
    wt = cp.random.standard_normal((k, c, f, f), dtype=cp.float32) * np.float32(1.0 / np.sqrt(c * f * f))
    b = cp.random.standard_normal((k,), dtype=cp.float32)
    dy = cp.random.standard_normal(yshape, dtype=cp.float32)
    y, dx = cp.empty(yshape, cp.float32), cp.empty((n, c, h, w), cp.float32)
    dw, db = cp.empty(wt.shape, cp.float32), cp.empty((k,), cp.float32)

    def ours_fwd() -> None:
        conv.conv_forward(x, wt, b, s, p, d, out=y, precision=mode)

    def ours_fwdbwd() -> None:
        conv.conv_forward(x, wt, b, s, p, d, out=y, precision=mode)
        conv.conv_backward_data(dy, wt, x.shape, s, p, d, out=dx, precision=mode)
        conv.conv_backward_filter(x, dy, wt.shape, s, p, d, dw_out=dw, db_out=db, precision=mode)

    def chosen(pass_: str) -> str:
        """The kernel the conv selector picks for this pass (what the memory plan records)."""
        return conv.select(conv.problem(pass_, x.shape, wt.shape, s, p, d, x.dtype, mode, "gemm",
                                        has_bias=pass_ != "bwdd")).kernel

    extra: dict = {"variant_fwd": chosen("fwd")}
    # backward-data: the direct gather kernel (small C / stride >= 2, e.g. L1 and AlexNet conv1) or the GEMM
    bwdd = chosen("bwdd")
    ours = {sc: (time_gpu(_with(sc, ours_fwd)), time_gpu(_with(sc, ours_fwdbwd))) for sc in schedules}
    theirs_f = theirs_fb = None
    if torch is not None and torch.cuda.is_available():
        import torch.nn.functional as F  # noqa: PLC0415

        torch.backends.cudnn.benchmark = True
        set_torch_tf32(mode == "tf32")
        tx = torch.from_dlpack(x).requires_grad_(True)
        tw = torch.from_dlpack(wt).requires_grad_(True)
        tb = torch.from_dlpack(b).requires_grad_(True)
        tdy = torch.from_dlpack(dy)

        def torch_fwd() -> None:
            with torch.no_grad():
                F.conv2d(tx, tw, tb, s, p, d)

        def torch_fwdbwd() -> None:
            ty = F.conv2d(tx, tw, tb, s, p, d)
            torch.autograd.grad(ty, (tx, tw, tb), tdy)

        theirs_f = time_torch(torch_fwd)
        theirs_fb = time_torch(torch_fwdbwd)
        set_torch_tf32(False)
    # validate every timed variant on the same inputs: its forward, both gradients and the bias grad
    ref = reference(x, wt, b, dy, s, p, d)
    errs: dict[str, dict[str, float]] = {}
    for sc in schedules if ref is not None else ():
        _with(sc, ours_fwdbwd)()
        errs[sc] = distances(ref, y, dx, dw, db)
    rows = []
    for sc, (ours_f, ours_fb) in ours.items():
        tag = "" if sc == "reg" else f" [{sc}]"  # the default schedule keeps the historical row names
        e = errs.get(sc)
        fwd_checked = validation(mode, {"fwd": e["fwd"]}) if e else {}
        all_checked = validation(mode, e) if e else {}
        rows += [Row("conv", f"{L.label} fwd{tag}", mode, ours_f, theirs_f, flops,
                     extra=dict(extra, schedule=sc, **fwd_checked)),
                 Row("conv", f"{L.label} fwd+bwd{tag}", mode, ours_fb, theirs_fb, 3 * flops,
                     extra=dict(extra, schedule=sc, variant_bwdd=bwdd, **all_checked))]
    return rows


def select_layers(layers: list[Layer], names: tuple[str, ...] | None) -> list[Layer]:
    """The layers named (all for None), in suite order; an unknown name is an error, not an
    empty table (a typo in a GPU session's --only would otherwise time nothing)."""
    if names is None:
        return list(layers)
    unknown = sorted(set(names) - {L.name for L in layers})
    if unknown:
        raise ValueError(f"unknown layer name(s) {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(L.name for L in layers)}")
    return [L for L in layers if L.name in names]


def only_arg(ap: argparse.ArgumentParser, value: str | None, layers: list[Layer]) -> tuple[str, ...] | None:
    """The --only layer names (None: all), checked against ``layers`` here, before any GPU work."""
    only = tuple(v.strip() for v in value.split(",")) if value else None
    try:
        select_layers(layers, only)
    except ValueError as exc:
        ap.error(f"--only: {exc}")
    return only


def run(quick: bool = False, only: tuple[str, ...] | None = None,
        schedules: tuple[str, ...] = ("reg",), wgmma: bool | None = None,
        precisions: tuple[str, ...] = MODES, wgmma_only: bool = False,
        emit: Callable[[list[Row]], None] | None = None) -> list[Row]:
    """Time every layer in each precision; a layer that fails gets a row carrying the error.
    ``wgmma``: add the tf32 [wgmma] rows (None: where the GPU has wgmma, compute capability 9.0);
    ``wgmma_only``: only those rows (a process of their own, so a fault in the never-timed
    kernels cannot take the default rows with it); ``emit``: called with each layer's rows as
    they finish."""
    from gpuconv import cuda, device  # noqa: PLC0415
    from gpuconv.ops import conv  # noqa: PLC0415

    layers = select_layers(LAYERS, only if only else QUICK if quick else None)
    cp = device.get_device("cuda").xp
    hopper = cuda.wgmma_capable() if wgmma is None else wgmma
    if wgmma_only and not hopper:
        raise ValueError("wgmma_only: the [wgmma] rows need a compute capability 9.0 GPU (H100/H200)")
    rows: list[Row] = []
    for L in layers:
        for mode in precisions:
            if wgmma_only and mode != "tf32":
                continue
            scs = (WGMMA,) if wgmma_only else (*schedules, WGMMA) if mode == "tf32" and hopper else schedules
            got = guarded_case("conv", L.label, mode, cp,
                               lambda L=L, mode=mode, scs=scs: _bench_layer(L, mode, cp, conv, scs))
            rows += got
            if emit is not None:
                emit(got)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--json", action="store_true", help="also print one JSON object per row")
    ap.add_argument("--only", default=None, help="comma-separated layer names, e.g. L1,AlexNet")
    ap.add_argument("--precision", default="fp32,tf32", help="comma-separated modes: fp32 (TF32 off), tf32")
    ap.add_argument("--schedules", default="reg",
                    help="GEMM main-loop schedules to time side by side: reg, async or reg,async")
    ap.add_argument("--wgmma", choices=("auto", "off", "only"), default="auto",
                    help="tf32 [wgmma] rows: auto = on a compute capability 9.0 GPU; off = never (kernels "
                         "without them); only = those rows alone")
    args = ap.parse_args(argv)
    schedules = comma_choices(ap, "--schedules", args.schedules, ("reg", "async"))
    precisions = comma_choices(ap, "--precision", args.precision, MODES)
    only = only_arg(ap, args.only, LAYERS)
    run(args.quick, only, schedules, wgmma=False if args.wgmma == "off" else None, precisions=precisions,
        wgmma_only=args.wgmma == "only", emit=streamer(args.json))


if __name__ == "__main__":
    main()
