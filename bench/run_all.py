"""Run every benchmark (ours vs PyTorch/cuDNN side by side) and write a markdown table.

    python bench/run_all.py [--quick] [--only conv,fc] [--out bench/latest.md]

The table carries device, date and commit so it can be pasted into RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import subprocess
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import HEADER, Row  # noqa: E402

SUITES = ["conv", "winograd", "pool", "fc", "train", "activation", "dropout", "batchnorm", "lrn", "local", "loss", "optim",
          "memory"]


def _describe_device() -> str:
    try:
        import cupy as cp  # noqa: PLC0415

        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"{name}, CUDA runtime {cp.cuda.runtime.runtimeGetVersion()}, cupy {cp.__version__}"
    except Exception:  # noqa: BLE001
        return "no GPU"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated suites")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    suites = args.only.split(",") if args.only else SUITES
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    head = (f"device: {_describe_device()}\ndate: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n"
            f"commit: {commit or 'unknown'}\ncommand: python bench/run_all.py{' --quick' if args.quick else ''}\n")
    print(head, flush=True)
    rows: list[Row] = []
    for suite in suites:
        try:
            mod = importlib.import_module(f"bench.bench_{suite}")
        except ModuleNotFoundError:
            continue
        try:
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
