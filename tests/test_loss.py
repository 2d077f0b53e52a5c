"""Losses, softmax, accuracy: NumPy vs plain loops, float64 gradient checks, GPU vs NumPy."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gpuconv.ops import loss as L
from gpuconv.ops._checks import OpArgumentError
from tests.helpers import numeric_grad, poison, rel_error


def data(rng, n, c, dtype=np.float64, scale=3.0):
    s = (rng.standard_normal((n, c)) * scale).astype(dtype)
    y = rng.integers(0, c, size=n).astype(np.int32)
    return s, y


# ---------------------------------------------------------------- plain loops
def loop_softmax_xent(s, y):
    n, c = s.shape
    total = 0.0
    for i in range(n):
        mx = max(float(v) for v in s[i])
        z = sum(math.exp(float(v) - mx) for v in s[i])
        total += -(float(s[i, y[i]]) - mx - math.log(z))
    return total / n


def loop_svm(s, y, delta):
    n, c = s.shape
    total = 0.0
    for i in range(n):
        for j in range(c):
            if j != y[i]:
                total += max(0.0, float(s[i, j]) - float(s[i, y[i]]) + delta)
    return total / n


def loop_softmax(s):
    out = np.zeros(s.shape)
    for i in range(s.shape[0]):
        e = [math.exp(float(v)) for v in s[i] - s[i].max()]
        out[i] = [v / sum(e) for v in e]
    return out


def loop_accuracy(s, y):
    count = 0
    for i in range(s.shape[0]):
        best = 0
        for j in range(1, s.shape[1]):
            if s[i, j] > s[i, best]:
                best = j
        count += best == y[i]
    return count


# ---------------------------------------------------------------- CPU
def test_softmax_xent_cpu_matches_loops(rng):
    for n, c in [(1, 1), (1, 5), (7, 3), (16, 10)]:
        s, y = data(rng, n, c)
        loss, ds = L.softmax_cross_entropy(s, y)
        assert loss.shape == () and loss.dtype == np.float64
        assert abs(float(loss) - loop_softmax_xent(s, y)) < 1e-12
        assert ds.shape == s.shape


def test_svm_cpu_matches_loops(rng):
    for n, c in [(1, 1), (1, 5), (7, 3), (16, 10)]:
        s, y = data(rng, n, c)
        for delta in (1.0, 0.3):
            loss, _ = L.svm_loss(s, y, delta=delta)
            assert abs(float(loss) - loop_svm(s, y, delta)) < 1e-12


def test_softmax_and_accuracy_cpu(rng):
    s, y = data(rng, 9, 6)
    assert rel_error(L.softmax(s), loop_softmax(s)) < 1e-12
    s[0, :] = 1.0  # ties: first max wins
    y[0] = 0
    got = L.accuracy_count(s, y)
    assert got.shape == () and got.dtype == np.int64 and int(got) == loop_accuracy(s, y)


def test_softmax_xent_stable_for_large_scores(rng):
    s, y = data(rng, 4, 5)
    s += 1e4
    loss, ds = L.softmax_cross_entropy(s, y)
    assert np.isfinite(loss) and np.isfinite(ds).all()
    assert abs(float(loss) - loop_softmax_xent(s, y)) < 1e-9
    p = L.softmax(s.astype(np.float32) * 100)
    assert np.isfinite(p).all() and rel_error(p.sum(axis=1), np.ones(4)) < 1e-6


def test_softmax_xent_gradient_numeric(rng):
    s, y = data(rng, 5, 7)
    _, ds = L.softmax_cross_entropy(s, y)
    num = numeric_grad(lambda: float(L.softmax_cross_entropy(s, y)[0]), s)
    assert rel_error(ds, num) < 1e-7


def test_svm_gradient_numeric(rng):
    s, y = data(rng, 5, 7)
    # keep margins away from the kink at 0 so central differences are valid
    sy = s[np.arange(5), y][:, None]
    m = s - sy + 1.0
    s[(np.abs(m) < 1e-3)] += 0.01
    _, ds = L.svm_loss(s, y)
    num = numeric_grad(lambda: float(L.svm_loss(s, y)[0]), s)
    assert rel_error(ds, num) < 1e-7


def test_grad_out_buffer_cpu(rng):
    s, y = data(rng, 4, 3, np.float32)
    g = poison(np, s.shape)
    loss, ds = L.softmax_cross_entropy(s, y, grad_out=g)
    assert ds is g and np.isfinite(g).all() and loss.dtype == np.float32
    g2 = poison(np, s.shape)
    _, ds2 = L.svm_loss(s, y, grad_out=g2)
    assert ds2 is g2 and np.isfinite(g2).all()
    o = poison(np, s.shape)
    assert L.softmax(s, out=o) is o


def test_errors_cpu(rng):
    s, y = data(rng, 4, 3, np.float32)
    with pytest.raises(OpArgumentError, match=r"softmax_cross_entropy: labels must be in \[0, 3\); labels\[2\] = 3"):
        L.softmax_cross_entropy(s, np.array([0, 1, 3, 0], np.int32))
    with pytest.raises(OpArgumentError, match="svm_loss: labels must be in"):
        L.svm_loss(s, np.array([0, -1, 2, 0], np.int32))
    with pytest.raises(OpArgumentError, match="labels must be int32"):
        L.softmax_cross_entropy(s, y.astype(np.int64))
    with pytest.raises(OpArgumentError, match=r"labels must have shape \(4,\)"):
        L.svm_loss(s, y[:3].copy())
    with pytest.raises(OpArgumentError, match="scores must be float32 or float64"):
        L.softmax(s.astype(np.int32))
    with pytest.raises(OpArgumentError, match="scores must have 2 dimensions"):
        L.accuracy_count(s.ravel(), y)
    with pytest.raises(OpArgumentError, match="C-contiguous"):
        L.softmax_cross_entropy(np.asfortranarray(np.ones((4, 3), np.float32)), y)
    with pytest.raises(OpArgumentError, match="at least one row"):
        L.softmax_cross_entropy(np.zeros((0, 3), np.float32), np.zeros(0, np.int32))
    with pytest.raises(OpArgumentError, match="out must be float32"):
        L.svm_loss(s, y, grad_out=np.zeros((4, 3), np.float64))


# ---------------------------------------------------------------- GPU
SHAPES = [(1, 1), (1, 10), (3, 31), (33, 32), (64, 33), (257, 10), (5, 1000), (1000, 7)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_losses_gpu_match_cpu(cp, rng, dtype):
    tol = 1e-4 if dtype == np.float32 else 1e-10
    for n, c in SHAPES:
        s, y = data(rng, n, c, dtype)
        gs, gy = cp.asarray(s), cp.asarray(y)
        g = poison(cp, s.shape, dtype)
        loss, ds = L.softmax_cross_entropy(gs, gy, grad_out=g)
        assert ds is g and loss.shape == () and loss.dtype == dtype and type(loss) is type(gs)
        rl, rds = L.softmax_cross_entropy(s.astype(np.float64), y)
        assert abs(float(loss) - float(rl)) <= tol * max(1.0, abs(float(rl))), (n, c)
        assert rel_error(ds, rds) < tol, (n, c)
        g = poison(cp, s.shape, dtype)
        loss, ds = L.svm_loss(gs, gy, delta=0.5, grad_out=g)
        rl = L.svm_loss(s.astype(np.float64), y, delta=0.5)[0]
        assert abs(float(loss) - float(rl)) <= tol * max(1.0, abs(float(rl))), (n, c)
        # the hinge's indicator is compared in the same dtype (s_j - s_y + delta rounds
        # identically), so a margin within rounding of 0 cannot flip between the two
        rds = L.svm_loss(s, y, delta=0.5)[1]
        assert rel_error(ds, rds) < tol, (n, c)
        p = poison(cp, s.shape, dtype)
        assert L.softmax(gs, out=p) is p
        assert rel_error(p, L.softmax(s.astype(np.float64))) < tol, (n, c)
        acc = L.accuracy_count(gs, gy)
        assert acc.shape == () and acc.dtype == np.int64 and int(acc) == int(L.accuracy_count(s, y)), (n, c)


@pytest.mark.gpu
def test_accuracy_gpu_ties_and_nan(cp):
    s = np.array([[1, 3, 3, 0], [2, 2, 2, 2], [0, np.nan, 5, np.nan], [9, 1, 1, 1]], np.float32)
    y = np.array([1, 0, 1, 3], np.int32)  # first max, first max, first NaN (np.argmax), wrong
    assert int(L.accuracy_count(cp.asarray(s), cp.asarray(y))) == int(L.accuracy_count(s, y)) == 3
    wide = np.zeros((2, 100), np.float32)
    wide[0, 40] = wide[0, 72] = 1.0  # tie across lanes: lane 8's 40 beats lane 8's 72
    wide[1, 99] = 1.0
    assert int(L.accuracy_count(cp.asarray(wide), cp.asarray(np.array([40, 99], np.int32)))) == 2


@pytest.mark.gpu
def test_bad_labels_gpu_give_nan(cp, rng):
    s, y = data(rng, 6, 5, np.float32)
    y[2], y[4] = 5, -7
    gs, gy = cp.asarray(s), cp.asarray(y)
    loss, ds = L.softmax_cross_entropy(gs, gy)
    assert np.isnan(float(loss))
    dsh = ds.get()
    assert np.isnan(dsh[2]).all() and np.isnan(dsh[4]).all() and np.isfinite(dsh[[0, 1, 3, 5]]).all()
    loss, ds = L.svm_loss(gs, gy)
    assert np.isnan(float(loss)) and np.isnan(ds.get()[2]).all()
    ok = (y >= 0) & (y < 5)
    want = int(np.count_nonzero((s.argmax(1) == y) & ok))
    assert int(L.accuracy_count(gs, gy)) == want


@pytest.mark.gpu
def test_softmax_xent_gpu_float64_gradient(cp, rng):
    # GPU float64 vs the numerically gradient-checked CPU float64 path
    s, y = data(rng, 9, 13)
    _, ds = L.softmax_cross_entropy(cp.asarray(s), cp.asarray(y))
    _, rds = L.softmax_cross_entropy(s, y)
    assert rel_error(ds, rds) < 1e-12


@pytest.mark.gpu
def test_errors_gpu(cp, rng):
    s, y = data(rng, 4, 3, np.float32)
    gs, gy = cp.asarray(s), cp.asarray(y)
    with pytest.raises(OpArgumentError, match="softmax_cross_entropy: labels is on cpu"):
        L.softmax_cross_entropy(gs, y)
    with pytest.raises(OpArgumentError, match="svm_loss: out is on cpu"):
        L.svm_loss(gs, gy, grad_out=np.zeros((4, 3), np.float32))
    with pytest.raises(OpArgumentError, match="labels must be int32"):
        L.accuracy_count(gs, gy.astype(cp.int64))
    with pytest.raises(OpArgumentError, match="C-contiguous"):
        L.softmax(cp.asfortranarray(cp.ones((4, 3), cp.float32)))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_planned_loss_buffers_and_running_totals(cp, rng, dtype):
    """The loss in planned buffers, its running sum (mean * N added, float64) and the correct
    count added into a running total: device and CPU agree, and totals accumulate."""
    n, c = 37, 11
    bufs = {}
    for name, xp in (("dev", cp), ("cpu", np)):
        rows, mean = xp.zeros((n,), dtype=dtype), xp.zeros((), dtype=dtype)
        total = xp.asarray(np.array(1.5, dtype=np.float64))
        correct = xp.asarray(np.array(3, dtype=np.int64))
        bufs[name] = (L.LossBuffers(rows, mean, total), correct)
    means = []
    for step in range(3):
        s, y = data(rng, n, c, dtype)
        for name, xp in (("dev", cp), ("cpu", np)):
            b, correct = bufs[name]
            loss, _ = L.softmax_cross_entropy(xp.asarray(s), xp.asarray(y), buffers=b)
            assert loss is b.mean
            assert L.accuracy_count(xp.asarray(s), xp.asarray(y), into=correct) is correct
        means.append(float(L.softmax_cross_entropy(s, y)[0]))
        b, _ = bufs["dev"]
        assert abs(float(b.mean) - means[-1]) <= 1e-5 * abs(means[-1])
    for name in ("dev", "cpu"):
        b, correct = bufs[name]
        assert float(b.running_sum) == pytest.approx(1.5 + n * sum(means), rel=1e-5)
    assert int(bufs["dev"][1]) == int(bufs["cpu"][1]) >= 3
    assert float(bufs["dev"][0].running_sum) == pytest.approx(float(bufs["cpu"][0].running_sum), rel=1e-6)
    with pytest.raises(OpArgumentError, match="running_sum"):
        L.svm_loss(cp.asarray(s), cp.asarray(y),
                   buffers=L.LossBuffers(cp.zeros((n,), dtype), cp.zeros((), dtype), cp.zeros((), np.float32)))
