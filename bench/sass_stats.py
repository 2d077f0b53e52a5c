"""Offline kernel anatomy: registers, spills, shared memory and the main loop's SASS mix.

No GPU needed: ``nvcc -cubin`` (ptxas) compiles a kernel module for one architecture and
``cuobjdump -sass`` disassembles it.  For each entry point this prints the resources
ptxas reports and, for the innermost loop that holds the arithmetic (the backward branch
around the most HMMA/FFMA instructions), how many instructions of each kind one trip
issues: a static count, per warp, with predicated-off paths counted.  That is the figure
to watch when a change aims at the gather's address arithmetic or the fragment loads; it
is not a timing (see bench_conv.py for those, on a GPU).

    python3 bench/sass_stats.py conv --filter "_128x128_" [--define GEMM_ASYNC] [--arch sm_90]

Needs nvcc and cuobjdump on PATH (or $NVCC / $CUOBJDUMP); the pip wheels
``nvidia-cuda-nvcc`` and ``nvidia-cuda-cuobjdump`` provide them.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpuconv import cuda  # noqa: E402

# SASS opcode (without modifiers) -> the kind we report.
KINDS = {
    "LDG": "ldg", "LDGSTS": "cp.async", "LDGDEPBAR": "cp.async", "DEPBAR": "cp.async",
    "STS": "sts", "LDS": "lds", "LDSM": "lds",
    "HMMA": "mma", "HGMMA": "mma", "FFMA": "fma",
    "BAR": "bar", "STG": "stg", "RED": "stg", "ATOM": "stg",
    "LDL": "local", "STL": "local",  # register spills (or local arrays)
}
ARITH = ("HMMA", "HGMMA", "FFMA")


@dataclass
class Kernel:
    name: str
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    smem: int = 0
    sass: list[tuple[int, str, str]] = field(default_factory=list)  # (address, opcode, full text)

    def main_loop(self) -> tuple[int, Counter[str]]:
        """(instructions, mix) of one trip of the innermost loop with the most arithmetic."""
        body = self.main_loop_body()
        return len(body), Counter(KINDS.get(o, "other") for _, o, _ in body)

    def main_loop_body(self) -> list[tuple[int, str, str]]:
        """The SASS of the innermost loop with the most arithmetic (empty if none)."""
        best: tuple[int, int, list[tuple[int, str, str]]] | None = None  # (arith, -size, body)
        index = {addr: i for i, (addr, _, _) in enumerate(self.sass)}
        for i, (addr, op, text) in enumerate(self.sass):
            if op != "BRA":
                continue
            m = re.search(r"BRA\b[^;]*?(0x[0-9a-f]+)\s*;", text)
            target = int(m.group(1), 16) if m else None
            if target is None or target >= addr or target not in index:
                continue
            body = self.sass[index[target]:i + 1]
            arith = sum(1 for _, o, _ in body if o in ARITH)
            if arith == 0:
                continue
            key = (arith, -len(body))
            if best is None or key > best[:2]:
                best = (arith, -len(body), body)
        return [] if best is None else best[2]


def _tool(env: str, name: str) -> str:
    path = os.environ.get(env) or shutil.which(name)
    if not path:
        sys.exit(f"sass_stats: {name} not found (set ${env}, or pip install nvidia-cuda-nvcc nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    return path


def compile_module(module: str, arch: str, defines: list[str], workdir: Path) -> tuple[Path, str]:
    src = workdir / f"{module}.cu"
    src.write_text(cuda.kernel_source(module))
    cubin = workdir / f"{module}.cubin"
    cmd = [_tool("NVCC", "nvcc"), "-cubin", f"-arch={arch}", "-std=c++17", "-ftz=true", "--resource-usage",
           *(f"-D{d}" for d in defines), "-o", str(cubin), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"nvcc failed:\n{res.stderr}")
    return cubin, res.stdout + res.stderr


def parse_resources(log: str) -> dict[str, Kernel]:
    """ptxas -v's report per entry (the parser gpuconv.cuda uses for NVRTC's)."""
    return {name: Kernel(name, r.registers, r.spill_stores, r.spill_loads, r.smem)
            for name, r in cuda.parse_ptxas_log(log).items()}


def parse_sass(text: str, kernels: dict[str, Kernel]) -> None:
    current: Kernel | None = None
    for line in text.splitlines():
        m = re.match(r"\s*Function : (\w+)", line)
        if m:
            current = kernels.setdefault(m.group(1), Kernel(m.group(1)))
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)[.\s;]", line)
        if m and current is not None:
            current.sass.append((int(m.group(1), 16), m.group(2), line.strip()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("module", help="kernel file stem, e.g. conv")
    ap.add_argument("--filter", default="", help="regular expression on entry-point names")
    ap.add_argument("--define", action="append", default=[], help="preprocessor define (repeatable)")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--loop", action="store_true",
                    help="also print each entry's main-loop SASS and the opcodes counted as 'other'")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cubin, log = compile_module(args.module, args.arch, args.define, Path(tmp))
        kernels = parse_resources(log)
        dump = subprocess.run([_tool("CUOBJDUMP", "cuobjdump"), "-sass", str(cubin)], capture_output=True,
                              text=True, check=True).stdout
        parse_sass(dump, kernels)
    cols = ["ldg", "cp.async", "sts", "lds", "mma", "fma", "bar", "local", "other"]
    print(f"{'entry':44s} {'regs':>4s} {'spill':>5s} {'smem':>6s} {'loop':>5s} " + " ".join(f"{c:>8s}" for c in cols))
    for name in sorted(kernels):
        if not re.search(args.filter, name):
            continue
        k = kernels[name]
        size, mix = k.main_loop()
        print(f"{name:44s} {k.registers:4d} {k.spill_stores + k.spill_loads:5d} {k.smem:6d} {size:5d} "
              + " ".join(f"{mix.get(c, 0):8d}" for c in cols))
        if args.loop:
            body = k.main_loop_body()
            other = Counter(o for _, o, _ in body if o not in KINDS)
            print("  other: " + ", ".join(f"{o} {n}" for o, n in other.most_common()))
            for _, _, text in body:
                print("    " + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
