"""Shared benchmark harness: CUDA-event timing, medians, side-by-side rows with PyTorch.

Each bench/bench_<op>.py builds rows with ``time_gpu`` for ours and, when torch
imports, for PyTorch/cuDNN on the same shapes in the same process; ``Row`` prints
the ratio.  Precision modes are separate rows: 'fp32' (TF32 off on both sides)
and 'tf32' (TF32 on both sides).
"""
from __future__ import annotations

import json
import statistics
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

try:  # PyTorch is the yardstick where it is importable (it is on the lent H100)
    import torch  # type: ignore
except Exception:  # noqa: BLE001
    torch = None


@dataclass
class Row:
    suite: str          # e.g. "conv"
    name: str           # e.g. "L1 3->96 11x11/4 128^2 fwd"
    mode: str           # "fp32" | "tf32" | "bf16"
    ours_ms: float | None
    theirs_ms: float | None = None
    work: float | None = None     # FLOPs or bytes of one call
    unit: str = "TFLOP/s"         # or "GB/s", "img/s"
    extra: dict[str, Any] = field(default_factory=dict)

    def rate(self, ms: float | None) -> float | None:
        if ms is None or self.work is None:
            return None
        scale = 1e12 if self.unit == "TFLOP/s" else 1e9 if self.unit == "GB/s" else 1.0
        return self.work / (ms * 1e-3) / scale

    @property
    def ratio(self) -> float | None:
        """theirs/ours time: > 1 means we are faster."""
        if self.ours_ms and self.theirs_ms:
            return self.theirs_ms / self.ours_ms
        return None

    def markdown(self) -> str:
        def f(v: float | None, spec: str = ".3f") -> str:
            return "—" if v is None else format(v, spec)
        return (f"| {self.suite} | {self.name} | {self.mode} | {f(self.ours_ms)} | {f(self.rate(self.ours_ms), '.2f')} | "
                f"{f(self.theirs_ms)} | {f(self.rate(self.theirs_ms), '.2f')} | {f(self.ratio, '.2f')} |")

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ratio": self.ratio})


HEADER = ("| suite | case | mode | ours ms | ours rate | torch ms | torch rate | torch/ours |\n"
          "|---|---|---|---|---|---|---|---|")


def time_gpu(fn: Callable[[], Any], *, warmup: int = 3, iters: int = 20) -> float:
    """Median milliseconds of fn() on the current CUDA stream, timed with CUDA events."""
    from gpuconv import cuda  # noqa: PLC0415

    return cuda.time_ms(fn, reps=iters, warmup=warmup)


def time_torch(fn: Callable[[], Any], *, warmup: int = 3, iters: int = 20) -> float | None:
    """Median milliseconds of a PyTorch CUDA call, or None without torch/CUDA."""
    if torch is None or not torch.cuda.is_available():
        return None
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


# How far a validated row's result may be from the reference (max |ours - ref| / max |ref|) before the row
# is marked invalid: fp32 (TF32 off) vs an fp32 reference leaves ~1e-5 on the suite's largest
# reductions; TF32 rounds inputs to 10 mantissa bits (~1e-3).  A wrong kernel gives O(1).
REL_TOL = {"fp32": 5e-4, "tf32": 2e-2, "bf16": 5e-2}


def rel_err(ours: Any, ref: Any) -> float:
    """max |ours - ref| / max |ref| (cupy, NumPy or emulator arrays of one shape)."""
    if tuple(ours.shape) != tuple(ref.shape):
        raise ValueError(f"result shape {tuple(ours.shape)} != reference shape {tuple(ref.shape)}")
    return float(abs(ours - ref).max()) / max(float(abs(ref).max()), 1e-30)


def validation(mode: str, errors: dict[str, float]) -> dict[str, Any]:
    """A row's extra fields for its distances from the reference: ``<what>_rel_err`` each, and
    ``invalid`` (the names over REL_TOL[mode]) where any is; a non-finite distance is over."""
    extra: dict[str, Any] = {f"{k}_rel_err": v for k, v in errors.items()}
    bad = [k for k, v in errors.items() if not v <= REL_TOL[mode]]   # NaN fails too
    if bad:
        extra["invalid"] = bad
        print(f"WARNING: {mode} result off the reference: " + ", ".join(f"{k} {errors[k]:.2e}" for k in bad)
              + f" (tolerance {REL_TOL[mode]:.0e})", flush=True)
    return extra


def kernel_tag() -> str:
    """' [algo=auto, wgmma]': the kernel choices the kernel configuration in force makes
    (``gpuconv.kernel_config.current()``: a ``using`` scope, else this process's environment),
    '' for the defaults, so rows timed under different settings keep distinct names."""
    from gpuconv.kernel_config import current  # noqa: PLC0415

    cfg = current()
    parts = []
    if cfg.conv_algo != "gemm":
        parts.append(f"algo={cfg.conv_algo}")
    if cfg.gemm_schedule != "reg":
        parts.append(cfg.gemm_schedule)
    if cfg.wgmma:
        parts.append("wgmma")
    if cfg.autotune:
        parts.append("autotune")
    return f" [{', '.join(parts)}]" if parts else ""


def set_torch_tf32(enabled: bool) -> None:
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def print_rows(rows: list[Row]) -> None:
    print(HEADER)
    for r in rows:
        print(r.markdown(), flush=True)


def streamer(json_lines: bool = False) -> Callable[[list[Row]], None]:
    """A printer of rows as they finish (the header once; each row's JSON too when asked), so a
    run cut off by its time limit keeps every figure it measured."""
    started = False

    def emit(rows: list[Row]) -> None:
        nonlocal started
        if not started:
            print(HEADER, flush=True)
            started = True
        for r in rows:
            print(r.markdown(), flush=True)
            if json_lines:
                print(r.to_json(), flush=True)
    return emit


def comma_choices(ap: Any, flag: str, value: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated command-line list, each entry one of ``allowed`` (else ap.error)."""
    vals = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in vals if v not in allowed]
    if bad or not vals:
        ap.error(f"{flag}: unknown {bad or 'empty'}; choose from {', '.join(allowed)}")
    return vals


def guarded_case(suite: str, case: str, mode: str, cp: Any, bench: Callable[[], list[Row]]) -> list[Row]:
    """bench()'s rows, or one row carrying the error (the other cases go on); device memory
    of both frameworks is released afterwards, so one large case does not starve the next."""
    try:
        return bench()
    except Exception as exc:  # noqa: BLE001  (keep benchmarking the other cases)
        traceback.print_exc()
        return [Row(suite, case, mode, None, extra={"error": f"{type(exc).__name__}: {exc}"})]
    finally:
        cp.get_default_memory_pool().free_all_blocks()
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


def main_quick(run: Callable[..., list[Row]], doc: str | None) -> None:
    """The command line of a one-suite benchmark: ``python bench/bench_X.py [--quick]``."""
    import argparse  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0] if doc else None)
    ap.add_argument("--quick", action="store_true", help="smaller shapes, fewer runs")
    print_rows(run(quick=ap.parse_args().quick))


def with_config(fn: Callable[[], None], **overrides: Any) -> Callable[[], None]:
    """fn run inside ``kernel_config.using(**overrides)``: the kernel configuration in force with
    ``overrides`` for the call (the previous one restored after)."""
    from gpuconv.kernel_config import using  # noqa: PLC0415

    def call() -> None:
        with using(**overrides):
            fn()
    return call


def with_schedule(schedule: str, fn: Callable[[], None]) -> Callable[[], None]:
    """fn with our GEMM kernels' main-loop schedule forced (KernelConfig.gemm_schedule: reg or async)."""
    return with_config(fn, gemm_schedule=schedule)


def with_wgmma(fn: Callable[[], None]) -> Callable[[], None]:
    """fn with TF32 FC and conv GEMMs on the Hopper wgmma kernels (KernelConfig.wgmma)."""
    return with_config(fn, wgmma=True)
