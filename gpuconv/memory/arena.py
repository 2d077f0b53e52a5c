"""The executor runs inside the plan: one arena, one param store, one misc region, typed views.

``PlannedExecutor(net, plan, device)`` allocates up front

- ONE ``uint8`` arena of ``plan.arena_bytes`` (activations, their gradients,
  saved tensors, workspace, at the planned offsets: tensors with overlapping
  lifetimes never overlap in memory, others share bytes),
- ONE param store of ``plan.param_store_bytes`` (params | grads | optimizer
  state), whose param/grad views the Net is bound to,
- ONE misc region of ``plan.misc_bytes`` (input batch, labels, the step's small state),

and builds one :class:`~gpuconv.layers.base.Buffers` per layer from views into
them, so a training step allocates nothing of its own: split-K and Winograd
scratch, the loss, the running loss/accuracy totals and the per-step scalars
(optimizer hyperparameters, dropout keys) are all planned tensors.  That is what
lets :class:`gpuconv.step.TrainStep` capture the step as a CUDA graph.  NumPy
and CuPy work alike: every view is
``region[offset:offset + nbytes].view(dtype).reshape(shape)``; a conv that writes into a
concat's buffer gets ``channel_slice(concat_view, c0, c1)`` as its output.

The executor only allocates and hands out views; it runs nothing.  Steps (training
and inference) are :class:`gpuconv.step.TrainStep`'s.

``GPUCONV_DEBUG_ALLOC=1`` (or ``debug=True``) allocates every tensor
separately instead, with the same views API, so compute-sanitizer can catch an
out-of-bounds write that the shared arena would hide.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import device as devmod
from .plan import Plan, PlannedTensor, fmt_bytes



class PlanDoesNotFit(MemoryError):
    """An allocation of the plan failed: the message says which, shows the plan and the largest batch that fits."""

    def __init__(self, message: str, *, allocation: str = "", requested: int = 0, max_batch: int | None = None) -> None:
        super().__init__(message)
        self.allocation, self.requested, self.max_batch = allocation, requested, max_batch


def _is_oom(e: BaseException) -> bool:
    # cupy's OutOfMemoryError subclasses MemoryError; a raw CUDA runtime error says "out of memory".
    return isinstance(e, MemoryError) or "out of memory" in str(e).lower() or "OutOfMemory" in type(e).__name__


def _make_buffers(**kw: Any) -> Any:
    from ..layers.base import Buffers  # noqa: PLC0415  (imported lazily: the layers import the ops)

    return Buffers(**kw)


class PlannedExecutor:
    """Allocates a Plan once and hands the Net typed views of it for every step."""

    def __init__(self, net: Any, plan: Plan, device: Any = None, *, seed: int = 0, debug: bool | None = None,
                 bind: bool = True, allocator: Callable[[Any, int], Any] | None = None) -> None:
        if len(plan.rows) != len(net.layers) or any(r.name != l.name for r, l in zip(plan.rows, net.layers)):
            raise ValueError(f"the plan ({plan.net_name}, {len(plan.rows)} layers) was made for another net than "
                             f"{getattr(net, 'name', '?')} ({len(net.layers)} layers)")
        if np.dtype(plan.dtype) != np.dtype(net.dtype):
            raise ValueError(f"the plan is for {plan.dtype}, the net runs in {np.dtype(net.dtype)}")
        if plan.num_params != net.num_params:
            raise ValueError(f"the plan counts {plan.num_params} parameters, the net has {net.num_params}")
        self.net, self.plan = net, plan
        self.device = device if isinstance(device, devmod.Device) else devmod.get_device(device)
        self.xp = self.device.xp
        self.debug = devmod.debug_alloc() if debug is None else bool(debug)
        self._allocator = allocator or (lambda xp, n: xp.empty(n, dtype=np.uint8))
        self.allocations: list[tuple[str, int]] = []  # (what, bytes) of every allocation made
        self.arena: Any = None
        self.misc: Any = None
        self.param_store: Any = None
        self._separate: dict[str, Any] = {}
        self._allocate()
        self._views: dict[str, Any] = {t.name: self._make_view(t) for t in plan.tensors}
        dt = np.dtype(plan.dtype)
        self._segments = {name: self._segment_view(name, dt) for name in plan.param_segments}
        if bind:
            params = self._segments["params"]
            # Inference keeps no gradients: the net's grad views alias the params, and backward is refused.
            grads = self._segments.get("grads", params)
            net.bind(self.device, seed=seed, param_buffer=params, grad_buffer=grads)
        self._train = None if plan.inference else self._build_buffers(train=True)
        self._infer = self._build_buffers(train=False) if plan.inference else None

    # ---- allocation ----------------------------------------------------------------
    def _alloc(self, what: str, nbytes: int) -> Any:
        try:
            buf = self._allocator(self.xp, int(nbytes))
        except Exception as e:  # noqa: BLE001
            if not _is_oom(e):
                raise
            self._release()
            raise self._does_not_fit(what, nbytes, e) from e
        self.allocations.append((what, int(nbytes)))
        return buf

    def _allocate(self) -> None:
        p = self.plan
        # The param store first: if even the parameters do not fit, no batch will.
        if self.debug:
            for name, (_, n) in p.param_segments.items():
                self._separate[f"param:{name}"] = self._alloc(f"param store segment {name!r}", n)
            for t in p.tensors:
                self._separate[t.name] = self._alloc(f"tensor {t.name!r} ({t.kind})", t.nbytes)
            return
        self.param_store = self._alloc("param store (params | grads | optimizer state)", p.param_store_bytes)
        self.arena = self._alloc("activation arena", p.arena_bytes)
        self.misc = self._alloc("misc (input batch, labels)", p.misc_bytes)

    def _release(self) -> None:
        self.arena = self.misc = self.param_store = None
        self._separate.clear()
        self.allocations.clear()

    def _available_bytes(self) -> int | None:
        """Bytes that could be allocated right now (device free + pool cache), None when unknown."""
        try:
            if self.device.is_gpu:
                free, _ = self.xp.cuda.runtime.memGetInfo()
                pool = self.xp.get_default_memory_pool()
                return int(free) + int(pool.free_bytes())
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except Exception:  # noqa: BLE001
            return None
        return None

    def _does_not_fit(self, what: str, nbytes: int, err: BaseException) -> PlanDoesNotFit:
        from .budget import max_batch  # noqa: PLC0415

        avail = self._available_bytes()
        best = None
        if avail is not None:
            try:
                best = max_batch(self.net, avail, self.plan.optimizer, safety=0.0, inference=self.plan.inference,
                                 context_bytes=0, overhead_bytes=0)
            except Exception:  # noqa: BLE001
                best = None
        hint = ("unknown (free memory could not be read)" if best is None else
                f"{best} (with {fmt_bytes(avail or 0)} available now)" if best > 0 else
                f"none: even batch 1 needs more than the {fmt_bytes(avail or 0)} available")
        msg = (f"the memory plan does not fit on {self.device}: allocating the {what} of {fmt_bytes(nbytes)} "
               f"failed ({type(err).__name__}: {err}).\nLargest batch that would fit: {hint}. "
               f"Nothing was bound: the net's parameters and any checkpoint are untouched.\n\n{self.plan.table()}")
        return PlanDoesNotFit(msg, allocation=what, requested=int(nbytes), max_batch=best)

    # ---- views -----------------------------------------------------------------------
    def _make_view(self, t: PlannedTensor) -> Any:
        if self.debug:
            raw = self._separate[t.name]
        else:
            region = self.misc if t.region == "misc" else self.arena
            raw = region[t.offset:t.offset + t.nbytes]
        return raw.view(np.dtype(t.dtype)).reshape(t.shape)

    def _segment_view(self, name: str, dt: np.dtype) -> Any:
        off, n = self.plan.param_segments[name]
        raw = self._separate[f"param:{name}"] if self.debug else self.param_store[off:off + n]
        return raw.view(dt)

    def view(self, name: str) -> Any:
        """The typed view of a planned tensor, by its name or by an alias (e.g. 'relu1.out')."""
        if name in self._views:
            return self._views[name]
        return self._views[self.plan.tensor(name).name]

    def input_view(self) -> Any:
        return self.view("input")

    def labels_view(self) -> Any:
        return self.view("labels")

    def dscores_view(self) -> Any:
        return self.view("dscores")

    def param_view(self) -> Any:
        return self._segments["params"]

    def grad_view(self) -> Any:
        if "grads" not in self._segments:
            raise RuntimeError("an inference plan keeps no gradients")
        return self._segments["grads"]

    def state_views(self) -> list[Any]:
        """The optimizer's state slots (flat, num_params each), for ``Optimizer.bind(net, state_buffers=...)``."""
        return [self._segments[f"state{j}"] for j in range(self.plan.state_slots)]

    def loss_views(self) -> tuple[Any, Any, Any]:
        """(per-row losses [N], mean loss 0-d, running loss total 0-d float64): the planned loss
        scratch and the total a training step's loss adds into (see ops.loss.LossBuffers)."""
        return self.view("loss.rows"), self.view("loss.mean"), self.view("step.loss_sum")

    def correct_view(self) -> Any:
        """0-d int64: the running count of correct predictions (see ops.loss.accuracy_count)."""
        return self.view("step.correct")

    def loss_sum_view(self) -> Any:
        """0-d float64: the running sum of batch losses times batch size."""
        return self.view("step.loss_sum")

    def hyper_view(self) -> Any:
        """[lr, bc1, bc2]: the optimizer's per-step scalars (see ops.optim.hyper_values)."""
        return self.view("step.hyper")

    def dropout_layers(self) -> list[int]:
        """Indices of the dropout layers, in the order their keys sit in :meth:`dropout_keys_view`."""
        return [i for i, layer in enumerate(self.net.layers) if getattr(layer, "kind", "") == "DROPOUT"]

    def dropout_keys_view(self) -> Any:
        """uint32 [2 * dropouts]: the (k0, k1) of each layer of :meth:`dropout_layers` for the step
        about to run (each layer's Buffers.step["keys"] is its pair); None without dropout."""
        return self.view("step.dropout_keys") if self.dropout_layers() else None

    @property
    def allocated_bytes(self) -> int:
        return sum(n for _, n in self.allocations)

    def _build_buffers(self, train: bool) -> list[Any]:
        keys = {}
        if train and self.dropout_layers():
            all_keys = self.view("step.dropout_keys")
            keys = {i: all_keys[2 * j:2 * j + 2] for j, i in enumerate(self.dropout_layers())}
        out = []
        for i, names in enumerate(self.plan.layer_tensors):
            out.append(_make_buffers(
                out=self._out_view(names),
                dx=self._views[names["dx"]] if (train and names["dx"]) else None,
                dxs=[self._views[n] for n in names.get("dxs", [])] if train else [],
                saved={k: self._views[v] for k, v in names["saved"].items()},
                workspace={k: self._views[v] for k, v in names["workspace"].items()},
                step={"keys": keys[i]} if i in keys else {}))
        return out

    def _out_view(self, names: dict[str, Any]) -> Any:
        """A layer's output: its planned tensor, or its channel slice of a concat's (``out_slice``:
        a conv writing straight into the concat buffer, batch stride Ctot*H*W)."""
        if not names["out"]:
            return None
        view = self._views[names["out"]]
        if names.get("out_slice"):
            from ..ops.concat import channel_slice  # noqa: PLC0415  (lazily: the ops import the device)

            return channel_slice(view, *names["out_slice"])
        return view

    def train_step_buffers(self) -> list[Any]:
        if self._train is None:
            raise RuntimeError("this executor runs an inference plan: make_plan(..., inference=False) to train")
        return self._train

    def inference_buffers(self) -> list[Any]:
        if self._infer is None:
            # A training plan also serves inference: outputs land in the same (larger) arena.
            self._infer = [_make_buffers(out=b.out, saved=dict(b.saved), workspace=dict(b.workspace))
                           for b in self._train]  # type: ignore[union-attr]
        return self._infer

    def __repr__(self) -> str:
        mode = "debug: one allocation per tensor" if self.debug else "arena"
        return (f"PlannedExecutor({self.plan.net_name}, batch {self.plan.batch}, {mode}, "
                f"{fmt_bytes(self.allocated_bytes)} on {self.device})")
