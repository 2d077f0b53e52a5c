"""A small autotuner for kernel variants, its choices cached in memory and on disk.

The conv launchers have a heuristic choice of GEMM tile (``conv._choose_variant``)
that is right for most shapes but not all.  With the kernel configuration's ``autotune``
(``GPUCONV_AUTOTUNE=1``) the first call of each (GPU, op, shape, precision) times every
valid variant with CUDA events and keeps the fastest (the ``gemm-autotune`` variant of
``ops.conv``); later calls, and later processes, read the choice from
``<cache_dir>/autotune.json`` (``$GPUCONV_CACHE_DIR``, default ``~/.cache/gpuconv``).

Only variants that are correct for every shape are candidates (each is tested
against the NumPy spec), so tuning changes speed, never results; it allocates
nothing (the trial launches write the op's own output, which the final launch
overwrites), so the memory plan still holds.

Off by default: it has not yet run on a GPU (see bench/RESULTS.md).  Its switches come from
``gpuconv.kernel_config.current()``.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Callable, Hashable, Sequence, TypeVar

from ..kernel_config import ENV, GEMM_SCHEDULES, current

V = TypeVar("V", bound=Hashable)
Timer = Callable[[Callable[[], None]], float]   # runs a callable, returns milliseconds

_lock = threading.Lock()


# Main-loop schedules of our GEMM kernels (conv.cu's implicit GEMMs, fc.cu's TF32 GEMM):
# "reg" stages the next K slice in registers (2 shared-memory stages); "async" keeps 3
# slices in flight with cp.async (4 stages).  "reg" stays the default until "async" has
# been measured faster on a GPU; the tuner (GPUCONV_AUTOTUNE=1) times both for conv.
SCHEDULES = GEMM_SCHEDULES
SCHEDULE_ENV = ENV["gemm_schedule"]
# The async entry points live in a module variant (cuda.MODULE_VARIANTS), compiled on first use.
SCHEDULE_DEFINES: dict[str, tuple[str, ...]] = {"reg": (), "async": ("GEMM_ASYNC",)}


def schedule() -> str:
    """The GEMM main-loop schedule of the kernel configuration in force ("reg" by default)."""
    return current().gemm_schedule


# The Hopper GEMMs (wgmma.mma_async fed by cp.async, sm_90a; fc.cu and conv.cu): TF32 FC GEMMs
# and TF32 conv implicit GEMMs use them on a compute-capability-9.0 GPU when the kernel
# configuration's ``wgmma`` is on ($GPUCONV_GEMM_WGMMA=1).  Off by default until timed against the mma.sync kernels on an H100 (the "[wgmma]"
# rows of bench_fc.py and bench_conv.py).
WGMMA_ENV = ENV["wgmma"]
WGMMA_DEFINES: tuple[str, ...] = ("GEMM_WGMMA",)  # their module variant (sm_90a: cuda.ARCH_VARIANTS)


def wgmma_enabled() -> bool:
    """Whether TF32 FC and conv GEMMs may use the wgmma kernels (the configuration's ``wgmma``)."""
    return current().wgmma


def enabled() -> bool:
    """Whether the conv GEMM variants are timed per shape (the configuration's ``autotune``)."""
    return current().autotune


def cache_path() -> Path:
    return current().cache_dir / "autotune.json"


class Autotuner:
    """Fastest variant per key; ``timer`` measures one trial (median of a few launches)."""

    def __init__(self, timer: Timer, path: Path | None = None) -> None:
        self.timer = timer
        self.path = path
        self.trials = 0                      # how many variants were timed (tests count them)
        self._choices: dict[str, list] = self._load()

    def _load(self) -> dict[str, list]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
            return {str(k): v for k, v in data.items() if isinstance(v, list)}
        except (OSError, ValueError):
            return {}                        # a damaged cache is only a lost speed-up: re-tune

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(self._choices, indent=1, sort_keys=True))
            tmp.replace(self.path)           # atomic: a reader never sees half a file
        except OSError:
            pass                             # read-only home: keep the choices in memory

    def choose(self, key: str, candidates: Sequence[V], run: Callable[[V], None]) -> V:
        """The cached choice for ``key`` if it is still a candidate, else time them all."""
        with _lock:
            cached = self._choices.get(key)
        if cached is not None:
            for c in candidates:
                if list(c if isinstance(c, tuple) else (c,)) == cached:
                    return c
        times = []
        for c in candidates:
            self.trials += 1
            times.append(self.timer(lambda c=c: run(c)))
        best = candidates[min(range(len(candidates)), key=lambda i: (times[i], i))]
        with _lock:
            self._choices[key] = list(best if isinstance(best, tuple) else (best,))
            self._save()
        return best


_tuner: Autotuner | None = None


def get_tuner(timer: Timer) -> Autotuner:
    """The process-wide tuner (created on first use with the on-disk cache)."""
    global _tuner
    if _tuner is None:
        _tuner = Autotuner(timer, cache_path())
    return _tuner
