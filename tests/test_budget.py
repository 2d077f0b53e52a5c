"""Budgets: parsing, fits, and max_batch searched on the plan."""
from __future__ import annotations

import pytest

from gpuconv import zoo
from gpuconv.memory import budget as bmod
from gpuconv.memory import fits, make_plan, max_batch, parse_budget
from gpuconv.memory.budget import BudgetError


@pytest.mark.parametrize("text,expected", [
    ("12GiB", 12 << 30), ("800MiB", 800 << 20), ("1.5GiB", int(1.5 * (1 << 30))), ("16GB", 16 * 10**9),
    ("512 KiB", 512 << 10), ("123456B", 123456), ("2_000_000b", 2_000_000), (4096, 4096), (2.0**30, 1 << 30),
    ("1e9B", 10**9), ("64mib", 64 << 20)])
def test_parse_explicit_budgets(text, expected) -> None:
    assert parse_budget(text) == expected


@pytest.mark.parametrize("bad", ["twelve", "12 parsecs", "-1GiB", "0", 0, -5, True, "1.2.3GB", "0GiB", ""])
def test_parse_bad_budgets(bad) -> None:
    with pytest.raises(BudgetError):
        parse_budget(bad)


@pytest.mark.parametrize("bare", ["1.5", "123456", "2", "1e9", "12"])
def test_a_number_without_a_unit_above_one_asks_for_a_unit(bare, monkeypatch: pytest.MonkeyPatch) -> None:
    # A bare number is a fraction of the memory, only in (0, 1]; "1.5" used to be read as 1 byte.
    monkeypatch.setattr(bmod, "device_memory", lambda index=None: bmod.DeviceMemory(0, "fake", 1 << 34, 1 << 34, 0))
    with pytest.raises(BudgetError, match=r"fraction .*\(0, 1\].*unit, e\.g\. " + bare + "GiB"):
        parse_budget(bare)
    with pytest.raises(BudgetError, match="unit"):
        parse_budget(bare, device="cpu")


def test_overhead_env_is_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(bmod.OVERHEAD_ENV, "123456")
    assert bmod.overhead_bytes() == 123456
    monkeypatch.setenv(bmod.OVERHEAD_ENV, "2MiB")
    assert bmod.overhead_bytes() == 2 << 20


@pytest.mark.parametrize("bad", [1, 1.5, -0.1, "x", None, float("nan")])
def test_safety_must_be_a_fraction_below_one(bad) -> None:
    with pytest.raises(BudgetError, match=r"safety"):
        bmod.validate_safety(bad)
    with pytest.raises(BudgetError, match=r"safety"):
        fits(make_plan(zoo.lenet5(), 2), "1GiB", safety=bad, context_bytes=0, overhead=0)
    assert bmod.validate_safety("0.1") == 0.1 and bmod.validate_safety(0) == 0.0


def test_cpu_budget_is_host_memory(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:  1000 kB\nMemAvailable:    8000000 kB\n")
    monkeypatch.setattr(bmod, "MEMINFO", str(meminfo))
    assert bmod.host_memory().total == 16000000 * 1024
    assert parse_budget("0.5", device="cpu") == 8000000 * 1024
    assert parse_budget(None, device="cpu") == 8000000 * 1024   # None: what is available now
    plan = make_plan(zoo.lenet5(), 8)
    ok, d = fits(plan, "0.5", device="cpu")
    assert ok and d["context_bytes"] == 0 and d["overhead_bytes"] == 0 and "machine's memory" in d["note"]
    assert not fits(plan, plan.total_bytes - 1, safety=0, device="cpu")[0]
    assert max_batch(zoo.lenet5(), "64MiB", device="cpu") == max_batch(zoo.lenet5(), 64 << 20, context_bytes=0,
                                                                      overhead_bytes=0)
    meminfo.write_text("nothing useful\n")
    with pytest.raises(BudgetError, match="machine's memory is unknown"):
        parse_budget("0.5", device="cpu")


def test_fraction_is_of_total_device_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = bmod.DeviceMemory(0, "fake", total=80 << 30, free=70 << 30, used=10 << 30)
    monkeypatch.setattr(bmod, "device_memory", lambda index=None: fake)
    assert parse_budget("0.9") == int(0.9 * (80 << 30))
    assert parse_budget(0.5) == 40 << 30
    assert parse_budget(None) == 70 << 30  # None: what is free now


def test_device_budget_without_nvml_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_nvml():
        raise BudgetError("the GPU's memory is unknown: NVML is not usable here (test)")
    monkeypatch.setattr(bmod, "_nvml", no_nvml)
    for b in ("0.9", 0.5):
        with pytest.raises(BudgetError, match="NVML.*give an amount instead, e.g. --budget 12GiB"):
            parse_budget(b)
    with pytest.raises(BudgetError, match="no --budget was given.*NVML.*such as --budget 12GiB"):
        parse_budget(None)
    # explicit bytes still work, without a context measurement; the note does not ask for a budget
    ok, detail = fits(make_plan(zoo.lenet5(), 8), "1GiB")
    assert ok and detail["context_bytes"] == 0 and "NVML" in detail["note"]
    assert "give an explicit budget" not in detail["note"]
    with pytest.raises(BudgetError):
        max_batch(zoo.lenet5(), "0.9")


def test_fits_detail() -> None:
    plan = make_plan(zoo.small(), 16, optimizer="adam")
    ok, d = fits(plan, plan.total_bytes, safety=0.0, context_bytes=0, overhead=0)
    assert ok and d["headroom_bytes"] == 0
    ok, d = fits(plan, plan.total_bytes - 1, safety=0.0, context_bytes=0, overhead=0)
    assert not ok and d["headroom_bytes"] == -1
    ok, d = fits(plan, plan.total_bytes, safety=0.05, context_bytes=0, overhead=0)
    assert not ok  # the safety margin is taken off the budget
    ok, d = fits(plan, plan.total_bytes + 1000, safety=0.0, context_bytes=600, overhead=400)
    assert ok and d["needed_bytes"] == plan.total_bytes + 1000


@pytest.mark.parametrize("optimizer,inference", [("sgd", False), ("adam", False), ("sgd", True)])
def test_max_batch_fits_and_next_does_not(optimizer: str, inference: bool) -> None:
    net = zoo.alexnet()
    budget = 3 << 30
    kw = dict(safety=0.05, context_bytes=100 << 20, overhead=50 << 20)
    b = max_batch(net, budget, optimizer, 0.05, inference=inference, context_bytes=100 << 20,
                  overhead_bytes=50 << 20)
    assert b > 1
    assert fits(make_plan(net, b, optimizer=optimizer, inference=inference), budget, **kw)[0]
    assert not fits(make_plan(net, b + 1, optimizer=optimizer, inference=inference), budget, **kw)[0]


def test_max_batch_monotonic() -> None:
    net = zoo.lenet5()
    found = [max_batch(net, b << 20, "momentum", context_bytes=0, overhead_bytes=0) for b in (1, 2, 4, 8, 16, 64)]
    assert found == sorted(found) and found[-1] > found[0]
    assert max_batch(zoo.vgg16(), "256MiB", "adam", context_bytes=0, overhead_bytes=0) == 0  # params alone exceed it
    # more optimizer state, smaller batch
    assert max_batch(zoo.vgg16(), "8GiB", "adam", context_bytes=0, overhead_bytes=0) <= \
        max_batch(zoo.vgg16(), "8GiB", "sgd", context_bytes=0, overhead_bytes=0)


def test_context_cache(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    # A cached measurement is returned without touching CUDA.
    monkeypatch.setenv(bmod.CACHE_DIR_ENV, str(tmp_path))
    fake = bmod.DeviceMemory(0, "FakeGPU", total=1 << 34, free=1 << 34, used=0)
    monkeypatch.setattr(bmod, "device_memory", lambda index=None: fake)

    class NV:
        @staticmethod
        def nvmlSystemGetDriverVersion():
            return "999.1"
    monkeypatch.setattr(bmod, "_nvml", lambda: NV)
    from gpuconv import device as devmod
    cp = devmod._cupy()
    key = f"FakeGPU|999.1|{getattr(cp, '__version__', 'none')}"
    (tmp_path / "context_bytes.json").write_text('{"%s": 123456}' % key)
    assert bmod.measure_context_bytes() == 123456


@pytest.mark.gpu
def test_nvml_reads_device_and_context() -> None:
    dm = bmod.device_memory()
    assert dm.total > dm.free > 0
    ctx = bmod.measure_context_bytes(refresh=True)
    assert 10 << 20 < ctx < 4 << 30  # a CUDA context costs hundreds of MiB, not nothing and not everything
    assert parse_budget("0.5") == dm.total // 2 or abs(parse_budget("0.5") - dm.total / 2) < 2
