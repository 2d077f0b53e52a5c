"""Progress display for an epoch and a JSON-lines metrics log.

:class:`Progress` redraws one line with ``\\r`` on a terminal, and prints
plain, periodic lines otherwise (CI logs and files would fill up with
carriage-return garbage).  :class:`MetricsWriter` appends one JSON object per
line and flushes each, so a crashed run keeps every metric written so far.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import IO, Any, Callable, Mapping

import numpy as np

__all__ = ["Progress", "MetricsWriter", "read_metrics", "format_duration"]


def format_duration(seconds: float | None) -> str:
    """``M:SS`` or ``H:MM:SS``; ``?`` when unknown (None, negative, inf, NaN)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """One epoch's progress: batches done/total, running loss and accuracy, images/s, ETA.

    Call :meth:`update` after each batch with that batch's mean ``loss`` and
    ``acc`` (fraction correct) and its number of ``images``; the display shows
    image-weighted running means over the epoch.  ``start`` is the number of
    batches already done (a resumed epoch); rates and ETA count only batches
    processed by this object.

    On a TTY the line is redrawn at most every ``min_interval`` seconds; on
    other streams a plain line is printed at most every ``log_interval``
    seconds.  :meth:`close` (or leaving a ``with`` block) always writes the
    final state.  ``tty`` overrides the stream's own ``isatty()``; ``clock``
    is injectable for tests.
    """

    def __init__(
        self,
        total: int,
        stream: IO[str] | None = None,
        desc: str = "",
        start: int = 0,
        width: int = 24,
        tty: bool | None = None,
        min_interval: float = 0.1,
        log_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < 0 or not 0 <= start <= total:
            raise ValueError(f"bad progress range: start {start}, total {total}")
        self.total = int(total)
        self.stream = stream if stream is not None else sys.stderr
        self.desc = desc
        self.width = int(width)
        self.tty = _is_tty(self.stream) if tty is None else bool(tty)
        self.min_interval = float(min_interval)
        self.log_interval = float(log_interval)
        self.clock = clock

        self.start = int(start)
        self.done = int(start)
        self.images = 0
        self._weight = 0.0
        self._loss_sum = 0.0
        self._acc_sum = 0.0
        self._loss_weight = 0.0
        self._acc_weight = 0.0
        self._t0 = clock()
        self._last_draw: float | None = None
        self._last_len = 0
        self.closed = False

    # ---- state

    @property
    def loss(self) -> float | None:
        """Image-weighted mean loss over updates that gave one (None before any)."""
        return self._loss_sum / self._loss_weight if self._loss_weight else None

    @property
    def acc(self) -> float | None:
        """Image-weighted mean accuracy (fraction) over updates that gave one."""
        return self._acc_sum / self._acc_weight if self._acc_weight else None

    @property
    def elapsed(self) -> float:
        return self.clock() - self._t0

    @property
    def images_per_s(self) -> float | None:
        t = self.elapsed
        return self.images / t if t > 0 and self.images else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate of batches processed so far (None before any)."""
        ran = self.done - self.start
        t = self.elapsed
        if ran <= 0 or t <= 0:
            return None
        return max(self.total - self.done, 0) * t / ran

    def update(
        self,
        n: int = 1,
        *,
        loss: float | None = None,
        acc: float | None = None,
        images: int | None = None,
    ) -> None:
        """Record ``n`` more batches; ``loss``/``acc`` are their mean values."""
        self.done += n
        weight = float(images) if images else float(n)
        if images:
            self.images += int(images)
        if loss is not None:
            self._loss_sum += float(loss) * weight
            self._loss_weight += weight
        if acc is not None:
            self._acc_sum += float(acc) * weight
            self._acc_weight += weight
        self._maybe_draw()

    # ---- display

    def format(self, bar: bool | None = None) -> str:
        """The status line (with a bar when ``bar``, default: on a TTY)."""
        bar = self.tty if bar is None else bar
        parts = []
        if self.desc:
            parts.append(self.desc)
        digits = len(str(self.total))
        parts.append(f"{self.done:>{digits}}/{self.total}")
        if bar and self.width > 0:
            frac = min(self.done / self.total, 1.0) if self.total else 1.0
            filled = int(frac * self.width)
            head = ">" if filled < self.width else ""
            parts.append("[" + "=" * filled + head + " " * (self.width - filled - len(head)) + "]")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.acc is not None:
            parts.append(f"acc {100.0 * self.acc:.2f}%")
        ips = self.images_per_s
        if ips is not None:
            parts.append(f"{ips:.0f} img/s")
        if self.done < self.total:
            parts.append(f"ETA {format_duration(self.eta)}")
        else:
            parts.append(f"in {format_duration(self.elapsed)}")
        return " ".join(parts)

    def _write(self, final: bool = False) -> None:
        line = self.format()
        if self.tty:
            # Pad with spaces so a shorter line fully covers the previous one.
            pad = " " * max(self._last_len - len(line), 0)
            self.stream.write("\r" + line + pad + ("\n" if final else ""))
            self._last_len = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last_draw = self.clock()

    def _maybe_draw(self) -> None:
        now = self.clock()
        interval = self.min_interval if self.tty else self.log_interval
        if self.done >= self.total:
            return  # the final line is close()'s job, so it is written exactly once
        if self._last_draw is None:
            # On a TTY show something at once; in logs wait one interval (short epochs stay quiet).
            if self.tty or now - self._t0 >= interval:
                self._write()
        elif now - self._last_draw >= interval:
            self._write()

    def close(self) -> None:
        """Write the final line (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._write(final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _json_default(o: Any) -> Any:
    # NumPy (or CuPy 0-d) scalars show up in metrics all the time; store them as plain numbers.
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "item") and getattr(o, "shape", None) == ():
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


class MetricsWriter:
    """Write metrics as JSON lines: one object per :meth:`write`, flushed immediately.

    ``append=False`` starts a fresh file (truncating an old one);
    ``append=True`` continues it for a resumed run.  If the existing file ends
    in a partial line (a crash mid-write), a newline is added first so the
    new records stay on lines of their own.
    """

    def __init__(self, path: str | os.PathLike[str], append: bool = False) -> None:
        self.path = Path(path)
        self.append = bool(append)
        needs_newline = False
        if append and self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
        self._f: IO[str] | None = open(self.path, "a" if append else "w", encoding="utf-8")
        if needs_newline:
            self._f.write("\n")
            self._f.flush()

    def write(self, record: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """Write one record (``record`` merged with keyword ``fields``) as a JSON line."""
        if self._f is None:
            raise ValueError(f"MetricsWriter for {self.path} is closed")
        data = dict(record or {})
        data.update(fields)
        # Serialize fully before writing so a bad value cannot leave half a line.
        line = json.dumps(data, default=_json_default)
        self._f.write(line + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(path: str | os.PathLike[str], skip_invalid: bool = False) -> list[dict[str, Any]]:
    """All records of a JSON-lines metrics file (blank lines skipped).

    A malformed line raises ``ValueError`` naming the file and line number,
    except a malformed *last* line without a newline (a write cut short by a
    crash), which is ignored.  ``skip_invalid=True`` skips every malformed
    line instead (e.g. a cut-short record that a resumed run appended after).
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if skip_invalid or (i == len(lines) and not text.endswith("\n")):
                continue  # a record cut short by a crash
            raise ValueError(f"{path}:{i}: not valid JSON: {e}") from e
        if not isinstance(rec, dict):
            if skip_invalid:
                continue
            raise ValueError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")
        out.append(rec)
    return out
