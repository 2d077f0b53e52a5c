"""The training-curves picture: the points land where the numbers say, in the right panel and colour."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from gpuconv import curves  # noqa: E402


def _rows_of(img: np.ndarray, colour: tuple[int, int, int], x0: int, x1: int) -> np.ndarray:
    """Mean row of each column (x0..x1) that holds pixels of exactly ``colour`` (NaN where none)."""
    hit = np.all(img[:, x0:x1] == np.array(colour, np.uint8), axis=2)
    rows = np.arange(img.shape[0])[:, None]
    with np.errstate(invalid="ignore"):
        return (hit * rows).sum(0) / np.where(hit.any(0), hit.sum(0), np.nan)


def test_lines_follow_the_metrics(tmp_path: Path) -> None:
    # train loss falls, test loss rises; train accuracy rises, test accuracy falls
    history = [{"epoch": e, "train_loss": 2.0 - 0.3 * e, "test_loss": 0.5 + 0.2 * e,
                "train_acc": 0.1 * e, "test_acc": 0.9 - 0.1 * e} for e in range(1, 6)]
    path = curves.draw_curves(history, tmp_path / curves.CURVES)
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (curves._H, curves._W, 3)
    half = curves._W // 2
    # inside the plotting area of each panel, away from the legend (top right / bottom right corners)
    left = (curves._M_LEFT + 2, half - curves._M_RIGHT - 90)
    right = (half + curves._M_LEFT + 2, curves._W - curves._M_RIGHT - 90)
    for (x0, x1), down, up in [(left, curves._TRAIN, curves._TEST), (right, curves._TEST, curves._TRAIN)]:
        falling, rising = _rows_of(img, down, x0, x1), _rows_of(img, up, x0, x1)
        f, r = falling[~np.isnan(falling)], rising[~np.isnan(rising)]
        assert len(f) > 50 and len(r) > 50
        assert f[0] < f[-1] and r[0] > r[-1]  # image rows grow downwards
    # accuracy is drawn on a fixed 0..100 % axis: 10 % and 50 % land in proportion
    acc_rows = _rows_of(img, curves._TRAIN, *right)
    top, bottom = curves._M_TOP, curves._H - curves._M_BOTTOM
    first = acc_rows[~np.isnan(acc_rows)][0]
    assert abs(first - (bottom - 0.1 * (bottom - top))) < 4


def test_one_epoch_missing_and_nan_values(tmp_path: Path) -> None:
    """One point, a record without train_acc (older metrics) and a NaN loss do not break the picture."""
    history = [{"epoch": 1, "train_loss": float("nan"), "test_loss": 1.0, "test_acc": 0.5}]
    path = curves.draw_curves(history, tmp_path / "c.png")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert np.all(img[0, 0] == 255)
    assert not list(tmp_path.glob("*.tmp"))
    assert np.any(np.all(img == np.array(curves._TEST, np.uint8), axis=2))
    curves.draw_curves([], tmp_path / "empty.png")  # before the first epoch: empty axes


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    for lo, hi in [(0, 1), (0, 2.37), (0, 100), (0.2, 0.31), (0, 1e-4)]:
        t = curves._nice_ticks(lo, hi)
        assert 3 <= len(t) <= 8 and t[0] >= lo - 1e-12 and t[-1] <= hi + 1e-12
        steps = np.diff(t)
        assert np.allclose(steps, steps[0])
        mant = steps[0] / 10 ** math.floor(math.log10(steps[0]))
        assert any(abs(mant - m) < 1e-9 for m in (1, 2, 2.5, 5))


def test_without_pillow_nothing_is_drawn_and_nothing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "PIL" else real(name, *a))
    assert curves.draw_curves([{"epoch": 1, "train_loss": 1.0, "test_loss": 1.0, "test_acc": 0.5}],
                              tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()
