"""bench/targets.py: the project's benchmark targets computed from rows, not copied by hand.

The reference is bench/RESULTS.md itself: the rows of its log (the first H100 pass, with the rows
a later run replaced) must give the figures its "Current figures" table states, that table must
state them with the commits of the log entries the rows come from, and neither file of measured
figures and performance notes may narrate how the work was organised.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import targets
from bench.bench_conv import LAYERS
from bench.harness import REL_TOL, Row, rel_err, validation

ROOT = Path(__file__).resolve().parent.parent
RESULTS = (ROOT / "bench" / "RESULTS.md").read_text()
PERFORMANCE = ROOT / "docs" / "performance.md"
CURRENT = "## Current figures"
TABLE_COLUMNS = ["target", "figure", "met?", "device", "date", "commit", "command", "log"]


def by_target(rows: list[Row]) -> dict[str, targets.Verdict]:
    return {v.target.split(",")[0] + (" fwd" if "of fwd " in v.target else ""): v for v in targets.verdicts(rows)}


def current_table(text: str = RESULTS) -> dict[str, dict[str, str]]:
    """The "Current figures" table: per target (first cell), its cells by column, "same" resolved to
    the row above's cell."""
    assert CURRENT in text, "bench/RESULTS.md has no 'Current figures' section"
    section = text.split(CURRENT, 1)[1].split("\n## ", 1)[0]
    lines = [ln.strip() for ln in section.splitlines() if ln.strip().startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == TABLE_COLUMNS
    out: dict[str, dict[str, str]] = {}
    above: dict[str, str] = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(header):
            break   # the next table (per layer)
        row = {h: (above[h] if c == "same" else c) for h, c in zip(header, cells)}
        out[row["target"]] = above = row
    return out


def test_results_md_rows_give_its_figures() -> None:
    v = by_target(targets.parse_rows(RESULTS))
    assert v["conv fp32"].default.startswith("0.45 (14 of 14") and v["conv fp32"].default_met == "no"
    assert v["conv tf32"].default.startswith("0.34 (14 of 14") and v["conv tf32"].default_met == "no"
    assert v["conv fp32 fwd"].default.startswith("0.73") and v["conv tf32 fwd"].default.startswith("0.41")
    assert v["pool max 2/2 128x64x112x112 fwd >= 1.3"].default == "1.42"
    assert v["FC fp32"].default == "0.62–1.05, 5 of 9 rows >= 0.8"
    assert v["FC tf32"].default == "0.26–0.51, 0 of 9 rows >= 0.8"
    # the VGG16 rows of the later run (876c67d) replace the first pass's (0.37)
    assert v["VGG16 step batch 64 fp32 >= 0.7"].default == "0.39"
    assert v["VGG16 step batch 64 tf32 >= 0.7"].default == "0.29"


def problems(text: str) -> list[str]:
    """Where the "Current figures" table of ``text`` disagrees with the rows of its log: a figure or
    verdict other than bench/targets.py's, or a commit, log entry or command other than those of the
    entries holding the rows behind the figure."""
    table = current_table(text)
    rows = targets.parse_rows(text)
    where = targets.entries(text)
    out = []
    for v in targets.verdicts(rows):
        row = table.get(v.target)
        if row is None:
            out.append(f"no row for {v.target!r}")
            continue
        if not row["figure"].replace("**", "").startswith(v.default):
            out.append(f"{v.target}: figure {row['figure']!r}, the rows give {v.default!r}")
        if row["met?"] != v.default_met:
            out.append(f"{v.target}: met? {row['met?']!r}, the rows give {v.default_met!r}")
        if not re.fullmatch(r"\d{4}-\d\d-\d\d", row["date"]) or not row["device"]:
            out.append(f"{v.target}: no device or date")
        commands = re.findall(r"`([^`]+)`", row["command"])
        for entry in {where[(r.suite, r.name, r.mode)] for r in v.used}:
            if not entry.commits:
                out.append(f"{v.target}: log entry {entry.heading!r} names no commit")
            out += [f"{v.target}: commit {c} of {entry.heading!r} not named" for c in entry.commits
                    if c not in row["commit"]]
            if entry.heading not in row["log"]:
                out.append(f"{v.target}: log entry {entry.heading!r} not named")
            if not any(c in entry.text for c in commands):
                out.append(f"{v.target}: none of the commands {commands} is in {entry.heading!r}")
    detail = "\n".join(targets.conv_detail(rows))
    if detail not in text.split(CURRENT, 1)[1].split("\n## ", 1)[0]:
        out.append("the per-layer conv table is not the one bench/targets.py gives")
    return out


def test_current_figures_agree_with_the_log() -> None:
    assert problems(RESULTS) == []


def test_a_stale_table_is_caught() -> None:
    fc = "| **0.62–1.05, 5 of 9 rows >= 0.8** | no |"
    stale = RESULTS.replace(fc, fc.replace("0.62", "0.63"))
    assert stale != RESULTS and problems(stale) == ["FC fp32, every row >= 0.8: figure '**0.63–1.05, 5 of 9 rows "
                                                    ">= 0.8**', the rows give '0.62–1.05, 5 of 9 rows >= 0.8'"]
    wrong = RESULTS.replace("| **1.42** (2.33 TB/s); 3/2: 1.18 | yes |", "| **1.42** (2.33 TB/s); 3/2: 1.18 | no |")
    assert wrong != RESULTS and len(problems(wrong)) == 1
    # a newer FC row at another commit: its figure and its commit are both missing from the table
    newer = RESULTS + ("\n#### H100 later FC run\n\n- commit: abcdef1\n- command: `python bench/bench_fc.py`\n\n"
                       "| fc | 128x4096->4096 bwd data | fp32 | 0.100 | 1 | 0.100 | 1 | 1.00 |\n")
    found = problems(newer)
    assert any("commit abcdef1" in p for p in found) and any("'H100 later FC run' not named" in p for p in found)
    assert any("figure" in p and "0.63–1.05" in p for p in found)
    layer = RESULTS.replace("| 0.39 | 0.39 (default) |", "| 0.38 | 0.39 (default) |")
    assert layer != RESULTS and any("per-layer" in p for p in problems(layer))


NARRATION = re.compile(r"(?<!gpu_)\bsessions?\b|\bhelpers?\b|\bthe lead\b|\bagents?\b|\bissue #\d+|"
                       r"\b(?:see|in|from|by|per|of) issue \d+|\bnext GPU\b|\bstop \d+\b", re.IGNORECASE)


@pytest.mark.parametrize("path", ["bench/RESULTS.md", "docs/performance.md", "docs/README.md"])
def test_results_and_docs_do_not_narrate_the_work(path: str) -> None:
    p = ROOT / path
    if not p.is_file():
        pytest.skip(f"{path} does not exist")
    hits = [f"{i}: {ln.strip()}" for i, ln in enumerate(p.read_text().splitlines(), 1) if NARRATION.search(ln)]
    assert not hits, "\n".join(hits)


def test_the_narration_check_can_fail() -> None:
    for text in ("the next GPU session", "this session", "the helpers' notes", "see issue 20", "Stop 10 had"):
        assert NARRATION.search(text), text
    for text in ("bash bench/gpu_session.sh budget", "All of them issue 32 HMMA per slice"):
        assert not NARRATION.search(text), text


def conv_rows(mode: str, ratio: float, tag: str = "", **extra: object) -> list[Row]:
    """One fwd+bwd row per suite layer at torch/ours = ratio."""
    return [Row("conv", f"{L.label} fwd+bwd{tag}", mode, 1.0, ratio, extra=dict(extra)) for L in LAYERS]


def test_best_variant_counts_only_validated_rows() -> None:
    rows = conv_rows("fp32", 0.5) + conv_rows("fp32", 0.8, " [async]", fwd_rel_err=1e-6)
    rows += conv_rows("fp32", 3.0, " [wgmma]", fwd_rel_err=0.5, invalid=["fwd"])   # fast but wrong
    rows += conv_rows("fp32", 9.0, " [broken]", error="CUDARuntimeError")
    v = by_target(rows)["conv fp32"]
    assert v.default.startswith("0.50 (14 of 14") and v.default_met == "no"
    assert v.best.startswith("0.80 (14 of 14; variants that won: async)") and v.best_met == "yes"
    assert v.rows == "56 rows, 28 validated"
    detail = "\n".join(targets.conv_detail(rows))
    assert "| 0.50 | 0.80 (async) |" in detail and "off the reference (fwd)" in detail and "CUDARuntimeError" in detail


def test_winograd_rows_join_the_conv_cases_and_missing_layers_are_incomplete() -> None:
    three = [L for L in LAYERS if L.f == 3 and L.s == 1 and L.d == 1]
    rows = conv_rows("tf32", 0.4)[:-1]   # one layer missing
    rows += [Row("winograd", f"{L.label} fwd+bwd", "tf32", 1.0, 0.9, extra={"fwd_rel_err": 1e-3}) for L in three]
    v = by_target(rows)["conv tf32"]
    assert v.default.startswith("0.40 (13 of 14") and v.default_met == "incomplete"
    assert "variants that won: winograd" in v.best and v.best_met == "incomplete"


def test_a_later_row_replaces_an_earlier_one() -> None:
    md = "| train | vgg16 train step batch 64 | fp32 | 200.0 | 320.00 | 100.0 | 640.00 | 0.50 |\n"
    js = Row("train", "vgg16 train step batch 64", "fp32", 100.0, 80.0, 64, "img/s").to_json()
    graph = Row("train", "vgg16 train step batch 64 CUDA graph [algo=auto, wgmma]", "fp32", 100.0, 90.0).to_json()
    v = by_target(targets.parse_rows(md + js + "\n" + graph))["VGG16 step batch 64 fp32 >= 0.7"]
    assert v.default == "0.80" and v.default_met == "yes"
    assert v.best == "0.90 (CUDA graph, algo=auto, wgmma)"
    assert targets.parse_rows(md)[0].ratio == pytest.approx(0.5)   # the ratio comes from the times, not the text


def test_parse_skips_what_is_not_a_row() -> None:
    text = "\n".join(["| suite | case | mode | ours ms | ours rate | torch ms | torch rate | torch/ours |",
                      "| layer | cuDNN fwd TFLOP/s | cuDNN bwd TFLOP/s | ours fwd | ours bwd |",
                      "| fc | 8x4->2 fwd+bias | fp32 | — | — | — | — | — |",
                      '{"suite": "fc", "name": 1}', "{not json", "pytest rc=0"])
    rows = targets.parse_rows(text)
    assert [(r.name, r.ours_ms) for r in rows] == [("8x4->2 fwd+bias", None)]
    assert targets.verdicts(rows)[0].default_met == "incomplete"


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "conv.log"
    log.write_text("\n".join(r.to_json() for r in conv_rows("fp32", 0.75, fwd_rel_err=1e-6)))
    out = tmp_path / "targets.md"
    assert targets.main([str(log), str(tmp_path / "missing.log"), "--out", str(out)]) == 0
    assert "| 0.75 (14 of 14 layers) | yes |" in out.read_text() and out.read_text() == capsys.readouterr().out
    (tmp_path / "empty.log").write_text("nothing here\n")
    assert targets.main([str(tmp_path / "empty.log")]) == 1


def test_validation_fields() -> None:
    import numpy as np  # noqa: PLC0415

    ref = np.array([1.0, -2.0, 4.0], np.float32)
    assert rel_err(ref + np.float32(0.004), ref) == pytest.approx(1e-3, rel=1e-4)
    with pytest.raises(ValueError, match="shape"):
        rel_err(ref[:2], ref)
    assert validation("tf32", {"fwd": 1e-3}) == {"fwd_rel_err": 1e-3}
    bad = validation("fp32", {"fwd": 1e-3, "bwd_data": float("nan"), "bias_grad": 0.0})
    assert bad["invalid"] == ["fwd", "bwd_data"] and REL_TOL["fp32"] < 1e-3 < REL_TOL["tf32"]
