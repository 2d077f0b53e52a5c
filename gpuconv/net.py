"""Net: a static graph of layers, built from the input shape before anything runs.

A net is a directed acyclic graph of nodes: each node is a layer that reads the outputs
of named nodes (``"input"`` is the data).  A chain is the special case where every layer
reads the one before it, which is what ``Net(layers, input_shape)`` builds; a branching
net (residual and Inception blocks) names each layer's inputs, usually through the
functional builder :class:`gpuconv.graph.Graph`.  The layers are kept in topological
order in ``layers``; ``sources[i]`` are the indices of the nodes layer i reads (-1: the
input), the last layer's output is the class scores.

Construction infers every shape and rejects bad geometry (no memory touched): a merge node
whose inputs do not fit names both branches and their shapes.  ``bind(device)`` then lays
all parameters out in ONE flat buffer (weights first, then biases/BN parameters, so weight
decay can skip the latter) with gradients in a second buffer of the same layout; each
layer's params are views into it.

Backward runs the nodes in reverse topological order.  A tensor read by several nodes
receives the sum of their gradients, accumulated in place into one of them where that is
legal (see :meth:`Net.backward`), so a residual block adds no gradient copies.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from . import device as devmod
from .geometry import GeometryError
from .layers import FC, BatchNorm, Buffers, Conv, Dropout, Layer, ReLU
from .ops import cpu_threads
from .ops import loss as loss_ops
from .ops.add import accumulate_, add_forward
from .ops.concat import concat_forward
from .ops.winograd import ALGOS as CONV_ALGOS

LOSSES = ("softmax", "svm")
INPUT = "input"  # the name by which nodes read the data batch


@dataclass(frozen=True)
class ParamSlot:
    """Where one parameter lives in the flat buffer."""

    layer: int
    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))


def is_merge(layer: Layer) -> bool:
    """A node that reads several tensors (ADD, CONCAT): built from all their shapes."""
    return hasattr(layer, "build_inputs")


class _GradToken:
    """The memory behind one gradient array, and how many pending gradients refer to it.

    A backward that returns its dy (or a view of it) hands the same memory on: the
    gradients of both inputs of an ADD, what a fused RELU or FLATTEN passes through.
    Writing into such an array in place (accumulating into it, or a fused ReLU masking
    its dy) is legal only while no other pending gradient refers to it."""

    __slots__ = ("holders",)

    def __init__(self) -> None:
        self.holders = 0


class Net:
    def __init__(self, layers: Sequence[Layer], input_shape: Sequence[int], *, loss: str = "softmax",
                 dtype: Any = np.float32, name: str = "net", fuse: bool = True,
                 vector_output: bool = True, inputs: Sequence[Sequence[str]] | None = None) -> None:
        """``inputs[i]``: the names of the nodes layer i reads (``"input"`` for the data);
        None builds a chain.  Layers must come in topological order (a node after its inputs)."""
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}: choose one of {', '.join(LOSSES)}")
        if not layers:
            raise GeometryError(f"{name}: a net needs at least one layer")
        input_shape = tuple(int(d) for d in input_shape)
        if any(d < 1 for d in input_shape) or len(input_shape) not in (1, 3):
            raise GeometryError(f"{name}: input shape must be (C, H, W) or (D,) of positive sizes, got {input_shape}")
        self.name, self.loss, self.dtype = name, loss, np.dtype(dtype)
        self.input_shape = input_shape
        self.layers = list(layers)
        self._name_layers(number=inputs is None)
        self.sources = self._resolve_inputs(inputs)
        self.is_chain = all(src == (i - 1,) for i, src in enumerate(self.sources))
        self.consumers: list[list[int]] = [[] for _ in self.layers]
        for i, src in enumerate(self.sources):
            for p in src:
                if p >= 0:
                    self.consumers[p].append(i)
        for i, layer in enumerate(self.layers[:-1]):
            if not self.consumers[i]:
                raise GeometryError(f"{name}: the output of {layer.name} is never read; every node but the "
                                    f"last must feed another (the last one's output is the class scores)")
        shape = self._build_shapes()
        self.output_shape = shape
        if vector_output and len(shape) != 1:
            raise GeometryError(f"{name}: the last layer must produce class scores (a vector), got volume {shape}; "
                                f"end the net with an FC layer")
        if fuse:
            self._fuse_relus()
        self.concat_grad_views = True
        self.concat_views = True
        self._mark_concat_grad_views()
        self.fuse_residual = False
        for i in self._readers_of_input():
            self.layers[i].input_grad = False  # the data's gradient is not needed (see backward)
        self.slots = self._layout()
        self.num_params = sum(s.size for s in self.slots)
        self.num_decayed = sum(s.size for s in self.slots if s.name == "w")
        self.device: devmod.Device | None = None
        self.param_buffer: Any = None
        self.grad_buffer: Any = None
        self.seed = 0
        self.step = 0

    # ---- construction ---------------------------------------------------------------
    def _name_layers(self, number: bool = True) -> None:
        """A chain numbers default names (conv1, conv2, ...); a graph's names are what its inputs refer to."""
        counts: dict[str, int] = {}
        seen: set[str] = set()
        for layer in self.layers:
            if number and layer.name == layer.kind.lower():  # default name: number it, conv1, conv2, ...
                counts[layer.kind] = counts.get(layer.kind, 0) + 1
                layer.name = f"{layer.kind.lower()}{counts[layer.kind]}"
            if layer.name in seen or layer.name == INPUT:
                raise ValueError(f"{self.name}: two nodes are named {layer.name!r}")
            seen.add(layer.name)

    def _resolve_inputs(self, inputs: Sequence[Sequence[str]] | None) -> list[tuple[int, ...]]:
        if inputs is None:
            return [(i - 1,) for i in range(len(self.layers))]
        if len(inputs) != len(self.layers):
            raise ValueError(f"{self.name}: {len(inputs)} input lists for {len(self.layers)} layers")
        index = {INPUT: -1}
        sources: list[tuple[int, ...]] = []
        for i, (layer, names) in enumerate(zip(self.layers, inputs)):
            if isinstance(names, str):
                names = (names,)
            src = []
            for n in names:
                if n not in index:
                    later = any(other.name == n for other in self.layers[i:])
                    raise GeometryError(f"{self.name}: {layer.name} reads {n!r}, " + (
                        "which comes after it: list the nodes in topological order" if later
                        else "which is no node of this net"))
                src.append(index[n])
            want = "two or more inputs" if is_merge(layer) else "exactly one input"
            if (len(src) >= 2) != is_merge(layer) or not src:
                raise GeometryError(f"{self.name}: {layer.name} ({layer.kind}) takes {want}, got {list(names)}")
            sources.append(tuple(src))
            index[layer.name] = i
        return sources

    def node_name(self, index: int) -> str:
        return INPUT if index < 0 else self.layers[index].name

    def _build_shapes(self) -> tuple[int, ...]:
        shapes: dict[int, tuple[int, ...]] = {-1: self.input_shape}
        for i, layer in enumerate(self.layers):
            layer.dtype = self.dtype
            src = self.sources[i]
            if is_merge(layer):
                shapes[i] = layer.build_inputs([shapes[p] for p in src],  # type: ignore[attr-defined]
                                               [self.node_name(p) for p in src])
            else:
                shapes[i] = layer.build(shapes[src[0]])
        return shapes[len(self.layers) - 1]

    def _fuse_relus(self) -> None:
        """CONV/FC (or ADD) followed by a plain RELU: the kernel epilogue applies it, no extra tensor.

        Only where the RELU is the one reader of that output: another reader must see it unrectified."""
        for i, layer in enumerate(self.layers):
            if not (isinstance(layer, ReLU) and layer.slope == 0.0 and not layer.fused):
                continue
            p = self.sources[i][0]
            if p < 0 or self.consumers[p] != [i]:
                continue
            prev = self.layers[p]
            if isinstance(prev, (Conv, FC)) and not prev.fused_relu:
                prev.fused_relu = True
                layer.fused = True
            elif getattr(prev, "kind", "") == "ADD" and not prev.relu:  # type: ignore[attr-defined]
                prev.relu = True  # type: ignore[attr-defined]
                layer.fused = True

    def set_fuse_residual(self, on: bool) -> None:
        """Residual adds fused into the conv epilogue (opt-in; set it before planning): an ADD one
        of whose inputs is a CONV read by nothing else runs that conv itself, with the other
        input as the epilogue's residual, y = act(conv(x) + b + r) (``ops.conv``; bit-identical
        to the conv, then the add).  Backward is unchanged.  See ``residual_fusions``."""
        self.fuse_residual = bool(on)

    def residual_fusions(self) -> dict[int, int]:
        """{conv node: the ADD node that runs it} where the residual is fused (``fuse_residual``):
        the CONV's one reader is the ADD, the ADD's other input is another node, the CONV has no
        fused RELU (the ADD's ReLU comes after the sum) and does not run Winograd (its workspace
        is planned for the conv's own step)."""
        if not self.fuse_residual:
            return {}
        fused: dict[int, int] = {}
        for i, layer in enumerate(self.layers):
            src = self.sources[i]
            if getattr(layer, "kind", "") != "ADD" or src[0] == src[1]:
                continue
            for p in src:
                c = self.layers[p] if p >= 0 else None
                if (isinstance(c, Conv) and self.consumers[p] == [i] and not c.fused_relu
                        and not c.uses_winograd()):
                    fused[p] = i
                    break
        return fused

    def set_concat_grad_views(self, on: bool) -> None:
        """Zero-copy CONCAT backward (on by default; set it before planning, the plan depends on
        it): a CONCAT whose dy is its own hands each branch that ends in a CONV its slice of dy as
        is instead of a copy.  Off: every branch gets a copy of its slice."""
        self.concat_grad_views = bool(on)
        self._mark_concat_grad_views()

    def set_concat_views(self, on: bool) -> None:
        """Zero-copy CONCAT forward in the memory plan (on by default; set it before planning): a
        CONV that only a CONCAT reads (also behind its fused RELU) writes its output straight into
        its channel slice of the concat's planned buffer, and the concat copies nothing for it
        (see ``concat_output_views``).  The unplanned forward always copies (same bits)."""
        self.concat_views = bool(on)

    def concat_output_views(self) -> dict[int, tuple[int, int, int]]:
        """{conv node: (concat node, c0, c1)} for the convs whose output the plan lays into channels
        [c0:c1] of a CONCAT's output (``concat_views``): the CONV's one reader is the CONCAT, or
        its fused RELU whose one reader is the CONCAT (each input read once).  The other inputs
        (pool, BN, LRN, ... producers; an output another node also reads) keep the copy."""
        if not self.concat_views:
            return {}
        views: dict[int, tuple[int, int, int]] = {}
        for i, layer in enumerate(self.layers):
            if getattr(layer, "kind", "") != "CONCAT":
                continue
            c0 = 0
            for p, c in zip(self.sources[i], layer.channels):  # type: ignore[attr-defined]
                q = p
                if q >= 0 and isinstance(self.layers[q], ReLU) and self.layers[q].fused and self.consumers[q] == [i]:
                    q, reader = self.sources[q][0], q
                else:
                    reader = i
                if (q >= 0 and p >= 0 and isinstance(self.layers[q], Conv) and self.consumers[p] == [i]
                        and self.consumers[q] == [reader] and q not in views):
                    views[q] = (i, c0, c0 + c)
                c0 += c
        return views

    def _mark_concat_grad_views(self) -> None:
        """For each CONCAT, which inputs may be handed their slice of its dy itself (no copy):
        those whose producer's backward takes channel-strided gradients, a CONV (every variant,
        ``ops.concat.OUTPUT_VIEW_OPS``), also behind a fused RELU (the identity in backward)."""
        def takes_views(p: int) -> bool:
            if p < 0 or not self.concat_grad_views:
                return False
            layer = self.layers[p]
            if isinstance(layer, ReLU) and layer.fused:
                return takes_views(self.sources[p][0])
            return isinstance(layer, Conv)

        for i, layer in enumerate(self.layers):
            if getattr(layer, "kind", "") == "CONCAT":
                layer.view_inputs = [takes_views(p) for p in self.sources[i]]  # type: ignore[attr-defined]

    def _readers_of_input(self) -> list[int]:
        """Single-input layers that read the data: they can skip its gradient."""
        return [i for i, src in enumerate(self.sources) if src == (-1,)]

    def _layout(self) -> list[ParamSlot]:
        slots: list[ParamSlot] = []
        offset = 0
        for pass_weights in (True, False):  # weights first: weight decay covers [0, num_decayed)
            for i, layer in enumerate(self.layers):
                for pname, shape in layer.param_shapes().items():
                    if (pname == "w") == pass_weights:
                        slots.append(ParamSlot(i, pname, tuple(shape), offset))
                        offset += int(math.prod(shape))
        return slots

    # ---- binding to a device ----------------------------------------------------------
    def bind(self, device: devmod.Device | str | None = None, *, seed: int = 0,
             param_buffer: Any = None, grad_buffer: Any = None) -> "Net":
        """Allocate (or adopt) the flat parameter/gradient buffers and initialize weights."""
        dev = device if isinstance(device, devmod.Device) else devmod.get_device(device)
        xp = dev.xp
        n = self.num_params
        self.param_buffer = param_buffer if param_buffer is not None else xp.empty(n, dtype=self.dtype)
        self.grad_buffer = grad_buffer if grad_buffer is not None else xp.zeros(n, dtype=self.dtype)
        for buf, what in ((self.param_buffer, "param"), (self.grad_buffer, "grad")):
            if buf.shape != (n,) or buf.dtype != self.dtype:
                raise ValueError(f"{self.name}: {what} buffer must be {self.dtype} of shape ({n},), got "
                                 f"{buf.dtype} {buf.shape}")
        self.device, self.seed = dev, int(seed)
        rng = np.random.default_rng(seed)
        host = np.empty(n, dtype=self.dtype)
        inits = [layer.init_params(rng) for layer in self.layers]
        for s in self.slots:
            host[s.offset:s.offset + s.size] = inits[s.layer][s.name].reshape(-1)
        devmod.copy_into(self.param_buffer, host)
        for layer in self.layers:
            layer.params, layer.grads = {}, {}
        for s in self.slots:
            layer = self.layers[s.layer]
            layer.params[s.name] = self.param_buffer[s.offset:s.offset + s.size].reshape(s.shape)
            layer.grads[s.name] = self.grad_buffer[s.offset:s.offset + s.size].reshape(s.shape)
        for i, layer in enumerate(self.layers):
            if isinstance(layer, BatchNorm):
                for k, v in layer.init_state().items():
                    setattr(layer, k, xp.asarray(v, dtype=self.dtype))
            if isinstance(layer, Dropout):
                layer.seed = (self.seed * 1000003 + i) & 0x7FFFFFFF
        return self

    def _require_bound(self) -> devmod.Device:
        if self.device is None:
            raise RuntimeError(f"{self.name}: call net.bind(device) before running it")
        return self.device

    def set_precision(self, precision: str) -> None:
        if precision not in ("fp32", "tf32"):
            raise ValueError(f"precision must be 'fp32' or 'tf32', got {precision!r}")
        for layer in self.layers:
            layer.set_kernel_options(precision=precision)

    def set_conv_algo(self, algo: str | None) -> None:
        """The GPU algorithm of every CONV layer: 'gemm', 'winograd' (3x3 stride-1 layers;
        the others keep the GEMM), 'auto' (where Winograd applies, the faster of the two,
        timed on first use) or None ($GPUCONV_CONV_ALGO).  Set it before planning:
        Winograd's workspace is part of the memory plan."""
        if algo is not None and algo not in CONV_ALGOS:
            raise ValueError(f"conv algo must be one of {', '.join(CONV_ALGOS)} or None, got {algo!r}")
        for layer in self.layers:
            if layer.kind == "CONV":
                layer.algo = algo  # type: ignore[attr-defined]

    # ---- execution --------------------------------------------------------------------
    def check_input(self, x: Any) -> None:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{self.name}: input batch has per-example shape {tuple(x.shape[1:])}, "
                             f"the net was built for {self.input_shape}")
        if x.dtype != self.dtype:
            raise ValueError(f"{self.name}: input dtype {x.dtype}, the net runs in {self.dtype}")

    def forward(self, x: Any, train: bool = False, buffers: Sequence[Buffers] | None = None) -> Any:
        """Class scores for a batch; ``buffers`` (one per layer) come from the memory plan."""
        dev = self._require_bound()
        self.check_input(x)
        values: dict[int, Any] = {-1: x}
        fused = self.residual_fusions()
        runs_conv = {i: p for p, i in fused.items()}
        last = self._last_reader(fused)
        with self._engine(dev):
            for i, layer in enumerate(self.layers):
                if isinstance(layer, Dropout):
                    layer.step = self.step
                src = self.sources[i]
                if i in fused:  # its ADD runs it, with the residual in the epilogue
                    values[i] = None
                    continue
                buf = buffers[i] if buffers is not None else Buffers()
                if i in runs_conv:
                    c = runs_conv[i]
                    residual = values[src[1] if src[0] == c else src[0]]
                    values[i] = layer.forward_conv_residual(  # type: ignore[attr-defined]
                        self.layers[c], values[self.sources[c][0]], residual, train, buf,
                        buffers[c] if buffers is not None else Buffers())
                else:
                    arg = [values[p] for p in src] if is_merge(layer) else values[src[0]]
                    values[i] = layer.forward(arg, train, buf)
                for p in src:  # nobody reads it after this node (the layers keep what backward needs)
                    if last[p] == i:
                        values.pop(p, None)
        return values[len(self.layers) - 1]

    def _last_reader(self, fused: dict[int, int] | None = None) -> dict[int, int]:
        """The last node whose forward reads each tensor (a fused conv reads at its ADD)."""
        last: dict[int, int] = {}
        for i, src in enumerate(self.sources):
            for p in src:
                last[p] = max(last.get(p, i), (fused or {}).get(i, i))
        return last

    @staticmethod
    def _engine(dev: devmod.Device) -> Any:
        """On the CPU: run the layers' NumPy ops on gpuconv's thread pool (see ops.cpu_threads)."""
        return contextlib.nullcontext() if dev.is_gpu else cpu_threads.engine()

    def loss_and_grad(self, scores: Any, labels: Any, grad_out: Any = None,
                      buffers: loss_ops.LossBuffers | None = None) -> tuple[Any, Any]:
        """(mean loss, dscores); ``grad_out``/``buffers``: planned memory for them (see ops.loss)."""
        if self.loss == "svm":
            return loss_ops.svm_loss(scores, labels, grad_out=grad_out, buffers=buffers)
        return loss_ops.softmax_cross_entropy(scores, labels, grad_out=grad_out, buffers=buffers)

    def backward(self, dscores: Any, buffers: Sequence[Buffers] | None = None, *,
                 input_grad: bool = False, after_layer: Any = None) -> Any:
        """Fill every layer's grads (views into grad_buffer), nodes in reverse topological order.

        A node's output gradient is the sum of what its readers' backwards return; the sum is
        accumulated in place into one of them (``ops.add.accumulate_``) when nothing else refers
        to its memory (see ``_GradToken``), else into a new array.  A layer that overwrites its
        dy (a fused ReLU's mask) gets a copy only while another pending gradient shares it.

        Returns the gradient of the input batch when ``input_grad`` (else None where the
        layers reading the data can skip it: training never needs it, and for a first CONV with
        few channels it is the most expensive kernel of the step).
        """
        dev = self._require_bound()
        readers = self._readers_of_input()
        for i in readers:
            self.layers[i].input_grad = input_grad
        top = _GradToken()
        top.holders = 1
        grads: dict[int, tuple[Any, _GradToken]] = {len(self.layers) - 1: (dscores, top)}
        try:
            with self._engine(dev):
                for i in range(len(self.layers) - 1, -1, -1):
                    layer = self.layers[i]
                    buf = buffers[i] if buffers is not None else Buffers()
                    dy, tok = grads.pop(i)
                    if tok.holders > 1 and _overwrites_dy(layer):
                        tok.holders -= 1
                        # a copy with the ops' kernel (a one-input concat), into planned memory if any
                        dy, tok = concat_forward([dy], out=buf.workspace.get("dy_copy")), _GradToken()
                        tok.holders = 1
                    if getattr(layer, "kind", "") == "CONCAT":
                        # its dy is ours alone: its slices may go to the branches as they are
                        layer.grad_views = tok.holders == 1  # type: ignore[attr-defined]
                    out = layer.backward(dy, buf)
                    if after_layer is not None:  # layer i's parameter gradients are final (launched)
                        after_layer(i)
                    dxs = out if is_merge(layer) else [out]
                    aliases = _grad_aliases_dy(layer)
                    for j, (p, dx) in enumerate(zip(self.sources[i], dxs)):
                        if dx is None:
                            continue
                        t = tok if aliases else _GradToken()
                        t.holders += 1
                        _deposit(grads, p, dx, t, buf.workspace.get(f"gradsum{j}"))
                    tok.holders -= 1
        finally:
            for layer in self.layers:
                layer.clear_cache()
            for i in readers:
                self.layers[i].input_grad = False
        return grads[-1][0] if -1 in grads else None

    def predict(self, x: Any, batch_size: int = 1024) -> Any:
        """Scores for any number of examples, in inference mode, batch by batch."""
        xp = devmod.array_module(x)
        outs = [self.forward(x[i:i + batch_size], train=False) for i in range(0, x.shape[0], batch_size)]
        return xp.concatenate(outs, axis=0)

    # ---- state ----------------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        """Host copies of everything a checkpoint needs to restore the net exactly."""
        out = {"params": devmod.to_host(self.param_buffer)}
        for layer in self.layers:
            if isinstance(layer, BatchNorm):
                out[f"{layer.name}.running_mean"] = devmod.to_host(layer.running_mean)
                out[f"{layer.name}.running_var"] = devmod.to_host(layer.running_var)
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self._require_bound()
        params = arrays["params"]
        if params.shape != (self.num_params,):
            raise ValueError(f"{self.name}: checkpoint holds {params.shape[0]} parameters, the net has "
                             f"{self.num_params}: is it the same model?")
        devmod.copy_into(self.param_buffer, params)
        for layer in self.layers:
            if isinstance(layer, BatchNorm):
                devmod.copy_into(layer.running_mean, arrays[f"{layer.name}.running_mean"])
                devmod.copy_into(layer.running_var, arrays[f"{layer.name}.running_var"])

    # ---- reporting --------------------------------------------------------------------
    def activations_per_example(self) -> list[int]:
        """Values each layer's output holds per example (0 for layers whose output aliases)."""
        return [0 if layer.inplace else int(math.prod(layer.out_shape)) for layer in self.layers]  # type: ignore[arg-type]

    def flops(self, batch: int = 1) -> int:
        return sum(layer.flops(batch) for layer in self.layers)

    def summary(self) -> str:
        from .summary import summary_table  # noqa: PLC0415

        return summary_table(self)

    def __repr__(self) -> str:
        return f"Net({self.name!r}, {len(self.layers)} layers, {self.num_params:,} params)"


def _overwrites_dy(layer: Layer) -> bool:
    """Whether the layer's backward writes into the dy it is given (a fused ReLU's mask)."""
    return bool(getattr(layer, "overwrites_dy", getattr(layer, "fused_relu", False)))


def _grad_aliases_dy(layer: Layer) -> bool:
    """Whether what the layer's backward returns may be dy itself or a view of it."""
    return bool(getattr(layer, "grad_aliases_dy", layer.inplace))


def _deposit(grads: dict[int, tuple[Any, _GradToken]], p: int, dx: Any, t: _GradToken, out: Any = None) -> None:
    """Add ``dx`` to node p's pending gradient: in place where one side's memory is not shared
    (``out``: planned memory for a sum of two shared gradients)."""
    if p not in grads:
        grads[p] = (dx, t)
        return
    a, ta = grads[p]
    if ta.holders == 1:
        accumulate_(a, dx)
        t.holders -= 1
    elif t.holders == 1:
        accumulate_(dx, a)
        ta.holders -= 1
        grads[p] = (dx, t)
    else:  # both shared (e.g. ADD(x, x)): the sum needs memory of its own
        s = add_forward(a, dx, out=out)
        ta.holders -= 1
        t.holders -= 1
        fresh = _GradToken()
        fresh.holders = 1
        grads[p] = (s, fresh)
