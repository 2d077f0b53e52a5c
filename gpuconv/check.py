"""``gpuconv check``: trust the kernels on your own GPU, node by node.

The model runs as the graph it is (a chain, or a branching net's DAG): one forward pass
in NumPy (fp32) gives every node its real inputs (an ADD gets both of its branches, a
CONCAT all of them).  Then, for every node:

- GPU vs NumPy: the node's forward on the same inputs and its backward on the same random
  dy, on both sides; the relative error of the output, of every input's gradient and of
  every parameter gradient (a per-node comparison: one wrong kernel shows at its node, not
  smeared over the nodes after it);
- a float64 finite-difference check of the node's gradients (every input's, and every
  parameter's) at sampled coordinates, on the GPU when there is one, else on the CPU.

A last row checks the whole graph: what no single node does, the gradient of a tensor that
several nodes read is the sum of their gradients (``Net.backward`` accumulates it).  A float64
finite-difference check of the softmax loss through the whole net, at one sampled coordinate
of every parameter tensor and at sampled input coordinates, and (on a GPU) the fp32 scores,
parameter gradients and input gradient against the NumPy run of the same net.
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from . import device as devmod
from .layers import BatchNorm, Dropout, Layer
from .net import Net, is_merge
from .zoo import get_model

# Per node: one fp32 kernel against its NumPy reference.  Whole net: fp32 rounding compounds
# over the depth (a ResNet's 20 layers and their batch norms), so its bound is wider.
NODE_TOL = 1e-4
NET_TOL = 1e-3
GRAD_TOL = 1e-4
NET_ROW = "whole net"


def rel_error(a: Any, b: Any) -> float:
    a = devmod.to_host(a).astype(np.float64)
    b = devmod.to_host(b).astype(np.float64)
    scale = max(float(np.abs(a).max(initial=0)), float(np.abs(b).max(initial=0)), 1e-30)
    return float(np.abs(a - b).max(initial=0) / scale)


@dataclass
class LayerCheck:
    name: str
    kind: str
    fwd_err: float | None
    bwd_err: float | None
    grad_err: float
    reads: tuple[str, ...] = ()   # the nodes it reads ("input": the data)

    @property
    def ok(self) -> bool:
        tol = NET_TOL if self.name == NET_ROW else NODE_TOL
        return ((self.fwd_err is None or self.fwd_err < tol) and (self.bwd_err is None or self.bwd_err < tol)
                and self.grad_err < GRAD_TOL)


def _instance(layer: Layer, dev: devmod.Device, dtype: Any, params: dict[str, np.ndarray]) -> Layer:
    """A standalone copy of a built layer with its own params on ``dev``."""
    new = copy.copy(layer)
    new._cache = {}
    new.input_grad = True  # check every layer's dx, the first layer's too
    new.dtype = np.dtype(dtype)
    new.params = {k: dev.xp.asarray(v, dtype=dtype) for k, v in params.items()}
    new.grads = {k: dev.xp.zeros(v.shape, dtype=dtype) for k, v in params.items()}
    if isinstance(layer, BatchNorm):
        new.running_mean = dev.xp.zeros(layer.channels, dtype=dtype)
        new.running_var = dev.xp.ones(layer.channels, dtype=dtype)
    if isinstance(layer, Dropout):
        new.seed, new.step = 1234, 0
    return new


def _arg(layer: Layer, xs: Sequence[Any]) -> Any:
    """What the layer's forward takes: the list of its inputs (a merge node) or the one input."""
    return list(xs) if is_merge(layer) else xs[0]


def _input_grads(layer: Layer, dx: Any) -> list[Any]:
    return list(dx) if is_merge(layer) else [dx]


def _run(layer: Layer, xs: Sequence[Any], dy: Any) -> tuple[Any, list[Any], dict[str, Any]]:
    """Forward on copies of ``xs`` (a layer may write into its input), backward on a copy of dy."""
    y = layer.forward(_arg(layer, [x.copy() for x in xs]), train=True)
    y = y.copy()
    dxs = [None if d is None else d.copy() for d in _input_grads(layer, layer.backward(dy.copy()))]
    return y, dxs, {k: g.copy() for k, g in layer.grads.items()}


def _max_rel(pairs: Sequence[tuple[Any, Any]]) -> float:
    return max([rel_error(a, b) for a, b in pairs if a is not None and b is not None], default=0.0)


def central_difference(f: Callable[[float], float], f0: float, eps: float) -> float:
    """f'(0) by central differences, ``f(step)``: the objective with one coordinate moved by step,
    ``f0 = f(0)``.  Where the one-sided differences disagree by more than a smooth function's
    curvature and rounding allow, the step crossed a kink (some ReLU's input, or a max pool's
    tie, went through zero: a big layer has so many that some lie within eps of it) and the
    difference is no derivative: again with a step 10x smaller, at most twice."""
    step = eps
    for _ in range(3):
        fp, fm = f(step), f(-step)
        central = (fp - fm) / (2 * step)
        rounding = 64 * np.finfo(np.float64).eps * max(abs(f0), 1.0) / step  # float64 differences of f
        if abs((fp - f0) - (f0 - fm)) / step <= 1e-5 * max(abs(central), 1e-2) + rounding:
            break
        step /= 10
    return central


def gradient_check(layer: Layer, params: dict[str, np.ndarray], x: np.ndarray | Sequence[np.ndarray],
                   dev: devmod.Device, rng: np.random.Generator, samples: int = 6, eps: float = 1e-6) -> float:
    """Max relative error of analytic vs central-difference gradients at sampled coordinates (float64).

    ``x``: the layer's input, or the list of a merge node's inputs (each input's gradient is checked)."""
    xs64 = [np.asarray(a, dtype=np.float64) for a in (x if isinstance(x, (list, tuple)) else [x])]
    inst = _instance(layer, dev, np.float64, params)
    y = inst.forward(_arg(layer, [dev.xp.asarray(a) for a in xs64]), train=True)
    dy = dev.xp.asarray(rng.standard_normal(tuple(y.shape)))
    dxs = [devmod.to_host(d) for d in _input_grads(layer, inst.backward(dy.copy()))]
    grads = {k: devmod.to_host(g) for k, g in inst.grads.items()}
    dy_h = devmod.to_host(dy)

    def objective(xs: list[np.ndarray], ph: dict[str, np.ndarray]) -> float:
        probe = _instance(layer, dev, np.float64, ph)
        out = probe.forward(_arg(layer, [dev.xp.asarray(a) for a in xs]), train=True)
        return float(np.sum(devmod.to_host(out) * dy_h))

    f0 = objective(xs64, params)
    worst = 0.0
    targets: list[tuple[str | int, np.ndarray, np.ndarray]] = [(j, a, d) for j, (a, d) in enumerate(zip(xs64, dxs))]
    targets += [(k, params[k].astype(np.float64), grads[k]) for k in params]
    for name, arr, analytic in targets:
        # The floor: a float64 difference of an objective of size |f| is good to ~1e-16 |f| / eps, which
        # is no relative accuracy for a coordinate whose gradient is 1e-5 of the tensor's largest.
        floor = max(1e-6, 1e-3 * float(np.abs(analytic).max(initial=0.0)))
        for _ in range(samples):
            idx = tuple(int(rng.integers(0, s)) for s in arr.shape)

            def f(step: float, name: str | int = name, arr: np.ndarray = arr, idx: Any = idx) -> float:
                moved = arr.copy()
                moved[idx] += step
                if isinstance(name, int):  # input ``name`` of the node
                    return objective([moved if j == name else a for j, a in enumerate(xs64)], params)
                return objective(xs64, {**params, name: moved})

            num = central_difference(f, f0, eps)
            ana = float(analytic[idx])
            denom = max(abs(num), abs(ana), floor)
            worst = max(worst, abs(num - ana) / denom)
    return worst


# ---------------------------------------------------------------------------- the graph


def _node_params(net: Net, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """Fresh float64 parameters per node, biases and BN parameters moved off their initial 0/1:
    a zero bias over an all-zero (ReLU'd) window puts a conv's output exactly on the ReLU's kink,
    where a central difference is no derivative."""
    out = []
    for layer in net.layers:
        p = {k: np.asarray(v, dtype=np.float64) for k, v in layer.init_params(rng).items()}
        for k in p:
            if k != "w":
                p[k] = p[k] + 0.1 * rng.standard_normal(p[k].shape)
        out.append(p)
    return out


def _forward_values(net: Net, params: list[dict[str, np.ndarray]], x: np.ndarray) -> dict[int, np.ndarray]:
    """Every node's output of one training-mode forward pass, in NumPy fp32 (-1: the input)."""
    values: dict[int, np.ndarray] = {-1: x}
    for i, layer in enumerate(net.layers):
        inst = _instance(layer, devmod.CPU, np.float32, params[i])
        y = inst.forward(_arg(layer, [values[p].copy() for p in net.sources[i]]), train=True)
        values[i] = np.array(y, copy=True)
    return values


def _jitter(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A node's real input moved by 1e-3 of its spread, for the finite differences: a ReLU'd
    volume's exact zeros are ties for a max pool and kinks for a ReLU (no derivative there)."""
    scale = float(np.std(a)) or 1.0
    return a.astype(np.float64) + 1e-3 * scale * rng.standard_normal(a.shape)


def _rebuild(net: Net, dtype: Any) -> Net:
    """The same graph in another dtype: fresh copies of the layers, fused as they are."""
    layers = []
    for layer in net.layers:
        new = object.__new__(type(layer))
        new.__dict__.update({k: v for k, v in layer.__dict__.items()
                             if k not in ("params", "grads", "_cache", "in_shape", "out_shape")})
        new.params, new.grads, new._cache = {}, {}, {}
        new.in_shape = new.out_shape = None
        layers.append(new)
    inputs = [[net.node_name(p) for p in src] for src in net.sources]
    return Net(layers, net.input_shape, loss=net.loss, dtype=dtype, name=net.name, fuse=False,
               vector_output=len(net.output_shape) == 1, inputs=inputs)


def _bound(net: Net, dev: devmod.Device, dtype: Any, params: list[dict[str, np.ndarray]]) -> Net:
    new = _rebuild(net, dtype).bind(dev)
    host = np.empty(new.num_params, dtype=new.dtype)
    for s in new.slots:
        host[s.offset:s.offset + s.size] = params[s.layer][s.name].reshape(-1)
    devmod.copy_into(new.param_buffer, host)
    return new


def _loss_and_grads(net: Net, x: Any, labels: Any) -> tuple[float, Any, np.ndarray, np.ndarray]:
    """(loss, scores, parameter gradients, input gradient) of one training-mode step, on the host."""
    scores = net.forward(x, train=True)
    loss, ds = net.loss_and_grad(scores, labels)
    dx = net.backward(ds, input_grad=True)  # a freshly bound net: its gradient buffer starts at zero
    return (float(devmod.to_host(loss)), *(np.array(devmod.to_host(a), copy=True) for a in (scores, net.grad_buffer, dx)))


def net_gradient_check(net: Net, params: list[dict[str, np.ndarray]], dev: devmod.Device, rng: np.random.Generator,
                       batch: int = 2, samples: int = 6, eps: float = 1e-6, max_tensors: int = 64) -> float:
    """Float64 central differences of the softmax loss through the whole graph against ``Net.backward``
    (its sums of the gradients of tensors read by several nodes): one coordinate of each parameter
    tensor (at most ``max_tensors``, spread over the net) and ``samples`` input coordinates.

    The error is ``rel_error`` of the sampled vector (scaled by its largest entry), not the worst
    coordinate's own: a step of eps through a deep net crosses some of its ReLUs' kinks, which
    moves a small gradient by ~eps relative to the large ones; a missing or doubled branch
    gradient moves it by its own size.  A step that crosses a kink is retried smaller (see
    ``central_difference``)."""
    n64 = _bound(net, dev, np.float64, params)
    x = rng.standard_normal((batch, *net.input_shape))
    labels = rng.integers(0, net.output_shape[0], batch).astype(np.int32)
    xd, yd = dev.xp.asarray(x), dev.xp.asarray(labels)
    _, _, analytic, dx = _loss_and_grads(n64, xd, yd)
    host = np.array(devmod.to_host(n64.param_buffer), copy=True)  # on the CPU to_host is the buffer itself

    def loss_at(p: np.ndarray, xh: np.ndarray) -> float:
        devmod.copy_into(n64.param_buffer, p)
        s = n64.forward(dev.xp.asarray(xh), train=True)
        v, _ = n64.loss_and_grad(s, yd)
        for layer in n64.layers:
            layer.clear_cache()
        return float(devmod.to_host(v))

    f0 = loss_at(host, x)

    def derivative(at: Any) -> float:
        """Along one coordinate (``at(step)``: the (params, input) moved by step)."""
        return central_difference(lambda step: loss_at(*at(step)), f0, eps)

    def moved(arr: np.ndarray, idx: Any) -> Any:
        def at(step: float) -> np.ndarray:
            out = arr.copy()
            out[idx] += step
            return out
        return at

    slots = n64.slots
    if len(slots) > max_tensors:
        slots = [slots[int(k)] for k in np.linspace(0, len(slots) - 1, max_tensors).round()]
    nums, anas = [], []
    for s in slots:
        i = s.offset + int(rng.integers(0, s.size))
        nums.append(derivative(lambda step, m=moved(host, i): (m(step), x)))
        anas.append(analytic[i])
    for _ in range(samples):
        idx = tuple(int(rng.integers(0, d)) for d in x.shape)
        nums.append(derivative(lambda step, m=moved(x, idx): (host, m(step))))
        anas.append(dx[idx])
    devmod.copy_into(n64.param_buffer, host)
    num, ana = np.array(nums), np.array(anas)
    return rel_error(num, ana)


def _reads(net: Net, i: int) -> tuple[str, ...]:
    return tuple(net.node_name(p) for p in net.sources[i])


def check_model(model: str | Net, batch: int = 2, seed: int = 0, device: str | devmod.Device | None = None, *,
                samples: int = 6, whole_net: bool = True) -> list[LayerCheck]:
    """Per node: GPU vs NumPy (when ``device`` resolves to the GPU) and the float64 gradient check,
    each node fed its real inputs; then (``whole_net``) the row for the whole graph.

    ``model``: a zoo name, an INPUT[...] pattern or a built Net.  ``device``: 'auto', 'cpu', 'cuda',
    None ($GPUCONV_DEVICE, else auto) or a Device; on the CPU only the gradient checks run.
    """
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    # first: `--device cuda` without a GPU fails before any work
    dev = device if isinstance(device, devmod.Device) else devmod.get_device(device)
    net = model if isinstance(model, Net) else get_model(model)
    rng = np.random.default_rng(seed)
    gpu = dev if dev.is_gpu else None
    params = _node_params(net, rng)
    x = rng.standard_normal((batch, *net.input_shape)).astype(np.float32)
    values = _forward_values(net, params, x)
    results = []
    for i, layer in enumerate(net.layers):
        xs = [values[p] for p in net.sources[i]]
        p32 = {k: v.astype(np.float32) for k, v in params[i].items()}
        fwd_err = bwd_err = None
        if gpu is not None:
            cpu_l = _instance(layer, devmod.CPU, np.float32, p32)
            gpu_l = _instance(layer, gpu, np.float32, p32)
            dy = rng.standard_normal((batch, *layer.out_shape)).astype(np.float32)  # type: ignore[misc]
            yc, dxc, gc = _run(cpu_l, xs, dy)
            yg, dxg, gg = _run(gpu_l, [gpu.xp.asarray(a) for a in xs], gpu.xp.asarray(dy))
            fwd_err = rel_error(yc, yg)
            bwd_err = _max_rel(list(zip(dxc, dxg)) + [(gc[k], gg[k]) for k in gc])
        xs64 = [_jitter(a, rng) for a in xs]
        grad_err = gradient_check(layer, p32, xs64 if is_merge(layer) else xs64[0], gpu or devmod.CPU, rng, samples)
        results.append(LayerCheck(layer.name, layer.describe(), fwd_err, bwd_err, grad_err, _reads(net, i)))
    if whole_net:
        fwd_err = bwd_err = None
        if gpu is not None:
            labels = rng.integers(0, net.output_shape[0], batch).astype(np.int32)
            _, sc, gc, dxc = _loss_and_grads(_bound(net, devmod.CPU, np.float32, params), x, labels)
            _, sg, gg, dxg = _loss_and_grads(_bound(net, gpu, np.float32, params), gpu.xp.asarray(x),
                                             gpu.xp.asarray(labels))
            fwd_err, bwd_err = rel_error(sc, sg), max(rel_error(gc, gg), rel_error(dxc, dxg))
        grad_err = net_gradient_check(net, params, gpu or devmod.CPU, rng, batch, samples)
        merges = sum(is_merge(layer) for layer in net.layers)
        results.append(LayerCheck(NET_ROW, f"{len(net.layers)} nodes, {merges} merges", fwd_err, bwd_err, grad_err))
    return results


def format_results(model: str, batch: int, results: Sequence[LayerCheck], where: str) -> tuple[str, int]:
    """The table ``gpuconv check`` prints, and how many rows are out of tolerance."""
    reads = [_reads_text(results, k) for k in range(len(results))]
    graph = any(reads)  # a chain reads the row above everywhere: no column
    wn = max([len("layer")] + [len(r.name) for r in results])
    wk = max([len("kind")] + [len(r.kind) for r in results])
    wr = max([len("reads")] + [len(s) for s in reads])
    rcol = f"{'reads':<{wr}} " if graph else ""
    lines = [f"gpuconv check {model}: batch {batch}, float64 gradient check on {where}",
             f"{'layer':<{wn}} {'kind':<{wk}} {rcol}{'fwd rel err':>12} {'bwd rel err':>12} {'grad check':>12}"]
    bad = 0
    for r, src in zip(results, reads):
        f = "—" if r.fwd_err is None else f"{r.fwd_err:.2e}"
        b = "—" if r.bwd_err is None else f"{r.bwd_err:.2e}"
        bad += not r.ok
        col = f"{src:<{wr}} " if graph else ""
        lines.append(f"{r.name:<{wn}} {r.kind:<{wk}} {col}{f:>12} {b:>12} {r.grad_err:>12.2e}"
                     f"{'' if r.ok else '  FAIL'}")
    if graph:
        lines.append("'<-' names the inputs of a node that does not read the row above it")
    if results and results[-1].name == NET_ROW:
        lines.append(f"'{NET_ROW}': the loss through the graph (gradients of tensors read by several nodes are "
                     f"summed); fp32 bound {NET_TOL:g} (rounding compounds over the depth), nodes {NODE_TOL:g}")
    lines.append("all layers agree" if not bad else f"{bad} layer(s) out of tolerance")
    return "\n".join(lines), bad


def _reads_text(results: Sequence[LayerCheck], k: int) -> str:
    r = results[k]
    if not r.reads or (k > 0 and r.reads == (results[k - 1].name,)) or (k == 0 and r.reads == ("input",)):
        return ""
    # inside a block, its own nodes relative to it ('b1.relu1' for 'inception3a.b1.relu1'), as the summary
    scope = r.name[:r.name.rfind(".") + 1]
    return "<- " + ", ".join(n[len(scope):] if scope and n.startswith(scope) else n for n in r.reads)


def check_command(args: argparse.Namespace) -> int:
    device = getattr(args, "device", None)
    results = check_model(args.model, args.batch, args.seed, device)
    where = "GPU" if devmod.get_device(device).is_gpu else "CPU (no GPU: forward/backward comparison skipped)"
    text, bad = format_results(args.model, args.batch, results, where)
    print(text)
    return 1 if bad else 0


__all__ = ["LayerCheck", "central_difference", "check_command", "check_model", "format_results", "gradient_check",
           "net_gradient_check", "rel_error"]

