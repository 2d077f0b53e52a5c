"""Net: a static graph of layers, built from the input shape before anything runs.

Construction infers every shape and rejects bad geometry (no memory touched).
``bind(device)`` then lays all parameters out in ONE flat buffer (weights first,
then biases/BN parameters, so weight decay can skip the latter) with gradients in
a second buffer of the same layout; each layer's params are views into it.
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
from .ops.winograd import ALGOS as CONV_ALGOS

LOSSES = ("softmax", "svm")


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


class Net:
    def __init__(self, layers: Sequence[Layer], input_shape: Sequence[int], *, loss: str = "softmax",
                 dtype: Any = np.float32, name: str = "net", fuse: bool = True,
                 vector_output: bool = True) -> None:
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
        self._name_layers()
        shape = input_shape
        for layer in self.layers:
            layer.dtype = self.dtype
            shape = layer.build(shape)
        self.output_shape = shape
        if vector_output and len(shape) != 1:
            raise GeometryError(f"{name}: the last layer must produce class scores (a vector), got volume {shape}; "
                                f"end the net with an FC layer")
        if fuse:
            self._fuse_relus()
        self.layers[0].input_grad = False  # the data's gradient is not needed (see backward)
        self.slots = self._layout()
        self.num_params = sum(s.size for s in self.slots)
        self.num_decayed = sum(s.size for s in self.slots if s.name == "w")
        self.device: devmod.Device | None = None
        self.param_buffer: Any = None
        self.grad_buffer: Any = None
        self.seed = 0
        self.step = 0

    # ---- construction ---------------------------------------------------------------
    def _name_layers(self) -> None:
        counts: dict[str, int] = {}
        seen: set[str] = set()
        for layer in self.layers:
            if layer.name == layer.kind.lower():  # default name: number it, conv1, conv2, ...
                counts[layer.kind] = counts.get(layer.kind, 0) + 1
                layer.name = f"{layer.kind.lower()}{counts[layer.kind]}"
            if layer.name in seen:
                raise ValueError(f"{self.name}: two layers are named {layer.name!r}")
            seen.add(layer.name)

    def _fuse_relus(self) -> None:
        """CONV/FC followed by a plain RELU: the kernel epilogue applies it, no extra tensor."""
        for prev, layer in zip(self.layers, self.layers[1:]):
            if isinstance(layer, ReLU) and layer.slope == 0.0 and isinstance(prev, (Conv, FC)) \
                    and not prev.fused_relu:
                prev.fused_relu = True
                layer.fused = True

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
            if hasattr(layer, "precision"):
                layer.precision = precision  # type: ignore[attr-defined]

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
        with self._engine(dev):
            for i, layer in enumerate(self.layers):
                if isinstance(layer, Dropout):
                    layer.step = self.step
                x = layer.forward(x, train, buffers[i] if buffers is not None else Buffers())
        return x

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
                 input_grad: bool = False) -> Any:
        """Fill every layer's grads (views into grad_buffer).

        Returns the gradient of the input batch when ``input_grad`` (else None where the
        first layer can skip it: training never needs it, and for a first CONV with few
        channels it is the most expensive kernel of the step).
        """
        dev = self._require_bound()
        self.layers[0].input_grad = input_grad
        dy = dscores
        try:
            with self._engine(dev):
                for i in range(len(self.layers) - 1, -1, -1):
                    dy = self.layers[i].backward(dy, buffers[i] if buffers is not None else Buffers())
        finally:
            for layer in self.layers:
                layer.clear_cache()
            self.layers[0].input_grad = False
        return dy

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
