"""Tests for gpuconv.progress: the epoch progress line and the JSON-lines metrics log."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from gpuconv.progress import MetricsWriter, Progress, format_duration, read_metrics


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class TTYStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_duration():
    assert format_duration(0) == "0:00"
    assert format_duration(75) == "1:15"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(None) == "?"
    assert format_duration(float("inf")) == "?"
    assert format_duration(-1) == "?"


def test_running_means_rate_and_eta():
    clock = FakeClock()
    p = Progress(10, stream=io.StringIO(), clock=clock)
    clock.t += 2.0
    p.update(loss=1.0, acc=0.5, images=100)
    clock.t += 2.0
    p.update(loss=2.0, acc=1.0, images=300)
    assert p.done == 2
    assert p.loss == pytest.approx((1.0 * 100 + 2.0 * 300) / 400)
    assert p.acc == pytest.approx((0.5 * 100 + 1.0 * 300) / 400)
    assert p.images_per_s == pytest.approx(400 / 4.0)
    assert p.eta == pytest.approx(8 * 2.0)  # 8 batches left at 2 s/batch
    line = p.format(bar=False)
    assert line == " 2/10 loss 1.7500 acc 87.50% 100 img/s ETA 0:16"


def test_resume_start_counts_only_new_batches():
    clock = FakeClock()
    p = Progress(10, stream=io.StringIO(), start=6, clock=clock)
    assert p.eta is None and "ETA ?" in p.format()
    clock.t += 3.0
    p.update(images=10)
    assert p.done == 7
    assert p.eta == pytest.approx(3 * 3.0)


def test_tty_redraws_with_carriage_return():
    clock = FakeClock()
    s = TTYStream()
    p = Progress(4, stream=s, desc="epoch 1", width=8, clock=clock, min_interval=0.1)
    assert p.tty
    clock.t += 1
    p.update(loss=0.5, images=10)
    clock.t += 0.01  # within min_interval: no redraw
    p.update(loss=0.5, images=10)
    clock.t += 1
    p.update(loss=0.5, images=10)
    clock.t += 1
    p.update(loss=0.5, images=10)  # last batch: drawn by close()
    p.close()
    p.close()  # idempotent
    out = s.getvalue()
    frames = out.split("\r")[1:]
    assert len(frames) == 3
    assert frames[0].startswith("epoch 1 1/4 [==>     ] loss 0.5000")
    assert frames[1].startswith("epoch 1 3/4 [======> ]")
    assert frames[2].startswith("epoch 1 4/4 [========] loss 0.5000") and frames[2].endswith("\n")
    assert "in 0:03" in frames[2]
    assert out.count("\n") == 1


def test_tty_pads_shorter_line():
    clock = FakeClock()
    s = TTYStream()
    p = Progress(3, stream=s, clock=clock, width=0)
    clock.t += 1
    p.update(loss=123456.0)
    first = s.getvalue()[1:]
    p._last_draw = -1e9  # force the next draw
    p._loss_sum, p._loss_weight = 1.0, 1.0  # a shorter loss string
    clock.t += 1
    p.update(n=0)
    second = s.getvalue()[1 + len(first) + 1:]
    assert len(second) >= len(first)


def test_non_tty_prints_periodic_plain_lines():
    clock = FakeClock()
    s = io.StringIO()
    p = Progress(100, stream=s, clock=clock, log_interval=10.0)
    assert not p.tty
    for _ in range(99):
        clock.t += 1.0
        p.update(loss=0.1, acc=0.9, images=32)
    p.close()
    out = s.getvalue()
    assert "\r" not in out and "[" not in out  # no bar and no carriage returns in logs
    lines = out.splitlines()
    # One line per 10 s over 99 s, plus the final one from close().
    assert len(lines) == 10
    assert lines[0].startswith(" 10/100 ")  # count padded to a fixed width
    assert lines[-1].startswith(" 99/100 ") and "ETA 0:01" in lines[-1]


def test_final_line_when_complete():
    clock = FakeClock()
    s = io.StringIO()
    with Progress(2, stream=s, clock=clock) as p:
        clock.t += 1
        p.update(acc=1.0, images=8)
        clock.t += 1
        p.update(acc=0.5, images=8)
    assert s.getvalue() == "2/2 acc 75.00% 8 img/s in 0:02\n"


def test_tty_override_and_validation():
    assert Progress(1, stream=io.StringIO(), tty=True).tty
    assert not Progress(1, stream=TTYStream(), tty=False).tty
    with pytest.raises(ValueError):
        Progress(5, stream=io.StringIO(), start=6)


# --------------------------------------------------------------------------- MetricsWriter


def test_metrics_writer_lines_and_flush(tmp_path):
    p = tmp_path / "metrics.jsonl"
    w = MetricsWriter(p)
    w.write({"epoch": 0, "loss": np.float32(0.5)}, acc=np.float64(0.25), n=np.int64(3))
    # Flushed: readable before close.
    assert read_metrics(p) == [{"epoch": 0, "loss": 0.5, "acc": 0.25, "n": 3}]
    w.write(epoch=1, hist=np.array([1, 2]))
    w.close()
    lines = p.read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1]) == {"epoch": 1, "hist": [1, 2]}
    with pytest.raises(ValueError, match="closed"):
        w.write(epoch=2)


def test_metrics_writer_append_vs_truncate(tmp_path):
    p = tmp_path / "m.jsonl"
    with MetricsWriter(p) as w:
        w.write(epoch=0)
    with MetricsWriter(p, append=True) as w:
        w.write(epoch=1)
    assert [r["epoch"] for r in read_metrics(p)] == [0, 1]
    with MetricsWriter(p) as w:
        w.write(epoch=5)
    assert read_metrics(p) == [{"epoch": 5}]


def test_metrics_append_after_partial_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"epoch": 0}\n{"epoch": 1, "lo')  # crash mid-write
    assert read_metrics(p) == [{"epoch": 0}]  # cut-short final record ignored
    with MetricsWriter(p, append=True) as w:
        w.write(epoch=1)
    lines = p.read_text().splitlines()
    assert lines[-1] == '{"epoch": 1}'
    with pytest.raises(ValueError, match=":2:"):
        read_metrics(p)
    assert read_metrics(p, skip_invalid=True) == [{"epoch": 0}, {"epoch": 1}]


def test_metrics_bad_value_writes_nothing(tmp_path):
    p = tmp_path / "m.jsonl"
    with MetricsWriter(p) as w:
        with pytest.raises(TypeError):
            w.write(x=object())
        w.write(ok=True)
    assert p.read_text() == '{"ok": true}\n'
