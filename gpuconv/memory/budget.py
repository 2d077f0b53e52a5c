"""Memory budgets: how much the device has, what the CUDA context costs, and the largest batch that fits.

Device numbers come from NVML (``pynvml``, from nvidia-ml-py), which answers
WITHOUT creating a CUDA context, so asking "does it fit?" costs nothing on the
device.  A budget is an amount with a unit ("12GiB", "800MiB", "16GB") or a
number without a unit, which is a fraction of the memory and only in (0, 1]
("0.9"); None means the memory free now.  For the GPU the memory is the card's
(NVML; :class:`BudgetError` with a clear message where NVML does not answer); for
the CPU (``device="cpu"``: a run of the NumPy path) it is this machine's memory
(``/proc/meminfo``: MemTotal, MemAvailable), and there is no CUDA context.

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
        raise BudgetError(f"the GPU's memory is unknown: NVML is not usable here ({type(e).__name__}: {e})") from e
    return pynvml


MEMINFO = "/proc/meminfo"


def host_memory() -> DeviceMemory:
    """This machine's memory (MemTotal, MemAvailable of /proc/meminfo): the CPU path's budget."""
    try:
        fields = {}
        for line in Path(MEMINFO).read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
        total, free = fields["MemTotal"], fields["MemAvailable"]
    except (OSError, KeyError, ValueError, IndexError) as e:
        raise BudgetError(f"this machine's memory is unknown ({MEMINFO}: {type(e).__name__}: {e})") from e
    return DeviceMemory(-1, "host memory", total, free, total - free)


def memory_of(device: str = "cuda") -> DeviceMemory:
    """The memory a budget is a part of: the GPU's (NVML) or, for ``device="cpu"``, this machine's."""
    return host_memory() if device == "cpu" else device_memory()


def validate_safety(safety: Any) -> float:
    """The safety fraction as a float in [0, 1); anything else is a :class:`BudgetError`."""
    try:
        value = float(safety)
    except (TypeError, ValueError):
        raise BudgetError(f"--safety {safety!r}: not a number; give the fraction of the budget kept free, "
                          f"in [0, 1), e.g. 0.05") from None
    if not 0 <= value < 1:
        raise BudgetError(f"--safety {safety}: the fraction of the budget kept free must be in [0, 1), e.g. 0.05")
    return value


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
    from ..kernel_config import current  # noqa: PLC0415

    return current().cache_dir / "context_bytes.json"


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
    """The CuPy/NVRTC/pool overhead estimate (env ``GPUCONV_OVERHEAD_BYTES`` overrides; a plain number is bytes)."""
    v = os.environ.get(OVERHEAD_ENV)
    return parse_bytes(v) if v else DEFAULT_OVERHEAD_BYTES


_AMOUNT = re.compile(r"([0-9]*\.?[0-9]+(?:e[+]?[0-9]+)?)\s*([a-zA-Z]*)", re.IGNORECASE)
_EXAMPLES = "e.g. 12GiB, 800MiB, 16GB, or 0.9 (a fraction of the memory)"


def _split(budget: Any) -> tuple[float, str, str]:
    """(value, unit, text) of a budget string; BudgetError when it is not one."""
    text = str(budget).strip()
    m = _AMOUNT.fullmatch(text.replace("_", "").replace(",", ""))
    if not m:
        if text.startswith("-"):
            raise BudgetError(f"--budget {text}: a memory budget must be positive ({_EXAMPLES})")
        raise BudgetError(f"--budget {text!r}: not a memory budget; write {_EXAMPLES}")
    unit = m.group(2).lower()
    if unit not in _UNITS:
        raise BudgetError(f"--budget {text}: unknown unit {m.group(2)!r}; use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB")
    value = float(m.group(1))
    if value <= 0:
        raise BudgetError(f"--budget {text}: a memory budget must be positive ({_EXAMPLES})")
    return value, unit, text


def parse_bytes(amount: str | int) -> int:
    """Bytes from '96MiB', '1GB' or a plain number of bytes (for settings that are always amounts)."""
    if isinstance(amount, int) and not isinstance(amount, bool):
        return amount
    value, unit, _ = _split(amount)
    return int(value * _UNITS[unit])


def parse_budget(budget: str | int | float | None, *, device: str = "cuda") -> int:
    """Bytes from '12GiB', '800MiB', '1.5GB', a fraction '0.9' of the memory, or None (the memory free now).

    A string without a unit is a fraction of the memory and must be in (0, 1]:
    '1.5' or '123456' is refused with a message asking for a unit.  The memory
    is the GPU's, or this machine's for ``device="cpu"``.  From Python, an int
    (or a float above 1) is a number of bytes and a float in (0, 1] a fraction.
    """
    where = "this machine's memory" if device == "cpu" else "the GPU's memory"
    if budget is None:
        try:
            return memory_of(device).free
        except BudgetError as e:
            raise BudgetError(f"no --budget was given and {e}; give an explicit budget such as --budget 12GiB") \
                from None
    if isinstance(budget, bool):
        raise BudgetError(f"not a memory budget: {budget!r}")
    if isinstance(budget, (int, float)):
        if isinstance(budget, float) and 0 < budget <= 1:
            return _fraction(budget, str(budget), device)
        if budget < 1:
            raise BudgetError(f"a memory budget must be positive, got {budget!r}")
        return int(budget)  # bytes
    value, unit, text = _split(budget)
    if unit:
        return int(value * _UNITS[unit])
    if value > 1:
        raise BudgetError(f"--budget {text}: a number without a unit is a fraction of {where}, in (0, 1]; "
                          f"for an amount give a unit, e.g. {text}GiB or {text}MB")
    return _fraction(value, text, device)


def _fraction(value: float, text: str, device: str) -> int:
    try:
        return int(value * memory_of(device).total)
    except BudgetError as e:
        raise BudgetError(f"--budget {text} is a fraction of the memory, but {e}; give an amount instead, "
                          f"e.g. --budget 12GiB") from None


def _is_device_relative(budget: Any) -> bool:
    if budget is None:
        return True
    if isinstance(budget, float) and 0 < budget <= 1:
        return True
    if isinstance(budget, str):
        try:
            return _split(budget)[1] == ""
        except BudgetError:
            return False
    return False


def resolve_overheads(budget: Any, context_bytes: int | None, extra_bytes: int | None,
                      device: str = "cuda") -> tuple[int, int, str]:
    """(context, overhead, note): measured where a GPU answers, else 0 with a note saying so.

    On the CPU there is no CUDA context and no kernel overhead: both are 0.
    """
    if device == "cpu":
        return int(context_bytes or 0), int(extra_bytes or 0), "the CPU path: the budget is this machine's memory"
    note = ""
    if context_bytes is None:
        try:
            context_bytes = measure_context_bytes()
        except BudgetError as e:
            if _is_device_relative(budget):
                raise
            context_bytes, note = 0, f"CUDA context and kernel overhead not included: {e}"
    if extra_bytes is None:
        extra_bytes = overhead_bytes() if not note else 0
    return int(context_bytes), int(extra_bytes), note


def fits(plan: Plan, budget: Any, *, safety: float = DEFAULT_SAFETY, context_bytes: int | None = None,
         overhead: int | None = None, device: str = "cuda") -> tuple[bool, dict[str, Any]]:
    """Whether ``plan`` (+ CUDA context + overhead) fits in ``budget * (1 - safety)``; detail explains."""
    safety = validate_safety(safety)
    total_budget = parse_budget(budget, device=device)
    ctx, extra, note = resolve_overheads(budget, context_bytes, overhead, device)
    limit = int(total_budget * (1 - safety))
    need = plan.total_bytes + ctx + extra
    detail = {"budget_bytes": total_budget, "limit_bytes": limit, "safety": safety, "plan_bytes": plan.total_bytes,
              "context_bytes": ctx, "overhead_bytes": extra, "needed_bytes": need, "headroom_bytes": limit - need,
              "note": note, "device": device,
              "summary": (f"needs {fmt_bytes(need)} (plan {fmt_bytes(plan.total_bytes)} + context {fmt_bytes(ctx)} "
                          f"+ overhead {fmt_bytes(extra)}) of {fmt_bytes(limit)} usable "
                          f"({fmt_bytes(total_budget)} budget - {safety:.0%} safety)")}
    return need <= limit, detail


def max_batch(net: Any, budget: Any, optimizer: str = "sgd", safety: float = DEFAULT_SAFETY, *,
              inference: bool = False, context_bytes: int | None = None, overhead_bytes: int | None = None,
              limit: int = 1 << 24, device: str = "cuda") -> int:
    """The largest batch whose planned total fits ``budget * (1 - safety)``; 0 when not even batch 1 does.

    Exponential then binary search with the invariant "lo fits, hi does not", so
    the result fits and result + 1 does not, whatever the plan's shape.
    """
    safety = validate_safety(safety)
    budget_bytes = parse_budget(budget, device=device)   # first: its message says what to give instead
    ctx, extra, _ = resolve_overheads(budget, context_bytes, overhead_bytes, device)

    def ok(b: int) -> bool:
        plan = make_plan(net, b, optimizer=optimizer, inference=inference, _other_mode=False)
        return fits(plan, budget_bytes, safety=safety, context_bytes=ctx, overhead=extra, device=device)[0]

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
