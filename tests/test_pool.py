"""POOL ops: NumPy spec vs plain loops, gradient checks, errors; GPU kernels vs the NumPy spec."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv.geometry import GeometryError
from gpuconv.ops import pool
from gpuconv.ops._checks import OpArgumentError
from helpers import numeric_grad, poison, rel_error

# (N, C, H, W, F, S, pad): odd sizes, batch 1, overlapping 3/2, stride > F, padding
CASES = [
    (2, 3, 8, 8, 2, 2, 0),
    (1, 5, 7, 9, 3, 2, 0),
    (2, 2, 9, 7, 3, 2, 1),
    (1, 1, 5, 5, 1, 1, 0),
    (3, 2, 6, 10, 2, 1, 1),
    (1, 3, 10, 10, 2, 4, 0),
    (2, 1, 10, 10, 5, 3, 2),
    (1, 2, 4, 6, 4, 2, 3),
]


def _distinct(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random values at least 1e-3 apart: finite differences never cross a max switch."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * 1e-2 + rng.uniform(0, 1e-3, n)).reshape(shape)


# ------------------------------------------------------------------------------------------
# plain-loop references (one output at a time, straight from the definitions)
# ------------------------------------------------------------------------------------------

def loop_size(n: int, F: int, S: int, pad: int, rounding: str = "exact") -> int:
    """Outputs along one axis: floor (and exact), or ceil with PyTorch's rule that the last
    window starts inside the input or its left padding."""
    out = (n + 2 * pad - F) // S + 1
    if rounding == "ceil" and (n + 2 * pad - F) % S and out * S < n + pad:
        out += 1
    return out


def loop_forward(x: np.ndarray, F: int, S: int, pad: int, kind: str,
                 rounding: str = "exact") -> tuple[np.ndarray, np.ndarray]:
    n, c, h, w = x.shape
    ho, wo = loop_size(h, F, S, pad, rounding), loop_size(w, F, S, pad, rounding)
    y = np.zeros((n, c, ho, wo))
    sw = np.zeros((n, c, ho, wo), np.uint8)
    for i in range(n):
        for ch in range(c):
            for oh in range(ho):
                for ow in range(wo):
                    best, arg, total = None, None, 0.0
                    for fh in range(F):
                        for fw in range(F):
                            ih, iw = oh * S - pad + fh, ow * S - pad + fw
                            if not (0 <= ih < h and 0 <= iw < w):
                                continue
                            v = float(x[i, ch, ih, iw])
                            total += v if kind == "avg" else v * v
                            if best is None or v > best:
                                best, arg = v, fh * F + fw
                    y[i, ch, oh, ow] = best if kind == "max" else total / (F * F) if kind == "avg" else np.sqrt(total)
                    sw[i, ch, oh, ow] = arg
    return y, sw


def loop_backward(dy: np.ndarray, x: np.ndarray, F: int, S: int, pad: int, kind: str,
                  rounding: str = "exact") -> np.ndarray:
    n, c, h, w = x.shape
    _, _, ho, wo = dy.shape
    y, sw = loop_forward(x, F, S, pad, kind, rounding)
    dx = np.zeros(x.shape)
    for i in range(n):
        for ch in range(c):
            for oh in range(ho):
                for ow in range(wo):
                    for fh in range(F):
                        for fw in range(F):
                            ih, iw = oh * S - pad + fh, ow * S - pad + fw
                            if not (0 <= ih < h and 0 <= iw < w):
                                continue
                            g = dy[i, ch, oh, ow]
                            if kind == "max":
                                dx[i, ch, ih, iw] += g if sw[i, ch, oh, ow] == fh * F + fw else 0.0
                            elif kind == "avg":
                                dx[i, ch, ih, iw] += g / (F * F)
                            elif y[i, ch, oh, ow] > 0:
                                dx[i, ch, ih, iw] += g * x[i, ch, ih, iw] / y[i, ch, oh, ow]
    return dx


def run_forward(kind: str, x, F, S, pad, out=None, switches_out=None, rounding="exact"):
    if kind == "max":
        return pool.maxpool_forward(x, F, S, pad, out=out, switches_out=switches_out, rounding=rounding)
    fn = pool.avgpool_forward if kind == "avg" else pool.l2pool_forward
    return fn(x, F, S, pad, out=out, rounding=rounding), None


def run_backward(kind: str, dy, x, F, S, pad, out=None, rounding="exact"):
    if kind == "max":
        _, sw = pool.maxpool_forward(x, F, S, pad, rounding=rounding)
        return pool.maxpool_backward(dy, sw, x.shape, F, S, pad, out=out, rounding=rounding)
    if kind == "avg":
        return pool.avgpool_backward(dy, x.shape, F, S, pad, out=out, rounding=rounding)
    y = pool.l2pool_forward(x, F, S, pad, rounding=rounding)
    return pool.l2pool_backward(dy, x, y, F, S, pad, out=out, rounding=rounding)


KINDS = ["max", "avg", "l2"]


# ------------------------------------------------------------------------------------------
# CPU
# ------------------------------------------------------------------------------------------

def test_output_shape() -> None:
    assert pool.pool_output_shape((2, 3, 224, 224), 2, 2) == (2, 3, 112, 112)
    assert pool.pool_output_shape((1, 96, 55, 55), 3, 2) == (1, 96, 27, 27)
    assert pool.pool_output_shape((1, 4, 7, 7), 3, 2, 1) == (1, 4, 4, 4)
    with pytest.raises(GeometryError, match="not an integer"):
        pool.pool_output_shape((1, 1, 112, 112), 3, 2)
    with pytest.raises(GeometryError, match="smaller than the window"):
        pool.pool_output_shape((1, 1, 8, 8), 2, 2, 2)
    with pytest.raises(GeometryError):
        pool.pool_output_shape((1, 1, 2, 2), 3, 1)
    with pytest.raises(OpArgumentError, match="x_shape"):
        pool.pool_output_shape((4, 4, 4), 2, 2)
    with pytest.raises(OpArgumentError, match="S="):
        pool.pool_output_shape((1, 1, 4, 4), 2, 0)
    with pytest.raises(OpArgumentError, match="F="):
        pool.pool_output_shape((1, 1, 4, 4), 2.5, 2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_loops(kind: str, case, rng: np.random.Generator) -> None:
    n, c, h, w, F, S, pad = case
    x = rng.standard_normal((n, c, h, w))
    y, sw = run_forward(kind, x, F, S, pad)
    y_ref, sw_ref = loop_forward(x, F, S, pad, kind)
    assert y.shape == y_ref.shape and y.dtype == np.float64
    assert rel_error(y, y_ref) < 1e-12
    if kind == "max":
        assert sw.dtype == np.uint8
        np.testing.assert_array_equal(sw, sw_ref)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CASES)
def test_backward_matches_loops(kind: str, case, rng: np.random.Generator) -> None:
    n, c, h, w, F, S, pad = case
    x = _distinct(rng, (n, c, h, w))
    ho, wo = pool.pool_output_shape(x.shape, F, S, pad)[2:]
    dy = rng.standard_normal((n, c, ho, wo))
    dx = run_backward(kind, dy, x, F, S, pad)
    assert dx.shape == x.shape
    assert rel_error(dx, loop_backward(dy, x, F, S, pad, kind)) < 1e-12


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[4], CASES[6]])
def test_gradient_check(kind: str, case, rng: np.random.Generator) -> None:
    n, c, h, w, F, S, pad = case
    x = _distinct(rng, (n, c, h, w))
    if kind == "l2":
        x += np.sign(x) * 0.1  # keep every window's norm well away from 0
    ho, wo = pool.pool_output_shape(x.shape, F, S, pad)[2:]
    dy = rng.standard_normal((n, c, ho, wo))
    num = numeric_grad(lambda: float(np.sum(run_forward(kind, x, F, S, pad)[0] * dy)), x, eps=1e-6)
    assert rel_error(run_backward(kind, dy, x, F, S, pad), num) < 1e-7


def test_float32_and_out_buffers(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    out = np.full((2, 3, 4, 4), np.nan, np.float32)
    sw_out = np.full((2, 3, 4, 4), 77, np.uint8)
    y, sw = pool.maxpool_forward(x, 3, 2, out=out, switches_out=sw_out)
    assert y is out and sw is sw_out
    y_ref, sw_ref = loop_forward(x.astype(np.float64), 3, 2, 0, "max")
    np.testing.assert_array_equal(y, y_ref.astype(np.float32))
    np.testing.assert_array_equal(sw, sw_ref)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx_out = np.full(x.shape, np.nan, np.float32)
    dx = pool.maxpool_backward(dy, sw, x.shape, 3, 2, out=dx_out)
    assert dx is dx_out and dx.dtype == np.float32 and not np.isnan(dx).any()
    for kind in ("avg", "l2"):
        o = np.full((2, 3, 4, 4), np.nan, np.float32)
        y, _ = run_forward(kind, x, 3, 2, 0, out=o)
        assert y is o and rel_error(y, loop_forward(x.astype(np.float64), 3, 2, 0, kind)[0]) < 1e-6
        dxo = np.full(x.shape, np.nan, np.float32)
        dx = run_backward(kind, dy, x, 3, 2, 0, out=dxo)
        assert dx is dxo and dx.dtype == np.float32
        assert rel_error(dx, loop_backward(dy.astype(np.float64), x.astype(np.float64), 3, 2, 0, kind)) < 1e-5


def test_max_ties_first_wins_and_padding_never_wins() -> None:
    x = np.ones((1, 1, 4, 4))
    _, sw = pool.maxpool_forward(x, 2, 2)
    assert (sw == 0).all()
    # all -inf with padding: the first REAL element wins, never a padded position
    x = np.full((1, 1, 3, 3), -np.inf)
    y, sw = pool.maxpool_forward(x, 3, 2, pad=1)
    assert y.shape == (1, 1, 2, 2) and np.isneginf(y).all()
    np.testing.assert_array_equal(sw[0, 0], [[4, 3], [1, 0]])
    # negative inputs next to zero padding: padding must not win with its 0
    x = -np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    y, sw = pool.maxpool_forward(x, 3, 1, pad=1)
    np.testing.assert_array_equal(y[0, 0], [[-1, -1, -2], [-1, -1, -2], [-4, -4, -5]])
    np.testing.assert_array_equal(sw, loop_forward(x, 3, 1, 1, "max")[1])
    assert sw[0, 0, 0, 0] == 4


def test_max_nan_propagates() -> None:
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 1] = np.nan
    x[0, 0, 3, 3] = 5.0
    y, sw = pool.maxpool_forward(x, 2, 2)
    assert np.isnan(y[0, 0, 0, 0]) and sw[0, 0, 0, 0] == 3
    assert y[0, 0, 1, 1] == 5.0 and sw[0, 0, 1, 1] == 3


def test_avg_counts_padding_as_zero() -> None:
    x = np.ones((1, 1, 3, 3))
    y = pool.avgpool_forward(x, 3, 2, pad=1)
    np.testing.assert_allclose(y[0, 0], [[4 / 9, 4 / 9], [4 / 9, 4 / 9]])


def test_l2_zero_window_has_zero_gradient() -> None:
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 2:, 2:] = [[3.0, 0.0], [0.0, 4.0]]
    y = pool.l2pool_forward(x, 2, 2)
    np.testing.assert_allclose(y[0, 0], [[0, 0], [0, 5]])
    dx = pool.l2pool_backward(np.ones_like(y), x, y, 2, 2)
    expect = np.zeros((4, 4))
    expect[2, 2], expect[3, 3] = 3 / 5, 4 / 5
    np.testing.assert_allclose(dx[0, 0], expect)
    assert np.isfinite(dx).all()


def test_batch_zero() -> None:
    y, sw = pool.maxpool_forward(np.zeros((0, 3, 4, 4), np.float32), 2, 2)
    assert y.shape == (0, 3, 2, 2) and sw.shape == (0, 3, 2, 2)


def test_cpu_is_fast_enough(rng: np.random.Generator) -> None:
    """The CPU path trains small nets: a 64x32x32x32 batch must pool in well under a second."""
    import time
    x = rng.standard_normal((64, 32, 32, 32)).astype(np.float32)
    t = time.perf_counter()
    y, sw = pool.maxpool_forward(x, 2, 2)
    pool.maxpool_backward(y, sw, x.shape, 2, 2)
    assert time.perf_counter() - t < 2.0


@pytest.mark.parametrize("fn", ["max", "avg", "l2"])
def test_bad_inputs(fn: str) -> None:
    fwd = {"max": lambda x, **k: pool.maxpool_forward(x, 2, 2, **k),
           "avg": lambda x, **k: pool.avgpool_forward(x, 2, 2, **k),
           "l2": lambda x, **k: pool.l2pool_forward(x, 2, 2, **k)}[fn]
    name = {"max": "maxpool_forward", "avg": "avgpool_forward", "l2": "l2pool_forward"}[fn]
    x = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(OpArgumentError, match=f"{name}: x must be float32 or float64"):
        fwd(x.astype(np.int32))
    with pytest.raises(OpArgumentError, match=f"{name}: x must be float32 or float64"):
        fwd(x.astype(np.float16))
    with pytest.raises(OpArgumentError, match="4 dimensions"):
        fwd(np.zeros((2, 4, 4), np.float32))
    with pytest.raises(OpArgumentError, match="C-contiguous"):
        fwd(np.zeros((1, 2, 4, 8), np.float32)[..., ::2])
    with pytest.raises(OpArgumentError, match="out must have shape"):
        fwd(x, out=np.zeros((1, 2, 3, 3), np.float32))
    with pytest.raises(OpArgumentError, match="out must be float32"):
        fwd(x, out=np.zeros((1, 2, 2, 2), np.float64))
    with pytest.raises(OpArgumentError, match="must be an array"):
        fwd([[1.0]])
    with pytest.raises(GeometryError, match=name):
        fwd(np.zeros((1, 2, 5, 5), np.float32))


def test_bad_backward_inputs() -> None:
    x = np.zeros((1, 2, 4, 4))
    y, sw = pool.maxpool_forward(x, 2, 2)
    with pytest.raises(OpArgumentError, match="maxpool_backward: switches must be uint8"):
        pool.maxpool_backward(y, sw.astype(np.int64), x.shape, 2, 2)
    with pytest.raises(OpArgumentError, match="maxpool_backward: dy must have shape"):
        pool.maxpool_backward(np.zeros((1, 2, 3, 3)), sw, x.shape, 2, 2)
    with pytest.raises(OpArgumentError, match="maxpool_backward: switches must have shape"):
        pool.maxpool_backward(y, np.zeros((1, 2, 3, 3), np.uint8), x.shape, 2, 2)
    with pytest.raises(OpArgumentError, match="x_shape"):
        pool.maxpool_backward(y, sw, (1, 2, 4), 2, 2)
    with pytest.raises(OpArgumentError, match="out must be float64"):
        pool.maxpool_backward(y, sw, x.shape, 2, 2, out=np.zeros(x.shape, np.float32))
    with pytest.raises(OpArgumentError, match="255"):
        pool.maxpool_forward(np.zeros((1, 1, 16, 16)), 16, 16)
    with pytest.raises(OpArgumentError, match="switches_out must be uint8"):
        pool.maxpool_forward(x, 2, 2, switches_out=np.zeros((1, 2, 2, 2), np.int8))
    with pytest.raises(OpArgumentError, match="avgpool_backward: dy must have shape"):
        pool.avgpool_backward(np.zeros((1, 2, 3, 3)), x.shape, 2, 2)
    with pytest.raises(OpArgumentError, match="l2pool_backward: y must be float64"):
        pool.l2pool_backward(y, x, y.astype(np.float32), 2, 2)
    with pytest.raises(OpArgumentError, match="l2pool_backward: dy must have shape"):
        pool.l2pool_backward(np.zeros((1, 2, 3, 3)), x, y, 2, 2)


# ------------------------------------------------------------------------------------------
# GPU: the kernels against the NumPy spec
# ------------------------------------------------------------------------------------------

GPU_CASES = CASES + [
    (1, 3, 13, 17, 3, 2, 0),     # batch 1, odd everything
    (3, 5, 16, 20, 2, 2, 0),     # vectorized 2x2/2 path (W % 4 == 0)
    (2, 3, 14, 14, 2, 2, 0),     # 2x2/2 with W % 4 != 0 -> generic path
    (2, 7, 32, 36, 2, 2, 1),     # padded 2x2/2 -> generic path
    (4, 33, 57, 57, 3, 2, 0),    # AlexNet-like overlapping pool, channel count not a multiple of anything
    (2, 3, 15, 15, 4, 3, 2),     # generic F, S
]


@pytest.fixture(params=[False, True], ids=["idx32", "idx64"])
def index64(request, monkeypatch) -> bool:
    monkeypatch.setattr(pool, "_FORCE_INDEX64", request.param)
    return request.param


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", GPU_CASES)
def test_gpu_forward_backward_fp32(kind: str, case, index64: bool, cp, rng: np.random.Generator) -> None:
    n, c, h, w, F, S, pad = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    y_shape = pool.pool_output_shape(x.shape, F, S, pad)
    dy = rng.standard_normal(y_shape).astype(np.float32)
    xg, dyg = cp.asarray(x), cp.asarray(dy)
    out = poison(cp, y_shape)
    sw_out = cp.full(y_shape, 254, cp.uint8)
    dx_out = poison(cp, x.shape)
    y_ref, sw_ref = run_forward(kind, x, F, S, pad)
    if kind == "max":
        y, sw = pool.maxpool_forward(xg, F, S, pad, out=out, switches_out=sw_out)
        assert sw is sw_out
        np.testing.assert_array_equal(cp.asnumpy(sw), sw_ref)
        np.testing.assert_array_equal(cp.asnumpy(y), y_ref)  # max is exact
        dx = pool.maxpool_backward(dyg, sw, x.shape, F, S, pad, out=dx_out)
        dx_ref = pool.maxpool_backward(dy, sw_ref, x.shape, F, S, pad)
    elif kind == "avg":
        y = pool.avgpool_forward(xg, F, S, pad, out=out)
        dx = pool.avgpool_backward(dyg, x.shape, F, S, pad, out=dx_out)
        dx_ref = pool.avgpool_backward(dy, x.shape, F, S, pad)
    else:
        y = pool.l2pool_forward(xg, F, S, pad, out=out)
        dx = pool.l2pool_backward(dyg, xg, y, F, S, pad, out=dx_out)
        dx_ref = pool.l2pool_backward(dy, x, y_ref, F, S, pad)
    assert y is out and dx is dx_out
    assert not cp.isnan(y).any() and not cp.isnan(dx).any()
    assert rel_error(y, y_ref) < 1e-5
    assert rel_error(dx, dx_ref) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", [GPU_CASES[1], GPU_CASES[2], GPU_CASES[9], GPU_CASES[13]])
def test_gpu_float64_matches_cpu_gradients(kind: str, case, cp, rng: np.random.Generator) -> None:
    """The CPU float64 path is gradient-checked above; the GPU float64 path must agree with it."""
    n, c, h, w, F, S, pad = case
    x = _distinct(rng, (n, c, h, w))
    y_shape = pool.pool_output_shape(x.shape, F, S, pad)
    dy = rng.standard_normal(y_shape)
    y_ref, _ = run_forward(kind, x, F, S, pad)
    y, _ = run_forward(kind, cp.asarray(x), F, S, pad, out=poison(cp, y_shape, np.float64))
    dx = run_backward(kind, cp.asarray(dy), cp.asarray(x), F, S, pad, out=poison(cp, x.shape, np.float64))
    assert y.dtype == np.float64 and dx.dtype == np.float64
    assert rel_error(y, y_ref) < 1e-12
    assert rel_error(dx, run_backward(kind, dy, x, F, S, pad)) < 1e-10


@pytest.mark.gpu
def test_gpu_misaligned_input_uses_generic_path(cp, rng: np.random.Generator) -> None:
    """A contiguous view starting 1 element into a buffer cannot take the 16-byte-load path."""
    shape = (2, 3, 8, 12)
    flat = cp.asarray(rng.standard_normal(int(np.prod(shape)) + 1).astype(np.float32))
    xg = flat[1:].reshape(shape)
    assert xg.flags.c_contiguous and xg.data.ptr % 16 != 0
    y, sw = pool.maxpool_forward(xg, 2, 2, out=poison(cp, (2, 3, 4, 6)))
    y_ref, sw_ref = pool.maxpool_forward(cp.asnumpy(xg), 2, 2)
    np.testing.assert_array_equal(cp.asnumpy(y), y_ref)
    np.testing.assert_array_equal(cp.asnumpy(sw), sw_ref)


@pytest.mark.gpu
def test_gpu_ties_and_nan_match_cpu(cp) -> None:
    for F, S, pad in [(2, 2, 0), (3, 2, 1), (2, 1, 1)]:
        size = 7 if (F, S, pad) == (3, 2, 1) else 8  # (W - F + 2P)/S + 1 must be an integer
        x = np.zeros((1, 2, size, size + 2), np.float32)
        x[0, 0, 1, 1] = np.nan
        x[0, 1] = -np.inf
        y_ref, sw_ref = pool.maxpool_forward(x, F, S, pad)
        y, sw = pool.maxpool_forward(cp.asarray(x), F, S, pad)
        np.testing.assert_array_equal(cp.asnumpy(sw), sw_ref)
        np.testing.assert_array_equal(cp.asnumpy(y), y_ref)


@pytest.mark.gpu
def test_gpu_bad_inputs(cp) -> None:
    xg = cp.zeros((1, 2, 4, 4), cp.float32)
    with pytest.raises(OpArgumentError, match="maxpool_forward: x must be float32 or float64"):
        pool.maxpool_forward(xg.astype(cp.int32), 2, 2)
    with pytest.raises(OpArgumentError, match="C-contiguous"):
        pool.avgpool_forward(cp.zeros((1, 2, 4, 8), cp.float32)[..., ::2], 2, 2)
    with pytest.raises(OpArgumentError, match="out is on cpu"):
        pool.maxpool_forward(xg, 2, 2, out=np.zeros((1, 2, 2, 2), np.float32))
    with pytest.raises(OpArgumentError, match="switches_out is on cpu"):
        pool.maxpool_forward(xg, 2, 2, switches_out=np.zeros((1, 2, 2, 2), np.uint8))
    y, sw = pool.maxpool_forward(xg, 2, 2)
    with pytest.raises(OpArgumentError, match="switches is on cpu"):
        pool.maxpool_backward(y, cp.asnumpy(sw), xg.shape, 2, 2)
    with pytest.raises(OpArgumentError, match="l2pool_backward: y is on cpu"):
        pool.l2pool_backward(y, xg, cp.asnumpy(y), 2, 2)
    with pytest.raises(OpArgumentError, match="dy must have shape"):
        pool.avgpool_backward(cp.zeros((1, 2, 3, 3), cp.float32), xg.shape, 2, 2)


@pytest.mark.parametrize("F,S", [(2, 2), (3, 2), (2, 1)])
def test_max_ties_first_wins_and_inf_gradients_stay_put(F: int, S: int) -> None:
    """Many ties (small integers): the first maximum in raster order is the switch, as in the
    loops; an inf gradient lands on its switch only (never inf*0 = NaN next to it)."""
    rng = np.random.default_rng(7)
    size = 8 if F == S else 9
    x = rng.integers(0, 3, (2, 3, size, size)).astype(np.float32)
    y, sw = pool.maxpool_forward(x, F, S)
    y_ref, sw_ref = loop_forward(x, F, S, 0, "max")
    np.testing.assert_array_equal(sw, sw_ref)
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dy[0, 0, 0, 0], dy[1, 2, -1, -1] = np.inf, -np.inf
    dx = pool.maxpool_backward(dy, sw, x.shape, F, S)
    finite = np.where(np.isinf(dy), 0, dy)
    inf_at = np.isinf(dx)
    np.testing.assert_allclose(dx[~inf_at], loop_backward(finite, x, F, S, 0, "max")[~inf_at], atol=1e-6)
    assert not np.isnan(dx).any() and np.isposinf(dx).sum() == 1 and np.isneginf(dx).sum() == 1


def test_max_first_nan_wins_unpadded() -> None:
    x = np.zeros((1, 1, 3, 3), np.float32)
    x[0, 0, 0, 2] = np.nan
    x[0, 0, 1, 2] = np.nan
    x[0, 0, 2, 2] = 9.0
    y, sw = pool.maxpool_forward(x, 3, 1)
    assert np.isnan(y[0, 0, 0, 0]) and sw[0, 0, 0, 0] == 2


# ------------------------------------------------------------------------------------------
# rounded output sizes (floor / ceil where (W - F + 2P)/S + 1 is not an integer)
# ------------------------------------------------------------------------------------------

# 3x3/2 p1 over 8x8 (ResNet's max pool), 1x1/2 over 8x8, 3x3/2 over 12x9 (GoogLeNet's ceil
# pools), 2x2/2 over odd sizes (the 16-byte-load path must not take them), stride 3 and 4
ROUNDED_CASES = [(2, 3, 8, 8, 3, 2, 1), (1, 2, 8, 8, 1, 2, 0), (2, 3, 12, 9, 3, 2, 0),
                 (1, 2, 9, 8, 2, 2, 0), (1, 2, 7, 12, 2, 2, 0), (1, 2, 10, 10, 3, 3, 1), (1, 1, 10, 9, 2, 4, 0)]
ROUNDED = [(kind, r) for kind in KINDS for r in ("floor", "ceil") if not (kind != "max" and r == "ceil")]


def test_rounded_output_shape() -> None:
    assert pool.pool_output_shape((1, 64, 112, 112), 3, 2, 1, "floor") == (1, 64, 56, 56)
    assert pool.pool_output_shape((1, 64, 112, 112), 3, 2, 0, "ceil") == (1, 64, 56, 56)
    assert pool.pool_output_shape((1, 1, 8, 8), 3, 2, 1, "ceil") == (1, 1, 5, 5)   # the last window starts at 7
    assert pool.pool_output_shape((1, 1, 8, 8), 1, 2, 0, "ceil") == (1, 1, 4, 4)   # not one at 8: only padding
    with pytest.raises(OpArgumentError, match="max pooling only"):
        pool.avgpool_forward(np.zeros((1, 1, 8, 8)), 3, 2, 0, rounding="ceil")
    with pytest.raises(ValueError, match="rounding"):
        pool.pool_output_shape((1, 1, 8, 8), 3, 2, 0, "round")


@pytest.mark.parametrize("kind,rounding", ROUNDED)
@pytest.mark.parametrize("case", ROUNDED_CASES)
def test_rounded_matches_loops_and_gradients(kind: str, rounding: str, case, rng: np.random.Generator) -> None:
    n, c, h, w, F, S, pad = case
    x = _distinct(rng, (n, c, h, w))
    if kind == "l2":
        x += np.sign(x) * 0.1
    y, sw = run_forward(kind, x, F, S, pad, rounding=rounding)
    y_ref, sw_ref = loop_forward(x, F, S, pad, kind, rounding)
    assert y.shape == y_ref.shape and rel_error(y, y_ref) < 1e-12
    if kind == "max":
        np.testing.assert_array_equal(sw, sw_ref)
    dy = rng.standard_normal(y.shape)
    dx = run_backward(kind, dy, x, F, S, pad, rounding=rounding)
    assert rel_error(dx, loop_backward(dy, x, F, S, pad, kind, rounding)) < 1e-12
    num = numeric_grad(lambda: float(np.sum(run_forward(kind, x, F, S, pad, rounding=rounding)[0] * dy)), x, eps=1e-6)
    assert rel_error(dx, num) < 1e-7


@pytest.mark.gpu
@pytest.mark.parametrize("kind,rounding", ROUNDED)
def test_gpu_rounded_matches_cpu(kind: str, rounding: str, cp, rng: np.random.Generator) -> None:
    """The kernels given a rounded output size (windows past the input read padding), float32
    and float64, against the NumPy spec."""
    for case in ROUNDED_CASES + [(2, 3, 9, 12, 2, 2, 0)]:   # W % 4 == 0, odd H: not the 16-byte path
        n, c, h, w, F, S, pad = case
        for dt, tol in ((np.float32, 1e-5), (np.float64, 1e-12)):
            x = _distinct(rng, (n, c, h, w)).astype(dt)
            y_ref, sw_ref = run_forward(kind, x, F, S, pad, rounding=rounding)
            dy = rng.standard_normal(y_ref.shape).astype(dt)
            y, sw = run_forward(kind, cp.asarray(x), F, S, pad, out=poison(cp, y_ref.shape, dt), rounding=rounding)
            assert rel_error(y, y_ref) < tol, (case, dt)
            if kind == "max":
                np.testing.assert_array_equal(cp.asnumpy(sw), sw_ref)
            dx = run_backward(kind, cp.asarray(dy), cp.asarray(x), F, S, pad, out=poison(cp, x.shape, dt),
                              rounding=rounding)
            assert rel_error(dx, run_backward(kind, dy, x, F, S, pad, rounding=rounding)) < tol, (case, dt)
