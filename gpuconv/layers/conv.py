"""CONV and its unshared variant, the locally-connected layer (the notes' K, F, S, P)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..geometry import GeometryError, check_rounding, window_output_size
from ..kernel_config import current
from ..ops import activation as act_ops
from ..ops import conv as conv_ops
from ..ops import local as local_ops
from ..ops import winograd
from .base import NO_BUFFERS, Buffers, Layer, Shape, TensorSpec, check_positive_int, init_weight


def _require_volume(layer: Layer, in_shape: Shape) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise GeometryError(f"{layer.name}: {layer.kind} needs a 3-D input volume (C, H, W), got {in_shape}")
    return in_shape  # type: ignore[return-value]


class Conv(Layer):
    """K filters of F x F (x C), stride S, zero padding P, dilation D; bias per filter.

    ``fused_relu`` is set by the Net when a RELU follows: the kernel applies it in
    its epilogue and backward masks the gradient with the kept output.
    ``algo``: the GPU algorithm for float32 (fp32 or TF32 precision): 'gemm', 'winograd'
    (F(2x2,3x3), for 3x3 stride-1 layers; its workspace is part of the memory plan) or
    'auto' (where Winograd applies, the faster of the two, timed on first use and cached;
    the plan holds the workspace either way); None follows the kernel configuration's
    ``conv_algo`` (``gpuconv.kernel_config``).  ``precision``: 'fp32', 'tf32', or None (the
    kernel configuration's); both are set with ``set_kernel_options``.
    ``rounding``: 'exact' (the notes' rule: (W - F + 2P)/S + 1 must be an integer), 'floor'
    (PyTorch's output size) or 'ceil' (see ``geometry.window_output_size``); the kernels take
    the rounded output size directly (windows at -P + i*S, zeros outside the input).
    """

    kind = "CONV"
    can_skip_input_grad = True

    def __init__(self, K: int, F: int, S: int = 1, P: int = 0, dilation: int = 1, *,
                 bias: bool = True, init: str = "he", algo: str | None = None, rounding: str = "exact",
                 name: str | None = None) -> None:
        super().__init__(name)
        check_positive_int(self.name, K=K, F=F, S=S, dilation=dilation)
        if not isinstance(P, (int, np.integer)) or P < 0:
            raise GeometryError(f"{self.name}: P={P!r} must be an integer >= 0")
        self.rounding = check_rounding(rounding, self.name)
        if algo is not None and algo not in winograd.ALGOS:
            raise ValueError(f"{self.name}: algo must be one of {winograd.ALGOS} or None, got {algo!r}")
        self.K, self.F, self.S, self.P, self.dilation = int(K), int(F), int(S), int(P), int(dilation)
        self.bias, self.init, self.algo = bias, init, algo
        self.fused_relu = False
        self.precision: str | None = None

    def set_kernel_options(self, *, precision: str | None = None, conv_algo: str | None = None) -> None:
        if precision is not None:
            if precision not in conv_ops.PRECISIONS:
                raise ValueError(f"{self.name}: precision must be one of {conv_ops.PRECISIONS}, got {precision!r}")
            self.precision = precision
        if conv_algo is not None:
            if conv_algo not in winograd.ALGOS:
                raise ValueError(f"{self.name}: algo must be one of {winograd.ALGOS} or None, got {conv_algo!r}")
            self.algo = conv_algo

    @property
    def keeps_input(self) -> bool:  # type: ignore[override]
        return True  # dW needs x

    @property
    def keeps_output(self) -> bool:  # type: ignore[override]
        return self.fused_relu  # the ReLU mask comes from y > 0

    def infer_shape(self, in_shape: Shape) -> Shape:
        c, h, w = _require_volume(self, in_shape)
        rounding = getattr(self, "rounding", "exact")
        ho = window_output_size(h, self.F, self.S, self.P, self.dilation, layer=self.name, axis="height",
                                rounding=rounding)
        wo = window_output_size(w, self.F, self.S, self.P, self.dilation, layer=self.name, axis="width",
                                rounding=rounding)
        return (self.K, ho, wo)

    @property
    def exact(self) -> bool:
        """True where (W - F + 2P)/S + 1 is an integer (rounding changes nothing)."""
        _, h, w = self.in_shape  # type: ignore[misc]
        _, ho, wo = self.out_shape  # type: ignore[misc]
        fe = self.dilation * (self.F - 1) + 1
        return (ho - 1) * self.S + fe == h + 2 * self.P and (wo - 1) * self.S + fe == w + 2 * self.P

    def param_shapes(self) -> dict[str, Shape]:
        assert self.in_shape is not None
        shapes = {"w": (self.K, self.in_shape[0], self.F, self.F)}
        if self.bias:
            shapes["b"] = (self.K,)
        return shapes

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        c = self.in_shape[0]  # type: ignore[index]
        fan_in, fan_out = c * self.F * self.F, self.K * self.F * self.F
        p = {"w": init_weight(rng, self.param_shapes()["w"], fan_in, fan_out, self.init)}
        if self.bias:
            p["b"] = np.zeros(self.K)
        return p

    def flops(self, batch: int) -> int:
        k, ho, wo = self.out_shape  # type: ignore[misc]
        return 2 * batch * k * ho * wo * self.in_shape[0] * self.F * self.F  # type: ignore[index]

    def uses_winograd(self) -> bool:
        """True when this layer's GPU passes run Winograd F(2x2,3x3) (see ops.conv.conv_forward)."""
        precision = self.precision or current().precision
        return conv_ops.use_winograd(self.algo, np.dtype(self.dtype), precision, (self.K, 0, self.F, self.F),
                                     self.S, self.P, self.dilation)

    def kernel_choices(self, batch: int, train: bool = True, dtype: Any = None) -> list[Any]:
        x_shape = (batch, *self.in_shape)  # type: ignore[misc]
        w_shape = (self.K, self.in_shape[0], self.F, self.F)  # type: ignore[index]
        passes = ["fwd"] + (["bwdf"] + (["bwdd"] if self.input_grad else []) if train else [])
        dt = np.dtype(self.dtype if dtype is None else dtype)
        return [conv_ops.select(conv_ops.problem(p, x_shape, w_shape, self.S, self.P, self.dilation, dt,
                                                 self.precision, self.algo, has_bias=self.bias,
                                                 relu=self.fused_relu and p == "fwd", rounding=self.rounding))
                for p in passes]

    def workspace_specs(self, batch: int, train: bool = True) -> list[TensorSpec]:
        if not self.uses_winograd():
            return []
        x_shape = (batch, *self.in_shape)  # type: ignore[misc]
        elems = winograd.layer_workspace_elems(x_shape, (self.K, self.in_shape[0], 3, 3), self.P, train)  # type: ignore[index]
        return [TensorSpec(f"{self.name}.winograd", (elems,), np.dtype(np.float32), "workspace")]

    def describe(self) -> str:
        extra = "".join([f"/{self.S}" if self.S != 1 else "", f" p{self.P}" if self.P else "",
                         f" d{self.dilation}" if self.dilation != 1 else "",
                         " ceil" if self.rounding == "ceil" else ""])
        return f"CONV{self.F}-{self.K}{extra}" + ("+RELU" if self.fused_relu else "")

    def forward(self, x: Any, train: bool, buf: Buffers = NO_BUFFERS) -> Any:
        y = conv_ops.conv_forward(x, self.params["w"], self.params.get("b"), self.S, self.P, self.dilation,
                                  relu=self.fused_relu, out=buf.out, precision=self.precision, algo=self.algo,
                                  workspace=buf.workspace.get("winograd"), rounding=self.rounding)
        if train:
            self._cache["x"] = x
            if self.fused_relu:
                self._cache["y"] = y
        return y

    def backward(self, dy: Any, buf: Buffers = NO_BUFFERS) -> Any:
        x = self._cache["x"]
        if self.fused_relu:
            dy = act_ops.relu_backward(dy, self._cache["y"], out=dy)  # dy is ours to overwrite
        conv_ops.conv_backward_filter(x, dy, self.params["w"].shape, self.S, self.P, self.dilation,
                                      with_bias=self.bias, dw_out=self.grads["w"],
                                      db_out=self.grads.get("b"), precision=self.precision, algo=self.algo,
                                      workspace=buf.workspace.get("winograd"), rounding=self.rounding)
        if not self.input_grad:
            return None
        return conv_ops.conv_backward_data(dy, self.params["w"], x.shape, self.S, self.P, self.dilation,
                                           out=buf.dx, precision=self.precision, algo=self.algo,
                                           workspace=buf.workspace.get("winograd"), rounding=self.rounding)


class LocallyConnected(Layer):
    """CONV without weight sharing: every output position has its own K filters."""

    kind = "LOCAL"
    keeps_input = True
    can_skip_input_grad = True

    def __init__(self, K: int, F: int, S: int = 1, P: int = 0, dilation: int = 1, *,
                 bias: bool = True, init: str = "he", name: str | None = None) -> None:
        super().__init__(name)
        check_positive_int(self.name, K=K, F=F, S=S, dilation=dilation)
        if not isinstance(P, (int, np.integer)) or P < 0:
            raise GeometryError(f"{self.name}: P={P!r} must be an integer >= 0")
        self.K, self.F, self.S, self.P, self.dilation = int(K), int(F), int(S), int(P), int(dilation)
        self.bias, self.init = bias, init

    infer_shape = Conv.infer_shape

    def param_shapes(self) -> dict[str, Shape]:
        c = self.in_shape[0]  # type: ignore[index]
        _, ho, wo = self.out_shape  # type: ignore[misc]
        shapes = {"w": (ho, wo, self.K, c, self.F, self.F)}
        if self.bias:
            shapes["b"] = (self.K, ho, wo)
        return shapes

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        c = self.in_shape[0]  # type: ignore[index]
        shapes = self.param_shapes()
        p = {"w": init_weight(rng, shapes["w"], c * self.F * self.F, self.K * self.F * self.F, self.init)}
        if self.bias:
            p["b"] = np.zeros(shapes["b"])
        return p

    def flops(self, batch: int) -> int:
        k, ho, wo = self.out_shape  # type: ignore[misc]
        return 2 * batch * k * ho * wo * self.in_shape[0] * self.F * self.F  # type: ignore[index]

    def describe(self) -> str:
        return f"LOCAL{self.F}-{self.K}" + (f"/{self.S}" if self.S != 1 else "")

    def forward(self, x: Any, train: bool, buf: Buffers = NO_BUFFERS) -> Any:
        if train:
            self._cache["x"] = x
        return local_ops.local_forward(x, self.params["w"], self.params.get("b"), self.S, self.P,
                                       self.dilation, out=buf.out)

    def backward(self, dy: Any, buf: Buffers = NO_BUFFERS) -> Any:
        x = self._cache["x"]
        local_ops.local_backward_filter(x, dy, self.params["w"].shape, self.S, self.P, self.dilation,
                                        with_bias=self.bias, dw_out=self.grads["w"], db_out=self.grads.get("b"))
        if not self.input_grad:
            return None
        return local_ops.local_backward_data(dy, self.params["w"], x.shape, self.S, self.P, self.dilation,
                                             out=buf.dx)
