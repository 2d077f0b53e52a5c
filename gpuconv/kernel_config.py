"""Which kernels run, and how: one immutable value, resolved once and scoped.

A :class:`KernelConfig` holds every setting that used to be read from the environment
inside the ops: the precision, the conv algorithm, the GEMM main-loop schedule, the
Hopper wgmma kernels, the autotuner, debug allocation, the cache folder, the Winograd
workspace cap and the CPU path's threads.

Resolution order (``KernelConfig.resolve``): explicit flags (arguments that are not None),
then the ``GPUCONV_*`` environment variables, then the defaults.  An entry point (the
``gpuconv`` command, a benchmark) resolves it once and runs inside ``using(cfg)``; code
below it asks ``current()``.  Outside any ``using`` the process default applies: resolved
from the environment the first time it is needed, then fixed.  ``using`` is built on a
``contextvars.ContextVar`` (as tinygrad's ``Context`` or Chainer's ``configuration``), so
a scope restores the previous configuration on exit, errors included.

The memory plan records what this configuration selects per layer and pass
(``gpuconv.memory.plan.KernelChoice``) and ``gpuconv plan`` prints it.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

__all__ = ["KernelConfig", "KernelConfigError", "current", "using", "reset_default",
           "PRECISIONS", "CONV_ALGOS", "GEMM_SCHEDULES", "ENV"]

PRECISIONS = ("fp32", "tf32")
CONV_ALGOS = ("gemm", "winograd", "auto")
GEMM_SCHEDULES = ("reg", "async")

# field -> its environment variable (the names the README documents)
ENV: dict[str, str] = {
    "precision": "GPUCONV_PRECISION",
    "conv_algo": "GPUCONV_CONV_ALGO",
    "gemm_schedule": "GPUCONV_GEMM_SCHEDULE",
    "wgmma": "GPUCONV_GEMM_WGMMA",
    "autotune": "GPUCONV_AUTOTUNE",
    "debug_alloc": "GPUCONV_DEBUG_ALLOC",
    "cache_dir": "GPUCONV_CACHE_DIR",
    "winograd_ws_mb": "GPUCONV_WINOGRAD_WS_MB",
    "cpu_threads": "GPUCONV_CPU_THREADS",
}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
DEFAULT_WINOGRAD_WS_MB = 256.0


class KernelConfigError(ValueError):
    """A configuration value is not one of its choices; the message names the flag or variable."""


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "gpuconv"


def _choice(source: str, value: Any, choices: tuple[str, ...]) -> str:
    v = str(value).strip().lower()
    if v not in choices:
        raise KernelConfigError(f"{source}={value!r}: choose one of {', '.join(choices)}")
    return v


def _flag(source: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise KernelConfigError(f"{source}={value!r}: use 1 or 0 (also true/false, yes/no, on/off)")


def _positive_float(source: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise KernelConfigError(f"{source}={value!r}: must be a number of MiB > 0") from None
    if not v > 0:
        raise KernelConfigError(f"{source}={value!r}: must be a number of MiB > 0")
    return v


def _threads(source: str, value: Any) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        v = int(str(value).strip()) if not isinstance(value, int) or isinstance(value, bool) else value
    except ValueError:
        v = 0
    if isinstance(v, bool) or v < 1:
        raise KernelConfigError(f"{source}={value!r}: must be a positive integer (threads of the CPU path)")
    return v


@dataclass(frozen=True)
class KernelConfig:
    """Every kernel decision the ops make, fixed for a scope.

    precision      'fp32' or 'tf32' (float32 GPU arrays: TF32 runs the GEMMs on tensor cores)
    conv_algo      'gemm' (implicit GEMM), 'winograd' (F(2x2,3x3) where it applies) or 'auto'
                   (where it applies, the faster of the two, timed on first use)
    gemm_schedule  main loop of the GEMM kernels: 'reg' (registers, 2 stages) or 'async' (cp.async)
    wgmma          TF32 GEMMs on Hopper's wgmma (on a compute-capability-9.0 GPU)
    autotune       time every conv GEMM variant per shape on first use and keep the fastest
    debug_alloc    one cudaMalloc per tensor (no pool, no arena): for compute-sanitizer
    cache_dir      autotuner choices, emulator builds, sm_90a cubins
    winograd_ws_mb cap on one Winograd pass's workspace (MiB); the batch is chunked to fit
    cpu_threads    threads of the CPU path (None: the cores available)
    """

    precision: str = "fp32"
    conv_algo: str = "gemm"
    gemm_schedule: str = "reg"
    wgmma: bool = False
    autotune: bool = False
    debug_alloc: bool = False
    cache_dir: Path = dataclasses.field(default_factory=default_cache_dir)
    winograd_ws_mb: float = DEFAULT_WINOGRAD_WS_MB
    cpu_threads: int | None = None

    def __post_init__(self) -> None:
        # validate (and normalise) whatever built the value: resolve(), replace(), a direct call
        set_ = object.__setattr__
        set_(self, "precision", _choice("precision", self.precision, PRECISIONS))
        set_(self, "conv_algo", _choice("conv_algo", self.conv_algo, CONV_ALGOS))
        set_(self, "gemm_schedule", _choice("gemm_schedule", self.gemm_schedule, GEMM_SCHEDULES))
        for name in ("wgmma", "autotune", "debug_alloc"):
            set_(self, name, _flag(name, getattr(self, name)))
        set_(self, "cache_dir", Path(self.cache_dir).expanduser())
        set_(self, "winograd_ws_mb", _positive_float("winograd_ws_mb", self.winograd_ws_mb))
        set_(self, "cpu_threads", _threads("cpu_threads", self.cpu_threads))

    @classmethod
    def resolve(cls, env: Mapping[str, str] | None = None, **flags: Any) -> "KernelConfig":
        """Flags that are not None, else the ``GPUCONV_*`` variables of ``env`` (default
        ``os.environ``), else the defaults.  A bad value raises KernelConfigError naming the
        flag or the variable, and the choices."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(flags) - fields
        if unknown:
            raise KernelConfigError(f"unknown kernel configuration flag(s) {sorted(unknown)}: "
                                    f"choose from {', '.join(sorted(fields))}")
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name in fields:
            flag = flags.get(name)
            if flag is not None:
                values[name] = _parse(name, name, flag)
                continue
            var = ENV[name]
            raw = env.get(var)
            if raw is not None and raw.strip():
                values[name] = _parse(name, var, raw)
            elif raw is not None and name in ("wgmma", "autotune", "debug_alloc"):
                values[name] = False
        return cls(**values)

    def replace(self, **changes: Any) -> "KernelConfig":
        """A copy with ``changes`` (None leaves a field as it is), validated."""
        return dataclasses.replace(self, **{k: _parse(k, k, v) for k, v in changes.items() if v is not None})

    def describe(self) -> str:
        """One line for logs and plans: what differs from the defaults, or 'defaults'."""
        base = KernelConfig()
        parts = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                 if f.name != "cache_dir" and getattr(self, f.name) != getattr(base, f.name)]
        return ", ".join(parts) or "defaults"


def _parse(name: str, source: str, value: Any) -> Any:
    """One field's value from a flag or an environment string, validated (errors name ``source``)."""
    if name == "precision":
        return _choice(source, value, PRECISIONS)
    if name == "conv_algo":
        return _choice(source, value, CONV_ALGOS)
    if name == "gemm_schedule":
        return _choice(source, value, GEMM_SCHEDULES)
    if name in ("wgmma", "autotune", "debug_alloc"):
        return _flag(source, value)
    if name == "cache_dir":
        return Path(str(value).strip()).expanduser()
    if name == "winograd_ws_mb":
        return _positive_float(source, value)
    if name == "cpu_threads":
        return _threads(source, value)
    raise KernelConfigError(f"unknown kernel configuration field {name!r}")


_scoped: contextvars.ContextVar[KernelConfig | None] = contextvars.ContextVar("gpuconv_kernel_config", default=None)
_default: KernelConfig | None = None


def current() -> KernelConfig:
    """The configuration in force: the innermost ``using``, else the process default (resolved
    from the environment on first use).  Threads started outside a ``using`` see the default."""
    global _default
    cfg = _scoped.get()
    if cfg is not None:
        return cfg
    if _default is None:
        _default = KernelConfig.resolve()
    return _default


def reset_default(cfg: KernelConfig | None = None) -> None:
    """Set the process default (None: resolve it again from the environment on next use)."""
    global _default
    _default = cfg


@contextlib.contextmanager
def using(cfg: KernelConfig | None = None, **overrides: Any) -> Iterator[KernelConfig]:
    """Within: ``current()`` is ``cfg`` (default: the current one) with ``overrides`` applied
    (None leaves a field as it is).  The previous configuration is restored on exit."""
    base = current() if cfg is None else cfg
    if not isinstance(base, KernelConfig):
        raise TypeError(f"using(): cfg must be a KernelConfig, got {type(base).__name__}")
    new = base.replace(**overrides) if overrides else base
    token = _scoped.set(new)
    try:
        yield new
    finally:
        _scoped.reset(token)
