"""The kernel-variant autotuner: fastest choice, cached in memory and on disk (fake timers)."""
from __future__ import annotations

from pathlib import Path

import pytest

from gpuconv import cuda
from gpuconv.kernel_config import KernelConfig, using
from gpuconv.ops import autotune, conv, conv_gpu
from gpuconv.ops import conv_variants as CV
from helpers import configure


def fake_timer(costs: dict) -> autotune.Timer:
    """A timer that runs the trial (it records which variant ran) and reports a fixed cost."""
    ran: list = []

    def timer(fn) -> float:  # noqa: ANN001
        fn()
        return costs[ran[-1]]

    timer.ran = ran  # type: ignore[attr-defined]
    return timer


def test_picks_the_fastest_and_caches_it(tmp_path: Path) -> None:
    costs = {(128, 128): 3.0, (64, 128): 1.0, (64, 64): 2.0}
    timer = fake_timer(costs)
    tuner = autotune.Autotuner(timer, tmp_path / "autotune.json")
    cands = list(costs)
    assert tuner.choose("k", cands, timer.ran.append) == (64, 128)
    assert tuner.trials == 3 and timer.ran == cands
    assert tuner.choose("k", cands, timer.ran.append) == (64, 128) and tuner.trials == 3   # no re-timing
    # a new process reads the choice from disk
    again = autotune.Autotuner(fake_timer(costs), tmp_path / "autotune.json")
    assert again.choose("k", cands, lambda c: None) == (64, 128) and again.trials == 0


def test_ties_keep_the_first_candidate() -> None:
    timer = fake_timer({"a": 1.0, "b": 1.0})
    assert autotune.Autotuner(timer).choose("k", ["a", "b"], timer.ran.append) == "a"


def test_stale_or_damaged_cache_is_retuned(tmp_path: Path) -> None:
    path = tmp_path / "autotune.json"
    path.write_text('{"k": [32, 32]}')                     # no longer a candidate
    timer = fake_timer({(64, 64): 1.0, (128, 64): 0.5})
    tuner = autotune.Autotuner(timer, path)
    assert tuner.choose("k", [(64, 64), (128, 64)], timer.ran.append) == (128, 64) and tuner.trials == 2
    path.write_text("{not json")
    tuner = autotune.Autotuner(timer, path)
    assert tuner.choose("k", [(64, 64), (128, 64)], timer.ran.append) == (128, 64) and tuner.trials == 2


def test_unwritable_cache_keeps_choices_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    timer = fake_timer({1: 2.0, 2: 1.0})
    tuner = autotune.Autotuner(timer, blocker / "sub" / "autotune.json")   # parent is a file
    assert tuner.choose("k", [1, 2], timer.ran.append) == 2
    assert tuner.choose("k", [1, 2], timer.ran.append) == 2 and tuner.trials == 2


def test_enabled_and_cache_dir_from_the_configuration(tmp_path: Path) -> None:
    with using(KernelConfig.resolve(env={})):
        assert not autotune.enabled()
    with using(KernelConfig.resolve(env={"GPUCONV_AUTOTUNE": "1", "GPUCONV_CACHE_DIR": str(tmp_path)})):
        assert autotune.enabled()
        assert autotune.cache_path() == tmp_path / "autotune.json"


def test_conv_tile_is_the_heuristic_unless_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    # without autotune the GEMM variant is the heuristic's, and nothing is timed
    p = conv.problem("fwd", (4, 40, 12, 12), (72, 40, 3, 3), 1, 1, 1, cfg=KernelConfig())
    assert conv.select(p, KernelConfig()).variant == "gemm"
    tuned = conv.select(p, KernelConfig(autotune=True))
    assert tuned.variant == "gemm-autotune" and tuned.kernels == ()   # chosen on first use


def test_conv_tile_tuned_over_every_compiled_tile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    configure(autotune=True)
    monkeypatch.setattr(cuda, "device_key", lambda: "Fake GPU sm_90")
    costs = {(128, 128): 4.0, (128, 64): 3.0, (64, 128): 0.5, (64, 64): 2.0}
    costs = {(*t, sc): c * (0.9 if sc == "async" else 1.0) for t, c in costs.items() for sc in autotune.SCHEDULES}
    timer = fake_timer(costs)
    monkeypatch.setattr(autotune, "_tuner", autotune.Autotuner(timer, tmp_path / "autotune.json"))
    assert CV._tuned_tile("bwdd", "tf32", [8, 3, 32, 32], (128, 64, "reg"), timer.ran.append) == (64, 128, "async")
    assert timer.ran[0] == (128, 64, "reg") and sorted(timer.ran) == sorted(costs)   # heuristic first
    assert "Fake GPU sm_90|conv_bwdd|tf32|8,3,32,32" in (tmp_path / "autotune.json").read_text()


@pytest.mark.parametrize("kind", ["fwd", "bwdd", "bwdf"])
def test_conv_launchers_time_each_tile_then_launch_the_winner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              kind: str) -> None:
    """The GPU launchers' wiring, checked on the CPU: cuda.launch is faked (no kernel runs)."""
    import numpy as np  # noqa: PLC0415

    configure(autotune=True)
    monkeypatch.setattr(cuda, "device_key", lambda: "Fake GPU sm_90")
    launched: list[tuple[str, tuple]] = []
    monkeypatch.setattr(conv_gpu.cuda, "launch", lambda module, fn, grid, *a, **k: launched.append((fn, grid)))
    monkeypatch.setattr(conv_gpu.cuda, "zero", lambda a: None)   # split-K's memset: nothing to clear here
    fast = "64x128"

    def timer(fn) -> float:  # noqa: ANN001
        fn()
        return 0.1 if launched[-1][0].endswith(f"{fast}_fp32") else 1.0

    monkeypatch.setattr(autotune, "_tuner", autotune.Autotuner(timer, tmp_path / "autotune.json"))
    x = np.zeros((4, 40, 12, 12), np.float32)        # C = 40 >= 32, stride 1: the GEMM backward-data
    w = np.zeros((72, 40, 3, 3), np.float32)
    y = np.zeros((4, 72, 12, 12), np.float32)
    for _ in range(2):                                # the second call uses the cached choice
        launched.clear()
        if kind == "fwd":
            conv.conv_forward_gpu(x, w, None, 1, 1, 1, False, y, "fp32")
        elif kind == "bwdd":
            conv.conv_backward_data_gpu(y, w, 1, 1, 1, x, "fp32")
        else:
            conv.conv_backward_filter_gpu(x, y, 1, 1, 1, w, None, "fp32")
        names = [n for n, _ in launched]
        assert names[-1] == f"conv_{kind}_f32_{fast}_fp32"
        bm, bn = 64, 128
        rows, cols = {"fwd": (72, 4 * 144), "bwdd": (40, 4 * 144), "bwdf": (72, 40 * 9)}[kind]
        assert launched[-1][1][:2] == (-(-cols // bn), -(-rows // bm))
    assert len(names) == 1


def test_schedule_from_the_configuration() -> None:
    with using(KernelConfig.resolve(env={})):
        assert autotune.schedule() == "reg"
    with using(KernelConfig.resolve(env={autotune.SCHEDULE_ENV: "Async"})):
        assert autotune.schedule() == "async"
    assert conv_gpu._kernel("bwdf", (64, 128, "async"), "tf32") == "conv_bwdf_f32_64x128_tf32_async"
    assert conv_gpu._kernel("fwd", (128, 64, "reg"), "fp32") == "conv_fwd_f32_128x64_fp32"
    with pytest.raises(ValueError, match="GPUCONV_GEMM_SCHEDULE='fast': choose one of reg, async"):
        KernelConfig.resolve(env={autotune.SCHEDULE_ENV: "fast"})
