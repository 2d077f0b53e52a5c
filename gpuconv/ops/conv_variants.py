"""Opt-in conv variants, registered with ``ops.conv_gpu.CONV``: none runs unless the kernel
configuration asks for it, and none is in the default kernels' code.

* ``gemm-async``   the implicit GEMM with the cp.async main loop (``gemm_schedule="async"``;
                   the ``GEMM_ASYNC`` module variant)
* ``gemm-wgmma``   TF32 implicit GEMMs on Hopper's warpgroup MMA (``wgmma=True`` on a
                   compute-capability-9.0 device; the sm_90a ``GEMM_WGMMA`` module variant)
* ``gemm-autotune`` every compiled tile x schedule timed per shape on first use, the fastest
                   kept (``autotune=True``; ``ops.autotune`` caches the choice)
* ``auto``         for Winograd-eligible layers, the GEMM path or Winograd, whichever is
                   faster on this GPU and shape (``conv_algo="auto"``)

They stay opt-in until measured on a GPU (bench/gpu_session.sh): a variant that wins and
validates becomes a default; one that loses everywhere is deleted.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from .. import cuda
from ..kernel_config import KernelConfig
from . import _views, autotune
from .conv_gpu import (CONV, WGMMA, ConvProblem, Variant, _TILES, _result, gemm_choice, gemm_launch,
                   launch_gemm_choice)
from .selector import Choice


def _use_wgmma(precision: str, cfg: KernelConfig) -> bool:
    """TF32 on an sm_90 device with the configuration's ``wgmma`` on: the implicit GEMMs run on wgmma."""
    return precision == "tf32" and cfg.wgmma and cuda.wgmma_capable()


def _heuristic(bm: int, bn: int, precision: str, cfg: KernelConfig) -> Variant:
    return (bm, bn, WGMMA if _use_wgmma(precision, cfg) else cfg.gemm_schedule)


# --- schedules of the implicit GEMM ---

def _async_applies(p: ConvProblem, cfg: KernelConfig) -> str | None:
    return "gemm_schedule=async: cp.async main loop" if p.dtype == "float32" and cfg.gemm_schedule == "async" else None


def _wgmma_applies(p: ConvProblem, cfg: KernelConfig) -> str | None:
    if p.dtype == "float32" and _use_wgmma(p.precision, cfg):
        return "wgmma on, TF32, sm_90 device: Hopper warpgroup MMA"
    return None


CONV.register("gemm-async", priority=80, applies=_async_applies, opt_in=True,
              plan=lambda p, cfg, why: gemm_choice(p, "gemm-async", why, "async"), launch=launch_gemm_choice)
CONV.register("gemm-wgmma", priority=70, applies=_wgmma_applies, opt_in=True,
              plan=lambda p, cfg, why: gemm_choice(p, "gemm-wgmma", why, WGMMA), launch=launch_gemm_choice)


# --- the autotuner over tiles and schedules ---

def _tuned_tile(kind: str, precision: str, geo: Sequence[int], heuristic: Variant, run: Any,
                cfg: KernelConfig | None = None) -> Variant:
    """The fastest compiled (BM, BN, schedule) for this GPU and shape: every tile in every
    schedule (with wgmma on an sm_90 device, also the wgmma kernels), timed once, cached."""
    from ..kernel_config import current  # noqa: PLC0415
    cfg = current() if cfg is None else cfg
    wg = _use_wgmma(precision, cfg)
    key = f"{cuda.device_key()}|conv_{kind}|{precision}{'|wgmma' if wg else ''}|" + ",".join(str(v) for v in geo)
    schedules = (*autotune.SCHEDULES, WGMMA) if wg else autotune.SCHEDULES
    variants = [(tm, tn, sc) for tm, tn in _TILES for sc in schedules]
    candidates = [heuristic] + [v for v in variants if v != heuristic]   # ties keep the heuristic
    return autotune.get_tuner(cuda.time_ms).choose(key, candidates, run)


def _trial_safe(a: dict[str, Any]) -> dict[str, Any]:
    """The arrays for timed trials, which each overwrite the output: a residual that shares
    memory with it (the in-place fused residual) is first copied, so every trial -- and the
    final run -- reads the original residual."""
    r, y = a.get("r"), a.get("y")
    if r is None or y is None:
        return a
    r0, y0 = _views.address(r), _views.address(y)
    if r0 < y0 + y.nbytes and y0 < r0 + r.nbytes:
        return dict(a, r=r.copy())
    return a


def _lazy_trial_arrays(a: dict[str, Any]) -> tuple[Any, Any]:
    """(arrays for a trial, arrays for the final run): the copy of ``_trial_safe`` is made only
    if a trial runs (a cached choice runs once, in place)."""
    made: dict[str, dict[str, Any]] = {}

    def trial() -> dict[str, Any]:
        if "a" not in made:
            made["a"] = _trial_safe(a)
        return made["a"]
    return trial, lambda: made.get("a", a)


def _autotune_applies(p: ConvProblem, cfg: KernelConfig) -> str | None:
    return "autotune on: fastest tile x schedule, timed on first use" if p.dtype == "float32" and cfg.autotune else None


def _autotune_plan(p: ConvProblem, cfg: KernelConfig, why: str) -> Choice:
    base = gemm_choice(p, "gemm-autotune", why, "reg")
    bm, bn, _ = base.params["variant"]
    return Choice("conv", p.pass_, "gemm-autotune", (), p.precision, 0, why,
                  {"heuristic": _heuristic(bm, bn, p.precision, cfg), "splits": base.params["splits"], "cfg": cfg})


def _autotune_launch(p: ConvProblem, c: Choice, a: dict[str, Any]) -> Any:
    splits = c.params["splits"]
    geo = p.geo
    key_geo = {"fwd": [*geo, int(a.get("b") is not None), int(bool(p.relu))] + ([1] if p.residual else []),
               "bwdd": geo, "bwdf": [*geo, splits]}[p.pass_]
    trial, final = _lazy_trial_arrays(a)
    v = _tuned_tile(p.pass_, p.precision, key_geo, c.params["heuristic"],
                    lambda v: gemm_launch(p, trial(), v, splits), c.params["cfg"])
    gemm_launch(p, final(), v, splits)
    return _result(p, a)


CONV.register("gemm-autotune", priority=60, applies=_autotune_applies, plan=_autotune_plan, launch=_autotune_launch,
              opt_in=True)


# --- conv_algo="auto": the GEMM path or Winograd, timed per shape ---

def _auto_applies(p: ConvProblem, cfg: KernelConfig) -> str | None:
    return "conv_algo=auto: GEMM or Winograd, whichever is faster here (timed on first use)" \
        if p.winograd_mode == "auto" else None


def _auto_plan(p: ConvProblem, cfg: KernelConfig, why: str) -> Choice:
    gemm_v, gemm_c = CONV.select(replace(p, algo="gemm"), cfg)
    wino_v, wino_c = CONV.select(replace(p, algo="winograd"), cfg)
    return Choice("conv", p.pass_, "auto", (), p.precision, wino_c.workspace_elems, why,
                  {"candidates": {"gemm": (gemm_v, gemm_c), "winograd": (wino_v, wino_c)}})


def _auto_launch(p: ConvProblem, c: Choice, a: dict[str, Any]) -> Any:
    cands = c.params["candidates"]
    trial, final = _lazy_trial_arrays(a)

    def run(name: str, arrays: Any = trial) -> Any:
        v, choice = cands[name]
        return v.launch(replace(p, algo=name), choice, arrays())

    geo = {"fwd": [*p.x_shape, p.w_shape[0], p.pad, int(a.get("b") is not None), int(bool(p.relu))]
           + ([1] if p.residual else []),
           "bwdd": [*p.x_shape, p.w_shape[0], p.pad],
           "bwdf": [*p.x_shape, p.w_shape[0], p.pad, int(a.get("db") is not None)]}[p.pass_]
    key = f"{cuda.device_key()}|conv_algo_{p.pass_}|{p.precision}|" + ",".join(str(v) for v in geo)
    # The trials write only the op's own output, which the final run overwrites; ties keep the GEMM.
    best = autotune.get_tuner(cuda.time_ms).choose(key, ("gemm", "winograd"), run)
    return run(best, final)


CONV.register("auto", priority=11, applies=_auto_applies, plan=_auto_plan, launch=_auto_launch, opt_in=True)
