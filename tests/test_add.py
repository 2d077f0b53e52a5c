"""ADD ops: NumPy spec vs plain loops, float64 gradient checks, in-place use, channel-slice views,
errors; kernels vs NumPy (emulator / GPU) including strided views and odd sizes."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv.ops import _views
from gpuconv.ops import add as addop
from gpuconv.ops._checks import OpArgumentError
from helpers import numeric_grad, poison, rel_error

SHAPES = [(1,), (7,), (3, 5), (2, 3, 5, 7), (1, 1, 1, 1), (4, 33, 9, 11)]


def loop_add(a: np.ndarray, b: np.ndarray, relu: bool) -> np.ndarray:
    out = []
    for u, v in zip(a.reshape(-1), b.reshape(-1)):
        with np.errstate(invalid="ignore"):
            s = u + v
        if relu and not s > 0 and s == s:   # NaN stays, everything <= 0 is +0
            s = a.dtype.type(0)
        out.append(s)
    return np.array(out, dtype=a.dtype).reshape(a.shape)


def loop_add_backward(dy: np.ndarray, y: np.ndarray, relu: bool) -> np.ndarray:
    flat = [g if (not relu or v > 0) else dy.dtype.type(0) for g, v in zip(dy.reshape(-1), y.reshape(-1))]
    return np.array(flat, dtype=dy.dtype).reshape(dy.shape)


def in_buffer(rng: np.random.Generator, x: np.ndarray, before: int, after: int, xp=np):
    """(buf, view): x placed as the channel slice [before:before+C] of a bigger random buffer."""
    n, c = x.shape[:2]
    buf = rng.standard_normal((n, before + c + after, *x.shape[2:])).astype(x.dtype)
    buf[:, before:before + c] = x
    buf = xp.asarray(buf)
    return buf, buf[:, before:before + c]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward_match_loops(shape, relu: bool, rng: np.random.Generator) -> None:
    a, b = rng.standard_normal(shape), rng.standard_normal(shape)
    y = addop.add_forward(a, b, relu=relu)
    np.testing.assert_array_equal(y, loop_add(a, b, relu))
    dy = rng.standard_normal(shape)
    dx = addop.add_backward(dy, y=y, relu=relu, out=np.empty(shape))
    np.testing.assert_array_equal(dx, loop_add_backward(dy, y, relu))


@pytest.mark.parametrize("relu", [False, True])
def test_gradient_check(relu: bool, rng: np.random.Generator) -> None:
    a = rng.standard_normal((2, 3, 4, 5))
    b = rng.standard_normal(a.shape)
    s = a + b
    b += np.where(np.abs(s) < 0.05, 0.1 * np.sign(s + 1e-3), 0.0)   # finite differences never cross the kink
    dy = rng.standard_normal(a.shape)
    y = addop.add_forward(a, b, relu=relu)
    dx = addop.add_backward(dy, y=y, relu=relu)
    for wrt in (a, b):
        num = numeric_grad(lambda: float(np.sum(addop.add_forward(a, b, relu=relu) * dy)), wrt)
        assert rel_error(dx, num) < 1e-8


def test_accumulated_gradient_check(rng: np.random.Generator) -> None:
    """A tensor read twice (x + x, then relu): its gradient is the sum of both reads' gradients."""
    x = rng.standard_normal((2, 3, 4))
    x += 0.05 * np.sign(x)
    dy = rng.standard_normal(x.shape)
    y = addop.add_forward(x, x, relu=True)
    g = addop.add_backward(dy, y=y, relu=True)
    dx = addop.accumulate_(g.copy(), g)
    num = numeric_grad(lambda: float(np.sum(addop.add_forward(x, x, relu=True) * dy)), x)
    assert rel_error(dx, num) < 1e-8


def test_backward_without_relu_is_dy_itself(rng: np.random.Generator) -> None:
    dy = rng.standard_normal((2, 3))
    assert addop.add_backward(dy) is dy
    out = np.full(dy.shape, np.nan)
    assert addop.add_backward(dy, out=out) is out
    np.testing.assert_array_equal(out, dy)


def test_in_place(rng: np.random.Generator) -> None:
    a = rng.standard_normal((3, 4, 5)).astype(np.float32)
    b = rng.standard_normal(a.shape).astype(np.float32)
    ref = loop_add(a, b, True)
    a2, b2 = a.copy(), b.copy()
    assert addop.add_forward(a2, b, relu=True, out=a2) is a2
    assert addop.add_forward(a, b2, relu=True, out=b2) is b2
    np.testing.assert_array_equal(a2, ref)
    np.testing.assert_array_equal(b2, ref)
    dy = rng.standard_normal(a.shape).astype(np.float32)
    expect = loop_add_backward(dy, ref, True)
    assert addop.add_backward(dy, y=ref, relu=True, out=dy) is dy
    np.testing.assert_array_equal(dy, expect)
    dst = a.copy()
    assert addop.accumulate_(dst, b) is dst
    np.testing.assert_array_equal(dst, loop_add(a, b, False))


def test_special_values() -> None:
    a = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, np.inf])
    b = np.array([1.0, 1.0, 1.0, -0.0, -0.0, -1.0, 0.5, -np.inf])
    y = addop.add_forward(a, b, relu=True)
    np.testing.assert_array_equal(y, [np.nan, np.inf, 0, 0, 0, 0, 0, np.nan])
    assert not np.signbit(y[2:7]).any()   # exact +0, not -0
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(addop.add_forward(a, b), a + b)
    dy = np.array([np.inf, np.nan, 1.0, 2.0])
    yy = np.array([0.0, -1.0, np.nan, 2.0])
    np.testing.assert_array_equal(addop.add_backward(dy, y=yy, relu=True), [0.0, 0.0, 0.0, 2.0])


@pytest.mark.parametrize("relu", [False, True])
def test_channel_slice_views_on_the_cpu(relu: bool, rng: np.random.Generator) -> None:
    """Inputs and output may be channel slices of concat buffers; the buffers' other channels stay."""
    a = rng.standard_normal((3, 4, 5, 6))
    b = rng.standard_normal(a.shape)
    abuf, av = in_buffer(rng, a, 2, 1)
    bbuf, bv = in_buffer(rng, b, 0, 3)
    ybuf = rng.standard_normal((3, 9, 5, 6))
    keep = ybuf.copy()
    y = addop.add_forward(av, bv, relu=relu, out=ybuf[:, 5:9])
    np.testing.assert_array_equal(y, loop_add(a, b, relu))
    np.testing.assert_array_equal(ybuf[:, :5], keep[:, :5])
    dy = rng.standard_normal(a.shape)
    dbuf, dv = in_buffer(rng, dy, 1, 1)
    dx = addop.add_backward(dv, y=y, relu=relu, out=abuf[:, 2:6])
    np.testing.assert_array_equal(dx, loop_add_backward(dy, loop_add(a, b, relu), relu))
    addop.accumulate_(bbuf[:, 0:4], dv)
    np.testing.assert_array_equal(bbuf[:, 0:4], b + dy)


def test_bad_inputs() -> None:
    a = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(OpArgumentError, match=r"add_forward: a has shape \(2, 3, 4, 4\) but b has shape \(2, 3, 4, 5\)"):
        addop.add_forward(a, np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(OpArgumentError, match="add_forward: b must be float32 like the other operands"):
        addop.add_forward(a, a.astype(np.float64))
    with pytest.raises(OpArgumentError, match="a must be float32 or float64"):
        addop.add_forward(a.astype(np.int32), a.astype(np.int32))
    with pytest.raises(OpArgumentError, match="a must be C-contiguous, or a view whose samples are contiguous"):
        addop.add_forward(np.zeros((2, 3, 4, 8), np.float32)[..., ::2], a)
    with pytest.raises(OpArgumentError, match="out must have shape"):
        addop.add_forward(a, a, out=np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(OpArgumentError, match="relu=True needs y"):
        addop.add_backward(a, relu=True)
    with pytest.raises(OpArgumentError, match=r"dy has shape .* but y has shape"):
        addop.add_backward(a, y=np.zeros((2, 3, 4, 5), np.float32), relu=True)
    with pytest.raises(OpArgumentError, match=r"accumulate_: dst has shape .* but src has shape"):
        addop.accumulate_(a, np.zeros((2, 3), np.float32))
    with pytest.raises(OpArgumentError, match="dst must be C-contiguous"):
        addop.accumulate_(np.zeros((8, 4), np.float32).T, np.zeros((4, 8), np.float32))


def test_layout_of_views() -> None:
    buf = np.zeros((4, 10, 3, 5), np.float32)
    assert _views.layout("t", "x", buf) == _views.Layout(4, 150, 150)
    assert _views.layout("t", "x", buf[:, 2:6]) == _views.Layout(4, 60, 150)
    assert _views.layout("t", "x", buf[:, 9:10]) == _views.Layout(4, 15, 150)
    assert _views.layout("t", "x", buf[1:2, 2:6]) == _views.Layout(1, 60, 60)   # one sample: contiguous
    assert _views.layout("t", "x", buf[::2]).batch_stride == 300
    for bad in (buf[:, :, 1:], buf[..., ::2], buf[::-1], buf.transpose(1, 0, 2, 3)):
        with pytest.raises(OpArgumentError, match="channel slice"):
            _views.layout("t", "x", bad)
    assert _views.collapse([_views.Layout(4, 60, 60), _views.Layout(4, 60, 60)]) == (1, 240, [240, 240])
    assert _views.collapse([_views.Layout(4, 60, 150), _views.Layout(4, 60, 60)]) == (4, 60, [150, 60])
    for batches, inner in ((1, 10**9), (10**6, 7), (64, 3136), (3, 1)):
        gx, gy, _ = _views.elementwise_grid(batches, inner)
        assert 1 <= gy <= 65535 and 1 <= gx and gx * gy <= 65536 + 65535


# ------------------------------------------------------------------------------------------ GPU

GPU_SHAPES = SHAPES + [(1025,), (4096 + 3,), (8, 64, 17, 19), (3, 1000)]


@pytest.mark.gpu
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_gpu_matches_cpu_fp32(shape, relu: bool, cp, rng: np.random.Generator) -> None:
    a, b, dy = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    y_ref = addop.add_forward(a, b, relu=relu)
    dx_ref = addop.add_backward(dy, y=y_ref, relu=relu, out=np.empty_like(dy))
    ag, bg, dyg = cp.asarray(a), cp.asarray(b), cp.asarray(dy)
    y = addop.add_forward(ag, bg, relu=relu, out=poison(cp, shape))
    np.testing.assert_array_equal(cp.asnumpy(y), y_ref)   # one rounding, exactly NumPy's
    dx = addop.add_backward(dyg, y=y, relu=relu, out=poison(cp, shape))
    np.testing.assert_array_equal(cp.asnumpy(dx), dx_ref)
    assert addop.add_forward(ag, bg, relu=relu, out=ag) is ag   # in place
    np.testing.assert_array_equal(cp.asnumpy(ag), y_ref)
    assert addop.accumulate_(bg, dyg) is bg
    np.testing.assert_array_equal(cp.asnumpy(bg), b + dy)


@pytest.mark.gpu
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 1, 1, 1), (5, 3, 7, 9), (4, 70)])
def test_gpu_channel_slice_views(shape, relu: bool, cp, rng: np.random.Generator) -> None:
    """Every operand a channel slice of a bigger buffer (different strides each); the buffers'
    other channels are left as they were."""
    a, b, dy = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    y_ref = addop.add_forward(a, b, relu=relu)
    dx_ref = addop.add_backward(dy, y=y_ref, relu=relu, out=np.empty_like(dy))
    _, av = in_buffer(rng, a, 2, 1, cp)
    _, bv = in_buffer(rng, b, 0, 3, cp)
    _, dyv = in_buffer(rng, dy, 1, 0, cp)
    c = shape[1]
    ybuf = poison(cp, (shape[0], c + 5, *shape[2:]))
    y = addop.add_forward(av, bv, relu=relu, out=ybuf[:, 3:3 + c])
    np.testing.assert_array_equal(cp.asnumpy(y), y_ref)
    rest = cp.asnumpy(ybuf)
    assert np.isnan(rest[:, :3]).all() and np.isnan(rest[:, 3 + c:]).all()
    dxbuf = poison(cp, (shape[0], c + 2, *shape[2:]))
    dx = addop.add_backward(dyv, y=y, relu=relu, out=dxbuf[:, 1:1 + c])
    np.testing.assert_array_equal(cp.asnumpy(dx), dx_ref)
    assert np.isnan(cp.asnumpy(dxbuf)[:, [0, c + 1]]).all()
    addop.accumulate_(av, dyv)   # strided += strided, in place
    np.testing.assert_array_equal(cp.asnumpy(av), a + dy)
    contiguous = addop.add_forward(av, cp.asarray(b), relu=relu)   # a view and a contiguous array
    np.testing.assert_array_equal(cp.asnumpy(contiguous), addop.add_forward(a + dy, b, relu=relu))


@pytest.mark.gpu
def test_gpu_grid_strides_over_samples_and_elements(cp, rng: np.random.Generator,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """With a 2-block grid cap, both loops of the kernel stride (over samples and within one)."""
    monkeypatch.setattr(_views, "_MAX_GRID_Y", 2)
    monkeypatch.setattr(_views, "_MAX_BLOCKS", 2)
    a, b = (rng.standard_normal((5, 3, 30, 31)).astype(np.float32) for _ in range(2))
    _, av = in_buffer(rng, a, 1, 1, cp)
    assert _views.elementwise_grid(5, 3 * 30 * 31) == (1, 2, 1)
    y = addop.add_forward(av, cp.asarray(b), relu=True, out=poison(cp, a.shape))
    np.testing.assert_array_equal(cp.asnumpy(y), addop.add_forward(a, b, relu=True))
    z = addop.add_forward(cp.asarray(a), cp.asarray(b), out=poison(cp, a.shape))   # collapsed: 1 x 2 blocks
    np.testing.assert_array_equal(cp.asnumpy(z), a + b)


@pytest.mark.gpu
@pytest.mark.parametrize("relu", [False, True])
def test_gpu_float64_and_special_values(relu: bool, cp, rng: np.random.Generator) -> None:
    a = rng.standard_normal((3, 5, 7, 9))
    b = rng.standard_normal(a.shape)
    dy = rng.standard_normal(a.shape)
    y = addop.add_forward(cp.asarray(a), cp.asarray(b), relu=relu, out=poison(cp, a.shape, np.float64))
    y_ref = addop.add_forward(a, b, relu=relu)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(cp.asnumpy(y), y_ref)
    dx = addop.add_backward(cp.asarray(dy), y=y, relu=relu, out=poison(cp, a.shape, np.float64))
    np.testing.assert_array_equal(cp.asnumpy(dx), addop.add_backward(dy, y=y_ref, relu=relu, out=np.empty_like(dy)))
    s = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, np.inf], np.float32)
    t = np.array([1.0, 1.0, 1.0, -0.0, -0.0, -1.0, 0.5, -np.inf], np.float32)
    got = cp.asnumpy(addop.add_forward(cp.asarray(s), cp.asarray(t), relu=relu))
    want = addop.add_forward(s, t, relu=relu)
    np.testing.assert_array_equal(got, want)
    assert (np.signbit(got) == np.signbit(want)).all()


@pytest.mark.gpu
def test_gpu_bad_inputs(cp) -> None:
    ag = cp.zeros((2, 3), cp.float32)
    with pytest.raises(OpArgumentError, match="b is on cpu"):
        addop.add_forward(ag, np.zeros((2, 3), np.float32))
    with pytest.raises(OpArgumentError, match="out is on cpu"):
        addop.add_forward(ag, ag, out=np.zeros((2, 3), np.float32))
    with pytest.raises(OpArgumentError, match="C-contiguous"):
        addop.add_forward(cp.zeros((2, 6), cp.float32)[:, ::2], ag)
    with pytest.raises(OpArgumentError, match="a must be float32 or float64"):
        addop.add_forward(ag.astype(cp.float16), ag.astype(cp.float16))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 33, 9, 11)])
def test_gpu_fused_add_relu_equals_the_unfused_pair(shape, cp, rng: np.random.Generator) -> None:
    """The fused kernel is a drop-in for add -> relu (the unfused reference), bit for bit, both passes."""
    from gpuconv.ops import activation as act  # noqa: PLC0415

    a, b, dy = (cp.asarray(rng.standard_normal(shape).astype(np.float32)) for _ in range(3))
    fused = addop.add_forward(a, b, relu=True)
    unfused = act.relu_forward(addop.add_forward(a, b))
    np.testing.assert_array_equal(cp.asnumpy(fused), cp.asnumpy(unfused))
    g_fused = addop.add_backward(dy, y=fused, relu=True)
    g_unfused = addop.add_backward(act.relu_backward(dy, unfused))
    np.testing.assert_array_equal(cp.asnumpy(g_fused), cp.asnumpy(g_unfused))
