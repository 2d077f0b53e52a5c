"""CONCAT ops and channel slices: NumPy spec vs plain loops, float64 gradient check, zero-copy
when inputs already lie in the buffer, errors; the copy kernel vs NumPy (emulator / GPU)."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv import cuda
from gpuconv.ops import concat
from gpuconv.ops._checks import OpArgumentError
from helpers import numeric_grad, poison, rel_error

CASES = [((2, 3, 4, 5), (1, 2)), ((1, 1, 1, 1), (1, 1, 1)), ((3, 0, 7, 9), (4, 1, 3)), ((5, 0), (3, 7)),
         ((2, 0, 6, 6), (64, 32, 16))]


def inputs(rng: np.random.Generator, base, channels, dtype=np.float64) -> list[np.ndarray]:
    return [rng.standard_normal((base[0], c, *base[2:])).astype(dtype) for c in channels]


def loop_concat(xs: list[np.ndarray]) -> np.ndarray:
    n, rest = xs[0].shape[0], xs[0].shape[2:]
    out = np.empty((n, sum(x.shape[1] for x in xs), *rest), xs[0].dtype)
    for i in range(n):
        k = 0
        for x in xs:
            for c in range(x.shape[1]):
                out[i, k] = x[i, c]
                k += 1
    return out


@pytest.mark.parametrize("base,channels", CASES)
def test_forward_backward_match_loops(base, channels, rng: np.random.Generator) -> None:
    xs = inputs(rng, base, channels)
    y = concat.concat_forward(xs)
    np.testing.assert_array_equal(y, loop_concat(xs))
    parts = concat.concat_backward(y, channels)
    assert all(p.flags.c_contiguous for p in parts)
    for p, x in zip(parts, xs):
        np.testing.assert_array_equal(p, x)
    views = concat.concat_backward(y, channels, copy=False)
    assert all(np.shares_memory(v, y) for v in views)
    for v, x in zip(views, xs):
        np.testing.assert_array_equal(v, x)


def test_gradient_check(rng: np.random.Generator) -> None:
    xs = inputs(rng, (2, 0, 3, 4), (1, 3, 2))
    dy = rng.standard_normal((2, 6, 3, 4))
    grads = concat.concat_backward(dy, [1, 3, 2])
    for x, g in zip(xs, grads):
        num = numeric_grad(lambda: float(np.sum(concat.concat_forward(xs) * dy)), x)
        assert rel_error(g, num) < 1e-8


def test_channel_slices_are_views(rng: np.random.Generator) -> None:
    buf = rng.standard_normal((2, 9, 3, 3))
    s = concat.channel_slice(buf, 2, 5)
    assert s.shape == (2, 3, 3, 3) and np.shares_memory(s, buf)
    np.testing.assert_array_equal(s, buf[:, 2:5])
    parts = concat.channel_slices(buf, [2, 3, 4])
    assert [p.shape[1] for p in parts] == [2, 3, 4]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), buf)
    inner = concat.channel_slice(parts[2], 1, 3)   # a slice of a slice is a slice of buf
    np.testing.assert_array_equal(inner, buf[:, 6:8])


def test_inputs_already_in_the_buffer_are_not_copied(rng: np.random.Generator) -> None:
    """The planned layout: branches wrote into their slices, so the forward copies nothing."""
    buf = rng.standard_normal((2, 7, 3, 4))
    before = buf.copy()
    xs = concat.channel_slices(buf, [3, 4])
    assert concat.concat_forward(xs, out=buf) is buf
    np.testing.assert_array_equal(buf, before)
    other = rng.standard_normal((2, 4, 3, 4))   # one branch in place, one copied
    concat.concat_forward([xs[0], other], out=buf)
    np.testing.assert_array_equal(buf, np.concatenate([before[:, :3], other], axis=1))


def test_shape_errors_name_both_inputs() -> None:
    a, b = np.zeros((2, 3, 4, 4)), np.zeros((2, 5, 4, 5))
    with pytest.raises(OpArgumentError, match=r"xs\[0\] has shape \(2, 3, 4, 4\) but xs\[1\] has shape \(2, 5, 4, 5\)"):
        concat.concat_forward([a, b])
    with pytest.raises(OpArgumentError, match=r"conv3 has shape \(2, 3, 4, 4\) but pool has shape \(3, 5, 4, 4\)"):
        concat.concat_output_shape([a.shape, (3, 5, 4, 4)], ["conv3", "pool"])
    assert concat.concat_output_shape([(2, 3, 4, 4), (2, 5, 4, 4)]) == (2, 8, 4, 4)
    with pytest.raises(OpArgumentError, match="nothing to concatenate"):
        concat.concat_forward([])
    with pytest.raises(OpArgumentError, match="xs\\[1\\] must be float64 like"):
        concat.concat_forward([a, a.astype(np.float32)])
    with pytest.raises(OpArgumentError, match=r"out must have shape \(2, 6, 4, 4\)"):
        concat.concat_forward([a, a], out=np.zeros((2, 5, 4, 4)))
    with pytest.raises(OpArgumentError, match="add up to"):
        concat.concat_backward(np.zeros((2, 6, 4, 4)), [3, 2])
    with pytest.raises(OpArgumentError, match="add up to"):
        concat.concat_backward(np.zeros((2, 6, 4, 4)), [6, 0])
    with pytest.raises(OpArgumentError, match=r"out\[1\] must have shape"):
        concat.concat_backward(np.zeros((2, 6, 4, 4)), [3, 3], out=[np.zeros((2, 3, 4, 4)), np.zeros((2, 2, 4, 4))])
    with pytest.raises(OpArgumentError, match="0 <= c0 < c1 <= 6"):
        concat.channel_slice(np.zeros((2, 6, 4, 4)), 4, 7)
    with pytest.raises(OpArgumentError, match="C-contiguous"):
        concat.concat_forward([np.zeros((2, 3, 4, 8))[..., ::2]])


def test_module_names_the_ops_that_take_views() -> None:
    assert concat.VIEW_OPS == {"add", "gap", "relu"}
    assert not concat.VIEW_OPS & concat.COPY_OPS
    for op in ("conv", "pool", "batchnorm", "lrn", "fc"):
        assert op in concat.COPY_OPS and op in concat.__doc__


# ------------------------------------------------------------------------------------------ GPU

GPU_CASES = CASES + [((3, 0, 17, 19), (5, 2, 7)), ((2, 0, 1, 1), (1025, 3))]


@pytest.mark.gpu
@pytest.mark.parametrize("base,channels", GPU_CASES)
def test_gpu_matches_cpu(base, channels, cp, rng: np.random.Generator) -> None:
    xs = inputs(rng, base, channels, np.float32)
    ref = loop_concat(xs)
    y = concat.concat_forward([cp.asarray(x) for x in xs], out=poison(cp, ref.shape))
    np.testing.assert_array_equal(cp.asnumpy(y), ref)
    parts = concat.concat_backward(y, channels, out=[poison(cp, x.shape) for x in xs])
    for p, x in zip(parts, xs):
        np.testing.assert_array_equal(cp.asnumpy(p), x)
    fresh = concat.concat_backward(y, channels)
    for p, x in zip(fresh, xs):
        assert p.flags.c_contiguous
        np.testing.assert_array_equal(cp.asnumpy(p), x)


@pytest.mark.gpu
def test_gpu_copies_between_strided_views(cp, rng: np.random.Generator) -> None:
    """A concat buffer inside a bigger one (nested concat), strided inputs, float64."""
    outer = poison(cp, (3, 12, 5, 7), np.float64)
    inner = outer[:, 2:10]                           # the concat buffer is itself a slice
    src = rng.standard_normal((3, 9, 5, 7))
    srcg = cp.asarray(src)
    xs = [srcg[:, 0:3], srcg[:, 4:9]]                # strided inputs (3 + 5 channels)
    concat.concat_forward(xs, out=inner)
    got = cp.asnumpy(outer)
    np.testing.assert_array_equal(got[:, 2:10], np.concatenate([src[:, 0:3], src[:, 4:9]], axis=1))
    assert np.isnan(got[:, :2]).all() and np.isnan(got[:, 10:]).all()
    grads = concat.concat_backward(inner, [3, 5], out=[srcg[:, 0:3], poison(cp, (3, 5, 5, 7), np.float64)])
    np.testing.assert_array_equal(cp.asnumpy(grads[1]), src[:, 4:9])


@pytest.mark.gpu
def test_gpu_planned_concat_launches_nothing(cp, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    launched: list[str] = []
    real = cuda.launch

    def counting(module: str, function: str, *args, **kwargs) -> None:
        launched.append(function)
        real(module, function, *args, **kwargs)
    monkeypatch.setattr(cuda, "launch", counting)
    buf = cp.asarray(rng.standard_normal((2, 7, 3, 4)).astype(np.float32))
    xs = concat.channel_slices(buf, [3, 4])
    concat.concat_forward(xs, out=buf)
    assert launched == []
    concat.concat_forward([xs[0], cp.asarray(rng.standard_normal((2, 4, 3, 4)).astype(np.float32))], out=buf)
    assert launched == ["concat_copy_f32"]


@pytest.mark.gpu
def test_gpu_bad_inputs(cp) -> None:
    xg = cp.zeros((2, 3, 4, 4), cp.float32)
    with pytest.raises(OpArgumentError, match=r"xs\[1\] is on cpu"):
        concat.concat_forward([xg, np.zeros((2, 3, 4, 4), np.float32)])
    with pytest.raises(OpArgumentError, match="out is on cpu"):
        concat.concat_forward([xg, xg], out=np.zeros((2, 6, 4, 4), np.float32))


@pytest.mark.emu
@pytest.mark.skipif(not __import__("gpuconv").emu.available(), reason="no C++ compiler: no emulator")
def test_strided_ops_capture_and_replay(rng: np.random.Generator) -> None:
    """A branching step's merge ops on channel slices capture into a CUDA graph (no allocation,
    no host work while capturing) and replay to the eager results."""
    from gpuconv import emu  # noqa: PLC0415
    from gpuconv.ops import activation as act  # noqa: PLC0415
    from gpuconv.ops import add as addop  # noqa: PLC0415
    from gpuconv.ops import gap  # noqa: PLC0415

    a = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    b = rng.standard_normal((2, 4, 4, 5)).astype(np.float32)
    with emu.emulated() as xp:
        buf = xp.zeros((2, 7, 4, 5), np.float32)
        ga, gb = xp.asarray(a), xp.asarray(b)
        pooled = xp.zeros((2, 7), np.float32)
        dx = xp.zeros((2, 7, 4, 5), np.float32)
        acc = xp.zeros((2, 3, 4, 5), np.float32)
        first, second = concat.channel_slices(buf, [3, 4])

        def step() -> None:
            act.relu_forward(ga, out=first)
            addop.add_forward(gb, gb, relu=True, out=second)
            concat.concat_forward([first, second], out=buf)     # in place: nothing to launch
            gap.gap_forward(buf, out=pooled)
            gap.gap_backward(pooled, buf.shape, out=dx)
            addop.accumulate_(acc, concat.concat_backward(dx, [3, 4], copy=False)[0])
        graph = cuda.capture(step)
        graph.launch()
        graph.launch()
        got = (buf.get(), pooled.get(), dx.get(), acc.get())
    want_buf = np.concatenate([np.maximum(a, 0), np.maximum(2 * b, 0)], axis=1)
    want_pooled = want_buf.mean(axis=(2, 3))
    want_dx = np.broadcast_to((want_pooled / 20)[:, :, None, None], want_buf.shape)
    np.testing.assert_allclose(got[0], want_buf, rtol=1e-6)
    np.testing.assert_allclose(got[1], want_pooled, rtol=1e-5)
    np.testing.assert_allclose(got[2], want_dx, rtol=1e-5)
    np.testing.assert_allclose(got[3], 2 * want_dx[:, :3], rtol=1e-5)   # two replays accumulated
