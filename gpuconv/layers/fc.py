"""FC (fully-connected) and FLATTEN.  FC flattens a volume input itself (a view)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..ops import activation as act_ops
from ..ops import fc as fc_ops
from .base import NO_BUFFERS, Buffers, Layer, Shape, TensorSpec, check_positive_int, init_weight


class Flatten(Layer):
    """(C, H, W) -> (C*H*W,): a reshape, so its output aliases its input."""

    kind = "FLATTEN"
    inplace = True

    def infer_shape(self, in_shape: Shape) -> Shape:
        return (int(math.prod(in_shape)),)

    def forward(self, x: Any, train: bool, buf: Buffers = NO_BUFFERS) -> Any:
        return x.reshape(x.shape[0], -1)

    def backward(self, dy: Any, buf: Buffers = NO_BUFFERS) -> Any:
        return dy.reshape((dy.shape[0], *self.in_shape))  # type: ignore[misc]


class FC(Layer):
    """M neurons, each connected to every input value: y = W x + b, W of shape (M, D)."""

    kind = "FC"
    keeps_input = True
    can_skip_input_grad = True

    def __init__(self, M: int, *, bias: bool = True, init: str = "he", name: str | None = None) -> None:
        super().__init__(name)
        check_positive_int(self.name, M=M)
        self.M, self.bias, self.init = int(M), bias, init
        self.fused_relu = False
        self.precision: str | None = None   # None: the kernel configuration's (set_kernel_options)

    def set_kernel_options(self, *, precision: str | None = None, conv_algo: str | None = None) -> None:
        if precision is not None:
            if precision not in fc_ops.PRECISIONS:
                raise ValueError(f"{self.name}: precision must be one of {fc_ops.PRECISIONS}, got {precision!r}")
            self.precision = precision

    def kernel_choices(self, batch: int, train: bool = True, dtype: Any = None) -> list[Any]:
        dt = np.dtype(self.dtype if dtype is None else dtype)
        choices = fc_ops.fc_choices(batch, self.in_features, self.M, self.precision, train, self.bias, dt)
        return [c for c in choices if c.pass_ != "bwdd" or self.input_grad]

    @property
    def keeps_output(self) -> bool:  # type: ignore[override]
        return self.fused_relu

    @property
    def in_features(self) -> int:
        return int(math.prod(self.in_shape))  # type: ignore[arg-type]

    def infer_shape(self, in_shape: Shape) -> Shape:
        return (self.M,)

    def param_shapes(self) -> dict[str, Shape]:
        shapes = {"w": (self.M, self.in_features)}
        if self.bias:
            shapes["b"] = (self.M,)
        return shapes

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        p = {"w": init_weight(rng, (self.M, self.in_features), self.in_features, self.M, self.init)}
        if self.bias:
            p["b"] = np.zeros(self.M)
        return p

    def flops(self, batch: int) -> int:
        return 2 * batch * self.M * self.in_features

    def describe(self) -> str:
        return f"FC-{self.M}" + ("+RELU" if self.fused_relu else "")

    def workspace_specs(self, batch: int, train: bool = True) -> list[TensorSpec]:
        """Split-K scratch of the float32 GPU GEMMs (small batches, long rows: e.g. VGG16's FC-4096)."""
        if np.dtype(self.dtype) != np.float32:
            return []
        elems = fc_ops.fc_workspace_elems(batch, self.in_features, self.M, train)
        return [TensorSpec(f"{self.name}.splitk", (elems,), np.dtype(np.float32), "workspace")] if elems else []

    def forward(self, x: Any, train: bool, buf: Buffers = NO_BUFFERS) -> Any:
        x2 = x.reshape(x.shape[0], -1)
        y = fc_ops.fc_forward(x2, self.params["w"], self.params.get("b"), relu=self.fused_relu,
                              out=buf.out, precision=self.precision, workspace=buf.workspace.get("splitk"))
        if train:
            self._cache["x"] = x2
            if self.fused_relu:
                self._cache["y"] = y
        return y

    def backward(self, dy: Any, buf: Buffers = NO_BUFFERS) -> Any:
        x2 = self._cache["x"]
        if self.fused_relu:
            dy = act_ops.relu_backward(dy, self._cache["y"], out=dy)
        fc_ops.fc_backward_weight(x2, dy, with_bias=self.bias, dw_out=self.grads["w"],
                                  db_out=self.grads.get("b"), precision=self.precision,
                                  workspace=buf.workspace.get("splitk"))
        if not self.input_grad:
            return None
        out = None if buf.dx is None else buf.dx.reshape(dy.shape[0], -1)
        dx = fc_ops.fc_backward_data(dy, self.params["w"], out=out, precision=self.precision,
                                     workspace=buf.workspace.get("splitk"))
        return dx.reshape((dy.shape[0], *self.in_shape))  # type: ignore[misc]
