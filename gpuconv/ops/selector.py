"""Kernel selection as a lookup: each op keeps a small registry of its variants.

A variant registers itself with its op's :class:`Selector`: a name, the condition under
which it applies (given the problem's shapes and the :class:`~gpuconv.kernel_config.KernelConfig`),
what it will launch (:class:`Choice`: the kernels, the float32 workspace, why it was chosen)
and its launcher.  ``select`` walks the variants in priority order and takes the first that
applies; the op then calls that variant's launcher.  The default kernels register at low
priority; opt-in variants (Winograd, the cp.async and wgmma schedules, the autotuner)
register in front of them from their own code, and apply only when the configuration asks
for them.  The memory plan calls the same ``select`` with the layer's shapes, so the plan's
record of what runs is what runs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from ..kernel_config import KernelConfig

P = TypeVar("P")


@dataclass(frozen=True)
class Choice:
    """What one op call (one layer, one pass) will launch."""

    op: str                       # conv | fc
    pass_: str                    # fwd | bwdd | bwdf (conv) ; fwd | bwdd | bwdw (fc)
    variant: str                  # the registered variant's name
    kernels: tuple[str, ...]      # main entry points launched ((): decided on first use, see why)
    precision: str
    workspace_elems: int = 0      # float32 scratch the launch uses (the plan holds it)
    why: str = ""
    params: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # launch details

    @property
    def kernel(self) -> str:
        return " + ".join(self.kernels) if self.kernels else f"({self.variant}: chosen on first use)"


@dataclass(frozen=True)
class Variant(Generic[P]):
    name: str
    priority: int                                          # lower is tried first
    applies: Callable[[P, KernelConfig], str | None]       # why it applies, or None
    plan: Callable[[P, KernelConfig, str], Choice]         # what it will launch
    launch: Callable[[P, Choice, dict[str, Any]], Any]     # run it on the call's arrays
    opt_in: bool = False


class Selector(Generic[P]):
    """An op's variants by name, tried in priority order."""

    def __init__(self, op: str) -> None:
        self.op = op
        self._variants: dict[str, Variant[P]] = {}
        self._logs: list[list[Choice]] = []

    def register(self, name: str, *, priority: int, applies: Callable[[P, KernelConfig], str | None],
                 plan: Callable[[P, KernelConfig, str], Choice], launch: Callable[[P, Choice, dict[str, Any]], Any],
                 opt_in: bool = False) -> Variant[P]:
        v = Variant(name, priority, applies, plan, launch, opt_in)
        self._variants[name] = v
        return v

    def __getitem__(self, name: str) -> Variant[P]:
        return self._variants[name]

    def names(self) -> list[str]:
        return [v.name for v in self.ordered()]

    def ordered(self) -> list[Variant[P]]:
        return sorted(self._variants.values(), key=lambda v: (v.priority, v.name))

    def select(self, problem: P, cfg: KernelConfig) -> tuple[Variant[P], Choice]:
        """The first variant that applies, and what it will launch."""
        for v in self.ordered():
            why = v.applies(problem, cfg)
            if why is not None:
                return v, v.plan(problem, cfg, why)
        raise LookupError(f"{self.op}: no kernel variant applies to {problem}")

    def run(self, problem: P, cfg: KernelConfig, arrays: dict[str, Any]) -> Any:
        """Select, then launch the chosen variant on the call's arrays (recorded where asked)."""
        v, choice = self.select(problem, cfg)
        for log in self._logs:
            log.append(choice)
        return v.launch(problem, choice, arrays)

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[Choice]]:
        """Within: every choice ``run`` makes is appended to the yielded list (what ran, to set
        beside the plan's record)."""
        log: list[Choice] = []
        self._logs.append(log)
        try:
            yield log
        finally:
            self._logs.remove(log)
