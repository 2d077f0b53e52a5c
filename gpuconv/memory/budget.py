"""Memory budgets: how much the device has, what the CUDA context costs, and the largest batch that fits.

Device numbers come from NVML (``pynvml``, from nvidia-ml-py), which answers
WITHOUT creating a CUDA context, so asking "does it fit?" costs nothing on the
device.  Explicit byte budgets ("12GiB", "800MiB", 2**30) work on any machine;
only a device-relative budget (a fraction, or None = the free memory now) needs
NVML, and raises :class:`BudgetError` with a clear message where there is none.

``max_batch`` searches on the plan (pure arithmetic), never by trial runs.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .plan import Plan, fmt_bytes, make_plan

DEFAULT_SAFETY = 0.05
# CuPy's loaded modules, NVRTC-compiled kernels, cuBLAS handles and the pool's rounding: not in the plan
# and not in the bare context.  An estimate (measured by bench/bench_memory.py; adjust with the env var).
OVERHEAD_ENV = "GPUCONV_OVERHEAD_BYTES"
DEFAULT_OVERHEAD_BYTES = 96 << 20
CACHE_DIR_ENV = "GPUCONV_CACHE_DIR"

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


class BudgetError(RuntimeError):
    """A budget could not be parsed, or a device budget was asked for where no device answers."""


@dataclass(frozen=True)
class DeviceMemory:
    """What NVML reports for one GPU, in bytes."""

    index: int
    name: str
    total: int
    free: int
    used: int


def _nvml() -> Any:
    try:
        import pynvml  # noqa: PLC0415
        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001  (no library, no driver, no GPU)
        raise BudgetError(f"a device memory budget needs NVML, which is not usable here ({type(e).__name__}: {e}); "
                          f"give an explicit budget such as --budget 12GiB instead") from e
    return pynvml


def device_memory(index: int | None = None) -> DeviceMemory:
    """Total/free/used memory of the GPU (CUDA_VISIBLE_DEVICES' first, or ``index``), via NVML, no context."""
    nv = _nvml()
    if index is None:
        index = _visible_index()
    h = nv.nvmlDeviceGetHandleByIndex(index)
    info = nv.nvmlDeviceGetMemoryInfo(h)
    name = nv.nvmlDeviceGetName(h)
    name = name.decode() if isinstance(name, bytes) else str(name)
    return DeviceMemory(index, name, int(info.total), int(info.free), int(info.used))


def _visible_index() -> int:
    # NVML numbers devices physically; CUDA_VISIBLE_DEVICES="3" means CUDA device 0 is NVML device 3.
    vis = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(vis) if vis.isdigit() else 0


def process_used_bytes(index: int | None = None, pid: int | None = None) -> int:
    """Device memory NVML attributes to this process (0 before it has a CUDA context)."""
    nv = _nvml()
    h = nv.nvmlDeviceGetHandleByIndex(_visible_index() if index is None else index)
    pid = os.getpid() if pid is None else pid
    used = 0
    for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        try:
            procs = getattr(nv, getter)(h)
        except Exception:  # noqa: BLE001
            continue
        for p in procs:
            if p.pid == pid and p.usedGpuMemory is not None:
                used = max(used, int(p.usedGpuMemory))
    return used


def _cache_file() -> Path:
    base = os.environ.get(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "gpuconv")
    return Path(base) / "context_bytes.json"


def measure_context_bytes(*, refresh: bool = False) -> int:
    """Bytes a CUDA context (plus CuPy's first tiny op) costs this process, measured once and cached.

    NVML's per-process used memory before any context is 0; after a tiny cupy op
    it is the context (+ the module that op loaded + one small pool block, which
    is subtracted).  Cached in ~/.cache/gpuconv/context_bytes.json keyed by GPU
    name, driver and CuPy version, so later runs need no context to ask.
    """
    dm = device_memory()
    nv = _nvml()
    driver = nv.nvmlSystemGetDriverVersion()
    driver = driver.decode() if isinstance(driver, bytes) else str(driver)
    from .. import device as devmod  # noqa: PLC0415

    cp = devmod._cupy()
    key = f"{dm.name}|{driver}|{getattr(cp, '__version__', 'none')}"
    path = _cache_file()
    cache: dict[str, int] = {}
    try:
        cache = json.loads(path.read_text())
    except Exception:  # noqa: BLE001  (missing or corrupt cache: measure again)
        cache = {}
    if not refresh and key in cache:
        return int(cache[key])
    if cp is None:
        raise BudgetError("measuring the CUDA context needs cupy, which is not importable")
    before = process_used_bytes(dm.index)
    if before > 0:
        # This process already has a context: measure in a fresh one instead.
        ctx = _measure_in_subprocess()
    else:
        dev_before = device_memory(dm.index).used
        a = cp.zeros(1, dtype=cp.float32) + 1  # creates the context and loads one elementwise module
        a.get()
        after = process_used_bytes(dm.index)
        if after == 0:  # containers often hide per-process numbers (PID namespaces): use the device's delta
            after = max(device_memory(dm.index).used - dev_before, 0)
        pool_bytes = cp.get_default_memory_pool().total_bytes()
        del a
        ctx = max(after - before - int(pool_bytes), 0)
    cache[key] = ctx
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cache, indent=1))
    except OSError:
        pass  # a read-only home must not stop a run: we measured, we just cannot remember
    return ctx


def _measure_in_subprocess() -> int:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = "from gpuconv.memory.budget import measure_context_bytes as m; print(m(refresh=True))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise BudgetError(f"measuring the CUDA context in a fresh process failed: {out.stderr.strip()[-500:]}")
    return int(out.stdout.strip().splitlines()[-1])


def overhead_bytes() -> int:
    """The CuPy/NVRTC/pool overhead estimate (env ``GPUCONV_OVERHEAD_BYTES`` overrides)."""
    v = os.environ.get(OVERHEAD_ENV)
    return parse_budget(v) if v else DEFAULT_OVERHEAD_BYTES


def parse_budget(budget: str | int | float | None) -> int:
    """Bytes from '12GiB', '800MiB', '1.5GB', 123456, a fraction '0.9' (of total device memory), or None.

    None means the device's free memory now (NVML).  A number in (0, 1] is a
    fraction of the device's total memory; an integer > 1 is bytes.
    """
    if budget is None:
        return device_memory().free
    if isinstance(budget, bool):
        raise BudgetError(f"not a memory budget: {budget!r}")
    if isinstance(budget, float) and 0 < budget <= 1:
        return int(budget * device_memory().total)  # a fraction of the device
    if isinstance(budget, (int, float)):
        if budget < 1:
            raise BudgetError(f"a memory budget must be positive, got {budget!r}")
        return int(budget)  # bytes
    s = str(budget).strip().replace("_", "").replace(",", "")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)", s)
    if not m:
        raise BudgetError(f"cannot read memory budget {budget!r}: write e.g. 12GiB, 800MiB, 16GB or 0.9 "
                          f"(a fraction of the device's total memory)")
    value, unit = float(m.group(1)), m.group(2).lower()
    if unit not in _UNITS:
        raise BudgetError(f"unknown unit {m.group(2)!r} in memory budget {budget!r}: use B, KiB, MiB, GiB, KB, MB, GB")
    if value <= 0:
        raise BudgetError(f"a memory budget must be positive, got {budget!r}")
    if unit == "" and value <= 1 and "." in m.group(1):
        return int(value * device_memory().total)  # "0.9": a fraction of the device
    return int(value * _UNITS[unit])


def _is_device_relative(budget: Any) -> bool:
    if budget is None:
        return True
    if isinstance(budget, float) and 0 < budget <= 1:
        return True
    return isinstance(budget, str) and re.fullmatch(r"\s*0?\.[0-9]+\s*|\s*1\.0*\s*", budget) is not None


def resolve_overheads(budget: Any, context_bytes: int | None, extra_bytes: int | None) -> tuple[int, int, str]:
    """(context, overhead, note): measured where a GPU answers, else 0 with a note saying so."""
    note = ""
    if context_bytes is None:
        try:
            context_bytes = measure_context_bytes()
        except BudgetError as e:
            if _is_device_relative(budget):
                raise
            context_bytes, note = 0, f"context cost not included (no GPU here: {e})"
    if extra_bytes is None:
        extra_bytes = overhead_bytes() if not note else 0
    return int(context_bytes), int(extra_bytes), note


def fits(plan: Plan, budget: Any, *, safety: float = DEFAULT_SAFETY, context_bytes: int | None = None,
         overhead: int | None = None) -> tuple[bool, dict[str, Any]]:
    """Whether ``plan`` (+ CUDA context + overhead) fits in ``budget * (1 - safety)``; detail explains."""
    if not 0 <= safety < 1:
        raise ValueError(f"safety must be in [0, 1), got {safety}")
    total_budget = parse_budget(budget)
    ctx, extra, note = resolve_overheads(budget, context_bytes, overhead)
    limit = int(total_budget * (1 - safety))
    need = plan.total_bytes + ctx + extra
    detail = {"budget_bytes": total_budget, "limit_bytes": limit, "safety": safety, "plan_bytes": plan.total_bytes,
              "context_bytes": ctx, "overhead_bytes": extra, "needed_bytes": need, "headroom_bytes": limit - need,
              "note": note,
              "summary": (f"needs {fmt_bytes(need)} (plan {fmt_bytes(plan.total_bytes)} + context {fmt_bytes(ctx)} "
                          f"+ overhead {fmt_bytes(extra)}) of {fmt_bytes(limit)} usable "
                          f"({fmt_bytes(total_budget)} budget - {safety:.0%} safety)")}
    return need <= limit, detail


def max_batch(net: Any, budget: Any, optimizer: str = "sgd", safety: float = DEFAULT_SAFETY, *,
              inference: bool = False, context_bytes: int | None = None, overhead_bytes: int | None = None,
              limit: int = 1 << 24) -> int:
    """The largest batch whose planned total fits ``budget * (1 - safety)``; 0 when not even batch 1 does.

    Exponential then binary search with the invariant "lo fits, hi does not", so
    the result fits and result + 1 does not, whatever the plan's shape.
    """
    ctx, extra, _ = resolve_overheads(budget, context_bytes, overhead_bytes)
    budget_bytes = parse_budget(budget)

    def ok(b: int) -> bool:
        plan = make_plan(net, b, optimizer=optimizer, inference=inference, _other_mode=False)
        return fits(plan, budget_bytes, safety=safety, context_bytes=ctx, overhead=extra)[0]

    if not ok(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and ok(hi):
        lo, hi = hi, hi * 2
    if hi > limit:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo
