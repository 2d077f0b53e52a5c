"""The Layer interface: shape inference, parameters, memory needs, forward/backward.

A layer is declared with hyperparameters only.  ``build(in_shape)`` infers its
output shape from the per-example input shape (C, H, W) or (D,) and rejects bad
geometry before anything is allocated.  Parameters are bound later by the Net as
views into one flat buffer (so an optimizer step is one kernel over it).

What a layer tells the memory planner (all per batch):
- its output activation (``output_spec``), and whether that output may alias its
  input (``inplace``: Flatten, and ReLU fused into the previous layer),
- which of its input/output it reads again in backward (``keeps_input`` /
  ``keeps_output``),
- extra tensors kept from forward to backward (``saved_specs``: pooling
  switches, dropout masks, batch-norm statistics, LRN scale),
- kernel workspace (``workspace_specs``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TensorSpec:
    """One tensor the executor will allocate: full shape (batch first) and dtype."""

    name: str
    shape: Shape
    dtype: np.dtype
    kind: str = "activation"  # activation | saved | workspace | gradient | param

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize


@dataclass
class Buffers:
    """Preallocated arrays the executor hands a layer (None: the op allocates)."""

    out: Any = None                                   # forward output
    dx: Any = None                                    # backward output (input gradient)
    # A merge node's backward outputs, one gradient per input (CONCAT's slices of dy): activation
    # gradients like ``dx``, not scratch.  Empty: the op allocates them.
    dxs: list[Any] = field(default_factory=list)
    saved: dict[str, Any] = field(default_factory=dict)
    workspace: dict[str, Any] = field(default_factory=dict)
    # Scalars that change every step, in device memory the kernels read when they run
    # (dropout keys), written by the executor before each step: a captured CUDA graph
    # replays the same launches with the new values.
    step: dict[str, Any] = field(default_factory=dict)


NO_BUFFERS = Buffers()


class Layer:
    """Base class.  Subclasses set ``kind`` and implement the hooks they need."""

    kind: ClassVar[str] = "LAYER"
    keeps_input: ClassVar[bool] = False   # backward reads the forward input
    keeps_output: ClassVar[bool] = False  # backward reads the forward output
    inplace: bool = False                 # output aliases input (no new memory)
    can_skip_input_grad: ClassVar[bool] = False  # backward can return None when dx is not wanted

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.kind.lower()
        self.in_shape: Shape | None = None
        self.out_shape: Shape | None = None
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.dtype: np.dtype = np.dtype(np.float32)
        self._cache: dict[str, Any] = {}
        # The Net turns this off for its first layer: nobody needs the gradient of the data.
        self.input_grad = True

    @property
    def computes_input_grad(self) -> bool:
        """Whether backward produces dx (the planner plans its memory only then)."""
        return self.input_grad or not self.can_skip_input_grad

    # ---- static graph -------------------------------------------------------------
    def build(self, in_shape: Shape) -> Shape:
        """Infer and remember the output shape; raise GeometryError if it does not fit."""
        self.in_shape = tuple(int(d) for d in in_shape)
        self.out_shape = tuple(int(d) for d in self.infer_shape(self.in_shape))
        return self.out_shape

    def infer_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    def param_shapes(self) -> dict[str, Shape]:
        """Name -> shape of each parameter (after build)."""
        return {}

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Fresh host values for every parameter (float64; the Net casts)."""
        return {}

    @property
    def num_params(self) -> int:
        return sum(int(math.prod(s)) for s in self.param_shapes().values())

    @property
    def num_weights(self) -> int:
        """Parameters excluding biases (the notes' 'weights' column)."""
        return sum(int(math.prod(s)) for n, s in self.param_shapes().items() if n == "w")

    def output_spec(self, batch: int) -> TensorSpec:
        assert self.out_shape is not None, f"{self.name}: build() first"
        return TensorSpec(f"{self.name}.out", (batch, *self.out_shape), self.dtype, "activation")

    def saved_specs(self, batch: int) -> list[TensorSpec]:
        return []

    def workspace_specs(self, batch: int, train: bool = True) -> list[TensorSpec]:
        """Kernel scratch the layer's ops need (forward, and backward when ``train``)."""
        return []

    def flops(self, batch: int) -> int:
        """Multiply-adds x2 of one forward pass (0 where negligible)."""
        return 0

    def set_kernel_options(self, *, precision: str | None = None, conv_algo: str | None = None) -> None:
        """The layer's kernel choices (layers whose ops take them override this); None leaves
        a setting as it is, and a layer left at None follows the kernel configuration."""

    def kernel_choices(self, batch: int, train: bool = True, dtype: Any = None) -> list[Any]:
        """What the layer's GPU passes launch (``ops.selector.Choice`` per pass) under the
        kernel configuration in force: the memory plan records it."""
        return []

    def describe(self) -> str:
        """The notes' short name, e.g. CONV3-64."""
        return self.kind

    # ---- execution ----------------------------------------------------------------
    def forward(self, x: Any, train: bool, buf: Buffers = NO_BUFFERS) -> Any:
        raise NotImplementedError

    def backward(self, dy: Any, buf: Buffers = NO_BUFFERS) -> Any:
        raise NotImplementedError

    def clear_cache(self) -> None:
        self._cache.clear()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()}, name={self.name!r})"


def he_normal(rng: np.random.Generator, shape: Shape, fan_in: int) -> np.ndarray:
    """He et al. init: N(0, 2/fan_in), the notes' recommendation for ReLU nets."""
    return rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)


def xavier_normal(rng: np.random.Generator, shape: Shape, fan_in: int, fan_out: int) -> np.ndarray:
    """Glorot/Xavier init: N(0, 2/(fan_in+fan_out))."""
    return rng.standard_normal(shape) * math.sqrt(2.0 / (fan_in + fan_out))


def init_weight(rng: np.random.Generator, shape: Shape, fan_in: int, fan_out: int, scheme: str) -> np.ndarray:
    if scheme == "he":
        return he_normal(rng, shape, fan_in)
    if scheme == "xavier":
        return xavier_normal(rng, shape, fan_in, fan_out)
    raise ValueError(f"unknown init scheme {scheme!r}: use 'he' or 'xavier'")


def check_positive_int(layer: str, **values: Any) -> None:
    """Hyperparameters must be integers >= 1; a clear error names the layer and the value."""
    from ..geometry import GeometryError  # noqa: PLC0415

    for key, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise GeometryError(f"{layer}: {key}={v!r} must be a positive integer")
