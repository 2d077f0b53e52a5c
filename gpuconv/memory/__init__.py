"""Memory: the planner (pure arithmetic), the executor that runs inside the plan, budgets, the profiler.

- :func:`make_plan` -> :class:`Plan`: every tensor of a step, placed by liveness in one arena.
- :class:`PlannedExecutor`: allocates the plan once (arena | param store | misc) and hands out views.
- :func:`parse_budget`, :func:`fits`, :func:`max_batch`: NVML budgets, searched on the plan.
- :func:`profile` -> ``ProfileReport``: planned vs measured bytes and time per layer.

The executor and profiler are imported lazily so the planner works even where the
ops (and hence the layers' execution code) cannot be imported.
"""
from __future__ import annotations

from typing import Any

from .budget import BudgetError, device_memory, fits, max_batch, measure_context_bytes, parse_budget
from .plan import ALIGN, STATE_SLOTS, LayerRow, Plan, PlannedTensor, make_plan, place

__all__ = ["ALIGN", "BudgetError", "LayerRow", "Plan", "PlanDoesNotFit", "PlannedExecutor", "PlannedTensor",
           "STATE_SLOTS", "device_memory", "fits", "make_plan", "max_batch", "measure_context_bytes",
           "parse_budget", "place", "profile"]


def __getattr__(name: str) -> Any:
    if name in ("PlannedExecutor", "PlanDoesNotFit"):
        from . import arena  # noqa: PLC0415

        return getattr(arena, name)
    if name == "profile":
        from .profile import profile  # noqa: PLC0415

        return profile
    raise AttributeError(name)
