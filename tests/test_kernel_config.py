"""The kernel configuration: resolution order, validation, scoping, and ops that never read
the environment."""
from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest

from gpuconv import kernel_config as K
from gpuconv.kernel_config import KernelConfig, KernelConfigError, current, using

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_when_nothing_is_set(tmp_path):
    cfg = KernelConfig.resolve(env={})
    assert (cfg.precision, cfg.conv_algo, cfg.gemm_schedule) == ("fp32", "gemm", "reg")
    assert not (cfg.wgmma or cfg.autotune or cfg.debug_alloc)
    assert cfg.cache_dir == Path.home() / ".cache" / "gpuconv"
    assert cfg.winograd_ws_mb == 256 and cfg.cpu_threads is None
    assert cfg.describe() == "defaults"


def test_flags_win_over_environment_which_wins_over_defaults(tmp_path):
    env = {"GPUCONV_CONV_ALGO": "winograd", "GPUCONV_PRECISION": "tf32", "GPUCONV_GEMM_SCHEDULE": "Async",
           "GPUCONV_GEMM_WGMMA": "yes", "GPUCONV_AUTOTUNE": "1", "GPUCONV_DEBUG_ALLOC": "on",
           "GPUCONV_CACHE_DIR": str(tmp_path), "GPUCONV_WINOGRAD_WS_MB": "0.5", "GPUCONV_CPU_THREADS": "3"}
    cfg = KernelConfig.resolve(env=env)
    assert (cfg.conv_algo, cfg.precision, cfg.gemm_schedule) == ("winograd", "tf32", "async")
    assert cfg.wgmma and cfg.autotune and cfg.debug_alloc
    assert (cfg.cache_dir, cfg.winograd_ws_mb, cfg.cpu_threads) == (tmp_path, 0.5, 3)
    flagged = KernelConfig.resolve(env=env, conv_algo="auto", precision="fp32", wgmma=False, cpu_threads=1,
                                   gemm_schedule=None)   # None: not given, the environment's
    assert (flagged.conv_algo, flagged.precision, flagged.wgmma, flagged.cpu_threads) == ("auto", "fp32", False, 1)
    assert flagged.gemm_schedule == "async"
    assert "conv_algo=auto" in flagged.describe()


def test_resolve_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("GPUCONV_CONV_ALGO", "auto")
    assert KernelConfig.resolve().conv_algo == "auto"


@pytest.mark.parametrize("var,value,message", [
    ("GPUCONV_CONV_ALGO", "fft", "GPUCONV_CONV_ALGO='fft': choose one of gemm, winograd, auto"),
    ("GPUCONV_PRECISION", "bf16", "GPUCONV_PRECISION='bf16': choose one of fp32, tf32"),
    ("GPUCONV_GEMM_SCHEDULE", "fast", "GPUCONV_GEMM_SCHEDULE='fast': choose one of reg, async"),
    ("GPUCONV_GEMM_WGMMA", "maybe", "GPUCONV_GEMM_WGMMA='maybe': use 1 or 0"),
    ("GPUCONV_AUTOTUNE", "2", "GPUCONV_AUTOTUNE='2': use 1 or 0"),
    ("GPUCONV_DEBUG_ALLOC", "yes please", "GPUCONV_DEBUG_ALLOC='yes please': use 1 or 0"),
    ("GPUCONV_WINOGRAD_WS_MB", "-1", "GPUCONV_WINOGRAD_WS_MB='-1': must be a number of MiB > 0"),
    ("GPUCONV_CPU_THREADS", "zero", "GPUCONV_CPU_THREADS='zero': must be a positive integer"),
])
def test_bad_environment_values_name_the_variable_and_the_choices(var, value, message):
    with pytest.raises(KernelConfigError, match=re.escape(message)):
        KernelConfig.resolve(env={var: value})


def test_bad_flags_name_the_flag():
    with pytest.raises(KernelConfigError, match=re.escape("conv_algo='fft': choose one of gemm, winograd, auto")):
        KernelConfig.resolve(env={}, conv_algo="fft")
    with pytest.raises(KernelConfigError, match="unknown kernel configuration flag"):
        KernelConfig.resolve(env={}, algo="gemm")
    with pytest.raises(KernelConfigError, match="precision='half'"):
        KernelConfig(precision="half")
    with pytest.raises(KernelConfigError, match="cpu_threads=0"):
        current().replace(cpu_threads=0)
    assert issubclass(KernelConfigError, ValueError)


def test_the_value_is_immutable():
    cfg = KernelConfig()
    with pytest.raises(Exception):
        cfg.precision = "tf32"  # type: ignore[misc]
    assert cfg.replace(precision="tf32").precision == "tf32" and cfg.precision == "fp32"


def test_using_scopes_and_restores_even_on_error(monkeypatch):
    monkeypatch.setenv("GPUCONV_CONV_ALGO", "winograd")
    K.reset_default()
    base = current()
    assert base.conv_algo == "winograd" and current() is base       # resolved once, then fixed
    monkeypatch.setenv("GPUCONV_CONV_ALGO", "auto")
    assert current().conv_algo == "winograd"                         # the environment is not re-read
    with using(precision="tf32") as outer:
        assert current() is outer and outer.precision == "tf32" and outer.conv_algo == "winograd"
        with using(KernelConfig(), autotune=True) as inner:
            assert current() is inner and inner.precision == "fp32" and inner.autotune
        assert current() is outer
        with pytest.raises(RuntimeError):
            with using(conv_algo="gemm"):
                raise RuntimeError("boom")
        assert current() is outer
    assert current() is base
    with pytest.raises(TypeError):
        with using("tf32"):  # type: ignore[arg-type]
            pass


def test_a_thread_outside_any_scope_sees_the_process_default():
    seen = []
    with using(precision="tf32"):
        t = threading.Thread(target=lambda: seen.append(current().precision))
        t.start()
        t.join()
    assert seen == [K.current().precision]


def test_ops_layers_and_net_never_read_the_environment():
    offenders = []
    for folder in ("gpuconv/ops", "gpuconv/layers"):
        for path in sorted((ROOT / folder).glob("*.py")):
            offenders += [f"{path.relative_to(ROOT)}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                          if "environ" in line or "getenv" in line]
    net = ROOT / "gpuconv" / "net.py"
    offenders += [f"gpuconv/net.py:{i}" for i, line in enumerate(net.read_text().splitlines(), 1)
                  if "environ" in line or "getenv" in line]
    assert offenders == []


def test_one_definition_of_the_shared_constants():
    src = {p.name: p.read_text() for p in (ROOT / "gpuconv").rglob("*.py")}
    assert sum(len(re.findall(r"(?<![\w.])132(?!\d)", s)) for s in src.values()) == 1   # device.SM_COUNT_HINT
    assert sum(s.count("INT32_MAX = ") for s in src.values()) == 1                       # ops._checks.INT32_MAX
    assert sum(len(re.findall(r"^def _check_precision", s, re.M)) for s in src.values()) == 0
    assert sum(len(re.findall(r'PRECISIONS = \("fp32", "tf32"\)', s)) for s in src.values()) == 1


def test_ops_follow_the_scoped_configuration(rng):
    # precision / algo None: the configuration's; a bad configured algo fails on the CPU too
    from gpuconv.ops import conv
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    want = conv.conv_forward(x, w, None, 1, 1)
    with using(conv_algo="winograd", precision="tf32"):
        np.testing.assert_allclose(conv.conv_forward(x, w, None, 1, 1), want)   # the CPU path ignores both
        p = conv.problem("fwd", x.shape, w.shape, 1, 1)
        assert (p.precision, p.algo) == ("tf32", "winograd")
        assert conv.select(p).variant == "winograd"
    assert conv.select(conv.problem("fwd", x.shape, w.shape, 1, 1)).variant == "gemm"


def test_debug_alloc_has_one_rule():
    from gpuconv import device
    from gpuconv.memory import PlannedExecutor, make_plan
    from gpuconv.spec import net_from_spec

    for value, want in (("1", True), ("on", True), ("TRUE", True), ("0", False), ("off", False), ("", False)):
        with using(KernelConfig.resolve(env={"GPUCONV_DEBUG_ALLOC": value})):
            assert device.debug_alloc() is want, value
    net = net_from_spec("INPUT[4x4x1] -> FC-3")
    plan = make_plan(net, 2)
    with using(debug_alloc=True):
        assert PlannedExecutor(net, plan, device.CPU).debug
    assert not PlannedExecutor(net, plan, device.CPU, debug=False).debug


def test_variants_register_with_their_ops_selector():
    """The default path is the non-opt-in variants; every opt-in one is registered and applies
    only when the configuration asks for it."""
    from gpuconv.ops import conv, fc

    assert [v.name for v in conv.CONV.ordered() if not v.opt_in] == ["direct-f64", "direct-bwdd", "gemm"]
    assert {v.name for v in conv.CONV.ordered() if v.opt_in} == {"winograd", "auto", "gemm-autotune",
                                                                   "gemm-wgmma", "gemm-async"}
    assert [v.name for v in fc.GEMM.ordered() if not v.opt_in] == ["gemm-f64", "gemm"]
    default = KernelConfig()
    for pass_ in ("fwd", "bwdd", "bwdf"):
        for x_shape, w_shape, stride in [((4, 64, 16, 16), (64, 64, 3, 3), 1), ((4, 3, 31, 31), (16, 3, 5, 5), 2)]:
            for precision in ("fp32", "tf32"):
                p = conv.problem(pass_, x_shape, w_shape, stride, 1, 1, np.float32, precision, cfg=default)
                assert not conv.CONV[conv.select(p, default).variant].opt_in
    want = {"conv_algo": ("winograd", "winograd"), "gemm_schedule": ("async", "gemm-async"),
            "autotune": (True, "gemm-autotune")}
    p = conv.problem("fwd", (4, 64, 16, 16), (64, 64, 3, 3), 1, 1, 1, np.float32, "tf32", cfg=default)
    for field, (value, variant) in want.items():
        cfg = default.replace(**{field: value})
        assert conv.select(conv.problem("fwd", p.x_shape, p.w_shape, 1, 1, 1, precision="tf32", cfg=cfg),
                           cfg).variant == variant
