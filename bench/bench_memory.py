"""Planned vs measured device memory: the planner's prediction against NVML, and against PyTorch.

    python bench/bench_memory.py                       # LeNet, AlexNet, VGG16 x batch 1/32/64 x train/infer
    python bench/bench_memory.py --models vgg16 --batches 64
    python bench/bench_memory.py --max-batch --model alexnet --budget 0.5   # validate max_batch: 50 steps, no OOM
    python bench/bench_memory.py --json out.json
    python bench/bench_memory.py --models resnet18 resnet50 googlenet --modes train --torch-twins
                                                       # + PyTorch's peak for the same net (its twin), batch, optimizer

Each configuration runs in a FRESH process (CuPy's pool never gives memory back,
so one process per measurement), which reports NVML's used memory for itself
after its steps (the pool keeps its high-water mark, so that is the peak) and
the pool's reserved bytes.  Predicted = plan total + measured CUDA context (+ the
overhead estimate).  Errors are (predicted - measured) / measured.

The PyTorch row: VGG16, batch 64, SGD with momentum, ``torch.cuda.max_memory_allocated``
(tensors only, no context), against our plan total (tensors only) — like for like.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {"lenet": "lenet5", "lenet5": "lenet5", "alexnet": "alexnet", "vgg16": "vgg16"}


def _child(model: str, batch: int, mode: str, optimizer: str, steps: int, pool_limit: int | None) -> dict[str, Any]:
    """Runs in the fresh process: plan, allocate, run steps, measure."""
    import numpy as np

    from gpuconv import device as devmod
    from gpuconv import zoo
    from gpuconv.memory import make_plan
    from gpuconv.memory.arena import PlannedExecutor
    from gpuconv.memory.budget import measure_context_bytes, process_used_bytes
    from gpuconv.optim import Optimizer
    from gpuconv.step import TrainStep

    ctx = measure_context_bytes()  # cached JSON, or measured in a fresh subprocess: no context here yet
    dev = devmod.get_device("cuda")
    cp = dev.xp
    if pool_limit:
        cp.get_default_memory_pool().set_limit(size=pool_limit)
    net = zoo.get_model(model)
    inference = mode == "infer"
    plan = make_plan(net, batch, optimizer=optimizer, inference=inference)
    ex = PlannedExecutor(net, plan, dev, seed=0)
    opt = None if inference else Optimizer(optimizer).bind(net, state_buffers=ex.state_views(),
                                                           hyper=ex.hyper_view())
    step = TrainStep(net, opt, ex)
    rng = np.random.default_rng(0)
    step.load(rng.standard_normal((batch, *net.input_shape)).astype(np.float32),
              None if inference else rng.integers(0, net.output_shape[0], batch).astype(np.int32))
    for _ in range(steps):
        if inference:
            step.infer()
        else:
            step.run()
    dev.synchronize()
    used = process_used_bytes()
    pool = cp.get_default_memory_pool()
    return {"model": model, "batch": batch, "mode": mode, "optimizer": optimizer, "steps": steps,
            "plan_bytes": plan.total_bytes, "context_bytes": ctx, "nvml_bytes": used,
            "pool_reserved_bytes": int(pool.total_bytes()), "ok": True}


def _torch_child(batch: int) -> dict[str, Any]:
    import torch
    from torch import nn

    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers: list[nn.Module] = []
    c = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=True)]
            c = int(v)
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(),
                          nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(4096, 1000)).cuda()
    torch.backends.cudnn.benchmark = False
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    y = torch.randint(0, 1000, (batch,), device="cuda")
    for _ in range(3):
        opt.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    torch.cuda.synchronize()
    return {"torch_max_allocated": int(torch.cuda.max_memory_allocated()),
            "torch_max_reserved": int(torch.cuda.max_memory_reserved())}


def _torch_twin_child(model: str, batch: int, optimizer: str, steps: int) -> dict[str, Any]:
    """PyTorch's peak for OUR net (bench/torch_nets.py: the twin of the zoo model, same graph and
    parameters), batch and optimizer: ``max_memory_allocated`` over ``steps`` training steps
    (tensors only, like our plan total), in a fresh process."""
    import numpy as np
    import torch

    from bench.torch_nets import torch_optimizer, torch_twin, twin_loss
    from gpuconv import zoo

    net = zoo.get_model(model).bind("cpu", seed=0)
    twin = torch_twin(net, device="cuda")
    torch.backends.cudnn.benchmark = False
    opt = torch_optimizer(net, twin, optimizer)
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.standard_normal((batch, *net.input_shape)).astype(np.float32), device="cuda")
    y = torch.as_tensor(rng.integers(0, net.output_shape[0], batch), device="cuda")
    lossf = twin_loss(net)
    for _ in range(steps):
        opt.zero_grad(set_to_none=False)
        lossf(twin(x), y).backward()
        opt.step()
    torch.cuda.synchronize()
    return {"model": model, "batch": batch, "optimizer": optimizer, "ok": True,
            "torch_max_allocated": int(torch.cuda.max_memory_allocated()),
            "torch_max_reserved": int(torch.cuda.max_memory_reserved())}


def _spawn(args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=900,
                         cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        return {"ok": False, "error": " | ".join(tail), "args": args}
    return json.loads(lines[-1])


def _twin_beside(ours: dict[str, Any], optimizer: str, steps: int) -> dict[str, Any]:
    """PyTorch's peak for the twin of ``ours``'s net, batch and optimizer, printed under our row;
    a failure (no torch, an out-of-memory) is a printed row too, never a stop."""
    t = _spawn(["--torch-twin-child", ours["model"], str(ours["batch"]), optimizer, "--steps", str(steps)])
    label = f"{'':<8} {'':>5} {'torch':<6}"
    if not t.get("ok"):
        print(f"{label} PyTorch twin FAILED: {t.get('error')}")
        return {**t, "torch_twin": True}
    alloc = t["torch_max_allocated"]
    print(f"{label} PyTorch twin max_memory_allocated {alloc / 2**30:.3f} GiB (reserved "
          f"{t['torch_max_reserved'] / 2**30:.3f}); ours planned {ours['plan_bytes'] / 2**30:.3f} GiB "
          f"({_pct(ours['plan_bytes'], alloc)} vs torch)")
    return {**t, "torch_twin": True, "ours_plan_bytes": ours["plan_bytes"]}


def _pct(pred: float, meas: float) -> str:
    return f"{100.0 * (pred - meas) / meas:+.1f}%" if meas else "—"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["lenet5", "alexnet", "vgg16"])
    ap.add_argument("--batches", nargs="*", type=int, default=[1, 32, 64])
    ap.add_argument("--modes", nargs="*", default=["train", "infer"])
    ap.add_argument("--optimizer", default="momentum")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", default=None, help="write all rows to this file")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--max-batch", action="store_true", help="validate max_batch: the found batch runs 50 steps")
    ap.add_argument("--model", default="alexnet", help="model for --max-batch")
    ap.add_argument("--budget", default="0.5", help="budget for --max-batch (default half the device)")
    ap.add_argument("--child", nargs=4, metavar=("MODEL", "BATCH", "MODE", "POOL_LIMIT"), help=argparse.SUPPRESS)
    ap.add_argument("--torch-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--torch-twins", action="store_true",
                    help="beside every train row, PyTorch's max_memory_allocated for the twin of the same net "
                         "(bench/torch_nets.py), batch and optimizer, each in a fresh process")
    ap.add_argument("--torch-twin-child", nargs=3, metavar=("MODEL", "BATCH", "OPTIMIZER"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.child:
        m, b, mode, limit = a.child
        print(json.dumps(_child(m, int(b), mode, a.optimizer, a.steps, int(limit) or None)))
        return 0
    if a.torch_child is not None:
        print(json.dumps(_torch_child(a.torch_child)))
        return 0
    if a.torch_twin_child:
        m, b, o = a.torch_twin_child
        print(json.dumps(_torch_twin_child(m, int(b), o, a.steps)))
        return 0

    from gpuconv.memory.budget import measure_context_bytes, overhead_bytes, parse_budget
    rows: list[dict[str, Any]] = []
    if a.max_batch:
        from gpuconv import zoo
        from gpuconv.memory import max_batch
        budget = parse_budget(a.budget)
        ctx = measure_context_bytes()
        b = max_batch(zoo.get_model(a.model), budget, a.optimizer)
        print(f"max_batch({a.model}, {budget / 2**30:.2f} GiB, {a.optimizer}) = {b}")
        # Cap the pool at the budget minus the context: an OOM here means max_batch promised too much.
        r = _spawn(["--child", a.model, str(b), "train", str(budget - ctx), "--steps", "50",
                    "--optimizer", a.optimizer])
        r["max_batch"], r["budget_bytes"] = b, budget
        print(f"  50 steps at batch {b}: {'OK' if r.get('ok') else 'FAILED: ' + r.get('error', '')}"
              + (f", NVML {r['nvml_bytes'] / 2**30:.2f} GiB of {budget / 2**30:.2f} GiB" if r.get("ok") else ""))
        rows.append(r)
    else:
        extra = overhead_bytes()
        print(f"{'model':<8} {'batch':>5} {'mode':<6} {'plan':>10} {'+context':>10} {'NVML':>10} {'err':>8} "
              f"{'pool':>10} {'plan/pool':>9}   (GiB; predicted = plan + context; overhead estimate "
              f"{extra / 2**20:.0f} MiB not added)")
        for m in a.models:
            for b in a.batches:
                for mode in a.modes:
                    r = _spawn(["--child", MODELS.get(m, m), str(b), mode, "0", "--steps", str(a.steps),
                                "--optimizer", a.optimizer])
                    rows.append(r)
                    if not r.get("ok"):
                        print(f"{m:<8} {b:>5} {mode:<6} FAILED: {r.get('error')}")
                        continue
                    pred = r["plan_bytes"] + r["context_bytes"]
                    g = 2**30
                    print(f"{m:<8} {b:>5} {mode:<6} {r['plan_bytes'] / g:>10.3f} {pred / g:>10.3f} "
                          f"{r['nvml_bytes'] / g:>10.3f} {_pct(pred, r['nvml_bytes']):>8} "
                          f"{r['pool_reserved_bytes'] / g:>10.3f} {_pct(r['plan_bytes'], r['pool_reserved_bytes']):>9}")
                    if a.torch_twins and mode == "train" and not a.no_torch:
                        rows.append(_twin_beside(r, a.optimizer, a.steps))
        if not a.no_torch and "vgg16" in [MODELS.get(m, m) for m in a.models]:
            t = _spawn(["--torch-child", "64"])
            ours = next((r for r in rows if r.get("ok") and r["model"] == "vgg16" and r["batch"] == 64
                         and r["mode"] == "train"), None)
            if t.get("ok", True) and "torch_max_allocated" in t:
                line = f"PyTorch VGG16 b64 SGD-momentum: max_memory_allocated {t['torch_max_allocated'] / 2**30:.3f} GiB"
                if ours:
                    line += (f"; ours planned {ours['plan_bytes'] / 2**30:.3f} GiB "
                             f"({_pct(ours['plan_bytes'], t['torch_max_allocated'])} vs torch)")
                print(line)
                rows.append({"torch": t, "ours_plan_bytes": ours["plan_bytes"] if ours else None})
            else:
                print(f"PyTorch row skipped: {t.get('error', 'torch not importable')}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r.get("ok", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
