"""Fused optimizer updates: NumPy vs per-element loops over several steps, GPU vs NumPy."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gpuconv.ops import optim as O
from gpuconv.ops._checks import OpArgumentError
from tests.helpers import rel_error

STEPS = 4


# ---------------------------------------------------------------- per-element loops (the notes' formulas)
def loop_step(kind, p, g, s1, s2, t, hp):
    p, s1, s2 = p.copy(), s1.copy(), s2.copy()
    wd = hp.get("weight_decay", 0.0)
    for i in range(p.size):
        dx = float(g[i]) + wd * float(p[i])
        if kind == "sgd":
            p[i] -= hp["lr"] * dx
        elif kind in ("momentum", "nesterov"):
            v_prev = float(s1[i])
            v = hp["mu"] * v_prev - hp["lr"] * dx
            s1[i] = v
            p[i] += (-hp["mu"] * v_prev + (1 + hp["mu"]) * v) if kind == "nesterov" else v
        elif kind == "adagrad":
            s1[i] += dx * dx
            p[i] -= hp["lr"] * dx / (math.sqrt(s1[i]) + hp["eps"])
        elif kind == "rmsprop":
            s1[i] = hp["decay"] * s1[i] + (1 - hp["decay"]) * dx * dx
            p[i] -= hp["lr"] * dx / (math.sqrt(s1[i]) + hp["eps"])
        elif kind == "adam":
            s1[i] = hp["beta1"] * s1[i] + (1 - hp["beta1"]) * dx
            s2[i] = hp["beta2"] * s2[i] + (1 - hp["beta2"]) * dx * dx
            mt = s1[i] / (1 - hp["beta1"] ** t)
            vt = s2[i] / (1 - hp["beta2"] ** t)
            p[i] -= hp["lr"] * mt / (math.sqrt(vt) + hp["eps"])
    return p, s1, s2


CASES = [
    ("sgd", dict(lr=0.1, weight_decay=0.01)),
    ("momentum", dict(lr=0.05, mu=0.9, weight_decay=0.001)),
    ("nesterov", dict(lr=0.05, mu=0.8, weight_decay=0.0)),
    ("adagrad", dict(lr=0.1, eps=1e-8, weight_decay=0.01)),
    ("rmsprop", dict(lr=0.01, decay=0.9, eps=1e-8, weight_decay=0.0)),
    ("adam", dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)),
]


def apply(kind, p, g, s1, s2, t, hp):
    if kind == "sgd":
        O.sgd_update(p, g, **hp)
    elif kind in ("momentum", "nesterov"):
        O.momentum_update(p, g, s1, nesterov=kind == "nesterov", **hp)
    elif kind == "adagrad":
        O.adagrad_update(p, g, s1, **hp)
    elif kind == "rmsprop":
        O.rmsprop_update(p, g, s1, **hp)
    else:
        O.adam_update(p, g, s1, s2, t=t, **hp)


def init_state(rng, kind, n, dtype):
    p = rng.standard_normal(n).astype(dtype)
    # non-zero starting state where the formula allows (caches must stay >= 0)
    s1 = (np.abs(rng.standard_normal(n)) if kind in ("adagrad", "rmsprop") else 0.1 * rng.standard_normal(n)).astype(dtype)
    s2 = (0.01 * np.abs(rng.standard_normal(n))).astype(dtype)
    return p, s1, s2


@pytest.mark.parametrize("kind,hp", CASES, ids=[c[0] for c in CASES])
def test_cpu_matches_loops(rng, kind, hp):
    n = 37
    p, s1, s2 = init_state(rng, kind, n, np.float64)
    rp, rs1, rs2 = p.copy(), s1.copy(), s2.copy()
    for t in range(1, STEPS + 1):
        g = rng.standard_normal(n)
        g_keep = g.copy()
        apply(kind, p, g, s1, s2, t, hp)
        assert np.array_equal(g, g_keep)  # the gradient is not modified
        rp, rs1, rs2 = loop_step(kind, rp, g, rs1, rs2, t, hp)
    assert rel_error(p, rp) < 1e-12
    assert rel_error(s1, rs1) < 1e-12
    if kind == "adam":
        assert rel_error(s2, rs2) < 1e-12


def test_cpu_float32_stays_float32(rng):
    p, s1, s2 = init_state(rng, "adam", 10, np.float32)
    O.adam_update(p, np.ones(10, np.float32), s1, s2, lr=0.1, t=1)
    assert p.dtype == s1.dtype == s2.dtype == np.float32


def test_adam_first_step_is_lr_sign(rng):
    # with zero state, bias correction makes step 1 move each weight by ~lr*sign(g)
    p = np.zeros(5)
    g = rng.standard_normal(5)
    O.adam_update(p, g, np.zeros(5), np.zeros(5), lr=0.01, t=1, eps=0.0)
    assert rel_error(p, -0.01 * np.sign(g)) < 1e-12


def test_errors_cpu(rng):
    p = np.zeros(8, np.float32)
    with pytest.raises(OpArgumentError, match=r"sgd_update: g must have shape \(8,\)"):
        O.sgd_update(p, np.zeros(7, np.float32), lr=0.1)
    with pytest.raises(OpArgumentError, match="momentum_update: v must be float32"):
        O.momentum_update(p, np.zeros(8, np.float32), np.zeros(8, np.float64), lr=0.1)
    with pytest.raises(OpArgumentError, match="adagrad_update: p must have 1 dimensions"):
        O.adagrad_update(p.reshape(2, 4), p.reshape(2, 4), p.reshape(2, 4), lr=0.1)
    with pytest.raises(OpArgumentError, match="rmsprop_update: cache must be C-contiguous"):
        O.rmsprop_update(p, np.zeros(8, np.float32), np.zeros(16, np.float32)[::2], lr=0.1)
    with pytest.raises(OpArgumentError, match="p must be float32 or float64"):
        O.sgd_update(np.zeros(8, np.int32), np.zeros(8, np.int32), lr=0.1)
    for bad_t in (0, -1, 1.5, True):
        with pytest.raises(OpArgumentError, match="adam_update: t must be an integer step >= 1"):
            O.adam_update(p, p.copy(), p.copy(), p.copy(), lr=0.1, t=bad_t)


# ---------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind,hp", CASES, ids=[c[0] for c in CASES])
def test_gpu_matches_cpu(cp, rng, kind, hp, dtype):
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for n in (1, 255, 257, 100_003):
        p, s1, s2 = init_state(rng, kind, n, dtype)
        gp, gs1, gs2 = cp.asarray(p), cp.asarray(s1), cp.asarray(s2)
        for t in range(1, STEPS + 1):
            g = rng.standard_normal(n).astype(dtype)
            apply(kind, p, g, s1, s2, t, hp)
            apply(kind, gp, cp.asarray(g), gs1, gs2, t, hp)
        assert rel_error(gp, p) < tol, (kind, n)
        assert rel_error(gs1, s1) < tol, (kind, n)
        if kind == "adam":
            assert rel_error(gs2, s2) < tol, (kind, n)


@pytest.mark.gpu
def test_gpu_large_grid_stride(cp, rng):
    # more elements than the 65536*256 launch covers: the grid-stride loop must reach all
    n = 65536 * 256 + 1001
    p = cp.zeros(n, cp.float32)
    O.sgd_update(p, cp.ones(n, cp.float32), lr=0.5)
    assert float(p.min()) == float(p.max()) == -0.5


@pytest.mark.gpu
def test_errors_gpu(cp):
    p = cp.zeros(8, cp.float32)
    with pytest.raises(OpArgumentError, match="sgd_update: g is on cpu"):
        O.sgd_update(p, np.zeros(8, np.float32), lr=0.1)
    with pytest.raises(OpArgumentError, match="adam_update: v must be float32"):
        O.adam_update(p, p.copy(), p.copy(), cp.zeros(8, cp.float64), lr=0.1, t=1)
    with pytest.raises(OpArgumentError, match="momentum_update: v must be C-contiguous"):
        O.momentum_update(p, p.copy(), cp.zeros(16, cp.float32)[::2], lr=0.1)
    with pytest.raises(OpArgumentError, match=r"rmsprop_update: cache must have shape \(8,\)"):
        O.rmsprop_update(p, p.copy(), cp.zeros(9, cp.float32), lr=0.1)


def apply_hyper(kind, p, g, s1, s2, hyper, hp):
    """The same update with lr (and Adam's t) taken from ``hyper``: the scalars passed are ignored."""
    rest = {k: v for k, v in hp.items() if k != "lr"}
    if kind == "sgd":
        O.sgd_update(p, g, lr=123.0, hyper=hyper, **rest)
    elif kind in ("momentum", "nesterov"):
        O.momentum_update(p, g, s1, lr=123.0, nesterov=kind == "nesterov", hyper=hyper, **rest)
    elif kind == "adagrad":
        O.adagrad_update(p, g, s1, lr=123.0, hyper=hyper, **rest)
    elif kind == "rmsprop":
        O.rmsprop_update(p, g, s1, lr=123.0, hyper=hyper, **rest)
    else:
        O.adam_update(p, g, s1, s2, lr=123.0, t=99, hyper=hyper, **rest)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind,hp", CASES, ids=[c[0] for c in CASES])
def test_hyper_from_device_memory_equals_scalar_arguments(cp, rng, kind, hp, dtype):
    """The *_dev kernels (lr, bias corrections read from memory) give the scalar kernels' bits,
    on the device and on the CPU, with the learning rate changing every step."""
    n = 1031
    p, s1, s2 = init_state(rng, kind, n, dtype)
    ref = [cp.asarray(a) for a in (p, s1, s2)]
    dev = [cp.asarray(a) for a in (p, s1, s2)]
    cpu = [a.copy() for a in (p, s1, s2)]
    hyper = cp.zeros(O.HYPER, dtype=dtype)
    for t in range(1, STEPS + 1):
        g = rng.standard_normal(n).astype(dtype)
        step_hp = {**hp, "lr": hp["lr"] / t}
        apply(kind, *ref[:1], cp.asarray(g), *ref[1:], t, step_hp)
        values = O.hyper_values(step_hp["lr"], t if kind == "adam" else None,
                                hp.get("beta1", 0.9), hp.get("beta2", 0.999))
        hyper[...] = cp.asarray(np.asarray(values, dtype=dtype))
        apply_hyper(kind, dev[0], cp.asarray(g), dev[1], dev[2], hyper, hp)
        apply_hyper(kind, cpu[0], g, cpu[1], cpu[2], np.asarray(values, dtype=dtype), hp)
    for r, d, c in zip(ref, dev, cpu):
        np.testing.assert_array_equal(cp.asnumpy(d), cp.asnumpy(r))
        assert rel_error(c, r) < (1e-5 if dtype == np.float32 else 1e-12)


def test_hyper_must_match_p(rng):
    p, g = np.zeros(4, np.float32), np.zeros(4, np.float32)
    with pytest.raises(OpArgumentError, match="hyper"):
        O.sgd_update(p, g, lr=0.1, hyper=np.zeros(2, np.float32))
    with pytest.raises(OpArgumentError, match="hyper"):
        O.sgd_update(p, g, lr=0.1, hyper=np.zeros(3, np.float64))
