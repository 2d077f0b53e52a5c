"""The training-curves picture: loss and accuracy per epoch, train and test, as a PNG.

Drawn with Pillow's ImageDraw (Pillow is already needed to read images): two
panels side by side, loss on the left, accuracy (0-100 %) on the right, train in
blue and test in orange, with labelled axes.  A plotting library would add a
large dependency for two line charts.  ``gpuconv train`` redraws it into the
run folder after every epoch, from the same records as ``metrics.jsonl``.
"""
from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["CURVES", "draw_curves", "render_curves"]

#: File name of the picture in a run folder.
CURVES = "curves.png"

_W, _H = 960, 400                      # whole picture
_M_LEFT, _M_RIGHT, _M_TOP, _M_BOTTOM = 62, 16, 34, 46
_TRAIN, _TEST = (31, 119, 180), (255, 127, 14)  # blue / orange
_GRID, _AXIS, _TEXT = (225, 225, 225), (60, 60, 60), (20, 20, 20)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    span = hi - lo
    raw = span / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-6:
        if t >= lo - step * 1e-6:
            ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def _panel(draw: Any, box: tuple[int, int, int, int], title: str, series: Sequence[tuple[str, tuple, list]],
           epochs: list[float], y_range: tuple[float, float] | None, font: Any, legend_top: bool) -> None:
    x0, y0, x1, y1 = box
    px0, py0, px1, py1 = x0 + _M_LEFT, y0 + _M_TOP, x1 - _M_RIGHT, y1 - _M_BOTTOM
    draw.text((x0 + (x1 - x0) // 2, y0 + 10), title, fill=_TEXT, font=font, anchor="mt")
    values = [v for _, _, ys in series for v in ys if v is not None and math.isfinite(v)]
    if y_range is not None:
        lo, hi = y_range
    elif values:
        lo, hi = min(0.0, min(values)), max(values) * 1.05  # headroom: the top point stays off the frame
    else:
        lo, hi = 0.0, 1.0
    if hi - lo < 1e-12:
        hi = lo + 1.0
    ex0, ex1 = (min(epochs), max(epochs)) if epochs else (0.0, 1.0)
    if ex1 - ex0 < 1e-12:  # one epoch: centre the single point
        ex0, ex1 = ex0 - 1, ex1 + 1

    def to_px(e: float, v: float) -> tuple[float, float]:
        return (px0 + (e - ex0) / (ex1 - ex0) * (px1 - px0), py1 - (v - lo) / (hi - lo) * (py1 - py0))

    for t in _nice_ticks(lo, hi):
        _, y = to_px(ex0, t)
        draw.line([(px0, y), (px1, y)], fill=_GRID)
        draw.text((px0 - 6, y), _fmt(t), fill=_TEXT, font=font, anchor="rm")
    last = max(epochs) if epochs else ex1
    xticks = [t for t in _nice_ticks(ex0, ex1, 8) if float(t).is_integer() and 1 <= t <= last]
    for t in xticks:
        x, _ = to_px(t, lo)
        draw.line([(x, py1), (x, py1 + 4)], fill=_AXIS)
        draw.text((x, py1 + 7), f"{int(t)}", fill=_TEXT, font=font, anchor="mt")
    draw.rectangle([px0, py0, px1, py1], outline=_AXIS)
    draw.text(((px0 + px1) // 2, py1 + 24), "epoch", fill=_TEXT, font=font, anchor="mt")
    # legend inside the panel, right, in the corner the curves head away from
    lx, ly = px1 - 70, (py0 + 8) if legend_top else (py1 - 8 - 16 * len(series))
    for name, colour, _ in series:
        draw.line([(lx, ly + 6), (lx + 18, ly + 6)], fill=colour, width=3)
        draw.text((lx + 24, ly), name, fill=_TEXT, font=font)
        ly += 16
    for _, colour, ys in series:
        pts = [to_px(e, v) for e, v in zip(epochs, ys) if v is not None and math.isfinite(v)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2, joint="curve")
        for x, y in pts:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)


def render_curves(history: Sequence[dict[str, Any]]) -> Any:
    """The picture (a Pillow RGB image) for epoch records with ``epoch``, ``train_loss``,
    ``test_loss``, ``test_acc`` and (optionally) ``train_acc``; accuracies are fractions."""
    from PIL import Image, ImageDraw, ImageFont  # noqa: PLC0415

    img = Image.new("RGB", (_W, _H), "white")
    draw = ImageDraw.Draw(img)
    try:
        font: Any = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    epochs = [float(r["epoch"]) for r in history]

    def col(key: str, scale: float = 1.0) -> list[float | None]:
        return [None if r.get(key) is None else float(r[key]) * scale for r in history]

    _panel(draw, (0, 0, _W // 2, _H), "loss",
           [("train", _TRAIN, col("train_loss")), ("test", _TEST, col("test_loss"))], epochs, None, font, True)
    _panel(draw, (_W // 2, 0, _W, _H), "accuracy (%)",
           [("train", _TRAIN, col("train_acc", 100)), ("test", _TEST, col("test_acc", 100))],
           epochs, (0.0, 100.0), font, False)
    return img


def draw_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path | None:
    """Write the picture to ``path`` atomically (a viewer never sees half a file); returns the path.

    Without Pillow it draws nothing and returns None: the picture is a convenience, and a
    training run must not stop (before its checkpoint is saved) for want of it.
    """
    if importlib.util.find_spec("PIL") is None:
        return None
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    render_curves(history).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
