"""Batch normalization: NumPy path vs a per-channel loop reference, gradient checks, GPU vs NumPy."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv.ops._checks import OpArgumentError
from gpuconv.ops.batchnorm import batchnorm_backward, batchnorm_forward
from tests.helpers import numeric_grad, poison, rel_error

# ----------------------------------------------------------------------------- references


def loop_forward(x, gamma, beta, rm, rv, train, momentum, eps):
    """Per-channel loops: returns y, mean, invstd, new running mean, new running var."""
    x = x.astype(np.float64)
    c = x.shape[1]
    y = np.empty_like(x)
    mean = np.empty(c)
    invstd = np.empty(c)
    new_rm, new_rv = rm.astype(np.float64).copy(), rv.astype(np.float64).copy()
    for ch in range(c):
        v = x[:, ch].ravel()
        if train:
            mu = sum(v) / len(v)
            var = sum((t - mu) ** 2 for t in v) / len(v)
            new_rm[ch] = (1 - momentum) * rm[ch] + momentum * mu
            new_rv[ch] = (1 - momentum) * rv[ch] + momentum * var * len(v) / (len(v) - 1)
        else:
            mu, var = float(rm[ch]), float(rv[ch])
        mean[ch], invstd[ch] = mu, 1.0 / np.sqrt(var + eps)
        y[:, ch] = (x[:, ch] - mu) * invstd[ch] * gamma[ch] + beta[ch]
    return y, mean, invstd, new_rm, new_rv


def make(rng, shape, dtype=np.float64, offset=0.0):
    c = shape[1]
    x = (rng.standard_normal(shape) * 2.0 + offset + rng.standard_normal(c).reshape((1, c) + (1,) * (len(shape) - 2)))
    gamma = rng.uniform(0.5, 1.5, c)
    beta = rng.standard_normal(c)
    rm = rng.standard_normal(c) * 0.1
    rv = rng.uniform(0.5, 2.0, c)
    return tuple(np.ascontiguousarray(a, dtype=dtype) for a in (x, gamma, beta, rm, rv))


SHAPES = [(4, 3, 5, 7), (2, 5, 1, 1), (1, 4, 3, 2), (7, 6), (2, 1, 9, 1)]

# ----------------------------------------------------------------------------- CPU


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_loop_reference(rng, shape, train, dtype):
    x, g, b, rm, rv = make(rng, shape, dtype)
    ry, rmean, rinv, rrm, rrv = loop_forward(x, g, b, rm, rv, train, 0.1, 1e-5)
    y, sm, si = batchnorm_forward(x, g, b, rm, rv, train=train, momentum=0.1, eps=1e-5)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert y.dtype == dtype and sm.dtype == dtype and si.dtype == dtype
    assert rel_error(y, ry) < tol
    assert rel_error(sm, rmean) < tol
    assert rel_error(si, rinv) < tol
    assert rel_error(rm, rrm) < tol  # updated in place (unchanged in eval)
    assert rel_error(rv, rrv) < tol


def test_train_output_is_normalized(rng):
    x, g, b, rm, rv = make(rng, (8, 3, 4, 4), offset=100.0)
    y, _, _ = batchnorm_forward(x, np.ones(3), np.zeros(3), rm, rv, train=True)
    assert np.allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    assert np.allclose(y.var(axis=(0, 2, 3)), 1, atol=1e-4)  # eps=1e-5 shrinks it a hair


def test_float32_large_offset_is_stable(rng):
    # E[x^2] - E[x]^2 in float32 would lose every digit of the variance here.
    x, g, b, rm, rv = make(rng, (16, 2, 8, 8), np.float32, offset=1e4)
    ry, rmean, rinv, _, _ = loop_forward(x, g, b, rm, rv, True, 0.1, 1e-5)
    y, sm, si = batchnorm_forward(x, g, b, rm, rv, train=True)
    assert rel_error(si, rinv) < 1e-3
    assert rel_error(y, ry) < 1e-2


def test_out_buffers_are_used(rng):
    x, g, b, rm, rv = make(rng, (3, 4, 2, 5))
    out, sm, si = np.full_like(x, np.nan), np.full(4, np.nan), np.full(4, np.nan)
    y, sm2, si2 = batchnorm_forward(x, g, b, rm, rv, train=True, out=out, save_mean=sm, save_invstd=si)
    assert y is out and sm2 is sm and si2 is si and np.isfinite(out).all()
    dy = rng.standard_normal(x.shape)
    dx_o, dg_o, db_o = np.full_like(x, np.nan), np.full(4, np.nan), np.full(4, np.nan)
    dx, dg, db = batchnorm_backward(dy, x, g, sm, si, out=dx_o, dgamma_out=dg_o, dbeta_out=db_o)
    assert dx is dx_o and dg is dg_o and db is db_o and np.isfinite(dx).all()


@pytest.mark.parametrize("shape", [(3, 2, 2, 3), (5, 3), (1, 2, 3, 1)])
def test_backward_gradient_check(rng, shape):
    x, g, b, rm, rv = make(rng, shape)
    dy = rng.standard_normal(shape)

    def loss() -> float:
        y, _, _ = batchnorm_forward(x, g, b, rm.copy(), rv.copy(), train=True)
        return float(np.sum(y * dy))

    _, sm, si = batchnorm_forward(x, g, b, rm.copy(), rv.copy(), train=True)
    dx, dg, db = batchnorm_backward(dy, x, g, sm, si)
    assert rel_error(dx, numeric_grad(loss, x)) < 1e-6
    assert rel_error(dg, numeric_grad(loss, g)) < 1e-6
    assert rel_error(db, numeric_grad(loss, b)) < 1e-6


def test_backward_float32_matches_float64(rng):
    x, g, b, rm, rv = make(rng, (4, 3, 5, 5))
    dy = rng.standard_normal(x.shape)
    _, sm, si = batchnorm_forward(x, g, b, rm, rv, train=True)
    ref = batchnorm_backward(dy, x, g, sm, si)
    f = [a.astype(np.float32) for a in (dy, x, g, sm, si)]
    got = batchnorm_backward(*f)
    for a, r in zip(got, ref):
        assert a.dtype == np.float32
        assert rel_error(a, r) < 1e-5


def test_errors(rng):
    x, g, b, rm, rv = make(rng, (2, 3, 4, 4), np.float32)
    fwd = batchnorm_forward
    with pytest.raises(OpArgumentError, match="batchnorm_forward: x must be float32 or float64"):
        fwd(x.astype(np.float16), g, b, rm, rv, train=True)
    with pytest.raises(OpArgumentError, match="gamma must have shape"):
        fwd(x, g[:2].copy(), b, rm, rv, train=True)
    with pytest.raises(OpArgumentError, match="beta must be float32"):
        fwd(x, g, b.astype(np.float64), rm, rv, train=True)
    with pytest.raises(OpArgumentError, match="C-contiguous"):
        fwd(x.transpose(0, 1, 3, 2), g, b, rm, rv, train=True)
    with pytest.raises(OpArgumentError, match=r"\[N, C, H, W\] or \[N, D\]"):
        fwd(x[0], g, b, rm, rv, train=True)
    with pytest.raises(OpArgumentError, match="more than 1 value per channel"):
        fwd(np.ones((1, 3), np.float32), g, b, rm, rv, train=True)
    with pytest.raises(OpArgumentError, match="out must have shape"):
        fwd(x, g, b, rm, rv, train=True, out=np.empty((2, 3, 4, 5), np.float32))
    with pytest.raises(OpArgumentError, match="save_mean must have shape"):
        fwd(x, g, b, rm, rv, train=True, save_mean=np.empty(4, np.float32))
    with pytest.raises(OpArgumentError, match="x must be an array"):
        fwd([1.0, 2.0], g, b, rm, rv, train=True)
    _, sm, si = fwd(x, g, b, rm, rv, train=True)
    with pytest.raises(OpArgumentError, match="batchnorm_backward: dy must have shape"):
        batchnorm_backward(x[:1].copy(), x, g, sm, si)
    with pytest.raises(OpArgumentError, match="save_invstd must be float32"):
        batchnorm_backward(x, x, g, sm, si.astype(np.float64))


# ----------------------------------------------------------------------------- GPU

GPU_SHAPES = [(2, 3, 5, 7), (1, 7, 3, 3), (5, 13), (3, 17, 33, 31), (64, 3, 40, 40), (3, 1, 1, 1), (300, 37)]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("train", [True, False])
def test_gpu_forward_backward_fp32(cp, rng, shape, train):
    x64, g64, b64, rm64, rv64 = make(rng, shape, np.float64, offset=3.0)
    c = shape[1]
    ref_rm, ref_rv = rm64.copy(), rv64.copy()
    ry, rsm, rsi = batchnorm_forward(x64, g64, b64, ref_rm, ref_rv, train=train)
    x, g, b, rm, rv = (cp.asarray(a.astype(np.float32)) for a in (x64, g64, b64, rm64, rv64))
    out, sm, si = poison(cp, x.shape), poison(cp, (c,)), poison(cp, (c,))
    y, sm2, si2 = batchnorm_forward(x, g, b, rm, rv, train=train, out=out, save_mean=sm, save_invstd=si)
    assert y is out and sm2 is sm and si2 is si
    assert rel_error(y, ry) < 1e-4
    assert rel_error(sm, rsm) < 1e-4
    assert rel_error(si, rsi) < 1e-4
    assert rel_error(rm, ref_rm) < 1e-4
    assert rel_error(rv, ref_rv) < 1e-4

    dy64 = rng.standard_normal(shape)
    rdx, rdg, rdb = batchnorm_backward(dy64, x64, g64, rsm, rsi)
    dx_o, dg_o, db_o = poison(cp, x.shape), poison(cp, (c,)), poison(cp, (c,))
    dx, dg, db = batchnorm_backward(cp.asarray(dy64.astype(np.float32)), x, g, sm, si, out=dx_o,
                                    dgamma_out=dg_o, dbeta_out=db_o)
    assert dx is dx_o and dg is dg_o and db is db_o
    assert rel_error(dg, rdg) < 1e-4
    assert rel_error(db, rdb) < 1e-4
    # dx is a difference of nearly equal terms (exactly 0 for N*H*W == 2), so measure its error
    # against the size of those terms, |dy| * |gamma * invstd|, not against dx itself.
    scale = max(np.abs(rdx).max(), np.abs(dy64).max() * np.abs(g64 * rsi).max())
    assert np.abs(cp.asnumpy(dx) - rdx).max() <= 1e-4 * scale


@pytest.mark.gpu
def test_gpu_float32_large_offset(cp, rng):
    x64, g64, b64, rm64, rv64 = make(rng, (32, 4, 16, 16), np.float64, offset=1e4)
    x32 = x64.astype(np.float32)
    ry, _, rsi = batchnorm_forward(x32.astype(np.float64), g64, b64, rm64.copy(), rv64.copy(), train=True)
    y, _, si = batchnorm_forward(cp.asarray(x32), *(cp.asarray(a.astype(np.float32)) for a in (g64, b64, rm64, rv64)),
                                 train=True)
    assert rel_error(si, rsi) < 1e-3
    assert rel_error(y, ry) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(3, 2, 2, 3), (5, 3), (16, 3, 37, 41)])
def test_gpu_float64_matches_cpu(cp, rng, shape):
    # The CPU float64 path is gradient-checked above; the GPU float64 path must agree with it.
    x, g, b, rm, rv = make(rng, shape)
    dy = rng.standard_normal(shape)
    crm, crv = rm.copy(), rv.copy()
    cy, csm, csi = batchnorm_forward(x, g, b, crm, crv, train=True, momentum=0.3, eps=1e-3)
    cdx, cdg, cdb = batchnorm_backward(dy, x, g, csm, csi)
    gx, gg, gb, grm, grv, gdy = (cp.asarray(a) for a in (x, g, b, rm, rv, dy))
    y, sm, si = batchnorm_forward(gx, gg, gb, grm, grv, train=True, momentum=0.3, eps=1e-3)
    dx, dg, db = batchnorm_backward(gdy, gx, gg, sm, si)
    for got, ref in ((y, cy), (sm, csm), (si, csi), (grm, crm), (grv, crv), (dx, cdx), (dg, cdg), (db, cdb)):
        assert got.dtype == np.float64
        assert rel_error(got, ref) < 1e-10
    ey, esm, esi = batchnorm_forward(gx, gg, gb, grm, grv, train=False, eps=1e-3)
    ry, rsm, rsi = batchnorm_forward(x, g, b, crm, crv, train=False, eps=1e-3)
    assert rel_error(ey, ry) < 1e-10 and rel_error(esi, rsi) < 1e-10


@pytest.mark.gpu
def test_gpu_errors(cp, rng):
    x, g, b, rm, rv = make(rng, (2, 3, 4, 4), np.float32)
    gx, gg, gb, grm, grv = (cp.asarray(a) for a in (x, g, b, rm, rv))
    with pytest.raises(OpArgumentError, match="gamma is on cpu"):
        batchnorm_forward(gx, g, gb, grm, grv, train=True)
    with pytest.raises(OpArgumentError, match="x must be float32 or float64"):
        batchnorm_forward(gx.astype(cp.float16), gg, gb, grm, grv, train=True)
    with pytest.raises(OpArgumentError, match="C-contiguous"):
        batchnorm_forward(gx.transpose(0, 1, 3, 2), gg, gb, grm, grv, train=True)
    with pytest.raises(OpArgumentError, match="gamma must have shape"):
        batchnorm_forward(gx, gg[:2].copy(), gb, grm, grv, train=True)
    with pytest.raises(OpArgumentError, match="out is on cpu"):
        batchnorm_forward(gx, gg, gb, grm, grv, train=True, out=np.empty(x.shape, np.float32))
    _, sm, si = batchnorm_forward(gx, gg, gb, grm, grv, train=True)
    with pytest.raises(OpArgumentError, match="dy is on cpu"):
        batchnorm_backward(x, gx, gg, sm, si)




@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(16, 3, 37, 41), (64, 5)])
def test_gpu_partials_in_a_planned_workspace(cp, rng, shape):
    """The train-mode partial sums in the given (poisoned) workspace: the same bits as with
    the op's own scratch; a workspace smaller than workspace_elems is refused."""
    from gpuconv.ops.batchnorm import workspace_elems

    n, c = shape[:2]
    hw = int(np.prod(shape[2:]))
    need = workspace_elems(n, c, hw)
    x64, g64, b64, rm64, rv64 = make(rng, shape, np.float64, offset=1.0)
    x, g, b = (cp.asarray(a.astype(np.float32)) for a in (x64, g64, b64))
    dy = cp.asarray(rng.standard_normal(shape).astype(np.float32))
    results = []
    for ws in (None, poison(cp, (need + 5,))):
        rm, rv = cp.asarray(rm64.astype(np.float32)), cp.asarray(rv64.astype(np.float32))
        y, sm, si = batchnorm_forward(x, g, b, rm, rv, train=True, workspace=ws)
        dx, dg, db = batchnorm_backward(dy, x, g, sm, si, workspace=ws)
        results.append([cp.asnumpy(a) for a in (y, sm, si, rm, rv, dx, dg, db)])
    for a, b_ in zip(*results):
        np.testing.assert_array_equal(a, b_)
    rm, rv = cp.asarray(rm64.astype(np.float32)), cp.asarray(rv64.astype(np.float32))
    with pytest.raises(OpArgumentError, match="workspace"):
        batchnorm_forward(x, g, b, rm, rv, train=True, workspace=cp.zeros(need - 1, np.float32))
