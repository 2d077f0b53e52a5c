"""The memory plan: every byte a training (or inference) step needs, placed before anything is allocated.

Pure arithmetic on the Net's static information (shapes, dtypes, what each layer
keeps for backward); it works on a machine without a GPU and without running a
single op.  The executor (:mod:`gpuconv.memory.arena`) allocates exactly what
the plan says, so the plan is not an estimate of the framework's memory use: it
IS the framework's memory use (plus whatever the ops allocate internally, which
the profiler measures).

The notes' three categories (CS231n, "Computational Considerations"):

- activations and their gradients (plus what layers keep for backward: pooling
  switches, dropout masks, BN statistics, LRN scale; plus kernel workspace).
  These are placed in ONE arena by liveness: a tensor only needs memory from the
  step that writes it to the last step that reads it, so tensors whose lifetimes
  do not overlap share bytes.  In inference only the current activations are
  kept ("discarding the previous activations on layers below").
- parameters, their gradients and the optimizer's step cache: one separate
  allocation, the *param store* (params | grads | state 0 | state 1).
- miscellaneous: the input batch, the labels; in
  training also the step's small state (loss scratch, running loss and accuracy
  totals, the per-step optimizer scalars and dropout keys), so that a training
  step allocates nothing at all.

Timeline (L layers): forward of layer i at step i; the loss at step L (it reads
the scores and writes dscores); backward of layer i at step 2L-1-i.  So step L
is both the loss and the backward of the last layer.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

ALIGN = 256  # cudaMalloc returns 256-byte aligned pointers; keep every view as aligned as a fresh allocation

# Per-parameter state tensors each optimizer keeps (the notes' "step cache").  Kept in sync with
# gpuconv.optim.STATE_SLOTS (a test checks it); duplicated so the planner imports no ops.
STATE_SLOTS: dict[str, int] = {"sgd": 0, "momentum": 1, "nesterov": 1, "adagrad": 1, "rmsprop": 1, "adam": 2}

LABEL_DTYPE = np.dtype(np.int32)
STEP_HYPER = 3  # the optimizer's per-step scalars on the device: lr, Adam's two bias corrections
MiB = 1 << 20
GiB = 1 << 30


def align_up(n: int, a: int = ALIGN) -> int:
    """Round ``n`` bytes up to a multiple of ``a``."""
    return (int(n) + a - 1) // a * a


def fmt_bytes(n: float) -> str:
    """Human bytes in binary units, as the notes convert ("divide by 1024 multiple times")."""
    n = float(n)
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{int(n)} B"


def fmt_count(n: int) -> str:
    """The notes' short counts: 150K, 3.2M."""
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1000:
        return f"{n / 1e3:.0f}K"
    return str(n)


@dataclass
class PlannedTensor:
    """One tensor of the arena (or of the misc region) and where/when it lives.

    ``intervals`` are inclusive step ranges in which the tensor holds live data;
    ``start``/``end`` are their hull.  Two tensors may share bytes only when no
    interval of one overlaps an interval of the other.
    """

    name: str
    kind: str              # activation | gradient | saved | workspace | misc
    layer: int             # producing layer index; -1 for the input batch and misc
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    offset: int = -1
    start: int = 0
    end: int = 0
    intervals: tuple[tuple[int, int], ...] = ()
    region: str = "arena"  # arena | misc
    aliases: tuple[str, ...] = ()  # names of layer outputs / gradients that are this same memory

    @property
    def size_aligned(self) -> int:
        return align_up(self.nbytes)

    def live_at(self, step: int) -> bool:
        return any(a <= step <= b for a, b in self.intervals)

    def overlaps_in_time(self, other: "PlannedTensor") -> bool:
        return any(a <= d and c <= b for a, b in self.intervals for c, d in other.intervals)

    def overlaps_in_memory(self, other: "PlannedTensor") -> bool:
        return (self.region == other.region and self.offset < other.offset + other.nbytes
                and other.offset < self.offset + self.nbytes and self.nbytes > 0 and other.nbytes > 0)


@dataclass
class LayerRow:
    """One row of the notes' table, in values and in bytes (for the planned batch)."""

    index: int
    name: str
    describe: str
    out_shape: tuple[int, ...]
    inplace: bool
    activations_per_example: int   # values; 0 when the output aliases the input
    activation_bytes: int          # this layer's output, whole batch
    gradient_bytes: int            # gradient of that output (training only)
    saved_bytes: int               # switches, masks, BN stats, LRN scale (training: kept fwd -> bwd)
    workspace_bytes: int
    weights: int                   # the notes' "weights" column (no biases)
    params: int
    param_bytes: int
    param_grad_bytes: int
    optimizer_state_bytes: int


@dataclass(frozen=True)
class KernelChoice:
    """The kernel one layer's pass runs, decided when the plan is made from the layer's shapes
    and the kernel configuration in force (``gpuconv.kernel_config``), with its workspace.
    ``kernel``: the main entry points, or '(variant: chosen on first use)' for a timed choice."""

    layer: str
    pass_: str              # fwd | bwdd | bwdf (conv) ; fwd | bwdd | bwdw (fc)
    kernel: str
    variant: str            # the op selector's variant name (ops.selector)
    precision: str
    workspace_bytes: int
    why: str


@dataclass
class Plan:
    """Everything one step needs, placed.  ``total_bytes`` = param store + arena + misc."""

    net_name: str
    batch: int
    optimizer: str
    inference: bool
    dtype: str
    input_shape: tuple[int, ...]
    num_steps: int
    rows: list[LayerRow]
    tensors: list[PlannedTensor]
    arena_bytes: int
    no_reuse_bytes: int
    peak_live_bytes: int
    param_store_bytes: int
    param_segments: dict[str, tuple[int, int]]   # name -> (byte offset, nbytes) in the param store
    misc_bytes: int
    num_params: int
    state_slots: int
    layer_tensors: list[dict[str, Any]] = field(default_factory=list)  # per layer: out, dx, dxs, saved, workspace names
    other_mode_total_bytes: int | None = None   # training total for an inference plan and vice versa
    forward_values_per_example: int = 0         # the notes' count: input + every non-aliased test-time output
    kernels: list[KernelChoice] = field(default_factory=list)  # per layer and pass, in execution order
    kernel_config: str = ""                     # the kernel configuration the choices were made under

    # ---- derived numbers ----------------------------------------------------------
    @property
    def total_bytes(self) -> int:
        return self.param_store_bytes + self.arena_bytes + self.misc_bytes

    @property
    def training_total_bytes(self) -> int | None:
        return self.other_mode_total_bytes if self.inference else self.total_bytes

    @property
    def inference_total_bytes(self) -> int | None:
        return self.total_bytes if self.inference else self.other_mode_total_bytes

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    def tensor(self, name: str) -> PlannedTensor:
        """The placed tensor called ``name`` (or holding the alias ``name``)."""
        for t in self.tensors:
            if t.name == name or name in t.aliases:
                return t
        raise KeyError(f"no planned tensor {name!r}")

    def activation_values_per_example(self, include_input: bool = True) -> int:
        """The notes' "TOTAL memory" in values per image (forward activations, no aliases)."""
        n = sum(r.activations_per_example for r in self.rows)
        return n + (int(math.prod(self.input_shape)) if include_input else 0)

    def category_bytes(self) -> dict[str, int]:
        """The notes' three categories, without reuse (what a naive allocator would hold) and with."""
        acts = sum(r.activation_bytes + r.gradient_bytes + r.saved_bytes + r.workspace_bytes for r in self.rows)
        return {"activations (no reuse)": acts, "activations (arena, with reuse)": self.arena_bytes,
                "parameters (params + grads + optimizer state)": self.param_store_bytes,
                "misc (input batch, labels, step state)": self.misc_bytes}

    # ---- output ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_bytes"] = self.total_bytes
        d["training_total_bytes"] = self.training_total_bytes
        d["inference_total_bytes"] = self.inference_total_bytes
        d["activation_values_per_example"] = self.activation_values_per_example()
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=_json_default)

    def kernel_table(self) -> str:
        """Which kernel each layer's pass runs, why, and its workspace (``gpuconv plan`` prints it)."""
        lines = [f"Kernels ({self.kernel_config or 'default kernel configuration'}):"]
        if not self.kernels:
            return lines[0] + " none (no CONV or FC layer)"
        w = max(len(k.layer) for k in self.kernels)
        for k in self.kernels:
            ws = f", workspace {fmt_bytes(k.workspace_bytes)}" if k.workspace_bytes else ""
            lines.append(f"  {k.layer:<{w}} {k.pass_:<4} {k.precision:<4} {k.kernel}  [{k.variant}: {k.why}{ws}]")
        return "\n".join(lines)

    def table(self) -> str:
        """The notes' per-layer table, then the three categories and the totals (MiB/GiB)."""
        b, isz = self.batch, self.itemsize
        head = (f"{self.net_name}: batch {b}, {self.dtype}, "
                f"{'inference' if self.inference else f'training with {self.optimizer}'}")
        lines = [head]
        cols = (f"{'layer':<26} {'output volume':<15} {'memory/example':>16} {'weights':>13} "
                f"{'act MiB':>9} {'grad MiB':>9} {'saved MiB':>9} {'param MiB':>9}")
        lines += [cols, "-" * len(cols)]
        inp = int(math.prod(self.input_shape))
        lines.append(f"{'INPUT':<26} {_volume(self.input_shape):<15} {_mem(inp):>16} {0:>13,} "
                     f"{inp * b * isz / MiB:>9.2f} {'':>9} {'':>9} {'':>9}")
        for r in self.rows:
            label = f"{r.name} {r.describe}"[:26]
            mem = "(in place)" if r.inplace else _mem(r.activations_per_example)
            lines.append(f"{label:<26} {_volume(r.out_shape):<15} {mem:>16} {r.weights:>13,} "
                         f"{r.activation_bytes / MiB:>9.2f} {r.gradient_bytes / MiB:>9.2f} "
                         f"{(r.saved_bytes + r.workspace_bytes) / MiB:>9.2f} "
                         f"{(r.param_bytes + r.param_grad_bytes + r.optimizer_state_bytes) / MiB:>9.2f}")
        lines.append("-" * len(cols))
        vals = self.activation_values_per_example()
        fwd = self.forward_values_per_example
        lines.append(f"TOTAL memory: {fwd:,} values x {isz} bytes = {fmt_bytes(fwd * isz)} / example "
                     f"(forward at test time, input included: the notes' count)")
        if vals != fwd:
            lines.append(f"  training also keeps outputs that are aliases at test time (dropout): {vals:,} values "
                         f"/ example; gradients double it")
        lines.append(f"TOTAL params: {self.num_params:,} ({fmt_bytes(self.num_params * isz)})")
        lines.append("")
        lines.append("Categories (the notes' three sources of memory):")
        for k, v in self.category_bytes().items():
            lines.append(f"  {k:<48} {fmt_bytes(v):>12}")
        lines.append(f"  arena peak of live bytes (lower bound)             {fmt_bytes(self.peak_live_bytes):>12}")
        lines.append(f"  arena with reuse / without reuse                   "
                     f"{fmt_bytes(self.arena_bytes)} / {fmt_bytes(self.no_reuse_bytes)}")
        slots = "" if self.inference else f" (params, grads, {self.state_slots} state slot(s))"
        lines.append(f"TOTAL this step: {fmt_bytes(self.total_bytes)} = param store {fmt_bytes(self.param_store_bytes)}"
                     f"{slots} + arena {fmt_bytes(self.arena_bytes)} + misc {fmt_bytes(self.misc_bytes)}")
        if self.training_total_bytes is not None and self.inference_total_bytes is not None:
            lines.append(f"Totals: training {fmt_bytes(self.training_total_bytes)}, "
                         f"inference {fmt_bytes(self.inference_total_bytes)}")
        if self.net_name.startswith("vgg16"):
            lines.append("Note: the CS231n notes print 'TOTAL memory: 24M' for VGG16; that is an arithmetic slip: "
                         "their own rows sum to ~15.2M values per image (15,237,608 with the input), "
                         "i.e. ~58 MiB/image forward, not ~93MB.")
        return "\n".join(lines)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.dtype):
        return o.name
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _volume(shape: Sequence[int]) -> str:
    if len(shape) == 3:
        c, h, w = shape
        return f"[{h}x{w}x{c}]"
    return f"[1x1x{shape[0]}]" if len(shape) == 1 else str(list(shape))


def _mem(values: int) -> str:
    return f"{values:,}"


# ---------------------------------------------------------------------------------------- placement

def place(tensors: list[PlannedTensor], align: int = ALIGN) -> int:
    """Assign ``offset`` to every tensor: greedy by size, best fit into gaps; returns the arena size.

    Larger tensors are placed first (they constrain the layout most).  For each
    tensor, the already-placed tensors whose lifetimes overlap its own are the
    only obstacles; among the free gaps between them (offsets aligned to
    ``align``) the smallest one that fits is used, else the tensor goes after the
    highest obstacle.  Tensors of zero bytes get offset 0.
    """
    order = sorted(tensors, key=lambda t: (-t.size_aligned, t.start, t.name))
    placed: list[PlannedTensor] = []
    top = 0
    for t in order:
        if t.nbytes == 0:
            t.offset = 0
            continue
        size = align_up(t.nbytes, align)
        obstacles = sorted((p for p in placed if p.overlaps_in_time(t)), key=lambda p: p.offset)
        best: int | None = None
        best_gap = None
        cursor = 0
        for p in obstacles:
            if p.offset - cursor >= size:
                gap = p.offset - cursor
                if best_gap is None or gap < best_gap:
                    best, best_gap = cursor, gap
            cursor = max(cursor, align_up(p.offset + p.nbytes, align))
        if best is None:
            best = cursor
        t.offset = best
        placed.append(t)
        top = max(top, best + size)
    return top


def peak_live(tensors: Iterable[PlannedTensor], num_steps: int) -> int:
    """Max over steps of the aligned bytes live at that step: no placement can beat it."""
    ts = list(tensors)
    return max((sum(t.size_aligned for t in ts if t.live_at(s)) for s in range(num_steps)), default=0)


# ---------------------------------------------------------------------------------------- the planner

def _short(layer_name: str, spec_name: str) -> str:
    """'pool1.switches' -> 'switches' (the key the layer looks up in Buffers.saved)."""
    prefix = layer_name + "."
    return spec_name[len(prefix):] if spec_name.startswith(prefix) else spec_name


def _is_inplace(layer: Any, inference: bool) -> bool:
    # Dropout is the identity at test time (it returns x itself), so its output aliases its input there.
    return bool(layer.inplace) or (inference and getattr(layer, "kind", "") == "DROPOUT")


def make_plan(net: Any, batch: int, *, optimizer: str = "sgd", inference: bool = False, dtype: Any = None,
              include_input: bool = True, include_labels: bool | None = None,
              _other_mode: bool = True) -> Plan:
    """Plan one training step (or one inference forward) of ``net`` at ``batch``.

    ``net`` needs only its static information: ``layers`` (built), ``input_shape``,
    ``dtype``, ``name``.  ``dtype`` overrides the float dtype (e.g. to see a
    float64 run); uint8 switches/masks keep their dtype.  ``include_input``
    counts the input batch (misc) (augmentation writes into it in place: see gpuconv.augment);
    labels (int32) are counted in training unless ``include_labels`` is False.
    """
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    batch = int(batch)
    if optimizer not in STATE_SLOTS:
        raise ValueError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(STATE_SLOTS)}")
    net_dtype = np.dtype(getattr(net, "dtype", np.float32))
    fdt = np.dtype(dtype) if dtype is not None else net_dtype
    isz = fdt.itemsize
    layers = list(net.layers)
    L = len(layers)
    loss_step = L  # reads the scores, writes dscores; also the backward step of the last layer
    num_steps = L if inference else 2 * L
    slots = 0 if inference else STATE_SLOTS[optimizer]

    def bwd(i: int) -> int:
        return 2 * L - 1 - i

    def cast(spec_dtype: Any) -> np.dtype:
        d = np.dtype(spec_dtype)
        return fdt if d == net_dtype or d.kind == "f" else d

    def tensor_bytes(shape: Sequence[int], d: np.dtype) -> int:
        return int(math.prod(shape)) * d.itemsize

    tensors: list[PlannedTensor] = []
    layer_tensors: list[dict[str, Any]] = [{"out": None, "dx": None, "dxs": [], "saved": {}, "workspace": {}}
                                           for _ in layers]

    # ---- misc: the input batch (the tensor activation -1 refers to), labels
    misc: list[PlannedTensor] = []
    in_shape = (batch, *tuple(net.input_shape))
    input_t = PlannedTensor("input", "misc", -1, in_shape, fdt.name, tensor_bytes(in_shape, fdt),
                            start=0, end=num_steps - 1, intervals=((0, num_steps - 1),), region="misc")
    if include_input:
        misc.append(input_t)
    if include_labels if include_labels is not None else not inference:
        misc.append(PlannedTensor("labels", "misc", -1, (batch,), LABEL_DTYPE.name, batch * LABEL_DTYPE.itemsize,
                                  start=0, end=num_steps - 1, intervals=((0, num_steps - 1),), region="misc"))
    if not inference:
        # The step's own small state, so a step allocates nothing (and can be a CUDA graph):
        # the loss (per-row scratch and mean), the running loss total and correct count the
        # training loop reads at its log points, and the scalars that change every step
        # (optimizer [lr, bias corrections], dropout keys), read by the kernels from memory.
        n_dropout = sum(1 for layer in layers if getattr(layer, "kind", "") == "DROPOUT")
        small = [("loss.rows", (batch,), fdt), ("loss.mean", (), fdt), ("step.loss_sum", (), np.dtype(np.float64)),
                 ("step.correct", (), np.dtype(np.int64)), ("step.hyper", (STEP_HYPER,), fdt)]
        if n_dropout:
            small.append(("step.dropout_keys", (2 * n_dropout,), np.dtype(np.uint32)))
        for name, shape, d in small:
            misc.append(PlannedTensor(name, "misc", -1, shape, d.name, tensor_bytes(shape, d),
                                      start=0, end=num_steps - 1, intervals=((0, num_steps - 1),), region="misc"))
    off = 0
    for t in misc:
        t.offset = off
        off += t.size_aligned
    misc_bytes = off

    # ---- activations: group each non-inplace output with the inplace layers that alias it
    act_of: list[PlannedTensor] = []       # activation i -> its tensor
    ends: dict[int, int] = {}              # id(tensor) -> last step it is read
    for i, layer in enumerate(layers):
        if _is_inplace(layer, inference):
            t = act_of[i - 1] if i > 0 else input_t
            t.aliases = (*t.aliases, f"{layer.name}.out")
        else:
            spec = layer.output_spec(batch)
            d = cast(spec.dtype)
            t = PlannedTensor(f"{layer.name}.out", "activation", i, tuple(spec.shape), d.name,
                              tensor_bytes(spec.shape, d), start=i)
            tensors.append(t)
            layer_tensors[i]["out"] = t.name
        act_of.append(t)
        # who reads activation i, and when
        last = i + 1 if i + 1 < L else loss_step
        if not inference:
            if i + 1 < L and layers[i + 1].keeps_input:
                last = max(last, bwd(i + 1))
            if layer.keeps_output:
                last = max(last, bwd(i))
        else:
            last = min(last, num_steps - 1) if i + 1 < L else num_steps - 1  # the scores outlive the pass
        ends[id(t)] = max(ends.get(id(t), t.start), last)
        if i == 0 and not inference and layer.keeps_input:
            ends[id(input_t)] = num_steps - 1
    for t in tensors:
        t.end = ends[id(t)]
        t.intervals = ((t.start, t.end),)

    if not inference:
        # ---- gradients: grad k (of activation k, k = -1 the input) is the dx of layer k+1 unless that
        # layer is inplace (then it is grad k+1 itself); grad L-1 is dscores, written at the loss step.
        grad_of: dict[int, PlannedTensor] = {}
        for k in range(L - 1, -2, -1):
            if k == L - 1:
                shape = (batch, *tuple(layers[-1].out_shape))
                g = PlannedTensor("dscores", "gradient", L - 1, shape, fdt.name, tensor_bytes(shape, fdt),
                                  start=loss_step, end=loss_step)
                tensors.append(g)
            elif _is_inplace(layers[k + 1], inference):
                g = grad_of[k + 1]
                g.aliases = (*g.aliases, f"{layers[k + 1].name}.dx")
            elif k < 0 and not getattr(layers[0], "computes_input_grad", True):
                continue  # the first layer skips the data's gradient: nothing to place
            else:
                shape = in_shape if k < 0 else (batch, *tuple(layers[k].out_shape))
                name = f"{layers[k + 1].name}.dx"
                g = PlannedTensor(name, "gradient", k + 1, shape, fdt.name, tensor_bytes(shape, fdt),
                                  start=bwd(k + 1), end=bwd(k + 1))
                tensors.append(g)
                layer_tensors[k + 1]["dx"] = name
            if k >= 0:
                g.end = max(g.end, bwd(k))  # read by backward of layer k (dx(k) is written meanwhile)
            grad_of[k] = g
        for g in grad_of.values():
            g.intervals = ((g.start, g.end),)

    if not getattr(net, "is_chain", True):
        # A branching net: the two sections above read it as the chain of its layers; liveness on the
        # graph replaces what they placed (gpuconv.memory.liveness; for a chain it gives the same).
        from .liveness import graph_tensors  # noqa: PLC0415

        for lt in layer_tensors:
            lt["out"] = lt["dx"] = None
        input_t.aliases = ()
        tensors = graph_tensors(net, batch, inference=inference, fdt=fdt, cast=cast, input_t=input_t,
                                is_inplace=_is_inplace, layer_tensors=layer_tensors)

    # ---- saved tensors and workspace
    for i, layer in enumerate(layers):
        if not (inference and getattr(layer, "kind", "") == "DROPOUT"):  # no mask at test time
            for spec in layer.saved_specs(batch):
                d = cast(spec.dtype)
                # training: forward i -> backward i; inference: scratch of forward i only
                span = (i, i) if inference else (i, bwd(i))
                t = PlannedTensor(spec.name, "saved", i, tuple(spec.shape), d.name, tensor_bytes(spec.shape, d),
                                  start=span[0], end=span[1], intervals=(span,))
                tensors.append(t)
                layer_tensors[i]["saved"][_short(layer.name, spec.name)] = t.name
        for spec in layer.workspace_specs(batch, train=not inference):
            d = cast(spec.dtype)
            iv = ((i, i),) if inference else ((i, i), (bwd(i), bwd(i)))
            t = PlannedTensor(spec.name, "workspace", i, tuple(spec.shape), d.name, tensor_bytes(spec.shape, d),
                              start=iv[0][0], end=iv[-1][1], intervals=iv)
            tensors.append(t)
            layer_tensors[i]["workspace"][_short(layer.name, spec.name)] = t.name

    arena_bytes = place(tensors)
    no_reuse = sum(t.size_aligned for t in tensors)
    tensors_all = tensors + misc

    # ---- the param store: params | grads | state slots, each segment 256-aligned
    n_params = sum(int(layer.num_params) for layer in layers)
    seg = n_params * isz
    segments: dict[str, tuple[int, int]] = {}
    pos = 0
    for name in ["params"] + ([] if inference else ["grads"] + [f"state{j}" for j in range(slots)]):
        segments[name] = (pos, seg)
        pos += align_up(seg)
    param_store = pos

    # ---- rows
    rows: list[LayerRow] = []
    for i, layer in enumerate(layers):
        ip = _is_inplace(layer, inference)
        per_ex = 0 if ip else int(math.prod(layer.out_shape))
        act_b = 0 if ip else tensor_bytes((batch, *layer.out_shape), cast(layer.output_spec(1).dtype))
        grad_b = 0 if inference or ip else tensor_bytes((batch, *layer.out_shape), fdt)
        saved_b = sum(tensors_all[_index(tensors_all, n)].nbytes for n in layer_tensors[i]["saved"].values())
        ws_b = sum(tensors_all[_index(tensors_all, n)].nbytes for n in layer_tensors[i]["workspace"].values())
        p = int(layer.num_params)
        rows.append(LayerRow(i, layer.name, layer.describe(), tuple(layer.out_shape), ip, per_ex, act_b, grad_b,
                             saved_b, ws_b, int(layer.num_weights), p, p * isz,
                             0 if inference else p * isz, p * isz * slots))

    plan = Plan(net_name=str(getattr(net, "name", "net")), batch=batch, optimizer=optimizer, inference=inference,
                dtype=fdt.name, input_shape=tuple(net.input_shape), num_steps=num_steps, rows=rows,
                tensors=tensors_all, arena_bytes=arena_bytes, no_reuse_bytes=no_reuse,
                peak_live_bytes=peak_live(tensors, num_steps), param_store_bytes=param_store,
                param_segments=segments, misc_bytes=misc_bytes, num_params=n_params, state_slots=slots,
                layer_tensors=layer_tensors,
                forward_values_per_example=int(math.prod(net.input_shape)) + sum(
                    int(math.prod(l.out_shape)) for l in layers if not _is_inplace(l, True)))
    plan.kernels, plan.kernel_config = kernel_choices(layers, batch, not inference, fdt)
    if _other_mode:
        other = make_plan(net, batch, optimizer=optimizer, inference=not inference, dtype=dtype,
                          include_input=include_input, _other_mode=False)
        plan.other_mode_total_bytes = other.total_bytes
    return plan


def kernel_choices(layers: Sequence[Any], batch: int, train: bool, dtype: Any) -> tuple[list[KernelChoice], str]:
    """Each layer's kernels per pass (forward passes first, then the backward passes in the
    order they run), as its ops' selectors resolve them now, and the configuration's summary."""
    from ..kernel_config import current  # noqa: PLC0415

    fwd: list[KernelChoice] = []
    bwd: list[list[KernelChoice]] = []
    for layer in layers:
        choices = [KernelChoice(layer.name, c.pass_, c.kernel, c.variant, c.precision, 4 * c.workspace_elems, c.why)
                   for c in layer.kernel_choices(batch, train, dtype)]
        fwd += [c for c in choices if c.pass_ == "fwd"]
        bwd.append([c for c in choices if c.pass_ != "fwd"])
    return fwd + [c for cs in reversed(bwd) for c in cs], current().describe()


def _index(tensors: list[PlannedTensor], name: str) -> int:
    for j, t in enumerate(tensors):
        if t.name == name:
            return j
    raise KeyError(name)
