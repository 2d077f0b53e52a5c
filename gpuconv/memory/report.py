"""The ``gpuconv plan`` and ``gpuconv profile`` commands: arguments and formatting, wired by gpuconv/cli.py.

``gpuconv plan MODEL --batch B [--optimizer adam] [--budget 12GiB|0.9] [--inference] [--json] [--max-batch]``
prints the plan's table (or JSON); with ``--budget`` it says whether it fits;
with ``--max-batch`` the largest batch that fits the budget (default: the
device's free memory).  Pure arithmetic: no CUDA context is created except to
measure the context's own cost once (cached).  Exit status 1 when the plan does
not fit the given budget, 2 on a usage error.

``gpuconv profile MODEL --batch B [--out DIR]`` runs real training steps
inside the planned executor and prints planned vs measured bytes and times per
layer; ``--out`` writes profile.html (SVG chart), profile.json, profile.txt.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from .budget import DEFAULT_SAFETY, BudgetError, fits, max_batch
from .plan import STATE_SLOTS, fmt_bytes, make_plan


def _model(name: str) -> Any:
    from ..zoo import get_model  # noqa: PLC0415

    return get_model(name)


def add_plan_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", help="zoo model name (small, lenet5, alexnet, vgg16, ...) or an INPUT[...] pattern")
    parser.add_argument("--batch", type=int, default=64, help="batch size to plan (default 64)")
    parser.add_argument("--optimizer", choices=list(STATE_SLOTS), default="sgd",
                        help="optimizer: decides the state kept per parameter (default sgd)")
    parser.add_argument("--budget", default=None,
                        help="memory budget: 12GiB, 800MiB, or a fraction of the device like 0.9 "
                             "(--max-batch without it uses the device's free memory)")
    parser.add_argument("--safety", type=float, default=DEFAULT_SAFETY,
                        help=f"fraction of the budget kept free (default {DEFAULT_SAFETY})")
    parser.add_argument("--inference", action="store_true", help="plan a forward pass only")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--max-batch", action="store_true", help="print the largest batch that fits the budget")
    return parser


def add_profile_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", help="zoo model name or an INPUT[...] pattern")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--optimizer", choices=list(STATE_SLOTS), default="sgd")
    parser.add_argument("--steps", type=int, default=5, help="measured training steps after one warm-up step")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default: $GPUCONV_DEVICE or auto)")
    parser.add_argument("--out", default=None, help="directory for profile.html, profile.json, profile.txt")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def plan_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        net = _model(args.model)
        plan = make_plan(net, args.batch, optimizer=args.optimizer, inference=args.inference)
    except (KeyError, ValueError) as e:
        print(f"gpuconv plan: {e}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {}
    status = 0
    try:
        if args.budget is not None:
            ok, detail = fits(plan, args.budget, safety=args.safety)
            result["fits"], result["fit_detail"] = ok, detail
            status = 0 if ok else 1
        if args.max_batch:
            result["max_batch"] = max_batch(net, args.budget, args.optimizer, args.safety, inference=args.inference)
    except BudgetError as e:
        print(f"gpuconv plan: {e}", file=sys.stderr)
        return 2
    if args.json:
        d = plan.to_dict()
        d.update(result)
        print(json.dumps(d, indent=2, default=str), file=out)
        return status
    print(plan.table(), file=out)
    if "fits" in result:
        d = result["fit_detail"]
        print(f"\nBudget: {'FITS' if result['fits'] else 'DOES NOT FIT'}: {d['summary']}", file=out)
        if d["note"]:
            print(f"  ({d['note']})", file=out)
    if "max_batch" in result:
        where = f"the budget {args.budget}" if args.budget is not None else "the device's free memory"
        mb = result["max_batch"]
        print(f"\nLargest batch that fits {where} ({args.optimizer}, {'inference' if args.inference else 'training'}, "
              f"{args.safety:.0%} safety): {mb if mb else 'none (not even batch 1)'}", file=out)
    return status


def profile_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    from .. import device as devmod  # noqa: PLC0415
    from .arena import PlanDoesNotFit  # noqa: PLC0415
    from .profile import profile  # noqa: PLC0415

    try:
        net = _model(args.model)
        report = profile(net, args.batch, devmod.get_device(args.device), steps=args.steps, optimizer=args.optimizer)
    except PlanDoesNotFit as e:
        print(f"gpuconv profile: {e}", file=sys.stderr)
        return 1
    except (KeyError, ValueError, devmod.DeviceError) as e:
        print(f"gpuconv profile: {e}", file=sys.stderr)
        return 2
    print(report.to_json() if args.json else report.table(), file=out)
    if args.out:
        paths = report.write(args.out)
        print(f"\nwrote {', '.join(str(p) for p in paths.values())}", file=out if not args.json else sys.stderr)
    return 0


def budget_line(plan: Any, budget: str | None) -> str:
    """One line for other commands (e.g. train's start-up banner): plan total vs budget."""
    if budget is None:
        return f"memory plan: {fmt_bytes(plan.total_bytes)}"
    ok, d = fits(plan, budget)
    return f"memory plan: {'fits' if ok else 'DOES NOT FIT'}: {d['summary']}"
