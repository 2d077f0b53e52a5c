"""fc ops and gemm: NumPy reference vs plain loops, float64 gradient checks, GPU vs NumPy."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv import cuda
from gpuconv.ops import autotune, fc
from gpuconv.ops._checks import OpArgumentError
from tests.helpers import configure, numeric_grad, poison, rel_error
from tests.helpers import tf32_truncate as to_tf32

TRANS = [(False, False), (False, True), (True, False), (True, True)]


# ---------------------------------------------------------------- plain-loop references
def loop_gemm(a, b, ta, tb, alpha=1.0, beta=0.0, c=None, bias=None, relu=False):
    A = a.T if ta else a
    B = b.T if tb else b
    m, k = A.shape
    n = B.shape[1]
    out = np.zeros((m, n), dtype=np.float64)
    for i in range(m):
        for j in range(n):
            s = 0.0
            for q in range(k):
                s += float(A[i, q]) * float(B[q, j])
            v = alpha * s
            if beta != 0.0:
                v += beta * float(c[i, j])
            if bias is not None:
                v += float(bias[j])
            if relu:
                v = max(v, 0.0)
            out[i, j] = v
    return out


def operands(rng, m, n, k, ta, tb, dtype=np.float64):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b


# ---------------------------------------------------------------- CPU: reference vs loops
@pytest.mark.parametrize("ta,tb", TRANS)
def test_gemm_cpu_matches_loops(rng, ta, tb):
    for _ in range(3):
        m, n, k = (int(v) for v in rng.integers(1, 9, size=3))
        a, b = operands(rng, m, n, k, ta, tb)
        c0 = rng.standard_normal((m, n))
        alpha, beta = float(rng.uniform(0.5, 2)), float(rng.choice([0.0, 0.7]))
        out = c0.copy()
        got = fc.gemm(a, b, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta, out=out)
        assert got is out
        want = loop_gemm(a, b, ta, tb, alpha, beta, c0)
        assert rel_error(got, want) < 1e-12


def test_gemm_beta_zero_ignores_nan_out(rng):
    a, b = operands(rng, 4, 5, 3, False, False)
    out = poison(np, (4, 5), np.float64)
    fc.gemm(a, b, out=out)
    assert np.isfinite(out).all()
    assert rel_error(out, a @ b) < 1e-14


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fc_forward_cpu_matches_loops(rng, relu, dtype):
    n, d, m = (int(v) for v in rng.integers(1, 10, size=3))
    x = rng.standard_normal((n, d)).astype(dtype)
    w = rng.standard_normal((m, d)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    y = fc.fc_forward(x, w, b, relu=relu)
    assert y.dtype == dtype and y.shape == (n, m)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert rel_error(y, loop_gemm(x, w, False, True, bias=b, relu=relu)) < tol
    y2 = fc.fc_forward(x, w)  # no bias
    assert rel_error(y2, loop_gemm(x, w, False, True)) < tol


def test_fc_backward_cpu_matches_loops(rng):
    n, d, m = 5, 7, 3
    x = rng.standard_normal((n, d))
    w = rng.standard_normal((m, d))
    dy = rng.standard_normal((n, m))
    assert rel_error(fc.fc_backward_data(dy, w), loop_gemm(dy, w, False, False)) < 1e-12
    dw, db = fc.fc_backward_weight(x, dy)
    assert rel_error(dw, loop_gemm(dy, x, True, False)) < 1e-12
    assert rel_error(db, dy.sum(axis=0)) < 1e-12
    dw2, db2 = fc.fc_backward_weight(x, dy, with_bias=False)
    assert db2 is None and rel_error(dw2, dw) < 1e-15


# ---------------------------------------------------------------- CPU: gradient checks (float64)
def test_fc_gradients_numeric(rng):
    n, d, m = 4, 6, 5
    x = rng.standard_normal((n, d))
    w = rng.standard_normal((m, d))
    b = rng.standard_normal(m)
    r = rng.standard_normal((n, m))  # loss = sum(y * r) so dL/dy = r

    def loss() -> float:
        return float((fc.fc_forward(x, w, b) * r).sum())

    dx = fc.fc_backward_data(r, w)
    dw, db = fc.fc_backward_weight(x, r)
    assert rel_error(dx, numeric_grad(loss, x)) < 1e-7
    assert rel_error(dw, numeric_grad(loss, w)) < 1e-7
    assert rel_error(db, numeric_grad(loss, b)) < 1e-7


@pytest.mark.parametrize("ta,tb", TRANS)
def test_gemm_gradients_numeric(rng, ta, tb):
    m, n, k = 3, 4, 5
    a, b = operands(rng, m, n, k, ta, tb)
    r = rng.standard_normal((m, n))

    def loss() -> float:
        return float((fc.gemm(a, b, trans_a=ta, trans_b=tb, alpha=1.5) * r).sum())

    # d/dA of sum(r * alpha A B) = alpha r B^T, transposed back when A is stored transposed
    opb = b.T if tb else b
    opa = a.T if ta else a
    da = 1.5 * r @ opb.T
    db = 1.5 * opa.T @ r
    assert rel_error(da.T if ta else da, numeric_grad(loss, a)) < 1e-7
    assert rel_error(db.T if tb else db, numeric_grad(loss, b)) < 1e-7


# ---------------------------------------------------------------- CPU: edge cases
def test_edge_shapes_cpu(rng):
    # batch 1, one output, K = 1
    x = rng.standard_normal((1, 1)).astype(np.float32)
    w = rng.standard_normal((1, 1)).astype(np.float32)
    b = rng.standard_normal(1).astype(np.float32)
    assert rel_error(fc.fc_forward(x, w, b), x @ w.T + b) < 1e-6
    # K = 0: y = bias
    x0 = np.zeros((3, 0), np.float32)
    w0 = np.zeros((4, 0), np.float32)
    b4 = rng.standard_normal(4).astype(np.float32)
    assert rel_error(fc.fc_forward(x0, w0, b4), np.broadcast_to(b4, (3, 4))) == 0.0


def test_relu_keeps_nan_cpu():
    x = np.array([[1.0]], np.float32)
    w = np.array([[1.0], [1.0], [-1.0]], np.float32)
    y = fc.fc_forward(x, w, np.array([np.nan, 0.0, 0.0], np.float32), relu=True)
    assert np.isnan(y[0, 0]) and y[0, 1] == 1.0 and y[0, 2] == 0.0


def test_out_buffers_cpu(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    dy = rng.standard_normal((3, 5)).astype(np.float32)
    y = poison(np, (3, 5))
    assert fc.fc_forward(x, w, out=y) is y
    dx = poison(np, (3, 4))
    assert fc.fc_backward_data(dy, w, out=dx) is dx
    dw, db = poison(np, (5, 4)), poison(np, (5,))
    rdw, rdb = fc.fc_backward_weight(x, dy, dw_out=dw, db_out=db)
    assert rdw is dw and rdb is db and np.isfinite(dw).all() and np.isfinite(db).all()


# ---------------------------------------------------------------- CPU: bad inputs
def test_errors_cpu(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    with pytest.raises(OpArgumentError, match="fc_forward: x must be float32 or float64"):
        fc.fc_forward(x.astype(np.float16), w)
    with pytest.raises(OpArgumentError, match="fc_forward: w must be float32"):
        fc.fc_forward(x, w.astype(np.float64))
    with pytest.raises(OpArgumentError, match=r"fc_forward: w must have shape \(out, 4\)"):
        fc.fc_forward(x, w[:, :3].copy())
    with pytest.raises(OpArgumentError, match="fc_forward: x must have 2 dimensions"):
        fc.fc_forward(x.reshape(3, 2, 2), w)
    with pytest.raises(OpArgumentError, match="fc_forward: x must be C-contiguous"):
        fc.fc_forward(np.asfortranarray(x), w)
    with pytest.raises(OpArgumentError, match=r"fc_forward: b must have shape \(5,\)"):
        fc.fc_forward(x, w, np.zeros(4, np.float32))
    with pytest.raises(OpArgumentError, match="fc_forward: out must have shape"):
        fc.fc_forward(x, w, out=np.zeros((3, 4), np.float32))
    with pytest.raises(OpArgumentError, match="fc_forward: out must be float32"):
        fc.fc_forward(x, w, out=np.zeros((3, 5), np.float64))
    with pytest.raises(OpArgumentError, match="precision"):
        fc.fc_forward(x, w, precision="fp16")
    with pytest.raises(OpArgumentError, match="fc_backward_data: w must have shape"):
        fc.fc_backward_data(np.zeros((3, 4), np.float32), w)
    with pytest.raises(OpArgumentError, match="fc_backward_weight: dy must have 3 rows"):
        fc.fc_backward_weight(x, np.zeros((2, 5), np.float32))
    with pytest.raises(OpArgumentError, match="gemm: inner dimensions differ"):
        fc.gemm(x, w)
    with pytest.raises(OpArgumentError, match="gemm: beta"):
        fc.gemm(x, w, trans_b=True, beta=1.0)
    with pytest.raises(OpArgumentError, match="gemm: a must be an array"):
        fc.gemm([[1.0]], w)


def test_split_k_heuristic():
    # skinny batch-128 problems split K; big ones do not; K ranges tile K exactly
    for m, n, k in [(128, 4096, 4096), (128, 4096, 25088), (1024, 4096, 4096), (3, 5, 2051), (7, 9, 1)]:
        for kslice in (8, 16):
            splits, kps = fc._split_k(m, n, k, kslice, 132)
            assert kps % kslice == 0 and splits >= 1
            assert (splits - 1) * kps < max(k, 1) <= splits * kps
    assert fc._split_k(128, 4096, 4096, 8, 132)[0] > 1
    assert fc._split_k(1024, 4096, 4096, 8, 132)[0] == 1


# ---------------------------------------------------------------- GPU
GPU_SHAPES = [  # (M, N, K): odd sizes, 1s, not multiples of tiles, split-K, large-ish
    (1, 1, 1), (1, 7, 3), (5, 1, 9), (33, 65, 17), (129, 130, 131), (128, 128, 128),
    (3, 200, 2051), (257, 31, 1030), (64, 256, 4), (2, 3, 0),
]


def _upload(cp, h, misalign=False):
    if not misalign:
        return cp.asarray(h)
    # same data at a 4-byte-offset address: disables the float4 / 16-byte cp.async paths
    base = cp.empty(h.size + 1, dtype=h.dtype)
    v = base[1:].reshape(h.shape)
    v[...] = cp.asarray(h)
    return v


def _gpu_ops(cp, rng, m, n, k, ta, tb, dtype, misalign=False):
    a, b = operands(rng, m, n, k, ta, tb, np.float64)
    a, b = a.astype(dtype), b.astype(dtype)
    return a, b, _upload(cp, a, misalign), _upload(cp, b, misalign)


@pytest.mark.gpu
@pytest.mark.parametrize("ta,tb", TRANS)
@pytest.mark.parametrize("misalign", [False, True])
def test_gemm_gpu_fp32(cp, rng, ta, tb, misalign):
    for m, n, k in GPU_SHAPES:
        a, b, da, db = _gpu_ops(cp, rng, m, n, k, ta, tb, np.float32, misalign)
        out = poison(cp, (m, n))
        got = fc.gemm(da, db, trans_a=ta, trans_b=tb, out=out, alpha=1.25)
        assert got is out
        want = fc.gemm(a.astype(np.float64), b.astype(np.float64), trans_a=ta, trans_b=tb, alpha=1.25)
        assert rel_error(got, want) < 1e-4 if k else rel_error(got, want) == 0.0, (m, n, k, ta, tb)


def _check_tf32_exact_inputs(cp, rng, ta, tb, misalign, shapes):
    """TF32 GEMMs of TF32-exact operands against fp64 at 1e-4 (fp32 accumulation only)."""
    for m, n, k in shapes:
        a, b = operands(rng, m, n, k, ta, tb, np.float32)
        a, b = to_tf32(a), to_tf32(b)
        da, db = _upload(cp, a, misalign), _upload(cp, b, misalign)
        out = poison(cp, (m, n))
        fc.gemm(da, db, trans_a=ta, trans_b=tb, out=out, precision="tf32")
        want = fc.gemm(a.astype(np.float64), b.astype(np.float64), trans_a=ta, trans_b=tb)
        assert rel_error(out, want) < 1e-4 if k else rel_error(out, want) == 0.0, (m, n, k, ta, tb)


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", autotune.SCHEDULES)
@pytest.mark.parametrize("misalign", [False, True])
@pytest.mark.parametrize("ta,tb", TRANS)
def test_gemm_gpu_tf32_exact_inputs(cp, rng, monkeypatch, ta, tb, misalign, schedule):
    # Inputs already representable in TF32: the tensor-core path must then match an
    # fp64 reference to fp32-accumulation accuracy, which pins down the fragment layout.
    configure(gemm_schedule=schedule)
    _check_tf32_exact_inputs(cp, rng, ta, tb, misalign, GPU_SHAPES)


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", autotune.SCHEDULES)
def test_gemm_gpu_tf32_rounding(cp, rng, monkeypatch, schedule):
    # Arbitrary fp32 inputs: TF32 rounding error only (10-bit mantissa).
    configure(gemm_schedule=schedule)
    a, b = operands(rng, 150, 70, 1500, False, True, np.float32)
    got = fc.gemm(cp.asarray(a), cp.asarray(b), trans_b=True, precision="tf32")
    want = a.astype(np.float64) @ b.astype(np.float64).T
    err = rel_error(got, want)
    assert 1e-7 < err < 5e-3  # > 0: it really is TF32, not fp32


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", autotune.SCHEDULES)
@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_gemm_gpu_beta_accumulates(cp, rng, monkeypatch, precision, schedule):
    configure(gemm_schedule=schedule)
    for m, n, k in [(37, 45, 19), (3, 200, 2051)]:  # direct and split-K epilogues
        a, b = operands(rng, m, n, k, False, False, np.float32)
        a, b = to_tf32(a), to_tf32(b)
        c0 = rng.standard_normal((m, n)).astype(np.float32)
        out = cp.asarray(c0)
        fc.gemm(cp.asarray(a), cp.asarray(b), alpha=0.5, beta=-2.0, out=out, precision=precision)
        want = 0.5 * (a.astype(np.float64) @ b.astype(np.float64)) - 2.0 * c0
        assert rel_error(out, want) < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("schedule", autotune.SCHEDULES)
@pytest.mark.parametrize("precision", ["fp32", "tf32"])
@pytest.mark.parametrize("relu", [False, True])
def test_fc_gpu_matches_cpu(cp, rng, monkeypatch, precision, relu, schedule):
    configure(gemm_schedule=schedule)
    for n, d, m in [(1, 1, 1), (1, 37, 10), (7, 129, 65), (128, 300, 130), (20, 2050, 6), (130, 8, 1029)]:
        x = rng.standard_normal((n, d)).astype(np.float32)
        w = (rng.standard_normal((m, d)) / np.sqrt(d)).astype(np.float32)
        b = rng.standard_normal(m).astype(np.float32)
        dy = rng.standard_normal((n, m)).astype(np.float32)
        if precision == "tf32":
            x, w, dy = to_tf32(x), to_tf32(w), to_tf32(dy)
        x64, w64, b64, dy64 = (v.astype(np.float64) for v in (x, w, b, dy))
        gx, gw, gb, gdy = (cp.asarray(v) for v in (x, w, b, dy))
        y = poison(cp, (n, m))
        fc.fc_forward(gx, gw, gb, relu=relu, out=y, precision=precision)
        assert rel_error(y, fc.fc_forward(x64, w64, b64, relu=relu)) < 1e-4, (n, d, m)
        dx = poison(cp, (n, d))
        fc.fc_backward_data(gdy, gw, out=dx, precision=precision)
        assert rel_error(dx, fc.fc_backward_data(dy64, w64)) < 1e-4, (n, d, m)
        dw, db = poison(cp, (m, d)), poison(cp, (m,))
        fc.fc_backward_weight(gx, gdy, dw_out=dw, db_out=db, precision=precision)
        rdw, rdb = fc.fc_backward_weight(x64, dy64)
        assert rel_error(dw, rdw) < 1e-4 and rel_error(db, rdb) < 1e-5, (n, d, m)


# ---------------------------------------------------------------- the wgmma kernel (sm_90a)
# GPUCONV_GEMM_WGMMA=1: TF32 GEMMs run gemm_tf32_wgmma_* (on the emulator, which models
# wgmma from the PTX ISA; on a GPU only an sm_90 one).  Its tensor cores truncate operands.
def _use_wgmma(cp, monkeypatch):
    configure(wgmma=True)
    if not isinstance(cp.zeros(1), np.ndarray) and not cuda.wgmma_capable(cp.cuda.Device().id):
        pytest.skip("the wgmma kernel needs a compute-capability-9.0 GPU")


@pytest.mark.gpu
@pytest.mark.parametrize("misalign", [False, True])
@pytest.mark.parametrize("ta,tb", TRANS)
def test_gemm_gpu_wgmma_exact_inputs(cp, rng, monkeypatch, ta, tb, misalign):
    # TF32-exact inputs: only fp32 accumulation error, so a wrong descriptor, swizzle or
    # fragment position (any element off by one row or k) fails at 1e-4.
    _use_wgmma(cp, monkeypatch)
    _check_tf32_exact_inputs(cp, rng, ta, tb, misalign, [*GPU_SHAPES, (200, 136, 96), (64, 130, 40)])


@pytest.mark.gpu
@pytest.mark.parametrize("ta,tb", [(False, True), (False, False)])
def test_gemm_gpu_wgmma_truncates_to_tf32(cp, rng, monkeypatch, ta, tb):
    # Arbitrary fp32 inputs go to shared memory unrounded and the tensor cores read their
    # top 19 bits: the result is the product of the truncated operands to fp32-accumulation
    # accuracy, and measurably not that of the rounded ones (which the mma.sync kernels use).
    _use_wgmma(cp, monkeypatch)
    a, b = operands(rng, 150, 70, 1500, ta, tb, np.float32)
    got = fc.gemm(cp.asarray(a), cp.asarray(b), trans_a=ta, trans_b=tb, precision="tf32")
    truncated = fc.gemm(to_tf32(a).astype(np.float64), to_tf32(b).astype(np.float64), trans_a=ta, trans_b=tb)
    exact = fc.gemm(a.astype(np.float64), b.astype(np.float64), trans_a=ta, trans_b=tb)
    assert rel_error(got, truncated) < 2e-6
    assert 1e-5 < rel_error(got, exact) < 5e-3


@pytest.mark.gpu
@pytest.mark.parametrize("relu", [False, True])
def test_fc_gpu_wgmma_matches_cpu(cp, rng, monkeypatch, relu):
    # The FC layer's three GEMMs (nt forward with bias/ReLU, nn backward data, tn backward
    # weight), direct and split-K epilogues, alpha/beta through gemm.
    _use_wgmma(cp, monkeypatch)
    for n, d, m in [(1, 37, 10), (7, 129, 65), (130, 300, 129), (20, 2050, 6)]:
        x = to_tf32(rng.standard_normal((n, d)).astype(np.float32))
        w = to_tf32((rng.standard_normal((m, d)) / np.sqrt(d)).astype(np.float32))
        b = rng.standard_normal(m).astype(np.float32)
        dy = to_tf32(rng.standard_normal((n, m)).astype(np.float32))
        x64, w64, b64, dy64 = (v.astype(np.float64) for v in (x, w, b, dy))
        gx, gw, gb, gdy = (cp.asarray(v) for v in (x, w, b, dy))
        y = poison(cp, (n, m))
        fc.fc_forward(gx, gw, gb, relu=relu, out=y, precision="tf32")
        assert rel_error(y, fc.fc_forward(x64, w64, b64, relu=relu)) < 1e-4, (n, d, m)
        dx = poison(cp, (n, d))
        fc.fc_backward_data(gdy, gw, out=dx, precision="tf32")
        assert rel_error(dx, fc.fc_backward_data(dy64, w64)) < 1e-4, (n, d, m)
        dw = poison(cp, (m, d))
        fc.fc_backward_weight(gx, gdy, with_bias=False, dw_out=dw, precision="tf32")
        assert rel_error(dw, fc.fc_backward_weight(x64, dy64)[0]) < 1e-4, (n, d, m)
    a, c0 = to_tf32(rng.standard_normal((37, 19)).astype(np.float32)), rng.standard_normal((37, 45)).astype(np.float32)
    bb = to_tf32(rng.standard_normal((19, 45)).astype(np.float32))
    out = cp.asarray(c0)
    fc.gemm(cp.asarray(a), cp.asarray(bb), alpha=0.5, beta=-2.0, out=out, precision="tf32")
    assert rel_error(out, 0.5 * (a.astype(np.float64) @ bb.astype(np.float64)) - 2.0 * c0) < 1e-4


def test_wgmma_shared_memory_size_matches_the_kernel():
    # The launcher's dynamic shared memory must cover what fc.cu's wgmma body lays out
    # (the emulator does not bounds-check cp.async into shared memory).
    import re

    from gpuconv import cuda

    src = cuda.kernel_source("fc")
    d = {k: v for k, v in re.findall(r"#define (WG_\w+|GEMM_BM) (\S+)", src)}
    bm, bk, stages = int(d["GEMM_BM"]), int(d["WG_BK"]), int(d["WG_STAGES"])
    assert d["WG_SMEM"] == "(WG_STAGES"  # the formula below is the one in the kernel
    assert fc.WGMMA_SMEM == stages * 2 * bm * bk * 4 + 1024 == 99_328
    assert fc._SLICE["tf32_wgmma"] == bk


def test_wgmma_switch(monkeypatch):
    from gpuconv.kernel_config import KernelConfig
    assert not KernelConfig.resolve(env={}).wgmma
    for on, off in (("1", "0"), ("yes", "no"), ("ON", "off")):
        assert KernelConfig.resolve(env={autotune.WGMMA_ENV: on}).wgmma
        assert not KernelConfig.resolve(env={autotune.WGMMA_ENV: off}).wgmma
    with pytest.raises(ValueError, match="GPUCONV_GEMM_WGMMA"):
        KernelConfig.resolve(env={autotune.WGMMA_ENV: "fast"})
    # the selector: wgmma only for TF32, with the switch on, on an sm_90 device
    monkeypatch.setattr(cuda, "wgmma_capable", lambda dev_id=None: True)
    p = fc.GemmProblem(64, 64, 64, "nt", "float32", "tf32")
    assert fc.GEMM.select(p, KernelConfig(wgmma=True))[1].kernels == ("gemm_tf32_wgmma_nt",)
    assert fc.GEMM.select(p, KernelConfig())[1].kernels == ("gemm_tf32_nt",)
    assert fc.GEMM.select(p, KernelConfig(gemm_schedule="async"))[1].kernels == ("gemm_tf32_async_nt",)
    p32 = fc.GemmProblem(64, 64, 64, "nt", "float32", "fp32")
    assert fc.GEMM.select(p32, KernelConfig(wgmma=True, gemm_schedule="async"))[1].kernels == ("gemm_f32_nt",)
    monkeypatch.setattr(cuda, "wgmma_capable", lambda dev_id=None: False)
    assert fc.GEMM.select(p, KernelConfig(wgmma=True))[1].kernels == ("gemm_tf32_nt",)


@pytest.mark.gpu
@pytest.mark.parametrize("ta,tb", TRANS)
def test_gpu_float64_matches_cpu(cp, rng, ta, tb):
    for m, n, k in [(1, 1, 1), (17, 33, 5), (40, 3, 70), (2, 3, 0)]:
        a, b = operands(rng, m, n, k, ta, tb)
        c0 = rng.standard_normal((m, n))
        out = cp.asarray(c0)
        fc.gemm(cp.asarray(a), cp.asarray(b), trans_a=ta, trans_b=tb, alpha=0.5, beta=1.5, out=out)
        want = fc.gemm(a, b, trans_a=ta, trans_b=tb, alpha=0.5, beta=1.5, out=c0.copy())
        assert rel_error(out, want) < 1e-12


@pytest.mark.gpu
def test_fc_gpu_float64_gradients(cp, rng):
    # GPU float64 vs the (numerically gradient-checked) CPU float64 path.
    n, d, m = 6, 11, 5
    x, w, b, dy = (rng.standard_normal(s) for s in ((n, d), (m, d), (m,), (n, m)))
    gx, gw, gb, gdy = (cp.asarray(v) for v in (x, w, b, dy))
    assert rel_error(fc.fc_forward(gx, gw, gb, relu=True), fc.fc_forward(x, w, b, relu=True)) < 1e-12
    assert rel_error(fc.fc_backward_data(gdy, gw), fc.fc_backward_data(dy, w)) < 1e-12
    gdw, gdb = fc.fc_backward_weight(gx, gdy)
    rdw, rdb = fc.fc_backward_weight(x, dy)
    assert rel_error(gdw, rdw) < 1e-12 and rel_error(gdb, rdb) < 1e-12


@pytest.mark.gpu
def test_fc_gpu_relu_keeps_nan(cp):
    x = cp.asarray(np.array([[1.0]], np.float32))
    w = cp.asarray(np.array([[1.0], [1.0], [-1.0]], np.float32))
    y = fc.fc_forward(x, w, cp.asarray(np.array([np.nan, 0.0, 0.0], np.float32)), relu=True).get()
    assert np.isnan(y[0, 0]) and y[0, 1] == 1.0 and y[0, 2] == 0.0


@pytest.mark.gpu
def test_errors_gpu(cp, rng):
    x = cp.asarray(rng.standard_normal((3, 4)).astype(np.float32))
    w = cp.asarray(rng.standard_normal((5, 4)).astype(np.float32))
    with pytest.raises(OpArgumentError, match="fc_forward: w is on cpu"):
        fc.fc_forward(x, w.get())
    with pytest.raises(OpArgumentError, match="fc_forward: out is on cpu"):
        fc.fc_forward(x, w, out=np.zeros((3, 5), np.float32))
    with pytest.raises(OpArgumentError, match="fc_forward: w must be float32"):
        fc.fc_forward(x, w.astype(cp.float64))
    with pytest.raises(OpArgumentError, match="C-contiguous"):
        fc.fc_forward(x, cp.asfortranarray(w))
    with pytest.raises(OpArgumentError, match=r"b must have shape \(5,\)"):
        fc.fc_forward(x, w, cp.zeros(3, cp.float32))
    with pytest.raises(OpArgumentError, match="fc_backward_weight: dy is on cpu"):
        fc.fc_backward_weight(x, np.zeros((3, 5), np.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_fc_split_k_in_a_planned_workspace(cp, rng, precision):
    """Split-K partial sums in the workspace the plan gives (poisoned: every element the
    GEMM reads it writes first); a workspace too small for the splits it wants makes it
    use fewer splits (or none), never write past it."""
    n, d, m = 4, 3000, 40                                    # skinny: the forward splits K
    assert fc._wanted_splits(n, m, d, 132) > 1
    need = fc.fc_workspace_elems(n, d, m)
    assert need == fc._wanted_splits(n, m, d, 132) * n * m    # the forward's is the largest here
    x = to_tf32(rng.standard_normal((n, d)).astype(np.float32))
    w = to_tf32((rng.standard_normal((m, d)) / np.sqrt(d)).astype(np.float32))
    ref = fc.fc_forward(x.astype(np.float64), w.astype(np.float64))
    for elems in (need, 2 * n * m + 7, n * m - 1):           # enough; two splits; too small to split
        ws = poison(cp, (elems,))
        y = poison(cp, (n, m))
        fc.fc_forward(cp.asarray(x), cp.asarray(w), out=y, precision=precision, workspace=ws)
        assert rel_error(y, ref) < 1e-5, elems
    with pytest.raises(OpArgumentError, match="workspace"):
        fc.fc_forward(cp.asarray(x), cp.asarray(w), workspace=cp.zeros((8, 2), np.float32))


def test_fc_layer_plans_its_split_k_workspace():
    from gpuconv.layers import FC
    from gpuconv.memory import make_plan
    from gpuconv.net import Net

    net = Net([FC(4096), FC(10)], (25088,))
    plan = make_plan(net, 64, optimizer="sgd")
    ws = {t.name: t for t in plan.tensors if t.kind == "workspace"}
    # VGG16's FC-4096 at batch 64: 32 output tiles on 132 SMs, K = 25088 -> 9 splits of 64x4096
    assert ws["fc1.splitk"].shape == (9 * 64 * 4096,)
    # FC-10 on 4096 inputs: one tile, K = 4096: min(264, 4096 // 512, 16) = 8 splits
    assert ws["fc2.splitk"].shape == (8 * 64 * 10,)
    assert fc.fc_workspace_elems(64, 4096, 10) == 8 * 64 * 10
    assert not [t for t in make_plan(Net([FC(10)], (500,)), 64).tensors if t.kind == "workspace"]  # K < 1024
    assert make_plan(net, 64, inference=True).tensor("fc1.splitk").shape == (9 * 64 * 4096,)
