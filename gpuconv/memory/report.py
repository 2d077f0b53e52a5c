"""The ``gpuconv plan`` and ``gpuconv profile`` commands: arguments and formatting, wired by gpuconv/cli.py.

``gpuconv plan MODEL --batch B [--optimizer adam] [--budget 12GiB|0.9] [--inference] [--json] [--max-batch]``
prints the plan's table (or JSON); with ``--budget`` it says whether it fits;
with ``--max-batch`` the largest batch that fits the budget (default: the
device's free memory).  Pure arithmetic: no CUDA context is created except to
measure the context's own cost once (cached).  Exit status 1 when the plan does
not fit the given budget (0 with ``--max-batch``: the answer is the largest batch
that does), 2 on a usage error.  The budget is the GPU's memory, or on the CPU
(``--device cpu``, or no GPU) this machine's.  ``--input HxWxC`` and ``--classes N``
plan a zoo model for other data (as ``gpuconv train`` builds it for its dataset).

``gpuconv profile MODEL --batch B [--out DIR]`` runs real training steps
inside the planned executor and prints planned vs measured bytes and times per
layer; ``--out`` writes profile.html (SVG chart), profile.json, profile.txt.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any, TextIO

from .budget import DEFAULT_SAFETY, BudgetError, fits, max_batch, validate_safety
from .plan import STATE_SLOTS, fmt_bytes, make_plan


def _model(name: str, input_shape: tuple[int, int, int] | None = None, classes: int | None = None) -> Any:
    from ..zoo import get_model  # noqa: PLC0415

    kw: dict[str, Any] = {}
    if not name.strip().upper().startswith("INPUT"):
        if input_shape is not None:
            kw["input_shape"] = input_shape
        if classes is not None:
            kw["classes"] = classes
    elif input_shape is not None or classes is not None:
        raise ValueError("--input and --classes are for zoo models: a pattern gives its own INPUT[...] and FC")
    return get_model(name, **kw)


def _shape_arg(text: str) -> tuple[int, int, int]:
    """'28x28x1' (H x W x C, as in INPUT[...]) -> (C, H, W)."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: write HxWxC, e.g. 28x28x1")
    h, w, c = (int(p) for p in parts)
    return (c, h, w)


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _safety(text: str) -> float:
    try:
        return validate_safety(text)
    except BudgetError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"--safety {text}: ").removeprefix(
            f"--safety {text!r}: ")) from None


def _where(args: argparse.Namespace) -> str:
    """'cpu' or 'cuda' by the one device rule (--device, $GPUCONV_DEVICE, auto)."""
    from .. import device as devmod  # noqa: PLC0415

    return devmod.resolve_device_name(getattr(args, "device", None))


def add_plan_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", help="zoo model name (small, lenet5, alexnet, vgg16, ...) or an INPUT[...] pattern")
    parser.add_argument("--batch", type=_positive, default=64, help="batch size to plan (default 64)")
    parser.add_argument("--optimizer", choices=list(STATE_SLOTS), default="sgd",
                        help="optimizer: decides the state kept per parameter (default sgd)")
    parser.add_argument("--input", type=_shape_arg, default=None, metavar="HxWxC",
                        help="a zoo model's input, e.g. 28x28x1 (default: the model's own)")
    parser.add_argument("--classes", type=_positive, default=None, help="a zoo model's classes (default: its own)")
    parser.add_argument("--budget", default=None,
                        help="memory budget: an amount such as 12GiB or 800MiB, or a number in (0, 1]: a fraction "
                             "of the memory, e.g. 0.9 (--max-batch without it uses the memory free now)")
    parser.add_argument("--safety", type=_safety, default=DEFAULT_SAFETY,
                        help=f"fraction of the budget kept free, in [0, 1) (default {DEFAULT_SAFETY})")
    parser.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                        help="whose memory the budget is: the GPU's, or this machine's for cpu "
                             "(default: $GPUCONV_DEVICE, else auto)")
    parser.add_argument("--inference", action="store_true", help="plan a forward pass only")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--max-batch", action="store_true", help="print the largest batch that fits the budget")
    return parser


def add_profile_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", help="zoo model name or an INPUT[...] pattern")
    parser.add_argument("--batch", type=_positive, default=32, help="batch size (default 32)")
    parser.add_argument("--optimizer", choices=list(STATE_SLOTS), default="sgd")
    parser.add_argument("--steps", type=_positive, default=5, help="measured training steps after one warm-up step")
    parser.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                        help="cpu, cuda or auto (default: $GPUCONV_DEVICE, else auto)")
    parser.add_argument("--out", default=None, help="directory for profile.html, profile.json, profile.txt")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def plan_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    from .. import device as devmod  # noqa: PLC0415

    try:
        where = _where(args) if (args.budget is not None or args.max_batch) else "cuda"
        net = _model(args.model, getattr(args, "input", None), getattr(args, "classes", None))
        plan = make_plan(net, args.batch, optimizer=args.optimizer, inference=args.inference)
    except (KeyError, ValueError, devmod.DeviceError) as e:
        print(f"gpuconv plan: {_text(e)}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {}
    status = 0
    try:
        if args.budget is not None:
            ok, detail = fits(plan, args.budget, safety=args.safety, device=where)
            result["fits"], result["fit_detail"] = ok, detail
            status = 0 if ok else 1
        if args.max_batch:
            result["max_batch"] = max_batch(net, args.budget, args.optimizer, args.safety, inference=args.inference,
                                            device=where)
            status = 0   # the question asked was "which batch fits": answered
    except BudgetError as e:
        print(f"gpuconv plan: {e}", file=sys.stderr)
        return 2
    if args.json:
        d = plan.to_dict()
        d.update(result)
        print(json.dumps(d, indent=2, default=str), file=out)
        return status
    print(plan.table(), file=out)
    print("\n" + plan.kernel_table(), file=out)
    if "fits" in result:
        d = result["fit_detail"]
        print(f"\nBudget: {'FITS' if result['fits'] else 'DOES NOT FIT'}: {d['summary']}", file=out)
        if d["note"]:
            print(f"  ({d['note']})", file=out)
    if "max_batch" in result:
        memory = "this machine's available memory" if where == "cpu" else "the GPU's free memory"
        within = f"the budget {args.budget}" if args.budget is not None else memory
        mb = result["max_batch"]
        print(f"\nLargest batch that fits {within} ({args.optimizer}, {'inference' if args.inference else 'training'}, "
              f"{args.safety:.0%} safety): {mb if mb else 'none (not even batch 1)'}", file=out)
    return status


def profile_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    from .. import device as devmod  # noqa: PLC0415
    from .arena import PlanDoesNotFit  # noqa: PLC0415
    from .profile import profile  # noqa: PLC0415

    try:
        dev = devmod.get_device(args.device)   # the device first: --device cuda without a GPU fails at once
        net = _model(args.model)
        report = profile(net, args.batch, dev, steps=args.steps, optimizer=args.optimizer)
    except PlanDoesNotFit as e:
        # the message's first part says what failed and which batch fits; the plan's table is `gpuconv plan`'s
        print(f"gpuconv profile: {_text(e).split(chr(10) + chr(10))[0]}\n(where the memory goes: gpuconv plan "
              f"{shlex.quote(args.model)} --batch {args.batch} --optimizer {args.optimizer})", file=sys.stderr)
        return 1
    except (KeyError, ValueError, devmod.DeviceError) as e:
        print(f"gpuconv profile: {_text(e)}", file=sys.stderr)
        return 2
    print(report.to_json() if args.json else report.table(), file=out)
    if args.out:
        paths = report.write(args.out)
        print(f"\nwrote {', '.join(str(p) for p in paths.values())}", file=out if not args.json else sys.stderr)
    return 0


def _text(e: BaseException) -> str:
    """An exception's message (a KeyError's without the quotes str() adds)."""
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


def budget_line(plan: Any, budget: str | None) -> str:
    """One line for other commands (e.g. train's start-up banner): plan total vs budget."""
    if budget is None:
        return f"memory plan: {fmt_bytes(plan.total_bytes)}"
    ok, d = fits(plan, budget)
    return f"memory plan: {'fits' if ok else 'DOES NOT FIT'}: {d['summary']}"
