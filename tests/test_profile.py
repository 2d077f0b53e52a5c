"""The profiler: measured bytes per layer (per node of a branching net) equal planned, reports render (a
graph's branches as a reads column and arcs); GPU steady state allocates nothing."""
from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pytest

from gpuconv import zoo
from gpuconv.layers import FC, LRN, BatchNorm, Conv, Dropout, MaxPool, ReLU
from gpuconv.memory import make_plan
from gpuconv.memory.profile import profile
from gpuconv.memory.report import add_plan_arguments, add_profile_arguments, plan_command, profile_command
from gpuconv.net import Net
from gpuconv.spec import net_from_spec


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
    out = io.StringIO()   # a zoo ResNet: the table shows its branches
    assert profile_command(p.parse_args(["resnet20", "--batch", "1", "--steps", "1", "--device", "cpu"]), out) == 0
    assert "<- " in out.getvalue() and "merge node" in out.getvalue()


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["lenet5", "alexnet", "resnet20", "googlenet"])
def test_gpu_steady_state_allocates_nothing(model: str) -> None:
    r = profile(zoo.get_model(model), 8, "cuda", steps=3, optimizer="momentum")
    assert r.steady_state_device_allocs == 0, r.table()
    for l in r.layers:
        assert l.in_plan and l.measured_bytes == l.planned_bytes, (l.name, l.stray)
    assert r.process_peak_bytes is None or r.process_peak_bytes >= r.plan_total_bytes


INCEPTION_RES = ("INPUT[8x8x3] -> CONV3-8 -> BN -> RELU -> INCEPTION(4,4-6,2-4,4) -> RES3-12/2 "
                 "-> { CONV1-12 -> BN | }+ -> RELU -> GAP -> FC-5")


def _arcs(net) -> int:
    """Edges that do not come from the row above: what the chart draws as arcs."""
    return sum(p != i - 1 for i, src in enumerate(net.sources) for p in src)


@pytest.mark.parametrize("make", [lambda: zoo.resnet20(input_shape=(3, 8, 8)),
                                  lambda: net_from_spec(INCEPTION_RES)])
def test_branching_net_measured_per_node_equals_planned(make) -> None:
    net = make()
    r = profile(net, 2, "cpu", steps=1, optimizer="momentum")
    assert r.graph and len(r.layers) == len(net.layers)
    for l, layer, src in zip(r.layers, net.layers, net.sources):
        assert l.measured_bytes == l.planned_bytes, (l.name, l.stray)
        assert l.in_plan, (l.name, l.stray)
        assert l.reads == [net.node_name(p) for p in src]
    # a merge's own output counts; ADD hands dy on (no memory).  Every Inception branch ends in a
    # CONV (+ fused RELU), so with the concat views (the default) the branches write into their
    # slices of the concat's buffer and backward hands them their slices of dy: CONCAT's planned
    # (and measured) bytes are its output once, and no branch counts its slice again.
    isz = 4
    for l, layer in zip(r.layers, net.layers):
        if layer.kind == "CONCAT":
            out = 2 * int(np.prod(layer.out_shape)) * isz
            assert l.planned_bytes == out
        if layer.kind == "ADD":
            assert l.planned_bytes == 2 * int(np.prod(layer.out_shape)) * isz  # the output only
    if any(layer.kind == "CONCAT" for layer in net.layers):
        plan = make_plan(net, 2, optimizer="momentum")
        branch_ends = net.concat_output_views()
        assert len(branch_ends) == 4
        for q in branch_ends:  # the conv's output is the concat's memory: not counted at the conv
            names = plan.layer_tensors[q]
            assert names["out_slice"] and plan.tensor(names["out"]).layer == branch_ends[q][0]
            own = [names["dx"], *names["saved"].values()]
            assert r.layers[q].measured_bytes == sum(plan.tensor(n).nbytes for n in own if n)
    text = r.table()
    assert "reads" in text and "<- " in text and "merge node" in text
    page = r.to_html()
    assert page.count("<path") == _arcs(net) > 0
    assert json.loads(r.to_json())["graph"] is True


def test_a_chain_shows_no_branches() -> None:
    r = profile(zoo.lenet5(), 2, "cpu", steps=1)
    assert not r.graph and "reads" not in r.table() and "<path" not in r.to_html()


def test_profile_catches_an_unplanned_merge_gradient() -> None:
    # Without planned per-branch gradients CONCAT's backward allocates them: measured, not in plan.
    net = net_from_spec(INCEPTION_RES)
    net.set_concat_grad_views(False)  # every branch gets a planned copy of its slice of dy
    plan = make_plan(net, 2)
    k = next(i for i, layer in enumerate(net.layers) if layer.kind == "CONCAT")
    assert len(plan.layer_tensors[k]["dxs"]) == 4
    plan.layer_tensors[k]["dxs"] = []
    r = profile(net, 2, "cpu", steps=1, plan=plan)
    concat = r.layers[k]
    assert not concat.in_plan and sum("input gradient" in s for s in concat.stray) == 4
    assert concat.measured_bytes > concat.planned_bytes
    assert all(l.in_plan for j, l in enumerate(r.layers) if j != k)


def test_plan_counts_merge_gradients_as_gradients_not_scratch() -> None:
    net = net_from_spec(INCEPTION_RES)
    net.set_concat_grad_views(False)  # planned copies of dy's slices
    plan = make_plan(net, 2)
    k = next(i for i, layer in enumerate(net.layers) if layer.kind == "CONCAT")
    names = plan.layer_tensors[k]["dxs"]
    assert all(plan.tensor(n).kind == "gradient" for n in names)
    assert not any(n.startswith("dx") for n in plan.layer_tensors[k]["workspace"])
    assert plan.rows[k].workspace_bytes == 0
    # each branch gradient is the gradient of that branch's output: the size its row counts
    for n, p in zip(names, net.sources[k]):
        assert plan.tensor(n).nbytes == plan.rows[p].gradient_bytes or plan.rows[p].inplace
