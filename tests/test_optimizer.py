"""Optimizer over the flat buffer: formulas, weight decay only on weights, schedules, state."""
import math

import numpy as np
import pytest

from gpuconv.layers import FC
from gpuconv.net import Net
from gpuconv.optim import STATE_SLOTS, Optimizer, Schedule


def _net():
    net = Net([FC(3)], (4,), dtype=np.float64).bind("cpu", seed=0)
    net.grad_buffer[...] = np.linspace(-1, 1, net.num_params)
    return net


def test_sgd_decays_weights_not_biases():
    net = _net()
    p0 = net.param_buffer.copy()
    g = net.grad_buffer.copy()
    Optimizer("sgd", 0.1, weight_decay=0.5).bind(net).step()
    nd = net.num_decayed
    np.testing.assert_allclose(net.param_buffer[:nd], p0[:nd] - 0.1 * (g[:nd] + 0.5 * p0[:nd]))
    np.testing.assert_allclose(net.param_buffer[nd:], p0[nd:] - 0.1 * g[nd:])


def test_adam_matches_formula_over_steps():
    net = _net()
    p = net.param_buffer.copy()
    g = net.grad_buffer.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    opt = Optimizer("adam", 0.01).bind(net)
    for t in range(1, 4):
        opt.step()
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    np.testing.assert_allclose(net.param_buffer, p, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", sorted(STATE_SLOTS))
def test_every_optimizer_descends_a_quadratic(kind):
    net = Net([FC(1, bias=False)], (3,), dtype=np.float64).bind("cpu", seed=0)
    opt = Optimizer(kind, {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.5,
                           "rmsprop": 0.02, "adam": 0.05}[kind]).bind(net)
    f0 = float(np.sum(net.param_buffer ** 2))
    for _ in range(60):
        net.grad_buffer[...] = 2 * net.param_buffer   # gradient of |p|^2
        opt.step()
    assert float(np.sum(net.param_buffer ** 2)) < 0.1 * f0
    assert len(opt.state) == STATE_SLOTS[kind]


def test_state_roundtrip():
    net = _net()
    opt = Optimizer("momentum", 0.1).bind(net)
    opt.step()
    saved = opt.state_arrays()
    other = Optimizer("momentum", 0.1).bind(_net())
    other.load_state_arrays(saved)
    assert other.t == 1
    np.testing.assert_array_equal(other.state[0], opt.state[0])
    with pytest.raises(ValueError, match="optimizer"):
        Optimizer("adam").bind(_net()).load_state_arrays(saved)


def test_schedules():
    assert Schedule("step", step_epochs=2, gamma=0.1)(1.0, step=5, steps_per_epoch=1) == pytest.approx(0.01)
    cos = Schedule("cosine", total_epochs=4)
    assert cos(1.0, 0, 10) == 1.0 and cos(1.0, 20, 10) == pytest.approx(0.5) and cos(1.0, 40, 10) == pytest.approx(0)
    assert Schedule()(0.3, 999, 1) == 0.3
    with pytest.raises(ValueError):
        Schedule("exp")


@pytest.mark.parametrize("kw", [dict(kind="lbfgs"), dict(lr=-1.0), dict(lr=math.nan), dict(weight_decay=-1)])
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        Optimizer(**kw)
