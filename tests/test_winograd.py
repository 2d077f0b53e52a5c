"""Winograd F(2x2,3x3) conv: the NumPy spec against the direct convolution, every kernel of
kernels/winograd.cu (and fc.cu's batched GEMM) against the spec, the conv ops' dispatch and
the memory plan's workspace."""
from __future__ import annotations

import numpy as np
import pytest

from gpuconv import device
from gpuconv.layers import FC, Conv, Flatten, ReLU
from gpuconv.memory import make_plan
from gpuconv.memory.arena import PlannedExecutor
from gpuconv.net import Net
from gpuconv.ops import conv as C
from gpuconv.ops import fc, winograd as W
from gpuconv.ops._checks import OpArgumentError
from gpuconv.optim import Optimizer
from gpuconv.step import TrainStep
from gpuconv.kernel_config import KernelConfig, using
from tests.helpers import configure, device_tf32, poison, rel_error, tf32_truncate

# (N, C, H, W, K, pad): odd and even outputs, every pad the algorithm takes, 1-pixel outputs
GEOS = [(2, 3, 7, 6, 4, 1), (1, 5, 5, 8, 3, 0), (2, 4, 6, 6, 5, 2), (1, 2, 3, 3, 2, 0), (3, 1, 4, 9, 1, 1)]


def _direct(x, w, b, pad, relu=False):
    n, _, h, wd = x.shape
    y = np.empty((n, w.shape[0], h + 2 * pad - 2, wd + 2 * pad - 2))
    return C.conv_forward_cpu(x, w, b, 1, pad, 1, relu, y)


def _case(rng, g, dtype=np.float64):
    n, c, h, wd, k, pad = g
    x = rng.standard_normal((n, c, h, wd)).astype(dtype)
    w = rng.standard_normal((k, c, 3, 3)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    dy = rng.standard_normal((n, k, h + 2 * pad - 2, wd + 2 * pad - 2)).astype(dtype)
    return x, w, b, dy, pad


# ---------------------------------------------------------------- the spec vs the direct conv
@pytest.mark.parametrize("g", GEOS)
def test_spec_matches_direct_conv(rng, g):
    x, w, b, dy, pad = _case(rng, g)
    for relu in (False, True):
        np.testing.assert_allclose(W.conv_forward_winograd_cpu(x, w, b, pad, relu), _direct(x, w, b, pad, relu),
                                   rtol=0, atol=1e-12)
    dx = C.conv_backward_data_cpu(dy, w, 1, pad, 1, np.empty_like(x))
    np.testing.assert_allclose(W.conv_backward_data_winograd_cpu(dy, w, pad), dx, rtol=0, atol=1e-12)
    dw = C.conv_backward_filter_cpu(x, dy, 1, pad, 1, np.empty_like(w), None)[0]
    np.testing.assert_allclose(W.conv_backward_filter_winograd_cpu(x, dy, pad), dw, rtol=0, atol=1e-12)


def test_transform_matrices_compute_a_1d_correlation(rng):
    # F(2,3): A^T [(G g) * (B^T d)] = the two outputs of correlating 4 inputs with 3 taps
    d, g = rng.standard_normal(4), rng.standard_normal(3)
    want = np.array([d[0:3] @ g, d[1:4] @ g])
    np.testing.assert_allclose(W.AT @ ((W.G @ g) * (W.BT @ d)), want, rtol=0, atol=1e-14)


def test_eligibility_and_algo_choice(monkeypatch):
    assert W.eligible((8, 4, 3, 3), 1, 1, 1) and W.eligible((8, 4, 3, 3), 1, 2, 1)
    for args in [((8, 4, 5, 5), 1, 1, 1), ((8, 4, 3, 3), 2, 1, 1), ((8, 4, 3, 3), 1, 2, 2), ((8, 4, 3, 3), 1, 3, 1),
                 ((8, 4, 3, 1), 1, 1, 1)]:
        assert not W.eligible(*args)
    with using(KernelConfig.resolve(env={})):
        assert W.chosen_algo(None) == "gemm"
    configure(conv_algo="winograd")
    assert W.chosen_algo(None) == "winograd" and W.chosen_algo("gemm") == "gemm" and W.chosen_algo("auto") == "auto"
    f32 = np.dtype(np.float32)
    assert C.winograd_mode("auto", f32, "tf32", (8, 4, 3, 3), 1, 1, 1) == "auto"
    assert C.winograd_mode(None, f32, "fp32", (8, 4, 3, 3), 1, 1, 1) == "winograd"
    assert C.winograd_mode("auto", f32, "fp32", (8, 4, 3, 3), 2, 1, 1) is None      # not eligible: the GEMM
    assert C.winograd_mode("auto", np.dtype(np.float64), "fp32", (8, 4, 3, 3), 1, 1, 1) is None
    assert C.winograd_mode("gemm", f32, "fp32", (8, 4, 3, 3), 1, 1, 1) is None
    with pytest.raises(ValueError, match="GPUCONV_CONV_ALGO"):
        KernelConfig.resolve(env={W.ALGO_ENV: "fft"})
    with pytest.raises(OpArgumentError, match="algo"):
        W.chosen_algo("winograd2")
    with pytest.raises(OpArgumentError, match="pad <= 2"):
        W.conv_forward_winograd_cpu(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), None, 3)


def test_workspace_plan_chunks_under_the_cap():
    x_shape, w_shape = (64, 256, 56, 56), (256, 256, 3, 3)  # VGG16 conv3_2 at batch 64
    for p in ("fwd", "bwdd", "bwdf"):
        full = W.workspace_plan(p, x_shape, w_shape, 1, cap_elems=1 << 40)
        assert full.chunk == 64
        ws = W.workspace_plan(p, x_shape, w_shape, 1, cap_elems=64 << 20)
        assert ws.elems <= 64 << 20 and ws.chunk < 64
        chunks = -(-64 // ws.chunk)
        assert ws.chunk == -(-64 // chunks)  # chunks of even size, not full ones and a small tail
        assert ws.fixed + ws.per_image * -(-64 // (chunks - 1)) > 64 << 20  # one chunk fewer would not fit
    fwd = W.workspace_plan("fwd", x_shape, w_shape, 1, cap_elems=1 << 40)
    assert fwd.per_image == 16 * (256 + 256) * 28 * 28 and fwd.fixed == 16 * 256 * 256
    # one image over the cap still runs: one image per chunk, whatever it needs
    assert W.workspace_plan("fwd", x_shape, w_shape, 1, cap_elems=10).chunk == 1


def test_workspace_cap_from_the_configuration(monkeypatch):
    with using(KernelConfig.resolve(env={W.WS_ENV: "1"})):
        assert W.workspace_plan("fwd", (8, 16, 32, 32), (16, 16, 3, 3), 1).elems <= 2**20 // 4
    for bad in ("lots", "0", "-3"):
        with pytest.raises(ValueError, match=W.WS_ENV):
            KernelConfig.resolve(env={W.WS_ENV: bad})


# ---------------------------------------------------------------- kernels vs the spec
@pytest.mark.gpu
@pytest.mark.parametrize("g", GEOS[:3])
def test_gpu_transform_kernels_match_spec(cp, rng, g):
    x, w, b, dy, pad = _case(rng, g, np.float32)
    n, c, h, wd = x.shape
    k = w.shape[0]
    ho, wo = dy.shape[2:]
    th, tw = W.tiles(ho, wo)
    grid, blk = (3, 1, 1), (256, 1, 1)  # few blocks: the grid-stride loops take several trips
    from gpuconv import cuda

    # input transform of images 1.. (a chunk not starting at 0)
    n0, nb = (1, n - 1) if n > 1 else (0, 1)
    v = poison(cp, (16, c, nb * th * tw))
    cuda.launch("winograd", "wino_input_f32", grid, blk, [cp.asarray(x), v, n0, nb, c, h, wd, pad, th, tw, c * h * wd])
    assert rel_error(v, W.input_transform(x[n0:n0 + nb].astype(np.float64), pad, th, tw)) < 1e-6
    for flip in (0, 1):
        u = poison(cp, (16, c, k) if flip else (16, k, c))
        cuda.launch("winograd", "wino_filter_f32", grid, blk, [cp.asarray(w), u, k, c, flip])
        assert rel_error(u, W.filter_transform(w.astype(np.float64), flip=bool(flip))) < 1e-6
    m = rng.standard_normal((16, k, nb * th * tw)).astype(np.float32)
    r = rng.standard_normal((n, k, ho, wo)).astype(np.float32)
    for has_bias, has_res, relu in ((0, 0, 0), (1, 0, 1), (1, 1, 1), (0, 1, 0)):
        y = poison(cp, (n, k, ho, wo))
        y[:n0] = 0  # images outside the chunk: untouched
        cuda.launch("winograd", "wino_output_f32", grid, blk,
                    [cp.asarray(m), y, cp.asarray(b), cp.asarray(r), n0, nb, k, ho, wo, th, tw, has_bias, has_res,
                     relu, k * ho * wo])
        want = W.output_transform(m.astype(np.float64), nb, ho, wo, b if has_bias else None, bool(relu),
                                  r[n0:].astype(np.float64) if has_res else None)
        assert rel_error(y[n0:], want) < 1e-6
        assert (device.to_host(y[:n0]) == 0).all()
    yy = poison(cp, (16, k, nb * th * tw))
    cuda.launch("winograd", "wino_grad_output_f32", grid, blk, [cp.asarray(dy), yy, n0, nb, k, ho, wo, th, tw, k * ho * wo])
    assert rel_error(yy, W.grad_output_transform(dy[n0:n0 + nb].astype(np.float64), th, tw)) < 1e-6
    for splits in (1, 3):
        d = rng.standard_normal((16, splits, k, c)).astype(np.float32)
        dw = poison(cp, (k, c, 3, 3))
        cuda.launch("winograd", "wino_filter_grad_f32", grid, blk, [cp.asarray(d), dw, k, c, splits])
        assert rel_error(dw, W.filter_grad_transform(d.astype(np.float64))) < 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m,n,k,splits", [(5, 7, 9, 1), (130, 12, 20, 1), (4, 132, 37, 3), (8, 8, 8, 4)])
def test_gpu_batched_gemm_matches_numpy(cp, rng, trans_b, m, n, k, splits):
    nb = 3
    a = rng.standard_normal((nb, m, k)).astype(np.float32)
    b = rng.standard_normal((nb, n, k) if trans_b else (nb, k, n)).astype(np.float32)
    bb = b.transpose(0, 2, 1) if trans_b else b
    c0 = rng.standard_normal((nb, splits, m, n) if splits > 1 else (nb, m, n)).astype(np.float32)
    for beta in (0.0, 1.0):
        out = cp.asarray(c0)
        fc.gemm_batched_gpu(cp.asarray(a), cp.asarray(b), out, trans_b=trans_b, splits=splits, beta=beta)
        got = device.to_host(out).astype(np.float64)
        if splits > 1:  # split s holds its partial product + beta * its old value; the sum is the GEMM
            got = got.sum(axis=1)
            want = a.astype(np.float64) @ bb + beta * c0.astype(np.float64).sum(axis=1)
        else:
            want = a.astype(np.float64) @ bb + beta * c0
        assert rel_error(got, want) < 1e-5, beta


@pytest.mark.gpu
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m,n,k,splits", [(5, 7, 9, 1), (130, 12, 40, 1), (4, 132, 37, 3)])
def test_gpu_batched_gemm_tf32(cp, rng, trans_b, m, n, k, splits):
    """TF32: exact on operands with 10-bit mantissas; arbitrary operands rounded as the device
    rounds them (so a kernel that skipped the rounding, or ran the fp32 path, fails)."""
    nb = 2
    a = rng.standard_normal((nb, m, k)).astype(np.float32)
    b = rng.standard_normal((nb, n, k) if trans_b else (nb, k, n)).astype(np.float32)
    out_shape = (nb, splits, m, n) if splits > 1 else (nb, m, n)

    def run(a_, b_):
        out = poison(cp, out_shape)
        fc.gemm_batched_gpu(cp.asarray(a_), cp.asarray(b_), out, trans_b=trans_b, splits=splits, precision="tf32")
        got = device.to_host(out).astype(np.float64)
        return got.sum(axis=1) if splits > 1 else got

    def exact(a_, b_):
        bb = b_.astype(np.float64)
        return a_.astype(np.float64) @ (bb.transpose(0, 2, 1) if trans_b else bb)

    at, bt = tf32_truncate(a), tf32_truncate(b)
    assert rel_error(run(at, bt), exact(at, bt)) < 1e-6
    got = run(a, b)
    assert rel_error(got, exact(device_tf32(cp, a), device_tf32(cp, b))) < 1e-6
    assert rel_error(got, exact(a, b)) > 1e-5  # the operands really were rounded
    with pytest.raises(OpArgumentError, match="precision"):
        fc.gemm_batched_gpu(cp.asarray(a), cp.asarray(b), cp.zeros(out_shape, np.float32), trans_b=trans_b,
                            splits=splits, precision="bf16")


@pytest.mark.gpu
def test_gpu_batched_gemm_rejects_bad_shapes(cp):
    a, b = cp.zeros((2, 4, 8), dtype=np.float32), cp.zeros((2, 8, 5), dtype=np.float32)
    with pytest.raises(OpArgumentError, match="do not match"):
        fc.gemm_batched_gpu(a, b, cp.zeros((2, 5, 4), dtype=np.float32))
    with pytest.raises(OpArgumentError, match="float32"):
        fc.gemm_batched_gpu(a.astype(np.float64), b, cp.zeros((2, 4, 5), dtype=np.float32))


# ---------------------------------------------------------------- the conv ops with algo="winograd"
def _ops_case(cp, rng, g):
    x, w, b, dy, pad = _case(rng, g, np.float32)
    x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x, w, b, dy))
    ref_y = _direct(x64, w64, b64, pad, relu=True)
    ref_dx = C.conv_backward_data_cpu(dy64, w64, 1, pad, 1, np.empty_like(x64))
    ref_dw, ref_db = C.conv_backward_filter_cpu(x64, dy64, 1, pad, 1, np.empty_like(w64), np.empty_like(b64))
    return (cp.asarray(x), cp.asarray(w), cp.asarray(b), cp.asarray(dy), pad), (ref_y, ref_dx, ref_dw, ref_db)


def _run_ops(cp, args, algo="winograd", workspace=None):
    x, w, b, dy, pad = args
    y = C.conv_forward(x, w, b, 1, pad, relu=True, out=poison(cp, dy.shape), algo=algo, workspace=workspace)
    dx = C.conv_backward_data(dy, w, x.shape, 1, pad, out=poison(cp, x.shape), algo=algo, workspace=workspace)
    dw, db = C.conv_backward_filter(x, dy, w.shape, 1, pad, dw_out=poison(cp, w.shape), db_out=poison(cp, b.shape),
                                    algo=algo, workspace=workspace)
    return y, dx, dw, db


@pytest.mark.gpu
@pytest.mark.parametrize("g", GEOS)
def test_gpu_winograd_conv_matches_direct(cp, rng, monkeypatch, g):
    args, refs = _ops_case(cp, rng, g)
    launched: list[str] = []
    from gpuconv import cuda
    real = cuda.launch
    monkeypatch.setattr(cuda, "launch", lambda mod, fn, *a, **kw: (launched.append(fn), real(mod, fn, *a, **kw))[1])
    for got, want in zip(_run_ops(cp, args), refs):
        assert rel_error(got, want) < 2e-5
    assert "wino_output_f32" in launched and "wino_filter_grad_f32" in launched
    assert not any(f.startswith("conv_fwd") or f.startswith("conv_bwd") for f in launched)


@pytest.mark.gpu
def test_gpu_winograd_chunks_and_splits(cp, rng, monkeypatch):
    """A workspace cap of one image per chunk, and backward-filter's split-K (forced)."""
    args, refs = _ops_case(cp, rng, (3, 4, 7, 5, 6, 1))
    configure(winograd_ws_mb=3000 * 4 / 2**20)  # 3000 floats: one image at a time
    monkeypatch.setattr(W, "_bwdf_splits", lambda k, c, p: 3)
    assert W.workspace_plan("fwd", (3, 4, 7, 5), (6, 4, 3, 3), 1).chunk == 1
    assert W.workspace_plan("bwdf", (3, 4, 7, 5), (6, 4, 3, 3), 1).splits == 3
    for got, want in zip(_run_ops(cp, args), refs):
        assert rel_error(got, want) < 2e-5


@pytest.mark.gpu
def test_gpu_winograd_uses_the_given_workspace(cp, rng, monkeypatch):
    args, refs = _ops_case(cp, rng, (2, 3, 6, 6, 4, 1))
    x, w, b, dy, pad = args
    need = W.layer_workspace_elems(x.shape, w.shape, pad)
    ws = cp.full(need, np.nan, dtype=np.float32)
    allocs: list = []
    xp = device.array_module(x)
    real_empty = xp.empty
    monkeypatch.setattr(xp, "empty", lambda *a, **kw: (allocs.append(a), real_empty(*a, **kw))[1], raising=False)
    outs = [(poison(cp, s)) for s in (dy.shape, x.shape, w.shape, b.shape)]
    C.conv_forward(x, w, b, 1, pad, relu=True, out=outs[0], algo="winograd", workspace=ws)
    C.conv_backward_data(dy, w, x.shape, 1, pad, out=outs[1], algo="winograd", workspace=ws)
    C.conv_backward_filter(x, dy, w.shape, 1, pad, dw_out=outs[2], db_out=outs[3], algo="winograd", workspace=ws)
    for got, want in zip(outs, refs):
        assert rel_error(got, want) < 2e-5
    assert allocs == []  # everything lived in the workspace
    with pytest.raises(OpArgumentError, match="workspace"):
        C.conv_forward(x, w, b, 1, pad, out=outs[0], algo="winograd", workspace=ws[:10])


@pytest.mark.gpu
@pytest.mark.parametrize("g", [GEOS[0], GEOS[2], (2, 40, 6, 7, 9, 1)])
def test_gpu_winograd_tf32_matches_the_rounded_spec(cp, rng, g):
    """precision='tf32': the 16 GEMMs take TF32-rounded transforms.  The spec with the device's
    rounding of those operands is the reference; the exact (unrounded) spec is measurably
    further away, so running the fp32 GEMM instead would fail.  The data are 13-bit fixed
    point, so the float32 transforms are exact (sums of <= 9 terms, halves and quarters) and
    the kernels round the very values the spec rounds: 15-17 significant bits cut to 11,
    ties included."""
    x, w, b, dy, pad = _case(rng, g, np.float64)
    x, w, b, dy = (np.round(np.clip(a, -4, 4) * 1024).astype(np.float32) / np.float32(1024) for a in (x, w, b, dy))
    x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x, w, b, dy))

    def rnd(a):
        return device_tf32(cp, a.astype(np.float32)).astype(np.float64)

    gx, gw, gb, gdy = (cp.asarray(a) for a in (x, w, b, dy))
    got = [C.conv_forward(gx, gw, gb, 1, pad, relu=False, algo="winograd", precision="tf32"),
           C.conv_backward_data(gdy, gw, x.shape, 1, pad, algo="winograd", precision="tf32"),
           C.conv_backward_filter(gx, gdy, w.shape, 1, pad, with_bias=False, algo="winograd", precision="tf32")[0]]
    specs = [lambda r: W.conv_forward_winograd_cpu(x64, w64, b64, pad, rounding=r),
             lambda r: W.conv_backward_data_winograd_cpu(dy64, w64, pad, rounding=r),
             lambda r: W.conv_backward_filter_winograd_cpu(x64, dy64, pad, rounding=r)]
    for name, y, spec in zip(("fwd", "bwdd", "bwdf"), got, specs):
        near, exact = rel_error(y, spec(rnd)), rel_error(y, spec(None))
        assert near < 2e-6 and exact > 1e-4, (name, near, exact)


@pytest.mark.gpu
def test_gpu_winograd_request_falls_back_where_it_does_not_apply(cp, rng, monkeypatch):
    """Stride 2, 5x5 filters and float64 run their usual kernels under algo='winograd'."""
    from gpuconv import cuda
    launched: list[str] = []
    real = cuda.launch
    monkeypatch.setattr(cuda, "launch", lambda mod, fn, *a, **kw: (launched.append(fn), real(mod, fn, *a, **kw))[1])
    for (f, s, dtype, precision) in [(3, 2, np.float32, "fp32"), (5, 1, np.float32, "tf32"),
                                     (3, 1, np.float64, "fp32")]:
        x = rng.standard_normal((1, 2, 7, 7)).astype(dtype)
        w = rng.standard_normal((3, 2, f, f)).astype(dtype)
        y = C.conv_forward(cp.asarray(x), cp.asarray(w), None, s, 1, algo="winograd", precision=precision)
        want = C.conv_forward_cpu(x.astype(np.float64), w.astype(np.float64), None, s, 1, 1, False,
                                  np.empty(y.shape))
        assert rel_error(y, want) < (1e-2 if precision == "tf32" else 1e-5)
    assert not any(f.startswith("wino") for f in launched)


@pytest.mark.gpu
def test_gpu_auto_times_both_keeps_the_faster_and_caches_it(cp, rng, monkeypatch, tmp_path):
    """algo='auto': each pass's first call times the GEMM and Winograd (a fake timer makes
    Winograd faster for forward and backward-filter, the GEMM for backward-data), runs the
    faster one last and caches the choice; a second call times nothing.  Results are right
    whichever runs."""
    from gpuconv import cuda
    from gpuconv.ops import autotune
    launched: list[str] = []
    real = cuda.launch
    monkeypatch.setattr(cuda, "launch", lambda mod, fn, *a, **kw: (launched.append(fn), real(mod, fn, *a, **kw))[1])
    monkeypatch.setattr(cuda, "device_key", lambda: "Fake GPU sm_90")
    configure(autotune=False)  # the tile choice stays the heuristic's

    in_bwdd = [False]

    def timer(fn) -> float:  # noqa: ANN001
        start = len(launched)
        fn()
        wino = any(f.startswith("wino") for f in launched[start:])
        return 1.0 if wino != in_bwdd[0] else 2.0
    tuner = autotune.Autotuner(timer, tmp_path / "autotune.json")
    monkeypatch.setattr(autotune, "_tuner", tuner)
    args, refs = _ops_case(cp, rng, (2, 6, 7, 6, 5, 1))
    x, w, b, dy, pad = args
    for rep in range(2):
        launched.clear()
        y = C.conv_forward(x, w, b, 1, pad, relu=True, out=poison(cp, dy.shape), algo="auto")
        fwd = list(launched)
        launched.clear()
        in_bwdd[0] = True
        dx = C.conv_backward_data(dy, w, x.shape, 1, pad, out=poison(cp, x.shape), algo="auto")
        in_bwdd[0] = False
        bwdd = list(launched)
        launched.clear()
        dw, db = C.conv_backward_filter(x, dy, w.shape, 1, pad, dw_out=poison(cp, w.shape),
                                        db_out=poison(cp, b.shape), algo="auto")
        bwdf = list(launched)
        for got, want in zip((y, dx, dw, db), refs):
            assert rel_error(got, want) < 2e-5
        assert fwd[-1] == "wino_output_f32" and bwdf[-1] == "conv_bias_grad_f32"
        assert bwdd[-1].startswith("conv_bwdd")
        if rep == 1:  # cached: one run of the chosen algorithm, nothing timed again
            assert tuner.trials == 6 and not any(f.startswith("conv_fwd") for f in fwd)
            assert not any(f.startswith("wino") for f in bwdd)
            assert "wino_filter_grad_f32" in bwdf and not any(f.startswith("conv_bwdf") for f in bwdf)
    assert tuner.trials == 6
    assert "Fake GPU sm_90|conv_algo_bwdd|fp32|" in (tmp_path / "autotune.json").read_text()


def test_cpu_path_ignores_algo_but_checks_it(rng):
    x, w, b, dy, pad = _case(rng, GEOS[0])
    np.testing.assert_array_equal(C.conv_forward(x, w, b, 1, pad, algo="winograd"), C.conv_forward(x, w, b, 1, pad))
    with pytest.raises(OpArgumentError, match="algo"):
        C.conv_forward(x, w, b, 1, pad, algo="direct")


# ---------------------------------------------------------------- layers and the memory plan
def _net(algo):
    return Net([Conv(4, 3, P=1, algo=algo), ReLU(), Conv(3, 3, P=0, algo=algo), Flatten(), FC(5)], (2, 7, 6),
               name="wino")


def test_plan_holds_the_winograd_workspace(monkeypatch):
    monkeypatch.delenv(W.ALGO_ENV, raising=False)
    assert not [t for t in make_plan(_net(None), 4).tensors if t.kind == "workspace"]
    plan = make_plan(_net("winograd"), 4)
    ws = {t.name: t for t in plan.tensors if t.kind == "workspace"}
    assert set(ws) == {"conv1.winograd", "conv2.winograd"}
    assert ws["conv1.winograd"].nbytes == 4 * W.layer_workspace_elems((4, 2, 7, 6), (4, 2, 3, 3), 1)
    assert ws["conv2.winograd"].nbytes == 4 * W.layer_workspace_elems((4, 4, 7, 6), (3, 4, 3, 3), 0)
    infer = {t.name: t.nbytes for t in make_plan(_net("winograd"), 4, inference=True).tensors if t.kind == "workspace"}
    assert infer["conv1.winograd"] == 4 * W.layer_workspace_elems((4, 2, 7, 6), (4, 2, 3, 3), 1, train=False)
    configure(conv_algo="winograd")
    assert {t.name for t in make_plan(_net(None), 4).tensors if t.kind == "workspace"} == set(ws)
    with pytest.raises(ValueError, match="algo"):
        Conv(4, 3, algo="fft")


@pytest.mark.gpu  # the real device only (no cp fixture): the executor allocates through cupy
def test_gpu_planned_step_with_winograd_matches_gemm(rng):
    x = rng.standard_normal((3, 2, 7, 6)).astype(np.float32)
    y = rng.integers(0, 5, 3).astype(np.int32)
    losses, grads = [], []
    for algo in ("gemm", "winograd"):
        net = _net(algo)
        ex = PlannedExecutor(net, make_plan(net, 3), "cuda", seed=3)
        opt = Optimizer("sgd", 0.01).bind(net, state_buffers=ex.state_views(), hyper=ex.hyper_view())
        TrainStep(net, opt, ex).run(x, y)   # the update leaves the gradients as backward made them
        losses.append(float(device.to_host(ex.loss_views()[1])))
        grads.append(device.to_host(ex.grad_view()))
    assert abs(losses[0] - losses[1]) <= 1e-5 * max(1.0, abs(losses[0]))
    assert rel_error(grads[0], grads[1]) < 1e-4


def test_net_and_train_config_set_the_algo(monkeypatch):
    from gpuconv import zoo
    from gpuconv.train import TrainConfig

    monkeypatch.delenv(W.ALGO_ENV, raising=False)
    net = zoo.get_model("vgg16")
    net.set_conv_algo("winograd")
    ws = [t for t in make_plan(net, 2).tensors if t.name.endswith(".winograd")]
    assert len(ws) == 13  # every VGG16 conv is 3x3 stride 1 pad 1
    net.set_conv_algo("gemm")
    assert not [t for t in make_plan(net, 2).tensors if t.name.endswith(".winograd")]
    net.set_conv_algo("auto")  # either may run: the plan holds the workspace
    assert len([t for t in make_plan(net, 2).tensors if t.name.endswith(".winograd")]) == 13
    TrainConfig(conv_algo="auto").validate()
    with pytest.raises(ValueError, match="conv algo"):
        net.set_conv_algo("fft")
    with pytest.raises(ValueError, match="--conv-algo"):
        TrainConfig(conv_algo="fft").validate()
