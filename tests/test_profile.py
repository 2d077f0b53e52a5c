"""The profiler: measured bytes per layer equal planned, reports render; GPU steady state allocates nothing."""
from __future__ import annotations

import argparse
import io
import json

import pytest

from gpuconv import zoo
from gpuconv.layers import FC, LRN, BatchNorm, Conv, Dropout, MaxPool, ReLU
from gpuconv.memory import make_plan
from gpuconv.memory.profile import profile
from gpuconv.memory.report import add_plan_arguments, add_profile_arguments, plan_command, profile_command
from gpuconv.net import Net


def every_kind() -> Net:
    return Net([Conv(3, 3, P=1), BatchNorm(), ReLU(0.1), LRN(3), MaxPool(2), FC(6), ReLU(), Dropout(0.5), FC(3)],
               (2, 6, 6), name="every-kind")


@pytest.mark.parametrize("make", [zoo.small, zoo.fmnist, every_kind])
def test_cpu_measured_equals_planned(make) -> None:
    net = make()
    r = profile(net, 3, "cpu", steps=2, optimizer="momentum")
    for l in r.layers:
        assert l.measured_bytes == l.planned_bytes, (l.name, l.stray)
        assert l.in_plan, (l.name, l.stray)
    assert r.planned_layer_bytes == r.measured_layer_bytes > 0
    assert len(r.losses) == 3 and all(x == x for x in r.losses)
    # the wrappers are gone: the layers run their class methods again
    assert all("forward" not in vars(layer) for layer in net.layers)


def test_profile_catches_an_unplanned_output() -> None:
    # A plan whose view is not used (the layer allocates its own output) shows up as not-in-plan.
    net = zoo.small()
    plan = make_plan(net, 2)
    plan.layer_tensors[0]["out"] = None  # the executor now hands conv1 no output buffer
    r = profile(net, 2, "cpu", steps=1, plan=plan)
    conv1 = r.layers[0]
    assert not conv1.in_plan and any("output" in s for s in conv1.stray)


def test_report_outputs(tmp_path) -> None:
    r = profile(zoo.lenet5(), 2, "cpu", steps=1)
    paths = r.write(tmp_path)
    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and page.count("<rect") >= 2 * len(r.layers)
    assert "conv1" in page
    d = json.loads(paths["json"].read_text())
    assert d["net_name"] == "lenet5" and len(d["layers"]) == len(r.layers)
    assert "planned" in r.table()


def test_plan_command_text_json_budget_and_max_batch() -> None:
    p = add_plan_arguments(argparse.ArgumentParser())
    out = io.StringIO()
    assert plan_command(p.parse_args(["vgg16", "--batch", "2"]), out) == 0
    assert "TOTAL" in out.getvalue() and "24M" in out.getvalue()
    out = io.StringIO()
    assert plan_command(p.parse_args(["lenet5", "--batch", "4", "--optimizer", "adam", "--json"]), out) == 0
    d = json.loads(out.getvalue())
    assert d["batch"] == 4 and d["optimizer"] == "adam" and d["state_slots"] == 2
    out = io.StringIO()
    assert plan_command(p.parse_args(["vgg16", "--batch", "64", "--budget", "1GiB"]), out) == 1  # does not fit
    assert "DOES NOT FIT" in out.getvalue()
    out = io.StringIO()
    assert plan_command(p.parse_args(["lenet5", "--budget", "64MiB", "--max-batch", "--inference"]), out) == 0
    assert "Largest batch" in out.getvalue()
    assert plan_command(p.parse_args(["nosuchnet"]), io.StringIO()) == 2


def test_profile_command(tmp_path) -> None:
    p = add_profile_arguments(argparse.ArgumentParser())
    out = io.StringIO()
    args = p.parse_args(["small", "--batch", "2", "--steps", "1", "--device", "cpu", "--out", str(tmp_path)])
    assert profile_command(args, out) == 0
    assert (tmp_path / "profile.html").exists() and "measured" in out.getvalue()


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["lenet5", "alexnet"])
def test_gpu_steady_state_allocates_nothing(model: str) -> None:
    r = profile(zoo.get_model(model), 8, "cuda", steps=3, optimizer="momentum")
    assert r.steady_state_device_allocs == 0, r.table()
    for l in r.layers:
        assert l.in_plan and l.measured_bytes == l.planned_bytes, (l.name, l.stray)
    assert r.process_peak_bytes is None or r.process_peak_bytes >= r.plan_total_bytes
