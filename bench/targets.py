"""The project's benchmark targets, computed from benchmark rows: met or not.

    python bench/targets.py LOG [LOG ...] [--out targets.md]

LOG: any text holding rows as the bench scripts print them: markdown table rows
(``| conv | L5 ... fwd+bwd | fp32 | ... |``), JSON rows (``--json``), or bench/RESULTS.md
itself.  A row seen again (same suite, case and mode) replaces the earlier one: later
lines after earlier ones, later files after earlier files, so the newest figure wins.

Each target is computed twice: over the **default** kernels' rows (what `main` runs
without settings) and over the **best variant** per case (the fastest validated row
among the default, ``[async]``, ``[wgmma]``, Winograd and ``[algo=...]`` rows of the same
case: what making that variant the default, or the autotuner choosing it, would give).
A row whose result was off the reference (``extra['invalid']``) or that failed
(``extra['error']``, no time) counts for neither; rows without validation fields
(markdown only, e.g. the older RESULTS tables) count and are reported as unvalidated.
``entries`` says which log entry of bench/RESULTS.md (the heading above a row, with the commits
its ``- commit:`` line names) holds the row each figure comes from.

The targets (ratios torch/ours time, same process, same precision):
conv fp32 and TF32: median over the suite's layers of forward+backward >= 0.7 / 0.5;
max pooling 2/2 on 128x64x112x112 >= 1.3x; every FC row >= 0.8 in each precision;
VGG16 training step at batch 64 >= 0.7 in each precision.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_conv import LAYERS  # noqa: E402
from bench.harness import Row  # noqa: E402

SUITES = ("conv", "winograd", "pool", "fc", "train")
MODES = ("fp32", "tf32", "bf16")
CONV_THRESHOLD = {"fp32": 0.7, "tf32": 0.5}
POOL_CASE = "max 2/2 128x64x112x112 fwd"
POOL_THRESHOLD = 1.3
FC_THRESHOLD = 0.8
VGG16_CASE = "vgg16 train step batch 64"
VGG16_THRESHOLD = 0.7
# "... [wgmma]", "... CUDA graph [algo=auto]": a case's variant is what follows its base name
_VARIANT = re.compile(r"^(?P<base>.*?)(?P<graph> CUDA graph)?(?: \[(?P<tag>[^\]]+)\])?$")


def _number(text: str) -> float | None:
    m = re.match(r"\s*\**([-+0-9.eE]+)", text)
    try:
        return float(m.group(1)) if m else None
    except ValueError:
        return None


def parse_rows(text: str) -> list[Row]:
    """The benchmark rows in ``text``, in order: markdown rows of the harness's 8 columns whose
    suite is one of SUITES, and JSON objects of ``Row.to_json``."""
    rows: list[Row] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and '"suite"' in line:
            try:
                d = json.loads(line)
                rows.append(Row(d["suite"], d["name"], d["mode"], d.get("ours_ms"), d.get("theirs_ms"),
                                d.get("work"), d.get("unit", "TFLOP/s"), d.get("extra") or {}))
            except (ValueError, KeyError, TypeError):
                pass
            continue
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 8 or cells[0] not in SUITES or cells[2] not in MODES:
            continue
        rows.append(Row(cells[0], cells[1], cells[2], _number(cells[3]), _number(cells[5])))
    return rows


def latest(rows: list[Row]) -> dict[tuple[str, str, str], Row]:
    """One row per (suite, case, mode): the last one given."""
    return {(r.suite, r.name, r.mode): r for r in rows}


def usable(r: Row) -> bool:
    return bool(r.ours_ms) and bool(r.theirs_ms) and "error" not in r.extra and not r.extra.get("invalid")


def validated(r: Row) -> bool:
    return any(k.endswith("rel_err") for k in r.extra)


@dataclass
class Case:
    """One benchmark case (conv layer, FC shape, ...) in one precision: its default row and its variants."""
    default: Row | None = None
    variants: dict[str, Row] = field(default_factory=dict)   # variant name -> row (the default is "default")

    def best(self) -> tuple[str, Row] | None:
        ok = [(name, r) for name, r in self.variants.items() if usable(r)]
        return max(ok, key=lambda nr: nr[1].ratio or 0.0) if ok else None


def cases(rows: dict[tuple[str, str, str], Row], suite: str, mode: str) -> dict[str, Case]:
    """The cases of ``suite`` in ``mode``, keyed by base name (Winograd rows join conv's cases)."""
    out: dict[str, Case] = {}
    for (s, name, m), r in rows.items():
        if m != mode or not (s == suite or (suite == "conv" and s == "winograd")):
            continue
        g = _VARIANT.match(name)
        base, parts = g["base"], [p for p in (g["graph"] and "CUDA graph", g["tag"]) if p]
        if s == "winograd":
            parts = ["winograd", *parts]
        variant = ", ".join(parts) or "default"
        case = out.setdefault(base, Case())
        case.variants[variant] = r
        if variant == "default":
            case.default = r
    return out


@dataclass
class Verdict:
    target: str
    default: str        # the figure over the default kernels' rows
    default_met: str    # "yes" / "no" / "incomplete"
    best: str           # the figure over the best validated variant per case
    best_met: str
    rows: str           # how many rows, how many validated
    used: list[Row] = field(default_factory=list)   # the rows behind the default figure


def _met(ok: bool, complete: bool) -> str:
    return "incomplete" if not complete else "yes" if ok else "no"


def _count(rs: list[Row]) -> str:
    return f"{len(rs)} row{'s' * (len(rs) != 1)}, {sum(validated(r) for r in rs)} validated"


def conv_verdict(rows: dict[tuple[str, str, str], Row], mode: str, passes: str = "fwd+bwd") -> Verdict | None:
    threshold = CONV_THRESHOLD[mode]
    want = [f"{L.label} {passes}" for L in LAYERS]
    cs = cases(rows, "conv", mode)
    found = {name: cs[name] for name in want if name in cs}
    if not found:
        return None
    used = [c.default for c in found.values() if c.default is not None and usable(c.default)]
    dflt = [r.ratio for r in used]
    bests = [b for b in (c.best() for c in found.values()) if b is not None]
    won = sorted({v for v, _ in bests if v != "default"})
    med_d = statistics.median(dflt) if dflt else None
    med_b = statistics.median([r.ratio for _, r in bests]) if bests else None
    label = f"conv {mode}, median over the {len(want)} suite layers of {passes}" + \
        (f" >= {threshold}" if passes == "fwd+bwd" else " (not a target)")
    counted = [r for c in found.values() for r in c.variants.values()]
    return Verdict(
        label,
        f"{med_d:.2f} ({len(dflt)} of {len(want)} layers)" if med_d is not None else "—",
        _met(med_d is not None and med_d >= threshold, len(dflt) == len(want)) if passes == "fwd+bwd" else "—",
        f"{med_b:.2f} ({len(bests)} of {len(want)}; variants that won: {', '.join(won) or 'none'})"
        if med_b is not None else "—",
        _met(med_b is not None and med_b >= threshold, len(bests) == len(want)) if passes == "fwd+bwd" else "—",
        _count(counted), used)


def fc_verdict(rows: dict[tuple[str, str, str], Row], mode: str) -> Verdict | None:
    cs = cases(rows, "fc", mode)
    if not cs:
        return None
    used = [c.default for c in cs.values() if c.default is not None and usable(c.default)]
    dflt = [r.ratio for r in used]
    bests = [b for b in (c.best() for c in cs.values()) if b is not None]

    def fig(rs: list[float]) -> str:
        return f"{min(rs):.2f}–{max(rs):.2f}, {sum(r >= FC_THRESHOLD for r in rs)} of {len(cs)} rows >= {FC_THRESHOLD}" \
            if rs else "—"
    won = sorted({v for v, _ in bests if v != "default"})
    return Verdict(f"FC {mode}, every row >= {FC_THRESHOLD}", fig(dflt),
                   _met(bool(dflt) and min(dflt) >= FC_THRESHOLD, len(dflt) == len(cs)),
                   fig([r.ratio for _, r in bests]) + (f"; variants that won: {', '.join(won)}" if won else ""),
                   _met(bool(bests) and min(r.ratio for _, r in bests) >= FC_THRESHOLD, len(bests) == len(cs)),
                   _count([r for c in cs.values() for r in c.variants.values()]), used)


def single_verdict(rows: dict[tuple[str, str, str], Row], suite: str, case: str, mode: str, threshold: float,
                   label: str) -> Verdict | None:
    c = cases(rows, suite, mode).get(case)
    if c is None:
        return None
    d = c.default.ratio if c.default is not None and usable(c.default) else None
    b = c.best()
    return Verdict(label, f"{d:.2f}" if d is not None else "—", _met(d is not None and d >= threshold, d is not None),
                   f"{b[1].ratio:.2f} ({b[0]})" if b else "—", _met(b is not None and b[1].ratio >= threshold, b is not None),
                   _count(list(c.variants.values())), [c.default] if d is not None else [])


@dataclass(frozen=True)
class Entry:
    """A log entry of bench/RESULTS.md: its heading, the commits its ``- commit:`` line names, its text."""
    heading: str
    commits: tuple[str, ...]
    text: str


_HEADING = re.compile(r"^#+\s+(?P<title>.*\S)\s*$")
_COMMIT_LINE = re.compile(r"^\s*-\s*commits?:(?P<rest>.*)$")
_HASH = re.compile(r"\b[0-9a-f]{7,40}\b")


def entries(text: str) -> dict[tuple[str, str, str], Entry]:
    """Per (suite, case, mode): the entry (the nearest heading above it) holding the row that
    ``latest`` keeps, i.e. the last one in ``text``."""
    blocks: list[tuple[str, list[str]]] = [("", [])]
    where: dict[tuple[str, str, str], int] = {}
    for line in text.splitlines():
        h = _HEADING.match(line)
        if h:
            blocks.append((h["title"], []))
            continue
        blocks[-1][1].append(line)
        for r in parse_rows(line):
            where[(r.suite, r.name, r.mode)] = len(blocks) - 1
    out = {}
    for key, i in where.items():
        title, lines = blocks[i]
        commits = tuple(h for ln in lines if (m := _COMMIT_LINE.match(ln)) for h in _HASH.findall(m["rest"]))
        out[key] = Entry(title, commits, "\n".join(lines))
    return out


def verdicts(rows: list[Row]) -> list[Verdict]:
    """Every target that has rows, in the issue's order."""
    by_key = latest(rows)
    out = [conv_verdict(by_key, "fp32"), conv_verdict(by_key, "tf32"),
           conv_verdict(by_key, "fp32", "fwd"), conv_verdict(by_key, "tf32", "fwd"),
           single_verdict(by_key, "pool", POOL_CASE, "fp32", POOL_THRESHOLD, f"pool {POOL_CASE} >= {POOL_THRESHOLD}"),
           fc_verdict(by_key, "fp32"), fc_verdict(by_key, "tf32")]
    out += [single_verdict(by_key, "train", VGG16_CASE, m, VGG16_THRESHOLD, f"VGG16 step batch 64 {m} >= {VGG16_THRESHOLD}")
            for m in ("fp32", "tf32")]
    return [v for v in out if v is not None]


def conv_detail(rows: list[Row]) -> list[str]:
    """Per layer and precision: the default row's fwd+bwd ratio and the best variant's."""
    by_key = latest(rows)
    lines = ["| layer (fwd+bwd) | fp32 default | fp32 best | tf32 default | tf32 best |", "|---|---|---|---|---|"]
    per_mode = {m: cases(by_key, "conv", m) for m in ("fp32", "tf32")}
    for L in LAYERS:
        cells = []
        for m in ("fp32", "tf32"):
            c = per_mode[m].get(f"{L.label} fwd+bwd")
            d = c.default if c else None
            b = c.best() if c else None
            cells += [f"{d.ratio:.2f}" if d is not None and usable(d) else "—",
                      f"{b[1].ratio:.2f} ({b[0]})" if b else "—"]
        if any(x != "—" for x in cells):
            lines.append(f"| {L.label} | " + " | ".join(cells) + " |")
    invalid = [r for r in by_key.values() if r.extra.get("invalid") or "error" in r.extra]
    for r in invalid:
        lines.append(f"\nleft out: {r.suite} {r.name} {r.mode}: "
                     + (f"off the reference ({', '.join(r.extra['invalid'])})" if r.extra.get("invalid")
                        else r.extra["error"]))
    return lines


def report(rows: list[Row]) -> str:
    table = ["| target (torch/ours) | default kernels | met? | best validated variant per case | met? | rows |",
             "|---|---|---|---|---|---|"]
    table += [f"| {v.target} | {v.default} | {v.default_met} | {v.best} | {v.best_met} | {v.rows} |"
              for v in verdicts(rows)]
    pools = [r for (s, name, _), r in latest(rows).items() if s == "pool" and name.startswith("max ") and usable(r)]
    if pools:   # the target names one row; the others, so that a reader sees all of max pooling
        table += ["", "max pooling, every row: " + ", ".join(f"{r.name} {r.ratio:.2f}" for r in pools)]
    return "\n".join(table + [""] + conv_detail(rows)) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+", help="files holding benchmark rows (markdown or --json lines)")
    ap.add_argument("--out", default=None, help="also write the report here")
    args = ap.parse_args(argv)
    rows: list[Row] = []
    for path in args.logs:
        p = Path(path)
        if not p.is_file():
            print(f"targets: skipping {path}: no such file", file=sys.stderr)
            continue
        rows += parse_rows(p.read_text(errors="replace"))
    if not rows:
        print("targets: no benchmark rows found", file=sys.stderr)
        return 1
    text = report(rows)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
