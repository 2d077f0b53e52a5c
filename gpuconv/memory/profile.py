"""The per-layer memory profiler: real training steps (gpuconv.step.TrainStep) in the plan's memory, planned vs measured.

For every layer and phase (forward, backward) it records

- the bytes of the arrays the layer *produced* (its output, what it kept for
  backward, its input gradient), read off the arrays themselves, and whether
  each of them is the planned view (same address): the plan is checked against
  what actually ran, not against itself;
- the bytes the ops allocated on their own during that phase (temporaries): on
  the GPU a ``cupy.cuda.MemoryHook`` counting pool mallocs and real cudaMallocs,
  on the CPU ``tracemalloc`` (NumPy reports its buffers to it);
- the time: CUDA events on the GPU, ``perf_counter`` on the CPU.

After a warm-up step, a training step must do ZERO new device allocations
(cudaMalloc): ``ProfileReport.steady_state_device_allocs`` counts them.  On the
GPU the process' device memory from NVML is sampled after every step.

A branching net (residual and Inception blocks) is measured node by node the same way: a
merge node's forward takes all its inputs (its output is compared with each of them, so an
alias is not counted), and its backward's gradients, one per input, count as what it produced
(CONCAT's copies, planned as ``Buffers.dxs``; an ADD hands dy itself to both, which is no new
memory).  An array counts as an alias when it lies anywhere inside an input's memory, not only
at its start: CONCAT's gradient slices of dy are no new memory, nor is a conv's output written
into its slice of a concat's buffer (that memory is the concat's, counted at the concat).  ``LayerProfile.reads`` names each node's inputs; the table gets a ``reads`` column
and the chart draws an arc from each input to a node that does not read the row above it.

Output: ``table()``, ``to_json()``, and ``to_html()`` (an inline SVG bar chart of
planned vs measured bytes per layer; no matplotlib).
"""
from __future__ import annotations

import html
import json
import statistics
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import device as devmod
from .arena import PlannedExecutor
from .plan import Plan, fmt_bytes, make_plan


@dataclass
class LayerProfile:
    index: int
    name: str
    describe: str
    planned_bytes: int            # output + saved + input gradient(s), as planned (0 for aliases)
    measured_bytes: int           # the same, read off the arrays the layer produced
    in_plan: bool                 # every produced array is the planned view (same address)
    temp_bytes: int = 0           # ops' own allocations during forward + backward (peak on CPU, sum on GPU)
    temp_allocs: int = 0
    forward_ms: float = 0.0
    backward_ms: float = 0.0
    stray: list[str] = field(default_factory=list)  # produced arrays that were NOT planned views
    reads: list[str] = field(default_factory=list)  # the nodes whose outputs it reads ("input": the data)


@dataclass
class ProfileReport:
    net_name: str
    batch: int
    device: str
    optimizer: str
    steps: int
    layers: list[LayerProfile]
    plan_total_bytes: int
    arena_bytes: int
    param_store_bytes: int
    misc_bytes: int
    losses: list[float]
    optimizer_ms: float = 0.0
    steady_state_device_allocs: int | None = None     # cudaMallocs after warm-up (GPU); must be 0
    steady_state_pool_mallocs: int | None = None      # pool requests after warm-up (served from cache)
    steady_state_pool_bytes: int | None = None
    process_peak_bytes: int | None = None             # NVML, this process, max over steps (GPU)
    pool_reserved_bytes: int | None = None            # cupy pool's total bytes (GPU)
    plan_table: str = ""
    graph: bool = False                               # a branching net (some node does not read the row above)

    def reads_text(self, k: int) -> str:
        """'<- a, b' for a node that does not read the row above it (names inside its block relative
        to it, as ``gpuconv summary`` writes them); '' for the next node of a chain."""
        l = self.layers[k]
        above = self.layers[k - 1].name if k > 0 else "input"
        if not self.graph or l.reads == [above]:
            return ""
        scope = l.name[:l.name.rfind(".") + 1]
        return "<- " + ", ".join(n[len(scope):] if scope and n.startswith(scope) else n for n in l.reads)

    @property
    def planned_layer_bytes(self) -> int:
        return sum(l.planned_bytes for l in self.layers)

    @property
    def measured_layer_bytes(self) -> int:
        return sum(l.measured_bytes for l in self.layers)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("plan_table")
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self) -> str:
        labels = [f"{l.name} {l.describe}" for l in self.layers]
        reads = [self.reads_text(k) for k in range(len(self.layers))]
        # a chain keeps the notes' 26 columns; a graph's block-scoped names need more
        w = 26 if not self.graph else min(max([26] + [len(s) for s in labels]), 48)
        wr = max([len("reads")] + [len(s) for s in reads])
        rcol = f" {'reads':<{wr}}" if self.graph else ""
        lines = [f"{self.net_name}: batch {self.batch} on {self.device}, {self.optimizer}, {self.steps} steps",
                 f"{'layer':<{w}}{rcol} {'planned':>11} {'measured':>11} {'in plan':>8} {'temporaries':>12} "
                 f"{'fwd ms':>9} {'bwd ms':>9}"]
        lines.append("-" * len(lines[1]))
        for l, label, src in zip(self.layers, labels, reads):
            col = f" {src:<{wr}}" if self.graph else ""
            lines.append(f"{label[:w]:<{w}}{col} {fmt_bytes(l.planned_bytes):>11} "
                         f"{fmt_bytes(l.measured_bytes):>11} {'yes' if l.in_plan else 'NO':>8} "
                         f"{fmt_bytes(l.temp_bytes):>12} {l.forward_ms:>9.3f} {l.backward_ms:>9.3f}")
        lines.append("-" * len(lines[1]))
        if self.graph:
            merges = sum(len(l.reads) > 1 for l in self.layers)
            lines.append(f"graph: {len(self.layers)} nodes, {merges} merge node(s); '<-' names the inputs of a node "
                         f"that does not read the row above it")
        lines.append(f"per-layer tensors: planned {fmt_bytes(self.planned_layer_bytes)}, measured "
                     f"{fmt_bytes(self.measured_layer_bytes)}; optimizer step {self.optimizer_ms:.3f} ms")
        lines.append(f"plan total {fmt_bytes(self.plan_total_bytes)} = param store {fmt_bytes(self.param_store_bytes)}"
                     f" + arena {fmt_bytes(self.arena_bytes)} + misc {fmt_bytes(self.misc_bytes)}")
        if self.process_peak_bytes is not None:
            err = 100.0 * (self.plan_total_bytes - self.process_peak_bytes) / max(self.process_peak_bytes, 1)
            lines.append(f"NVML process peak {fmt_bytes(self.process_peak_bytes)} (plan {err:+.1f}% of it; the "
                         f"difference is the CUDA context, loaded kernels and the ops' temporaries)")
        if self.pool_reserved_bytes is not None:
            lines.append(f"cupy pool reserved {fmt_bytes(self.pool_reserved_bytes)}")
        if self.steady_state_device_allocs is not None:
            lines.append(f"steady state: {self.steady_state_device_allocs} new device allocations after warm-up "
                         f"({self.steady_state_pool_mallocs} pool requests, "
                         f"{fmt_bytes(self.steady_state_pool_bytes or 0)}, served from the pool's cache)")
        return "\n".join(lines)

    def to_html(self) -> str:
        """A self-contained page: an inline SVG bar chart (planned vs measured per layer) and the table.

        A branching net gets lanes at the left: an arc from each input to a node that does not
        read the row above it (a skip connection, an Inception branch's first layer, a merge)."""
        rows = self.layers
        bar_h, gap, width = 10, 8, 560
        lanes = 140 if self.graph else 0
        left = lanes + (max([30] + [len(f"{l.name} {l.describe}") for l in rows]) * 7 + 12 if self.graph else 220)
        row_h = 2 * bar_h + gap
        top = max([max(l.planned_bytes, l.measured_bytes) for l in rows] + [1])
        height = len(rows) * row_h + 60
        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 120}" height="{height}" '
                 f'font-family="monospace" font-size="11">',
                 f'<rect x="{left}" y="5" width="12" height="10" fill="#4c72b0"/>'
                 f'<text x="{left + 16}" y="14">planned</text>'
                 f'<rect x="{left + 90}" y="5" width="12" height="10" fill="#dd8452"/>'
                 f'<text x="{left + 106}" y="14">measured</text>']
        if self.graph:
            parts += self._lanes(lanes, 30, row_h, bar_h)
        y = 30
        for l in rows:
            label = html.escape(f"{l.name} {l.describe}")
            tip = html.escape(f"{l.name} reads {', '.join(l.reads)}") if l.reads else label
            bold = ' font-weight="bold"' if len(l.reads) > 1 else ""  # a merge node
            parts.append(f'<text x="{left - 6}" y="{y + bar_h + 3}" text-anchor="end"{bold}><title>{tip}</title>'
                         f'{label}</text>')
            for k, (v, color) in enumerate(((l.planned_bytes, "#4c72b0"), (l.measured_bytes, "#dd8452"))):
                w = width * v / top
                parts.append(f'<rect x="{left}" y="{y + k * bar_h}" width="{w:.1f}" height="{bar_h - 1}" '
                             f'fill="{color}"><title>{label}: {fmt_bytes(v)}</title></rect>')
            parts.append(f'<text x="{left + width * max(l.planned_bytes, l.measured_bytes) / top + 4:.1f}" '
                         f'y="{y + bar_h + 3}">{fmt_bytes(l.planned_bytes)}'
                         f'{"" if l.in_plan else " (NOT in plan)"}</text>')
            y += 2 * bar_h + gap
        parts.append("</svg>")
        title = html.escape(f"gpuconv memory profile: {self.net_name}, batch {self.batch}, {self.device}")
        return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title></head><body>"
                f"<h1>{title}</h1><p>Bytes per layer (output + kept for backward + input gradient): planned vs "
                f"measured.</p>{''.join(parts)}<h2>Profile</h2><pre>{html.escape(self.table())}</pre>"
                f"<h2>Plan</h2><pre>{html.escape(self.plan_table)}</pre></body></html>\n")

    def _lanes(self, x0: int, y0: int, row_h: int, bar_h: int) -> list[str]:
        """SVG arcs in the ``x0`` pixels left of the labels: from the row of each input to the row of
        a node that does not read the row above it (deeper arcs for longer skips; the input's row is
        the top).  A dot marks each node's own row on the lane."""
        index = {l.name: k for k, l in enumerate(self.layers)}
        index["input"] = -1

        def cy(k: int) -> float:
            return y0 - 8 if k < 0 else y0 + k * row_h + bar_h

        out = [f'<text x="{x0 - 4}" y="{y0 - 5}" text-anchor="end" fill="#555">input</text>']
        edge = x0 - 4
        for k, l in enumerate(self.layers):
            for name in l.reads:
                p = index.get(name)
                if p is None or p == k - 1:
                    continue  # the row above: the chain's own order, no arc
                depth = min(x0 - 10, 12 + 18 * (k - p) ** 0.5)
                color = "#c44e52" if len(l.reads) > 1 else "#55a868"
                out.append(f'<path d="M {edge} {cy(p):.1f} C {edge - depth:.1f} {cy(p):.1f} {edge - depth:.1f} '
                           f'{cy(k):.1f} {edge} {cy(k):.1f}" fill="none" stroke="{color}" stroke-width="1.2">'
                           f'<title>{html.escape(f"{l.name} reads {name}")}</title></path>')
        for k in range(len(self.layers)):
            out.append(f'<circle cx="{edge}" cy="{cy(k):.1f}" r="2" fill="#555"/>')
        return out

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write profile.html, profile.json and profile.txt under ``out_dir``; returns their paths."""
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        paths = {"html": d / "profile.html", "json": d / "profile.json", "txt": d / "profile.txt"}
        paths["html"].write_text(self.to_html())
        paths["json"].write_text(self.to_json())
        paths["txt"].write_text(self.table() + "\n\n" + self.plan_table + "\n")
        return paths


# ------------------------------------------------------------------------------------ measuring

def _ptr(a: Any) -> int:
    if devmod.is_gpu_array(a):
        return int(a.data.ptr)
    return int(np.asarray(a).__array_interface__["data"][0])


def _extent(a: Any) -> tuple[int, int]:
    """[first byte, one past the last) of the memory ``a`` addresses (a channel slice's span
    includes the other channels between its samples, as a kernel's view of it does)."""
    lo = _ptr(a)
    return lo, lo + sum((int(d) - 1) * int(s) for d, s in zip(a.shape, a.strides)) + a.dtype.itemsize


def _within(a: Any, o: Any) -> bool:
    """Whether ``a`` lies inside the memory of ``o`` (the same array, a view or a slice of it)."""
    if not _is_array(o) or o.size == 0 or devmod.is_gpu_array(a) != devmod.is_gpu_array(o):
        return False
    (a0, a1), (o0, o1) = _extent(a), _extent(o)
    return o0 <= a0 and a1 <= o1


def _is_array(a: Any) -> bool:
    return hasattr(a, "nbytes") and hasattr(a, "dtype") and hasattr(a, "shape")


class _Counter:
    """Allocation counter for one phase: GPU hook or CPU tracemalloc."""

    def __init__(self, gpu: bool) -> None:
        self.gpu = gpu
        self.pool_bytes = 0
        self.pool_mallocs = 0
        self.device_allocs = 0
        self.device_bytes = 0
        self.hook: Any = _make_gpu_hook(self) if gpu else None

    def phase(self) -> "_Phase":
        return _Phase(self)


class _Phase:
    def __init__(self, c: _Counter) -> None:
        self.c = c
        self.bytes = 0
        self.allocs = 0

    def __enter__(self) -> "_Phase":
        if self.c.gpu:
            self._b0, self._n0 = self.c.pool_bytes, self.c.pool_mallocs
        else:
            tracemalloc.reset_peak()
            self._cur0 = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.c.gpu:
            self.bytes, self.allocs = self.c.pool_bytes - self._b0, self.c.pool_mallocs - self._n0
        else:
            self.bytes = max(tracemalloc.get_traced_memory()[1] - self._cur0, 0)
            self.allocs = int(self.bytes > 0)


def _make_gpu_hook(counter: _Counter) -> Any:
    cp = devmod._cupy()  # the GPU path: cupy is importable (only device.py imports it)
    assert cp is not None

    class AllocCounter(cp.cuda.MemoryHook):  # type: ignore[misc]
        """Counts every pool request (malloc) and every real device allocation (alloc, i.e. cudaMalloc)."""

        name = "gpuconv_alloc_counter"

        def malloc_postprocess(self, device_id: int, size: int, mem_size: int, mem_ptr: int, pmem_id: int) -> None:
            counter.pool_mallocs += 1
            counter.pool_bytes += int(mem_size)

        def alloc_postprocess(self, device_id: int, mem_size: int, mem_ptr: int) -> None:
            counter.device_allocs += 1
            counter.device_bytes += int(mem_size)

    return AllocCounter()


class _Timer:
    def __init__(self, gpu: bool, xp: Any) -> None:
        self.gpu, self.xp = gpu, xp
        self.pending: list[tuple[Any, Any, Callable[[float], None]]] = []

    def start(self) -> Any:
        if self.gpu:
            e = self.xp.cuda.Event()
            e.record()
            return e
        return time.perf_counter()

    def stop(self, t0: Any, sink: Callable[[float], None]) -> None:
        if self.gpu:
            e = self.xp.cuda.Event()
            e.record()
            self.pending.append((t0, e, sink))
        else:
            sink((time.perf_counter() - t0) * 1e3)

    def flush(self) -> None:
        if self.gpu and self.pending:
            self.pending[-1][1].synchronize()
            for a, b, sink in self.pending:
                sink(self.xp.cuda.get_elapsed_time(a, b))
            self.pending.clear()


def profile(net: Any, batch: int, device: Any = None, steps: int = 5, optimizer: str = "sgd", *,
            seed: int = 0, warmup: int = 1, plan: Plan | None = None) -> ProfileReport:
    """Run ``warmup + steps`` real planned training steps of ``net`` and measure each layer."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    from ..optim import Optimizer  # noqa: PLC0415
    from ..step import TrainStep  # noqa: PLC0415  (the step imports the ops; the planner does not)

    dev = device if isinstance(device, devmod.Device) else devmod.get_device(device)
    plan = plan or make_plan(net, batch, optimizer=optimizer)
    ex = PlannedExecutor(net, plan, dev, seed=seed)
    opt = Optimizer(optimizer).bind(net, state_buffers=ex.state_views(), hyper=ex.hyper_view())
    step = TrainStep(net, opt, ex)
    rng = np.random.default_rng(seed)
    n_classes = int(net.layers[-1].out_shape[0])
    step.load(rng.standard_normal((batch, *net.input_shape)).astype(plan.dtype),
              rng.integers(0, n_classes, batch).astype(np.int32))
    loss_mean = ex.loss_views()[1]

    gpu = dev.is_gpu
    counter = _Counter(gpu)
    timer = _Timer(gpu, dev.xp)
    planned_ptrs = {_ptr(v): name for name, v in ex._views.items() if v.size}
    # a conv writing into its slice of a concat's buffer: that memory is the concat's (counted there)
    buffers = ex.train_step_buffers()
    borrowed = {i: _ptr(buffers[i].out) for i, names in enumerate(plan.layer_tensors) if names.get("out_slice")}
    L = len(net.layers)
    fwd_ms: list[list[float]] = [[] for _ in range(L)]
    bwd_ms: list[list[float]] = [[] for _ in range(L)]
    opt_ms: list[float] = []
    measured = [0] * L
    temp = [0] * L
    temp_n = [0] * L
    stray: list[list[str]] = [[] for _ in range(L)]
    recording = {"on": False}

    def produced(i: int, what: str, a: Any, *others: Any) -> None:
        """Count an array layer i produced, unless it lies inside one of its inputs (an alias or a
        slice: CONCAT's gradient slices of dy), or is its planned slice of a concat's output."""
        if not _is_array(a) or a.size == 0:
            return
        p = _ptr(a)
        if any(_within(a, o) for o in others):
            return
        if what == "output" and borrowed.get(i) == p:
            return
        measured[i] += int(a.nbytes)
        if p not in planned_ptrs:
            stray[i].append(f"{what} {tuple(a.shape)} {a.dtype}")

    originals: list[tuple[Any, Any, Any]] = []
    for i, layer in enumerate(net.layers):
        f0, b0 = layer.forward, layer.backward

        def fwd(x: Any, train: bool, buf: Any = None, *, _i: int = i, _f: Any = f0, _l: Any = layer) -> Any:
            t0 = timer.start()
            with counter.phase() as ph:
                y = _f(x, train, buf) if buf is not None else _f(x, train)
            timer.stop(t0, fwd_ms[_i].append)
            if recording["on"]:
                temp[_i] += ph.bytes
                temp_n[_i] += ph.allocs
                xs = list(x) if isinstance(x, (list, tuple)) else [x]  # a merge node reads several
                produced(_i, "output", y, *xs)
                for k, v in _l._cache.items():
                    if _is_array(v) and k not in ("x", "y"):
                        produced(_i, f"saved {k}", v, *xs, y)
            return y

        def bwd(dy: Any, buf: Any = None, *, _i: int = i, _b: Any = b0) -> Any:
            t0 = timer.start()
            with counter.phase() as ph:
                dx = _b(dy, buf) if buf is not None else _b(dy)
            timer.stop(t0, bwd_ms[_i].append)
            if recording["on"]:
                temp[_i] += ph.bytes
                temp_n[_i] += ph.allocs
                if isinstance(dx, (list, tuple)):  # a merge node: one gradient per input (ADD's: dy itself)
                    for j, d in enumerate(dx):
                        produced(_i, f"input gradient {j}", d, dy, *dx[:j])
                else:
                    produced(_i, "input gradient", dx, dy)
            return dx

        originals.append((layer, f0, b0))
        layer.forward, layer.backward = fwd, bwd
    update0 = opt.launch_update

    def update() -> None:
        t0 = timer.start()
        update0()
        timer.stop(t0, opt_ms.append)

    opt.launch_update = update

    losses: list[float] = []
    peak: int | None = None
    if gpu:
        try:
            from .budget import process_used_bytes  # noqa: PLC0415
            process_used_bytes()
            nvml_ok = True
        except Exception:  # noqa: BLE001
            nvml_ok = False
    tracing = False
    try:
        if not gpu and not tracemalloc.is_tracing():
            tracemalloc.start()
            tracing = True
        for s in range(warmup + steps):
            if s == warmup:
                # from here on: measure; per-layer bytes are averaged over the measured steps
                for lst in (*fwd_ms, *bwd_ms, opt_ms):
                    lst.clear()
                recording["on"] = True
                if gpu:
                    counter.hook.__enter__()
            step.run()
            timer.flush()
            losses.append(float(devmod.to_host(loss_mean)))
            if gpu and nvml_ok:
                dev.synchronize()
                from .budget import process_used_bytes  # noqa: PLC0415
                used = process_used_bytes()
                peak = used if peak is None else max(peak, used)
    finally:
        if gpu and recording["on"]:
            counter.hook.__exit__(None, None, None)
        if tracing:
            tracemalloc.stop()
        for layer, f0, b0 in originals:
            # drop the instance attributes: the class methods show through again
            del layer.forward, layer.backward
        del opt.launch_update

    rows = []
    for i, layer in enumerate(net.layers):
        names = plan.layer_tensors[i]
        out = None if names.get("out_slice") else names["out"]  # a concat's slice: counted at the concat
        planned = sum(plan.tensor(n).nbytes for n in [out, names["dx"], *names.get("dxs", []),
                                                      *names["saved"].values()] if n)
        rows.append(LayerProfile(
            index=i, name=layer.name, describe=layer.describe(), planned_bytes=planned,
            measured_bytes=measured[i] // steps, in_plan=not stray[i], temp_bytes=temp[i] // steps,
            temp_allocs=temp_n[i] // steps,
            forward_ms=statistics.median(fwd_ms[i]) if fwd_ms[i] else 0.0,
            backward_ms=statistics.median(bwd_ms[i]) if bwd_ms[i] else 0.0,
            stray=sorted(set(stray[i])), reads=[net.node_name(p) for p in net.sources[i]]))
    report = ProfileReport(
        net_name=plan.net_name, batch=batch, device=str(dev), optimizer=optimizer, steps=steps, layers=rows,
        plan_total_bytes=plan.total_bytes, arena_bytes=plan.arena_bytes, param_store_bytes=plan.param_store_bytes,
        misc_bytes=plan.misc_bytes, losses=losses, optimizer_ms=statistics.median(opt_ms) if opt_ms else 0.0,
        plan_table=plan.table(), graph=not net.is_chain)
    if gpu:
        report.steady_state_device_allocs = counter.device_allocs
        report.steady_state_pool_mallocs = counter.pool_mallocs
        report.steady_state_pool_bytes = counter.pool_bytes
        report.process_peak_bytes = peak
        report.pool_reserved_bytes = int(dev.xp.get_default_memory_pool().total_bytes())
    return report
