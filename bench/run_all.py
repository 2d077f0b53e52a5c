"""Run every benchmark (ours vs PyTorch/cuDNN side by side) and write a markdown table.

    python bench/run_all.py [--quick] [--only conv,fc] [--out bench/latest.md]

The table carries device, date and commit so it can be pasted into RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import os
import subprocess
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import HEADER, Row, comma_choices  # noqa: E402

# Each is bench/bench_<suite>.py with run(quick) -> rows.  bench_memory.py (planned vs measured
# memory, one process per configuration) and bench_step.py (host cost of a step) print tables of
# their own columns and run by themselves.
SUITES = ["conv", "winograd", "pool", "fc", "train", "activation", "dropout", "batchnorm", "lrn", "local", "loss", "optim",
          "add", "gap", "concat", "augment"]


def _describe_device() -> str:
    try:
        import cupy as cp  # noqa: PLC0415

        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"{name}, CUDA runtime {cp.cuda.runtime.runtimeGetVersion()}, cupy {cp.__version__}"
    except Exception:  # noqa: BLE001
        return "no GPU"


def _commit() -> str:
    """The checkout's short commit; $GPUCONV_COMMIT where there is no .git (the lent GPU machine
    gets the working tree without it)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent).stdout.strip()
    except OSError:
        out = ""
    return out or os.environ.get("GPUCONV_COMMIT", "")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated suites")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    suites = comma_choices(ap, "--only", args.only, tuple(SUITES)) if args.only else SUITES
    commit = _commit()
    head = (f"device: {_describe_device()}\ndate: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n"
            f"commit: {commit or 'unknown'}\ncommand: python bench/run_all.py{' --quick' if args.quick else ''}\n")
    print(head, flush=True)
    rows: list[Row] = []
    for suite in suites:
        try:
            mod = importlib.import_module(f"bench.bench_{suite}")
            got = mod.run(quick=args.quick)
            rows.extend(got)
            print(HEADER)
            for r in got:
                print(r.markdown(), flush=True)
        except Exception:  # noqa: BLE001  (one broken suite must not hide the others)
            print(f"suite {suite} failed:\n{traceback.format_exc()}", flush=True)
    text = head + "\n" + HEADER + "\n" + "\n".join(r.markdown() for r in rows) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
