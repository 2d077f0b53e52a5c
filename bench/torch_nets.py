"""The PyTorch twin of a gpuconv Net: the same graph as torch modules, holding our parameters.

    from bench.torch_nets import torch_twin, twin_grads, torch_optimizer
    net = get_model("resnet20", input_shape=(1, 28, 28)).bind("cpu", seed=0)
    twin = torch_twin(net)                 # same nodes, same parameters (copied), same dtype
    scores = twin(torch.as_tensor(x))      # train mode (batch statistics); twin.eval() for inference
    loss = twin_loss(net)(scores, torch.as_tensor(labels, dtype=torch.long))
    loss.backward(); g = twin_grads(net, twin)   # in our flat gradient layout: compare with net.grad_buffer

Every node of the net (chain or graph) becomes one module, reading the same named inputs:
CONV (stride, padding, dilation, bias; the rounded variants' floor/ceil output sizes), BN,
RELU/LEAKYRELU, max/average POOL (padding counts as -inf / as zeros, as ours), FC (flattening a
volume in C, H, W order, as ours), FLATTEN, DROPOUT, LRN, ADD (with its fused ReLU), CONCAT and
GAP.  A ReLU the Net fused into a CONV/FC/ADD is applied where we apply it; the math is the
same either way.  L2POOL and LOCAL have no PyTorch twin here (a clear error says so).

Dropout: ``dropout="ours"`` draws our hash mask (``gpuconv.ops.dropout``, same seed and step),
so outputs and gradients compare exactly in train mode; ``"torch"`` (the default) is PyTorch's
own ``nn.Dropout``, what a PyTorch user would run (benchmarks).

This module imports torch; it is only used where torch is installed (benchmarks and their tests).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as tf

from gpuconv import device as devmod
from gpuconv.layers import (FC, LRN, Add, AvgPool, BatchNorm, Concat, Conv, Dropout, Flatten, GlobalAvgPool,
                            MaxPool, ReLU)
from gpuconv.geometry import window_pad_after
from gpuconv.net import Net

__all__ = ["TwinNet", "torch_twin", "copy_params", "twin_grads", "twin_params", "twin_loss", "torch_optimizer", "to_torch"]

DROPOUTS = ("torch", "ours")


def _torch_dtype(dt: Any) -> torch.dtype:
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[np.dtype(dt)]


def to_torch(a: Any, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host copy of any gpuconv array (NumPy, CuPy, emulator) as a torch tensor on ``device``."""
    t = torch.from_numpy(np.ascontiguousarray(devmod.to_host(a)))
    return t.to(device=device, dtype=dtype) if dtype is not None else t.to(device)


def _pool_out(n: int, f: int, s: int, p: int, ceil: bool) -> int:
    """PyTorch's pooling output size (with ceil_mode's rule that the last window starts inside)."""
    num = n + 2 * p - f
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= n + p:
        out -= 1
    return out


class _Pad(nn.Module):
    """Pad (P before, ``after`` after) on both spatial axes: a ceil CONV's windows past the padding."""

    def __init__(self, before: int, after: tuple[int, int], value: float) -> None:
        super().__init__()
        self.pads = (before, after[1], before, after[0])   # (left, right, top, bottom)
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tf.pad(x, self.pads, value=self.value)


class _Relu(nn.Module):
    def __init__(self, slope: float = 0.0) -> None:
        super().__init__()
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tf.leaky_relu(x, self.slope) if self.slope else tf.relu(x)


class _Then(nn.Module):
    """A module followed by ReLU (a CONV/FC whose ReLU the Net fused into its epilogue)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tf.relu(self.inner(x))


class _Linear(nn.Linear):
    """FC: flattens a volume (C, H, W order, as ours) before the product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x.flatten(1))


class _Add(nn.Module):
    def __init__(self, relu: bool) -> None:
        super().__init__()
        self.relu = relu

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        y = a + b
        return tf.relu(y) if self.relu else y


class _Concat(nn.Module):
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=1)


class _GAP(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class _OurDropout(nn.Module):
    """Inverted dropout with our hash mask (seed of the layer, the net's step): exact twins in train mode."""

    def __init__(self, layer: Dropout, net: Net) -> None:
        super().__init__()
        self.layer, self.net = layer, net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.layer.p
        if not self.training or p == 0.0:
            return x
        from gpuconv.ops.dropout import dropout_forward  # noqa: PLC0415

        ones = np.ones(tuple(x.shape), dtype=np.float32)
        _, mask = dropout_forward(ones, p, self.layer.seed, self.net.step)
        keep = torch.from_numpy(mask.astype(np.float32)).to(device=x.device, dtype=x.dtype)
        return x * keep / (1.0 - p)


def _module(layer: Any, net: Net, dropout: str) -> nn.Module:
    """The torch module computing what ``layer`` computes (its parameters still to be copied)."""
    if isinstance(layer, Conv) and type(layer).__name__ in ("Conv", "ConvRounded"):
        c = layer.in_shape[0]
        # PyTorch's conv rounds down; a ceil CONV (no PyTorch option) is zero padding after,
        # as far as its last window reaches, then a conv without padding
        plain = layer.rounding != "ceil" or layer.exact
        conv = nn.Conv2d(c, layer.K, layer.F, stride=layer.S, padding=layer.P if plain else 0,
                         dilation=layer.dilation, bias=layer.bias)
        if plain:
            mod: nn.Module = conv
        else:
            after = tuple(max(layer.P, window_pad_after(n, layer.F, layer.S, layer.P, o, layer.dilation))
                          for n, o in zip(layer.in_shape[1:], layer.out_shape[1:]))
            mod = nn.Sequential(_Pad(layer.P, after, 0.0), conv)
        return _Then(mod) if layer.fused_relu else mod
    if isinstance(layer, FC):
        lin = _Linear(layer.in_features, layer.M, bias=layer.bias)
        return _Then(lin) if layer.fused_relu else lin
    if isinstance(layer, BatchNorm):
        cls = nn.BatchNorm2d if len(layer.in_shape) == 3 else nn.BatchNorm1d
        return cls(layer.channels, eps=layer.eps, momentum=layer.momentum)
    if isinstance(layer, ReLU):
        return nn.Identity() if layer.fused else _Relu(layer.slope)
    if isinstance(layer, MaxPool):
        # our rounding is PyTorch's: floor (and exact) is its default, ceil its ceil_mode
        ceil = layer.rounding == "ceil"
        _, h, w = layer.in_shape
        want = tuple(layer.out_shape[1:])
        got = (_pool_out(h, layer.F, layer.S, layer.P, ceil), _pool_out(w, layer.F, layer.S, layer.P, ceil))
        if got != want:
            raise AssertionError(f"{layer.name}: output {want}, PyTorch's {got}")
        return nn.MaxPool2d(layer.F, layer.S, layer.P, ceil_mode=ceil)
    if isinstance(layer, AvgPool):
        return nn.AvgPool2d(layer.F, layer.S, layer.P, count_include_pad=True)
    if isinstance(layer, GlobalAvgPool):
        return _GAP()
    if isinstance(layer, Flatten):
        return nn.Flatten()
    if isinstance(layer, Dropout):
        return _OurDropout(layer, net) if dropout == "ours" else nn.Dropout(layer.p)
    if isinstance(layer, LRN):
        return nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k)
    if isinstance(layer, Add):
        return _Add(layer.relu)
    if isinstance(layer, Concat):
        return _Concat()
    raise NotImplementedError(f"{net.name}: {layer.name} ({layer.describe()}) has no PyTorch twin here")


def _key(name: str) -> str:
    return name.replace(".", "_")   # module names may not hold dots


class TwinNet(nn.Module):
    """The net's nodes as torch modules, run in the net's topological order on the same named inputs."""

    def __init__(self, net: Net, dropout: str = "torch") -> None:
        super().__init__()
        if dropout not in DROPOUTS:
            raise ValueError(f"dropout must be one of {DROPOUTS}, got {dropout!r}")
        self.names = [_key(layer.name) for layer in net.layers]
        self.sources = [tuple(s) for s in net.sources]
        self.nodes = nn.ModuleDict({k: _module(layer, net, dropout) for k, layer in zip(self.names, net.layers)})
        self.input_shape = tuple(net.input_shape)
        self._last_reader: dict[int, int] = {}
        for i, src in enumerate(self.sources):
            for p in src:
                self._last_reader[p] = i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[int, torch.Tensor] = {-1: x}
        for i, (key, src) in enumerate(zip(self.names, self.sources)):
            values[i] = self.nodes[key](*(values[p] for p in src))
            for p in src:   # freed once nothing reads it (as ours): the twin's memory is like for like
                if self._last_reader[p] == i:
                    values.pop(p, None)
        return values[len(self.names) - 1]


def _param_map(net: Net, twin: TwinNet) -> list[tuple[Any, torch.Tensor]]:
    """(our slot, the twin's parameter) for every slot of our flat layout, in slot order."""
    out = []
    for s in net.slots:
        mod = twin.nodes[twin.names[s.layer]]
        while isinstance(mod, (_Then, nn.Sequential)):
            mod = mod.inner if isinstance(mod, _Then) else mod[-1]
        attr = {"w": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}[s.name]
        out.append((s, getattr(mod, attr)))
    return out


def copy_params(net: Net, twin: TwinNet) -> None:
    """Our parameters (and BN running statistics) into the twin, exactly."""
    params = devmod.to_host(net.param_buffer)
    with torch.no_grad():
        for s, tp in _param_map(net, twin):
            tp.copy_(torch.from_numpy(params[s.offset:s.offset + s.size].reshape(s.shape)))
        for key, layer in zip(twin.names, net.layers):
            if isinstance(layer, BatchNorm):
                bn = twin.nodes[key]
                bn.running_mean.copy_(torch.from_numpy(devmod.to_host(layer.running_mean)))
                bn.running_var.copy_(torch.from_numpy(devmod.to_host(layer.running_var)))


def twin_grads(net: Net, twin: TwinNet) -> np.ndarray:
    """The twin's parameter gradients as one host vector in our flat layout (zeros where none)."""
    out = np.zeros(net.num_params, dtype=net.dtype)
    for s, tp in _param_map(net, twin):
        if tp.grad is not None:
            out[s.offset:s.offset + s.size] = tp.grad.detach().cpu().numpy().reshape(-1)
    return out


def twin_params(net: Net, twin: TwinNet) -> np.ndarray:
    """The twin's parameters as one host vector in our flat layout (compare with ``net.param_buffer``)."""
    out = np.zeros(net.num_params, dtype=net.dtype)
    for s, tp in _param_map(net, twin):
        out[s.offset:s.offset + s.size] = tp.detach().cpu().numpy().reshape(-1)
    return out


def torch_twin(net: Net, *, device: str | torch.device = "cpu", dtype: Any = None, dropout: str = "torch",
               train: bool = True) -> TwinNet:
    """The twin of a bound net, with its parameters, in ``net.dtype`` (or ``dtype``), in train mode
    (batch statistics, dropout on) or eval mode."""
    if net.param_buffer is None:
        raise RuntimeError(f"{net.name}: bind the net (net.bind or a PlannedExecutor) before making its twin")
    twin = TwinNet(net, dropout).to(dtype=_torch_dtype(net.dtype))
    copy_params(net, twin)
    twin = twin.to(device=device, dtype=_torch_dtype(dtype if dtype is not None else net.dtype))
    return twin.train(train)


def twin_loss(net: Net) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Our loss as a torch function of (scores, labels): mean softmax cross-entropy, or the mean
    multiclass hinge (delta 1) summed over classes."""
    if net.loss == "softmax":
        return tf.cross_entropy
    return lambda s, y: tf.multi_margin_loss(s, y, margin=1.0) * s.shape[1]


def torch_optimizer(net: Net, twin: TwinNet, kind: str, lr: float | None = None, *,
                    weight_decay: float = 0.0, momentum: float = 0.9, decay: float = 0.99, beta1: float = 0.9,
                    beta2: float = 0.999, eps: float = 1e-8) -> torch.optim.Optimizer:
    """The torch optimizer doing our ``gpuconv.optim.Optimizer(kind, ...)`` update (same defaults;
    weight decay on the weights only, as ours)."""
    from gpuconv.optim import DEFAULT_LR  # noqa: PLC0415

    lr = DEFAULT_LR[kind] if lr is None else lr
    pairs = _param_map(net, twin)
    groups = [{"params": [p for s, p in pairs if s.name == "w"], "weight_decay": weight_decay},
              {"params": [p for s, p in pairs if s.name != "w"], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr)
    if kind in ("momentum", "nesterov"):
        return torch.optim.SGD(groups, lr, momentum=momentum, nesterov=kind == "nesterov")
    if kind == "adam":
        return torch.optim.Adam(groups, lr, betas=(beta1, beta2), eps=eps)
    if kind == "rmsprop":
        return torch.optim.RMSprop(groups, lr, alpha=decay, eps=eps)
    if kind == "adagrad":
        return torch.optim.Adagrad(groups, lr, eps=eps)
    raise ValueError(f"unknown optimizer {kind!r}")
