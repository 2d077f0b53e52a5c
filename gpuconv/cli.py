"""The ``gpuconv`` command: train, summary, plan, profile, check, kernels, predict, evaluate.

Errors: a user error is one short message on stderr, without a traceback; the exit status
is 2 when the invocation cannot work as given (a bad flag, a missing file or folder,
settings that conflict) and 1 when it ran and failed (the loss diverged, the memory plan
does not fit, a corrupt checkpoint, a kernel that does not compile).  Ctrl-C saves a
training run, prints the command that continues it and exits 130.  ``--debug`` (anywhere
on the line) shows the traceback instead.

The device, in every command: ``--device``, then ``$GPUCONV_DEVICE``, then ``auto``;
resolved here, at the entry point, before anything slow, and passed down.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


class UsageError(ValueError):
    """The command line cannot work as given (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with errors as one line (``gpuconv train: ...``) instead of the usage block."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def device_choice(flag: str | None) -> str:
    """The device asked for: the --device flag, then $GPUCONV_DEVICE, then 'auto' (validated, not resolved)."""
    from .device import DEVICE_ENV, VALID_DEVICES, DeviceError  # noqa: PLC0415

    choice = (flag or os.environ.get(DEVICE_ENV) or "auto").strip().lower()
    if choice not in VALID_DEVICES:
        source = "--device" if flag else DEVICE_ENV
        raise DeviceError(f"unknown device {choice!r} ({source}): choose one of {', '.join(VALID_DEVICES)}")
    return choice


def resolve_device(flag: str | None) -> str:
    """'cpu' or 'cuda' for the device rule (flag, env, auto); DeviceError in one line when it cannot be had."""
    from .device import resolve_device_name  # noqa: PLC0415

    return resolve_device_name(device_choice(flag))


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="auto, cpu or cuda (default: $GPUCONV_DEVICE, else auto: the GPU when one is usable)")


# --------------------------------------------------------------------------- train

#: train's flags that are settings of the run (TrainConfig fields): default None here, so a flag
#: given on the command line can be told from a default (a resumed run keeps its saved settings).
def _add_train(sub: argparse._SubParsersAction) -> None:
    from .optim import STATE_SLOTS  # noqa: PLC0415

    p = sub.add_parser("train", help="train a model (default: the small net on Fashion-MNIST)")
    p.add_argument("--model", default=None, help="zoo name (small, fmnist, lenet5, cifar-vgg, ...) or a "
                   "pattern like 'INPUT[28x28x1] -> CONV3-8 -> RELU -> POOL2 -> FC-10' (default small)")
    p.add_argument("--dataset", default=None, help="fashion-mnist (default), mnist, cifar10, synthetic")
    p.add_argument("--epochs", type=int, default=None, help="epochs in all (default 3); with --resume, a larger "
                   "number extends the run")
    p.add_argument("--batch-size", type=int, default=None, help="default 128")
    p.add_argument("--optimizer", default=None, choices=sorted(STATE_SLOTS), help="default adam")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default depends on the optimizer)")
    p.add_argument("--weight-decay", type=float, default=None, help="L2 weight decay (default 0)")
    p.add_argument("--schedule", default=None, choices=["constant", "step", "cosine"], help="default constant")
    _add_device(p)
    p.add_argument("--precision", default=None, choices=["fp32", "tf32"], help="default fp32")
    p.add_argument("--conv-algo", default=None, choices=["gemm", "winograd", "auto"],
                   help="GPU conv algorithm (default: $GPUCONV_CONV_ALGO, else gemm); winograd: "
                        "F(2x2,3x3) for the float32 3x3 stride-1 layers, at either --precision; auto: "
                        "for those layers, the faster of the two, timed on first use and cached")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--data-dir", default=None, help="folder with the dataset files (else $GPUCONV_DATA, then "
                   "/usr/share/datasets/<name>)")
    p.add_argument("--data", default=None, metavar="FOLDER", help="train on your own images instead of --dataset: "
                   "a folder with one sub-folder of PNG/JPEG images per class (decoded once, cached in "
                   "$GPUCONV_CACHE_DIR/images)")
    p.add_argument("--val-fraction", type=float, default=None, help="with --data: the share of each class held out "
                   "for validation (fixed by --seed; default 0.1)")
    p.add_argument("--out", default=None, metavar="DIR", help="the run folder (run.json, checkpoint.npz, "
                   "metrics.jsonl); default: a new runs/<model>-<n>. A folder that holds a run is refused "
                   "unless --resume or --overwrite")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="DIR",
                   help="continue the run in DIR (or in --out) with its saved settings; --epochs N extends it, "
                        "--log-every, --data-dir, --budget and --device may change, any other flag must match")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="start over in a --out folder that holds a run (its checkpoint and metrics are deleted)")
    p.add_argument("--augment", action="store_true", default=None, help="random crop (pad 2) and horizontal flip")
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images")
    p.add_argument("--limit-test", type=int, default=None, help="use only the first N test images")
    p.add_argument("--log-every", type=int, default=None, help="steps between progress updates (host syncs; "
                   "default 50)")
    p.add_argument("--budget", default=None, help="memory budget: an amount such as 12GiB, or a number in (0, 1]: "
                   "a fraction of the memory (the GPU's; on the CPU, this machine's); the run is refused before "
                   "it starts if its memory plan does not fit (default: the memory free now)")
    p.add_argument("--unplanned", dest="planned", action="store_false", default=None,
                   help="allocate as you go instead of one planned arena")
    p.add_argument("--ranks", type=int, default=None, metavar="K",
                   help="data-parallel training on K ranks of this machine (mpiexec -n K: one GPU per rank, or K "
                        "processes on the CPU); --batch-size is the global batch, split evenly. Across machines: "
                        "mpirun -n K gpuconv train ...")
    p.add_argument("--cuda-graph", action="store_true", default=None, help="GPU: capture the planned training "
                   "step once as a CUDA graph and replay it (one launch per step instead of one per kernel)")
    p.set_defaults(func=_train)


def _train_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The run settings given on the command line (flags left out are absent, not defaults)."""
    from .train import TrainConfig  # noqa: PLC0415

    keys = {f.name for f in dataclasses.fields(TrainConfig)} - {"out_dir", "resume", "overwrite", "save"}
    return {k: getattr(args, k) for k in sorted(keys) if getattr(args, k, None) is not None}


def train_config(args: argparse.Namespace) -> Any:
    """The TrainConfig of ``gpuconv train``: the saved settings of a resumed run, else the defaults,
    overridden by the flags given (for a resumed run, differing flags are refused, all listed at once)."""
    from . import run as runmod  # noqa: PLC0415
    from .train import TrainConfig  # noqa: PLC0415

    given = _train_settings(args)
    if "data" in given and "dataset" in given:
        raise UsageError(f"--data {given['data']} trains on an image folder and --dataset {given['dataset']} on a "
                         f"built-in set: give one of them")
    out = args.out
    if isinstance(args.resume, str):
        if out is not None and Path(out) != Path(args.resume):
            raise UsageError(f"--resume {args.resume} and --out {out} name different folders: give one")
        out = args.resume
    resume = args.resume is not None
    if resume and args.overwrite:
        raise UsageError("--resume continues the run in its folder and --overwrite deletes it: give one of them")
    if args.overwrite and out is None:
        raise UsageError("--overwrite needs the folder to start over in: --out DIR")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if resume:
        if out is None:
            raise UsageError("--resume needs the run's folder: gpuconv train --resume DIR")
        saved = runmod.load_run_config(out)
        diffs = runmod.differences(saved, given)
        if diffs:
            raise runmod.RunError(runmod.conflict_message(out, diffs))
        settings = {k: v for k, v in saved.items() if k in fields}
        settings.update(given)
    else:
        settings = dict(given)
    if "device" not in given and not (resume and "device" in settings):
        settings["device"] = device_choice(None)   # $GPUCONV_DEVICE, else auto
    # The kernel settings the run records (and a resume restores): the flags, else what main()
    # resolved from GPUCONV_PRECISION / GPUCONV_CONV_ALGO, else the defaults.
    from .kernel_config import current  # noqa: PLC0415
    for key in ("precision", "conv_algo"):
        settings.setdefault(key, getattr(current(), key))
    return TrainConfig(**settings, out_dir=out, resume=resume, overwrite=bool(args.overwrite))


def _train(args: argparse.Namespace) -> int:
    from .distributed import StopRank, get_world, launch, launched_by_mpi  # noqa: PLC0415
    from .run import CHECKPOINT  # noqa: PLC0415
    from .train import check_data, check_ranks, check_run_folder, train  # noqa: PLC0415

    if args.ranks is not None and args.ranks < 1:
        raise UsageError(f"--ranks must be >= 1, got {args.ranks}")
    under_mpi = launched_by_mpi()
    ranks = get_world().size if under_mpi else (args.ranks or 1)
    failure: Exception | None = None
    try:
        if args.ranks is not None and under_mpi:
            raise UsageError("--ranks starts the ranks itself: drop it when running under mpirun/mpiexec")
        cfg = train_config(args)
        resolve_device(cfg.device)   # `--device cuda` without a GPU: one line, before any data is read
        if ranks > 1:
            # The checks that write nothing, before any rank trains: one message, exit status 2.
            cfg.validate()
            check_ranks(cfg, ranks)
            check_run_folder(cfg)
            check_data(cfg)
    except Exception as exc:  # noqa: BLE001
        if ranks == 1 or not under_mpi:
            raise
        failure = exc
    if under_mpi and ranks > 1:
        # Every rank runs the checks; if any fails, rank 0 alone says why and every rank exits.
        try:
            get_world().settle(failure, lambda e: _exit_status(e) or EXIT_FAILED)
        except StopRank as stop:
            return stop.status
    elif ranks > 1:
        code = launch(ranks, args.raw_argv)
        saved = cfg.out_dir is not None and (Path(cfg.out_dir) / CHECKPOINT).is_file()
        if code not in (0, EXIT_INTERRUPTED) and saved:
            # a rank failed or was stopped: rank 0's last checkpoint is whole (written atomically)
            print(f"continue with: gpuconv train --resume {shlex.quote(str(cfg.out_dir))}", file=sys.stderr)
        return code
    world = get_world()
    try:
        with world.guard(debug=args.debug):   # a failing rank names itself and aborts the others
            result = train(cfg)
    except StopRank as stop:   # another rank's error, reported by rank 0
        return stop.status
    except KeyboardInterrupt:
        if not world.is_root:   # every rank stopped together; rank 0 saved the run and says so
            return EXIT_INTERRUPTED
        if cfg.out_dir is not None and (Path(cfg.out_dir) / CHECKPOINT).is_file():
            print(f"continue with: gpuconv train --resume {shlex.quote(str(cfg.out_dir))}", file=sys.stderr)
        else:
            print("nothing was saved (interrupted before the first checkpoint)", file=sys.stderr)
        raise
    except Exception as exc:  # noqa: BLE001
        if world.together and not world.is_root:   # every rank met the same error: rank 0 reports it
            return _exit_status(exc) or EXIT_FAILED
        raise
    if not world.is_root:   # one report per run
        return 0
    out = shlex.quote(result.out_dir)
    if result.finished_before:
        print(f"{result.out_dir}: this run is finished ({result.epochs_done} of {result.epochs_done} epochs, "
              f"test accuracy {result.test_accuracy * 100:.2f}%); nothing to do. To train it further: "
              f"gpuconv train --resume {out} --epochs {result.epochs_done + 1}")
        return 0
    print(f"test accuracy: {result.test_accuracy * 100:.2f}% after {result.epochs_done} epochs "
          f"({result.seconds:.1f} s); run folder {result.out_dir}")
    return 0


# --------------------------------------------------------------------------- summary, plan, profile, check


def _add_summary(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="print a model's per-layer table (volumes, activations, weights)")
    p.add_argument("model", help="zoo name or pattern string")
    p.set_defaults(func=_summary)


def _summary(args: argparse.Namespace) -> int:
    from .zoo import get_model  # noqa: PLC0415

    print(get_model(args.model).summary())
    return 0


def _add_memory(sub: argparse._SubParsersAction) -> None:
    from .memory import report  # noqa: PLC0415

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
    _add_device(p)
    p.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from .check import check_command  # noqa: PLC0415

    return check_command(args)


# --------------------------------------------------------------------------- kernels


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
    _add_device(p)
    p.set_defaults(func=_kernels)


_ARCH = re.compile(r"(compute|sm)_\d+a?")


def _kernels(args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415

    archs = args.arch or (["sm_90"] if args.resources else None)
    for a in archs or []:
        if not _ARCH.fullmatch(a):
            raise UsageError(f"--arch {a!r}: write compute_NN (PTX) or sm_NN / sm_NNa (SASS), e.g. sm_90")
    if args.resources and not all(a.startswith("sm_") for a in archs or []):
        raise UsageError("--resources needs a real target (--arch sm_80, sm_90, sm_90a): ptxas reports "
                         "resources, and it runs only for those")
    try:
        entry_filter = re.compile(args.filter)
    except re.error as exc:
        raise UsageError(f"--filter {args.filter!r}: {exc}") from None
    if args.load:
        if resolve_device(args.device) != "cuda":
            raise UsageError("--load loads the kernels on a GPU, and the device here is the CPU "
                             "(--device / $GPUCONV_DEVICE): without --load, kernels compiles them without one")
    from . import cuda  # noqa: PLC0415

    if args.load:
        t_all = time.perf_counter()
        for name in cuda.kernel_names():
            t = time.perf_counter()
            cuda.get_module(name)
            print(f"{name:12s} loaded in {time.perf_counter() - t:.3f} s")
        print(f"all kernels loaded in {time.perf_counter() - t_all:.3f} s")
        return 0
    archs = archs or list(cuda.TARGET_ARCHS)
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
    return EXIT_FAILED if failed else 0


def _print_resources(build: Any, entry_filter: re.Pattern[str]) -> None:
    """One line per entry of a compile_build: what ptxas reported."""
    for entry, r in sorted(build.resources.items()):
        if entry_filter.search(entry):
            print(f"    {entry:40s} {r.registers:4d} regs  stack {r.stack:4d}  spill st/ld {r.spill_stores:4d}/"
                  f"{r.spill_loads:<4d}  smem {r.smem:6d}")


# --------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpuconv", description="A GPU-native ConvNet framework.")
    parser.add_argument("--version", action="version", version=f"gpuconv {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors "
                        "(accepted anywhere on the line)")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    _add_train(sub)
    _add_summary(sub)
    _add_memory(sub)
    _add_check(sub)
    _add_kernels(sub)
    from .predict import add_commands  # noqa: PLC0415  (predict, evaluate)
    add_commands(sub)
    return parser


def _exit_status(exc: BaseException) -> int | None:
    """EXIT_USAGE or EXIT_FAILED for an error that is the user's to fix; None for a bug (traceback)."""
    from .checkpoint import CheckpointError  # noqa: PLC0415
    from .data import DataError  # noqa: PLC0415
    from .device import DeviceError  # noqa: PLC0415
    from .memory.budget import BudgetError  # noqa: PLC0415

    failed: tuple[type[BaseException], ...] = (CheckpointError, MemoryError, OSError)
    try:
        from .train import PlanExceedsBudget, TrainingDiverged  # noqa: PLC0415
        failed += (PlanExceedsBudget, TrainingDiverged)
    except ImportError:
        pass
    if isinstance(exc, failed):   # it ran and failed (PlanDoesNotFit is a MemoryError)
        return EXIT_FAILED
    from .distributed import DistributedError, RankFailed  # noqa: PLC0415
    if isinstance(exc, RankFailed):   # another rank's error, with its status
        return exc.status
    if isinstance(exc, (UsageError, DeviceError, BudgetError, DataError, ValueError, KeyError, DistributedError)):
        return EXIT_USAGE
    return None


def _message(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    text = str(text)
    if type(exc).__name__ == "PlanDoesNotFit":
        text = text.split("\n\n")[0]   # the plan's table follows; `gpuconv plan` prints it
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    raw_argv = list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["train", *argv]   # the main job: `gpuconv [train flags]` trains (the default model)
    args = parser.parse_args(argv)
    args.raw_argv, args.debug = raw_argv, debug   # --ranks K starts K ranks with the same command line
    prog = f"gpuconv {args.command or 'train'}"
    try:
        # Which kernels run is decided here, once: flags, then GPUCONV_* variables, then defaults.
        from .kernel_config import KernelConfig, using  # noqa: PLC0415
        kernels = KernelConfig.resolve(precision=getattr(args, "precision", None),
                                       conv_algo=getattr(args, "conv_algo", None))
        with using(kernels):
            return int(args.func(args))
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001  (every error ends as one message; --debug shows the traceback)
        if debug:
            raise
        status = _exit_status(exc)
        if status is None:
            print(f"{prog}: internal error: {type(exc).__name__}: {_message(exc)} "
                  f"(run with --debug for the traceback)", file=sys.stderr)
            return EXIT_FAILED
        print(f"{prog}: {_message(exc)}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
