"""The ``gpuconv`` command: train, summary, plan, profile, check, kernels."""
from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Sequence

from . import __version__


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .optim import STATE_SLOTS  # noqa: PLC0415

    p = sub.add_parser("train", help="train a model (default: the small net on Fashion-MNIST)")
    p.add_argument("--model", default="small", help="zoo name (small, fmnist, lenet5, cifar-vgg, ...) or a "
                   "pattern like 'INPUT[28x28x1] -> CONV3-8 -> RELU -> POOL2 -> FC-10'")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist, mnist, cifar10, synthetic")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", default="adam", choices=sorted(STATE_SLOTS))
    p.add_argument("--lr", type=float, default=None, help="learning rate (default depends on the optimizer)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--schedule", default="constant", choices=["constant", "step", "cosine"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "tf32"])
    p.add_argument("--conv-algo", default=None, choices=["gemm", "winograd", "auto"],
                   help="GPU conv algorithm (default: $GPUCONV_CONV_ALGO, else gemm); winograd: "
                        "F(2x2,3x3) for the float32 3x3 stride-1 layers, at either --precision; auto: "
                        "for those layers, the faster of the two, timed on first use and cached")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (else $GPUCONV_DATA, then "
                   "/usr/share/datasets/<name>)")
    p.add_argument("--data", default=None, metavar="FOLDER", help="train on your own images instead of --dataset: "
                   "a folder with one sub-folder of PNG/JPEG images per class (decoded once, cached in "
                   "$GPUCONV_CACHE_DIR/images)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="with --data: the share of each class held out "
                   "for validation (fixed by --seed; default 0.1)")
    p.add_argument("--out", default="runs/latest", help="folder for checkpoint.npz and metrics.jsonl")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--augment", action="store_true", help="random crop (pad 2) and horizontal flip")
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--limit-test", type=int, default=None)
    p.add_argument("--log-every", type=int, default=50, help="steps between progress updates (host syncs)")
    p.add_argument("--budget", default=None, help="device memory budget, e.g. 12GiB or 0.9 (fraction of the "
                   "card); the run is refused before it starts if its memory plan does not fit")
    p.add_argument("--unplanned", action="store_true", help="allocate as you go instead of one planned arena")
    p.add_argument("--cuda-graph", action="store_true", help="GPU: capture the planned training step once as a "
                   "CUDA graph and replay it (one launch per step instead of one per kernel)")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError  # noqa: PLC0415
    from .data import DataError  # noqa: PLC0415
    from .train import PlanExceedsBudget, TrainConfig, TrainingDiverged, train  # noqa: PLC0415

    cfg = TrainConfig(model=args.model, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                      optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                      schedule=args.schedule, device=args.device, seed=args.seed, data_dir=args.data_dir,
                      out_dir=args.out, resume=args.resume, augment=args.augment, log_every=args.log_every,
                      limit_train=args.limit_train, limit_test=args.limit_test, precision=args.precision,
                      conv_algo=args.conv_algo, budget=args.budget, planned=not args.unplanned,
                      cuda_graph=args.cuda_graph, data=args.data, val_fraction=args.val_fraction)
    try:
        result = train(cfg)
    except (DataError, CheckpointError, ValueError, KeyError, PlanExceedsBudget) as exc:
        print(f"gpuconv train: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"gpuconv train: {exc}", file=sys.stderr)
        return 3
    print(f"test accuracy: {result.test_accuracy * 100:.2f}% after {result.epochs_done} epochs "
          f"({result.seconds:.1f} s)")
    return 0


def _add_summary(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="print a model's per-layer table (volumes, activations, weights)")
    p.add_argument("model", help="zoo name or pattern string")
    p.set_defaults(func=_summary)


def _summary(args: argparse.Namespace) -> int:
    from .geometry import GeometryError  # noqa: PLC0415
    from .spec import SpecError  # noqa: PLC0415
    from .zoo import get_model  # noqa: PLC0415

    try:
        net = get_model(args.model)
    except (GeometryError, SpecError, KeyError) as exc:
        print(f"gpuconv summary: {exc}", file=sys.stderr)
        return 2
    print(net.summary())
    return 0


def _add_memory(sub: argparse._SubParsersAction) -> None:
    try:
        from .memory import report  # noqa: PLC0415
    except ImportError:
        return
    p = sub.add_parser("plan", help="memory plan: where every byte goes, fits or not, --max-batch")
    report.add_plan_arguments(p)
    p.set_defaults(func=report.plan_command)
    p = sub.add_parser("profile", help="run training steps and measure memory and time per layer")
    report.add_profile_arguments(p)
    p.set_defaults(func=report.profile_command)


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="GPU vs NumPy per layer, and float64 gradient checks")
    p.add_argument("model", nargs="?", default="small")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from .check import check_command  # noqa: PLC0415

    return check_command(args)


def _add_kernels(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kernels", help="compile every CUDA kernel (NVRTC only, no GPU needed) and time it")
    p.add_argument("--arch", action="append", default=None,
                   help="compute_90 (PTX) or sm_90 / sm_90a (down to SASS: ptxas runs too) (repeatable; "
                        "default compute_80 and compute_90, or sm_90 with --resources)")
    p.add_argument("--resources", action="store_true",
                   help="per entry point: registers, stack, spill stores/loads (bytes per thread), static "
                        "shared memory (bytes per block), as ptxas reports them")
    p.add_argument("--filter", default="", metavar="REGEX", help="with --resources: only entries matching")
    p.add_argument("--load", action="store_true", help="instead, load every module on this GPU through "
                   "cupy.RawModule (uses and fills CuPy's on-disk cache) and time it")
    p.set_defaults(func=_kernels)


def _kernels(args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415

    from . import cuda  # noqa: PLC0415

    if args.load:
        t_all = time.perf_counter()
        for name in cuda.kernel_names():
            t = time.perf_counter()
            cuda.get_module(name)
            print(f"{name:12s} loaded in {time.perf_counter() - t:.3f} s")
        print(f"all kernels loaded in {time.perf_counter() - t_all:.3f} s")
        return 0
    archs = args.arch or (["sm_90"] if args.resources else list(cuda.TARGET_ARCHS))
    if args.resources and not all(a.startswith("sm_") for a in archs):
        print("gpuconv kernels: --resources needs a real target (--arch sm_80, sm_90, sm_90a): "
              "ptxas reports resources, and it runs only for those", file=sys.stderr)
        return 2
    try:
        entry_filter = re.compile(args.filter)
    except re.error as exc:
        print(f"gpuconv kernels: --filter {args.filter!r}: {exc}", file=sys.stderr)
        return 2
    portable = [(name, ()) for name in cuda.kernel_names()]
    portable += [(name, d) for name, variants in cuda.MODULE_VARIANTS.items() for d in variants]  # conv+GEMM_ASYNC
    failed = 0
    for arch in archs:
        # an arch-only variant (conv/fc + GEMM_WGMMA for sm_90a) is built for its own target only
        builds = portable + [(name, (d,)) for name, vs in cuda.ARCH_VARIANTS.items() for d, a in vs.items() if a == arch]
        for name, defines in builds:
            label = name + "".join(f"+{d}" for d in defines)
            t = time.perf_counter()
            try:
                if arch.startswith("sm_"):
                    b = cuda.compile_build(name, arch, defines)
                    spilling = sum(r.spill_stores > 0 for r in b.resources.values())
                    print(f"{label:16s} {arch}: ok, {len(b.resources)} entries, {len(b.cubin):,} bytes cubin, "
                          f"max {max((r.registers for r in b.resources.values()), default=0)} registers, "
                          f"{spilling} spilling, {time.perf_counter() - t:.2f} s")
                    if args.resources:
                        _print_resources(b, entry_filter)
                else:
                    ptx = cuda.compile_ptx(name, arch, defines)
                    print(f"{label:16s} {arch}: ok, {len(ptx):,} bytes PTX, {time.perf_counter() - t:.2f} s")
            except Exception as exc:  # noqa: BLE001  (report every failure, then exit non-zero)
                failed += 1
                print(f"{label:16s} {arch}: FAILED\n{exc}")
    return 1 if failed else 0


def _print_resources(build: Any, entry_filter: re.Pattern[str]) -> None:
    """One line per entry of a compile_build: what ptxas reported."""
    for entry, r in sorted(build.resources.items()):
        if entry_filter.search(entry):
            print(f"    {entry:40s} {r.registers:4d} regs  stack {r.stack:4d}  spill st/ld {r.spill_stores:4d}/"
                  f"{r.spill_loads:<4d}  smem {r.smem:6d}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuconv", description="A GPU-native ConvNet framework.")
    parser.add_argument("--version", action="version", version=f"gpuconv {__version__}")
    sub = parser.add_subparsers(dest="command")
    _add_train(sub)
    _add_summary(sub)
    _add_memory(sub)
    _add_check(sub)
    _add_kernels(sub)
    from .predict import add_commands  # noqa: PLC0415  (predict, evaluate)
    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # the main job: `gpuconv` alone trains the default model
        args = parser.parse_args(["train", *(argv or [])])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
