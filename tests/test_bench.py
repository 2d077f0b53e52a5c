"""The GPU benchmarks run end to end on the kernel emulator, at toy sizes, before a GPU sees them.

A lent H100 comes rarely and for minutes; a benchmark that fails on a renamed function, a
wrong keyword or an --only typo wastes one of those minutes, and a row that says "[wgmma]"
while the default kernels ran would be a wrong figure.  Here every suite's ``run`` goes
through its GPU code path on the emulator with the layer / matrix shapes shrunk (same names,
filters, strides, paddings and dilations), timing replaced by the warm-up calls and one timed
call, PyTorch absent.  The fake timer hands out distinct "milliseconds" per timed call and
records the kernels each call launched, so every row is checked for what it timed, not only
for having run.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench import (bench_activation, bench_add, bench_augment, bench_batchnorm, bench_concat, bench_conv,
                   bench_dropout, bench_fc, bench_gap, bench_local, bench_loss, bench_lrn, bench_optim, bench_pool,
                   bench_train, bench_winograd, harness, run_all)
from bench.harness import Row
from gpuconv import cuda, device, emu
from gpuconv.ops import conv as conv_ops
from gpuconv.ops import winograd

pytestmark = [pytest.mark.emu, pytest.mark.skipif(not emu.available(), reason="no C++ compiler: no emulator")]

BENCHES = (bench_activation, bench_add, bench_augment, bench_batchnorm, bench_concat, bench_conv, bench_dropout, bench_fc, bench_gap,
           bench_local, bench_loss, bench_lrn, bench_optim, bench_pool, bench_train, bench_winograd)
ROOT = Path(__file__).resolve().parent.parent
REPLAY = "(CUDA-graph replay)"
CONV_OPS = {"fwd": conv_ops.conv_forward, "bwdd": conv_ops.conv_backward_data, "bwdf": conv_ops.conv_backward_filter}


class Timed:
    """cuda.time_ms on the emulator.  It runs fn's warm-up calls (at most two: what a graph-replayed
    step needs, one eager step and one capture) and then the timed call once, returns the call's
    number as its "milliseconds", and keeps under that number the kernels the timed call launched
    (a CUDA-graph replay counts as REPLAY) and those captured into a graph during the warm-up."""

    def __init__(self) -> None:
        self.kernels: dict[float, list[str]] = {}
        self.captured: dict[float, list[str]] = {}
        self._current: list[str] | None = None
        self._capture: list[str] | None = None
        self.replays = 0   # CUDA-graph replays, timed or not

    def time_ms(self, fn: Any, reps: int = 5, warmup: int = 1) -> float:
        key = float(len(self.kernels) + 1)
        self._capture = self.captured[key] = []
        try:
            for _ in range(min(warmup, 2)):
                fn()
            self._current = self.kernels[key] = []
            fn()
        finally:
            self._current = self._capture = None
        return key

    def recorder(self, launch: Any) -> Any:
        def recording_launch(module: str, function: str, *args: Any, **kwargs: Any) -> None:
            if emu._recording is not None:   # recorded into a CUDA graph, not run
                if self._capture is not None:
                    self._capture.append(function)
            elif self._current is not None:
                self._current.append(function)
            launch(module, function, *args, **kwargs)
        return recording_launch

    def replay_recorder(self, replay: Any) -> Any:
        def recording_replay(graph: Any) -> None:
            self.replays += 1
            if self._current is not None:
                self._current.append(REPLAY)
            replay(graph)
        return recording_replay

    def of(self, row: Row) -> list[str]:
        assert row.ours_ms in self.kernels, f"{row.name}: ours_ms {row.ours_ms} is no timed call"
        return self.kernels[row.ours_ms]


@pytest.fixture
def timed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Timed]:
    t = Timed()
    with emu.emulated() as xp:
        emu_device = device.Device("cuda", xp)
        monkeypatch.setattr(device, "get_device", lambda name=None: device.CPU if name == "cpu" else emu_device)
        monkeypatch.setattr(device, "gpu_available", lambda: True)
        monkeypatch.setattr(cuda, "time_ms", t.time_ms)
        monkeypatch.setattr(cuda, "launch", t.recorder(cuda.launch))
        monkeypatch.setattr(emu.Graph, "launch", t.replay_recorder(emu.Graph.launch))
        for mod in (harness, *BENCHES):   # the CUDA-only PyTorch side stays off (torch may be importable)
            monkeypatch.setattr(mod, "torch", None, raising=False)
        yield t


def tiny_layer(L: bench_conv.Layer) -> bench_conv.Layer:
    """The same layer kind (filter, stride, padding, dilation; 3 input channels stay 3) at a 5x5
    output, batch 2 and at most 8 channels in and 16 out."""
    size = (5 - 1) * L.s + L.d * (L.f - 1) + 1 - 2 * L.p
    return replace(L, n=2, c=min(L.c, 8), k=min(L.k, 16), h=size, w=size)


def no_errors(rows: list[Row]) -> None:
    failed = [(r.name, r.mode, r.extra["error"]) for r in rows if "error" in r.extra]
    assert not failed, failed


def test_tiny_layers_keep_the_suites_geometry() -> None:
    for L in bench_conv.LAYERS:
        t = tiny_layer(L)
        assert (t.f, t.s, t.p, t.d) == (L.f, L.s, L.p, L.d) and (t.c == 3) == (L.c == 3)
        ho = (t.h + 2 * t.p - t.d * (t.f - 1) - 1) // t.s + 1
        assert ho == 5, (L.name, ho)


def test_conv_bench_times_what_each_row_names(timed: Timed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_conv, "LAYERS", [tiny_layer(L) for L in bench_conv.LAYERS])
    rows = bench_conv.run(schedules=("reg", "async"))
    no_errors(rows)
    # every layer: fwd and fwd+bwd, per precision and schedule; tf32 also on wgmma (the emulator is an sm_90a)
    expected = {(f"{L.label} {p}{tag}", mode) for L in bench_conv.LAYERS for p in ("fwd", "fwd+bwd")
                for mode, tags in (("fp32", ("", " [async]")), ("tf32", ("", " [async]", " [wgmma]"))) for tag in tags}
    assert {(r.name, r.mode) for r in rows} == expected
    gemm = re.compile(r"conv_(fwd|bwdd|bwdf)_f32_\d+x\d+_(fp32|tf32)")
    for r in rows:
        kernels = timed.of(r)
        assert kernels, r.name
        names = [k for k in kernels if gemm.match(k)]
        assert any(k.startswith("conv_fwd_") for k in names), (r.name, kernels)
        if " fwd+bwd" in r.name:
            assert any(k.startswith("conv_bwdf_") for k in names), (r.name, kernels)
        want = {"fp32": "_fp32", "tf32": "_tf32"}[r.mode]
        assert all(want in k for k in names), (r.name, names)
        if "[wgmma]" in r.name:
            assert all(k.endswith("_wgmma") for k in names), (r.name, names)
        elif "[async]" in r.name:
            assert all(k.endswith("_async") for k in names), (r.name, names)
        else:
            assert not any(k.endswith(("_async", "_wgmma")) for k in names), (r.name, names)


def test_wgmma_rows_can_be_left_out(timed: Timed, monkeypatch: pytest.MonkeyPatch) -> None:
    """gpu_session.sh's ab step times kernels of an older revision, which have no sm_90a variant."""
    monkeypatch.setattr(bench_conv, "LAYERS", [tiny_layer(L) for L in bench_conv.LAYERS if L.name == "CIFAR 64"])
    monkeypatch.setattr(bench_fc, "SHAPES", [(8, 40, 24)])
    rows = bench_conv.run(wgmma=False) + bench_fc.run(wgmma=False)
    no_errors(rows)
    assert len(rows) == 4 + 9 and not any("wgmma" in r.name or "wgmma" in k for r in rows for k in timed.of(r))


def process_env(**env: str) -> None:
    """The kernel configuration of a gpu_session.sh step run as ``env VAR=... python3 bench/...``:
    a process resolves it once from its environment (here: for the rest of the test)."""
    from gpuconv import kernel_config  # noqa: PLC0415

    kernel_config.reset_default(kernel_config.KernelConfig.resolve(env=env))


def _fresh_tuner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """GPUCONV_AUTOTUNE=1 with an empty cache in tmp_path (the process-wide tuner made anew)."""
    from gpuconv.ops import autotune  # noqa: PLC0415

    process_env(GPUCONV_AUTOTUNE="1", GPUCONV_CACHE_DIR=str(tmp_path))
    monkeypatch.setattr(autotune, "_tuner", None)
    monkeypatch.setattr(cuda, "device_key", lambda: "Emulated sm_90")
    return tmp_path / "autotune.json"


def test_autotuned_conv_bench_tries_every_variant(timed: Timed, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    """gpu_session.sh verify2: GPUCONV_AUTOTUNE=1 bench_conv.py.  Every candidate (4 tiles x reg,
    async, and wgmma in the [wgmma] rows) runs once on the emulator and the choices are cached."""
    import json  # noqa: PLC0415

    cache = _fresh_tuner(monkeypatch, tmp_path)
    # 40 input channels: backward-data is a GEMM from 32 up (below, the direct kernel, not tuned)
    layers = [replace(tiny_layer(L), c=40) for L in bench_conv.LAYERS if L.name in ("L5", "1x1")]
    monkeypatch.setattr(bench_conv, "LAYERS", layers)
    rows = bench_conv.run()
    no_errors(rows)
    tried = {k for ks in timed.kernels.values() for k in ks}
    for kind in ("fwd", "bwdd", "bwdf"):
        for tile in ("128x128", "128x64", "64x128", "64x64"):
            for suffix in ("_fp32", "_fp32_async", "_tf32", "_tf32_async", "_tf32_wgmma"):
                assert f"conv_{kind}_f32_{tile}{suffix}" in tried, (kind, tile, suffix)
    keys = json.loads(cache.read_text())
    for kind in ("fwd", "bwdd", "bwdf"):
        for prec in ("fp32", "tf32", "tf32|wgmma"):
            key = re.compile(re.escape(f"Emulated sm_90|conv_{kind}|{prec}|") + r"[\d,]+$")
            assert sum(bool(key.match(k)) for k in keys) == len(layers), (kind, prec, sorted(keys))


@pytest.mark.parametrize("algo", ["auto", "winograd"])
def test_training_step_bench_with_winograd(algo: str, timed: Timed, monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    """gpu_session.sh winograd-vgg: the step bench with GPUCONV_CONV_ALGO=winograd / auto (the
    Winograd workspace in the plan; auto times both algorithms on the first step)."""
    _fresh_tuner(monkeypatch, tmp_path)
    process_env(GPUCONV_CONV_ALGO=algo, GPUCONV_CACHE_DIR=str(tmp_path))   # only the algorithm is tuned here
    handed: list[bool] = []   # per Winograd pass: did it run in a workspace it was given (the plan's)?
    take_workspace = winograd._workspace

    def spy(xp: Any, ws: Any, given: Any) -> Any:
        handed.append(given is not None)
        return take_workspace(xp, ws, given)
    monkeypatch.setattr(winograd, "_workspace", spy)
    rows = bench_train.gpu_vgg16_step(4, "fp32", model=TINY_NET)
    no_errors(rows)
    conv_gemm = re.compile(r"conv_(fwd|bwdd|bwdf)_")
    if algo == "winograd":   # every conv of the net is 3x3, stride 1, "same": all Winograd
        eager = timed.of(rows[0])
        assert any(k.startswith("wino_") for k in eager) and not any(conv_gemm.match(k) for k in eager), eager
        assert handed and all(handed), handed   # in the arena's planned workspace, never a fresh one
    else:                    # both algorithms ran (timed by the tuner) before the choice
        tried = {k for ks in timed.kernels.values() for k in ks}
        assert any(k.startswith("wino_") for k in tried) and any(conv_gemm.match(k) for k in tried), tried
    assert timed.kernels[rows[1].ours_ms] == [REPLAY]


def numpy_conv_reference(x: Any, wt: Any, b: Any, dy: Any, s: int, p: int, d: int) -> dict[str, Any]:
    """bench_conv.reference on the emulator: the NumPy path's forward and gradients (the spec)."""
    x, wt, b, dy = (a.get() for a in (x, wt, b, dy))
    # the functions as imported, so that a test's mutation of the GPU op does not reach the reference
    dw, db = CONV_OPS["bwdf"](x, dy, wt.shape, s, p, d)
    return {"fwd": CONV_OPS["fwd"](x, wt, b, s, p, d), "bwd_data": CONV_OPS["bwdd"](dy, wt, x.shape, s, p, d),
            "bwd_filter": dw, "bias_grad": db}


VALIDATED = ("fwd", "bwd_data", "bwd_filter", "bias_grad")


def test_conv_bench_validates_every_timed_variant(timed: Timed, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each row carries its distance from the reference on its own inputs, per pass; a wrong
    backward-data marks exactly the fwd+bwd rows invalid, and bench/targets.py leaves them out."""
    from bench import targets  # noqa: PLC0415
    from gpuconv.ops import conv  # noqa: PLC0415

    monkeypatch.setattr(bench_conv, "reference", numpy_conv_reference)
    # L5: the GEMM backward-data; AlexNet conv1: the direct one (C=3, stride 4); d2: dilation
    monkeypatch.setattr(bench_conv, "LAYERS", [tiny_layer(L) for L in bench_conv.LAYERS
                                               if L.name in ("L5", "AlexNet conv1", "dilated d2")])
    rows = bench_conv.run(schedules=("reg", "async"))
    no_errors(rows)
    assert len(rows) == 3 * 2 * (2 + 3)
    for r in rows:
        keys = VALIDATED if " fwd+bwd" in r.name else ("fwd",)
        errs = {k: r.extra[f"{k}_rel_err"] for k in keys}
        assert all(e <= harness.REL_TOL[r.mode] for e in errs.values()) and "invalid" not in r.extra, (r.name, errs)
        if r.mode == "fp32":
            assert max(errs.values()) < 1e-5, (r.name, errs)
    assert all(targets.usable(replace(r, theirs_ms=1.0)) for r in rows)

    backward_data = conv.conv_backward_data

    def off_by_one(*args: Any, **kwargs: Any) -> Any:   # one element wrong
        out = backward_data(*args, **kwargs)
        out[0, 0, 0, 0] += 1.0
        return out
    monkeypatch.setattr(conv, "conv_backward_data", off_by_one)
    monkeypatch.setattr(bench_conv, "LAYERS", bench_conv.LAYERS[:1])
    bad = bench_conv.run(precisions=("tf32",))
    assert [(r.name.replace(" [wgmma]", "").split()[-1], r.extra.get("invalid")) for r in bad] == \
        [("fwd", None), ("fwd+bwd", ["bwd_data"])] * 2   # default and [wgmma]
    assert [targets.usable(replace(r, theirs_ms=1.0)) for r in bad] == [True, False] * 2


def test_conv_bench_wgmma_only(timed: Timed, monkeypatch: pytest.MonkeyPatch) -> None:
    """gpu_session.sh budget: the never-timed wgmma rows in a process of their own."""
    monkeypatch.setattr(bench_conv, "LAYERS", [tiny_layer(L) for L in bench_conv.LAYERS if L.name == "1x1"])
    monkeypatch.setattr(bench_fc, "SHAPES", [(8, 40, 24)])
    rows = bench_conv.run(wgmma_only=True) + bench_fc.run(wgmma_only=True)
    no_errors(rows)
    assert [(r.name.split()[-1], r.mode) for r in rows] == [("[wgmma]", "tf32")] * (2 + 3)
    gemm = re.compile(r"(conv_(fwd|bwdd|bwdf)_f32_\d|gemm_)")   # the GEMMs (not the direct bwd-data, bias grad)
    assert all("_wgmma" in k for r in rows for k in timed.of(r) if gemm.match(k)), \
        [timed.of(r) for r in rows]
    with pytest.raises(ValueError, match="compute capability 9.0"):
        bench_conv.run(wgmma=False, wgmma_only=True)
    with pytest.raises(ValueError, match="compute capability 9.0"):
        bench_fc.run(wgmma=False, wgmma_only=True)


def test_fc_and_winograd_benches_validate(timed: Timed, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuconv.ops import fc  # noqa: PLC0415

    def numpy_fc_reference(x: Any, w: Any, b: Any, dy: Any) -> dict[str, Any]:
        x, w, b, dy = (a.get() for a in (x, w, b, dy))
        return {"fwd+bias": (x @ w.T + b,), "bwd data": (dy @ w,), "bwd weight+bias": (dy.T @ x, dy.sum(0))}
    monkeypatch.setattr(bench_fc, "reference", numpy_fc_reference)
    monkeypatch.setattr(bench_fc, "SHAPES", [(8, 40, 24)])
    forward = fc.fc_forward

    def bias_dropped(x: Any, w: Any, b: Any = None, **kwargs: Any) -> Any:
        return forward(x, w, None, **kwargs)
    backward_weight = fc.fc_backward_weight

    def bias_grad_off(*args: Any, **kwargs: Any) -> Any:   # dw right, db one element off
        dw, db = backward_weight(*args, **kwargs)
        db[0] += 1.0
        return dw, db
    monkeypatch.setattr(fc, "fc_forward", bias_dropped)
    monkeypatch.setattr(fc, "fc_backward_weight", bias_grad_off)
    rows = bench_fc.run()
    no_errors(rows)
    assert len(rows) == 12
    for r in rows:
        wrong = "fwd+bias" in r.name or "bwd weight+bias" in r.name
        assert (r.extra.get("invalid") == ["result"]) == wrong, (r.name, r.extra)
        if not wrong:
            assert r.extra["result_rel_err"] <= harness.REL_TOL[r.mode], (r.name, r.extra)

    monkeypatch.setattr(bench_conv, "reference", numpy_conv_reference)
    monkeypatch.setattr(bench_winograd, "WINO_LAYERS", [tiny_layer(L) for L in bench_winograd.WINO_LAYERS[:1]])
    rows = bench_winograd.run()
    no_errors(rows)
    for r in rows:
        keys = {"fwd": ("fwd",), "bwd-data": ("bwd_data",), "bwd-filter": ("bwd_filter", "bias_grad"),
                "fwd+bwd": VALIDATED}[r.name.rsplit(" ", 1)[-1]]
        assert {k[:-8] for k in r.extra if k.endswith("_rel_err")} == set(keys), (r.name, r.extra)
        assert "invalid" not in r.extra and all(r.extra[f"{k}_rel_err"] <= harness.REL_TOL[r.mode] for k in keys)


def test_budget_logs_feed_the_verdict(timed: Timed, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """gpu_session.sh budget: what the bench commands print (rows streamed, with --json) is what
    bench/targets.py reads; the JSON rows keep their validation fields, and rows timed under
    non-default kernel settings keep names of their own."""
    from bench import targets  # noqa: PLC0415

    monkeypatch.setattr(bench_conv, "reference", numpy_conv_reference)
    monkeypatch.setattr(bench_conv, "LAYERS", [tiny_layer(L) for L in bench_conv.LAYERS])
    bench_conv.main(["--json", "--only", "L5,1x1", "--precision", "fp32", "--wgmma", "off"])
    process_env(GPUCONV_CONV_ALGO="winograd", GPUCONV_GEMM_WGMMA="1")
    train_rows = bench_train.gpu_vgg16_step(4, "tf32", model=TINY_NET)
    out = capsys.readouterr().out
    rows = targets.parse_rows(out + "\n".join(r.to_json() for r in train_rows))
    conv = [r for r in rows if r.suite == "conv"]
    assert len(conv) == 2 * 4   # markdown and JSON of each of 4 rows
    # each row's markdown, then its JSON, as it finishes
    assert [r.name for r in conv[:4]] == [f"{bench_conv.LAYERS[4].label} {p}" for p in ("fwd", "fwd", "fwd+bwd", "fwd+bwd")]
    by_key = targets.latest(rows)
    assert all(targets.validated(r) for (s, *_), r in by_key.items() if s == "conv")
    assert [r.name for r in train_rows] == [f"{TINY_NET} train step batch 4{g} [algo=winograd, wgmma]"
                                            for g in ("", " CUDA graph")]


def test_conv_bench_refuses_an_unknown_layer_name() -> None:
    with pytest.raises(ValueError, match="'L9'"):
        bench_conv.run(only=("L5", "L9"))
    with pytest.raises(SystemExit):
        bench_conv.main(["--only", "L5,VGG conv3.2"])
    with pytest.raises(SystemExit):
        bench_winograd.main(["--only", "L1"])   # a layer Winograd does not apply to


def test_winograd_bench_times_winograd_against_the_gemm(timed: Timed, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = [tiny_layer(L) for L in bench_winograd.WINO_LAYERS]
    monkeypatch.setattr(bench_winograd, "WINO_LAYERS", tiny)
    given_sizes: list[int | None] = []   # the workspace each Winograd pass was handed (None: it allocated one)
    take_workspace = winograd._workspace

    def spy(xp: Any, ws: Any, given: Any) -> Any:
        given_sizes.append(None if given is None else int(given.size))
        return take_workspace(xp, ws, given)
    monkeypatch.setattr(winograd, "_workspace", spy)
    rows = bench_winograd.run()
    no_errors(rows)
    # every timed Winograd pass ran in the one planned workspace whose size the rows report
    planned = {round(r.extra["ws_mib"] * 2**20 / 4) for r in rows}
    assert given_sizes and None not in given_sizes and set(given_sizes) <= planned, (given_sizes, planned)
    assert {(r.name, r.mode) for r in rows} == {(f"{L.label} {p}", m) for L in tiny for m in ("fp32", "tf32")
                                                for p in ("fwd", "bwd-data", "bwd-filter", "fwd+bwd")}
    for r in rows:
        wino, gemm = timed.of(r), timed.kernels[r.extra["gemm_ms"]]
        conv_gemm = re.compile(r"conv_(fwd|bwdd|bwdf)_")   # (conv_bias_grad is shared by both)
        assert any(k.startswith("wino_") for k in wino) and not any(conv_gemm.match(k) for k in wino), wino
        assert any(conv_gemm.match(k) for k in gemm) and not any(k.startswith("wino_") for k in gemm), gemm
        assert r.extra["speedup_vs_gemm"] == pytest.approx(r.extra["gemm_ms"] / r.ours_ms)


def test_fc_bench_rows_and_their_kernels(timed: Timed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_fc, "SHAPES", [(8, 40, 24)])
    rows = bench_fc.run()
    no_errors(rows)
    labels = ("fwd+bias", "bwd data", "bwd weight+bias")
    assert [(r.name, r.mode) for r in rows] == (
        [(f"8x40->24 {x}", "fp32") for x in labels]
        + [(f"8x40->24 {x}{t}", "tf32") for x in labels for t in ("", " [async]", " [wgmma]")])
    for r in rows:
        gemms = [k for k in timed.of(r) if k.startswith("gemm_")]
        assert gemms, (r.name, timed.of(r))
        tag = "wgmma" if "[wgmma]" in r.name else "async" if "[async]" in r.name else None
        assert all(("tf32" in k) == (r.mode == "tf32") for k in gemms), (r.name, gemms)
        assert all((tag or "") in k for k in gemms) and (tag or not any("wgmma" in k or "async" in k for k in gemms)), \
            (r.name, gemms)


@pytest.mark.parametrize("bench,shapes", [
    (bench_activation, {"QUICK_SHAPE": (2, 3, 5, 5)}),
    (bench_dropout, {"QUICK_SHAPES": [(2, 3, 5, 5), (6, 10)]}),
    (bench_pool, {"QUICK_SIZE": (2, 3, 8)}),
    (bench_batchnorm, {"QUICK_SHAPES": [(4, 3, 5, 5), (6, 10)]}),
    (bench_lrn, {"QUICK_SHAPES": [(2, 7, 5, 5)]}),
    (bench_local, {"QUICK_SHAPES": [(2, 4, 6, 6, 5, 3, 1, 1)]}),
    (bench_loss, {"SHAPES": [(8, 10), (16, 7)]}),
    (bench_optim, {"SIZES": [1000]}),
    (bench_add, {"QUICK_SHAPE": (2, 3, 5, 5)}),
    (bench_gap, {"QUICK_SHAPES": [(2, 3, 5, 5), (3, 2, 1, 1)]}),
    (bench_concat, {"QUICK_SHAPES": [(2, (2, 3), 3, 3)]}),
    (bench_augment, {"QUICK_SHAPES": [(16, 3, 8, 8, 4)]}),
], ids=lambda v: v.__name__.split(".")[-1] if hasattr(v, "__name__") else "")
def test_op_benches_run(bench: Any, shapes: dict[str, Any], timed: Timed, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in shapes.items():
        assert hasattr(bench, name), name
        monkeypatch.setattr(bench, name, value)
    rows = bench.run(quick=True)
    no_errors(rows)
    assert rows and all(r.ours_ms is not None and timed.of(r) for r in rows), [r.name for r in rows]
    assert not any("invalid" in r.extra for r in rows), [(r.name, r.extra) for r in rows if "invalid" in r.extra]


TINY_NET = "INPUT[12x12x3] -> CONV3-8 -> RELU -> POOL2 -> CONV3-8 -> RELU -> FC-10"


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_training_step_bench_launched_and_replayed(precision: str, timed: Timed) -> None:
    rows = bench_train.gpu_vgg16_step(4, precision, model=TINY_NET)
    assert [(r.name, r.mode) for r in rows] == [(f"{TINY_NET} train step batch 4", precision),
                                               (f"{TINY_NET} train step batch 4 CUDA graph", precision)]
    eager, graph = (timed.of(r) for r in rows)
    for first in ("conv_fwd_", "conv_bwdf_", "momentum_"):
        assert any(k.startswith(first) for k in eager), (first, eager)
    assert timed.captured[rows[0].ours_ms] == [], "the launched row captured a graph"
    # the graph row timed replays only, of a graph holding the launched row's kernels, in order
    assert graph == [REPLAY], graph
    assert timed.captured[rows[1].ours_ms] == eager


def test_fmnist_training_bench_rows(timed: Timed, tmp_path: Path) -> None:
    model = TINY_NET.replace("12x12x3", "32x32x3")   # the synthetic set's images
    rows = bench_train.gpu_fmnist(epochs=1, batch=16, target=0.0, model=model,
                                  dataset="synthetic", limit_train=32, limit_test=32, out_dir=str(tmp_path),
                                  budget="1GiB")   # NVML has no device to ask here
    assert len(rows) == 6 and sum("CUDA graph" in r.name for r in rows) == 3, [r.name for r in rows]
    by_name = {r.name: r for r in rows}
    assert by_name[f"{model} s to 0% test acc"].ours_ms is not None   # target 0: reached after epoch 1
    assert all(r.unit == "s" and r.ours_ms is not None and r.ours_ms > 0 for r in rows)
    # 2 steps an epoch: the graph run's first is eager, its second captured and replayed
    assert timed.replays == 1


def test_gpu_session_script_names_what_exists() -> None:
    """bench/gpu_session.sh is only ever run on a lent GPU: its --only layer names, suites and
    python -c imports must exist here already."""
    script = (ROOT / "bench" / "gpu_session.sh").read_text()
    names = {L.name for L in bench_conv.LAYERS}
    onlys = re.findall(r'bench_conv\.py[^\n]*--only "([^"]+)"', script)
    assert onlys, "no bench_conv --only in gpu_session.sh?"
    for only in onlys:
        assert set(only.split(",")) <= names, only
    for snippet in re.findall(r'python3 -c "([^"]+)"', script):
        for module, what in re.findall(r"from ([\w.]+) import ([\w, ]+)", snippet):
            mod = __import__(module, fromlist=["_"])
            for name in (w.strip() for w in what.split(",")):
                assert hasattr(mod, name), f"{module}.{name} (gpu_session.sh)"
    for suite in re.findall(r"--only ([a-z,]+)", script + "\n".join(re.findall(r'BENCH_ARGS="([^"]+)"', script))):
        assert set(suite.split(",")) <= set(run_all.SUITES), suite
    for path in re.findall(r"(bench/\w+\.py|tests/\w+\.py)", script):
        assert (ROOT / path).exists(), path


# ---- branching nets beside their PyTorch twin (bench_train.gpu_twin_step / twin_epochs, bench_memory) ----
TINY_BRANCHING = ("INPUT[8x8x3] -> CONV3-8 -> BN -> RELU -> RES3-8 -> INCEPTION(4,4-4,2-2,4) -> GAP "
                  "-> DROPOUT0.2 -> FC-10")


def numpy_twin_reference(model: str) -> Any:
    """bench_train.twin_reference without torch: the NumPy path of a CPU copy of the net (same
    parameters, BN statistics, dropout seeds and step), train-mode scores and gradients."""
    import numpy as np  # noqa: PLC0415

    from gpuconv.zoo import get_model  # noqa: PLC0415

    def reference(net: Any, x: Any, y: Any) -> dict[str, Any]:
        cpu = get_model(model).bind("cpu", seed=net.seed)
        cpu.param_buffer[...] = device.to_host(net.param_buffer)
        for a, b in zip(cpu.layers, net.layers):
            if a.kind == "BATCHNORM":
                a.running_mean[...], a.running_var[...] = device.to_host(b.running_mean), device.to_host(b.running_var)
        cpu.step = net.step
        scores = cpu.forward(x, train=True)
        _, d = cpu.loss_and_grad(scores, y)
        cpu.backward(d)
        return {"scores": np.array(scores), "grads": np.array(cpu.grad_buffer)}
    return reference


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_twin_step_bench_times_the_branching_step(precision: str, timed: Timed,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The resnet50 step rows (gpu_session.sh): a residual and an Inception block, launched and
    replayed; each row carries its distance from the reference on the same inputs."""
    monkeypatch.setattr(bench_train, "twin_reference", numpy_twin_reference(TINY_BRANCHING))
    rows = bench_train.gpu_twin_step(TINY_BRANCHING, 4, precision)
    assert [(r.name, r.mode, r.unit) for r in rows] == [
        (f"{TINY_BRANCHING} train step batch 4{g}", precision, "img/s") for g in ("", " CUDA graph")]
    eager, graph = (timed.of(r) for r in rows)
    for first in ("conv_fwd_", "conv_bwdf_", "add_fwd_", "add_bwd_", "gap_fwd_", "gap_bwd_", "bn_apply_",
                  "momentum_"):
        assert any(k.startswith(first) for k in eager), (first, eager)
    assert graph == [REPLAY] and timed.captured[rows[1].ours_ms] == eager
    for r in rows:
        assert "invalid" not in r.extra, r.extra
        assert r.extra["scores_rel_err"] <= bench_train.NET_TOL[precision]["scores"], r.extra
        if precision == "fp32":
            assert r.extra["scores_rel_err"] < 1e-5 and r.extra["grads_l2_rel_err"] < 1e-5, r.extra


def test_twin_step_bench_marks_a_wrong_kernel(timed: Timed, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuconv.ops import add as add_ops  # noqa: PLC0415

    monkeypatch.setattr(bench_train, "twin_reference", numpy_twin_reference(TINY_BRANCHING))
    add_forward = add_ops.add_forward

    def off(*args: Any, **kwargs: Any) -> Any:   # the residual sum one off on the first example
        y = add_forward(*args, **kwargs)
        if isinstance(y, emu.EmuArray) and emu._recording is None:   # the device's (a capture records launches)
            y[0] += 1.0
        return y
    monkeypatch.setattr(add_ops, "add_forward", off)
    rows = bench_train.gpu_twin_step(TINY_BRANCHING, 4, "fp32")
    assert all(r.extra.get("invalid") == ["scores", "grads_l2"] for r in rows), [r.extra for r in rows]


def test_twin_epochs_bench_rows(timed: Timed, monkeypatch: pytest.MonkeyPatch) -> None:
    """resnet20 on Fashion-MNIST beside the twin (gpu_session.sh): here a branching net on a slice of
    the synthetic set; the planned step replays its CUDA graph after the first, eager, step."""
    model = TINY_BRANCHING.replace("8x8x3", "32x32x3")   # the synthetic set's images
    monkeypatch.setattr(bench_train, "twin_reference", numpy_twin_reference(model))
    rows = bench_train.twin_epochs(model, device="cuda", epochs=1, batch=16, dataset="synthetic",
                                   limit_train=40, limit_test=24, cuda_graph=True)
    assert [r.name.split(" wall")[0].split(" s per")[0] for r in rows] == \
        [f"{model} synthetic 1 epoch GPU CUDA graph batch 16 adam, 32 train images"] * 2
    assert all(r.unit == "s" and r.ours_ms and r.ours_ms > 0 and r.theirs_ms is None for r in rows)
    assert rows[0].extra["train_images"] == 32 and "invalid" not in rows[0].extra, rows[0].extra
    assert rows[0].extra["grads_l2_rel_err"] < 1e-5
    assert timed.replays == 1   # 2 steps: eager, then captured and replayed


def test_memory_bench_child_plans_a_branching_net(timed: Timed, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_memory's measuring child on a graph (NVML answered by a stand-in): plan, arena, steps."""
    from bench import bench_memory  # noqa: PLC0415
    from gpuconv.memory import budget  # noqa: PLC0415

    monkeypatch.setattr(budget, "measure_context_bytes", lambda **kw: 500 << 20)
    monkeypatch.setattr(budget, "process_used_bytes", lambda *a, **kw: 600 << 20)
    r = bench_memory._child(TINY_BRANCHING, 2, "train", "momentum", 2, None)
    assert r["ok"] and r["plan_bytes"] > 0 and r["nvml_bytes"] == 600 << 20, r


def test_memory_bench_prints_an_error_row_for_a_net_it_cannot_run(capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that fails (here: a model that does not exist; on a GPU: a plan that refuses a graph,
    an out-of-memory) is one FAILED row with the child's error, and the other rows go on."""
    from bench import bench_memory  # noqa: PLC0415

    monkeypatch.setattr(bench_memory, "_spawn", lambda args: (
        {"ok": False, "error": "ValueError: make_plan: no plan for it"} if args[1] == "nonet" else
        {"ok": True, "model": args[1], "batch": int(args[2]), "mode": args[3], "plan_bytes": 2 << 30,
         "context_bytes": 1 << 29, "nvml_bytes": 5 << 29, "pool_reserved_bytes": 2 << 30}
        if args[0] == "--child" else {"ok": True, "torch_max_allocated": 3 << 30, "torch_max_reserved": 4 << 30}))
    monkeypatch.setattr("gpuconv.memory.budget.overhead_bytes", lambda: 0)
    rc = bench_memory.main(["--models", "nonet", "resnet18", "--batches", "32", "--modes", "train", "--torch-twins"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "nonet" in out and "FAILED: ValueError: make_plan: no plan for it" in out
    assert "resnet18" in out and "+0.0%" in out                    # 2.5 GiB predicted = 2.5 GiB measured
    assert "PyTorch twin max_memory_allocated 3.000 GiB" in out and "(-33.3% vs torch)" in out
