"""The planned training step (gpuconv.step.TrainStep): launched kernel by kernel vs replayed as a CUDA graph.

    python bench/bench_step.py            # GPU: ms per step, eager vs CUDA graph, per model
    python bench/bench_step.py --host     # no GPU needed: the host (Python) work of one step

``--host`` runs the step's launchers on the kernel emulator while capturing, so the
launches are recorded and not run: what is timed is the Python that builds one step
(layer dispatch, argument checks, kernel selection), which a graph replay skips.  It
does not include the driver's own cost per launch.  The GPU rows time whole steps
with CUDA events (median of 20) on the same executor, eager first, then captured.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import time_gpu  # noqa: E402
from gpuconv import cuda, device, emu  # noqa: E402
from gpuconv.memory import PlannedExecutor, make_plan  # noqa: E402
from gpuconv.optim import Optimizer  # noqa: E402
from gpuconv.step import TrainStep  # noqa: E402
from gpuconv.zoo import get_model  # noqa: E402

# (model, input shape, batch, optimizer): the Fashion-MNIST benchmark net's step, and two deeper ones
CASES = [("fmnist", (1, 28, 28), 128, "adam"), ("lenet5", (1, 32, 32), 128, "adam"),
         ("cifar-vgg", (3, 32, 32), 128, "momentum")]


def _step(model: str, shape: tuple[int, ...], batch: int, optimizer: str, dev: device.Device) -> TrainStep:
    net = get_model(model, input_shape=shape, classes=10)
    ex = PlannedExecutor(net, make_plan(net, batch, optimizer=optimizer), dev, seed=1)
    opt = Optimizer(optimizer, 1e-3).bind(net, state_buffers=ex.state_views(), hyper=ex.hyper_view())
    step = TrainStep(net, opt, ex)
    rng = np.random.default_rng(0)
    step.load(rng.standard_normal((batch, *shape)).astype(np.float32), rng.integers(0, 10, batch).astype(np.int32))
    return step


def host_cost(reps: int = 20) -> None:
    """Median seconds of Python per step (launches recorded by the emulator, not run)."""
    for model, shape, _, optimizer in CASES:
        batch = 8  # the host work does not depend on the batch; the emulator's eager step does
        with emu.emulated() as xp:
            step = _step(model, shape, batch, optimizer, device.Device("cuda", xp))
            step.run()  # once eagerly: kernels built, choices made
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                graph = cuda.capture(step._launches)
                times.append(time.perf_counter() - t)
        print(f"{model}: {graph.num_nodes} launches and memsets per step, host Python "
              f"{np.median(times) * 1e3:.2f} ms per step (median of {reps})")


def gpu_table() -> None:
    """ms per step and images/s, eager vs CUDA graph, on the same executor (one process)."""
    dev = device.get_device("cuda")
    print("| model | batch | eager ms/step | graph ms/step | eager img/s | graph img/s | eager / graph |")
    print("|---|---|---|---|---|---|---|")
    for model, shape, batch, optimizer in CASES:
        step = _step(model, shape, batch, optimizer, dev)
        with cuda.capture_stream():
            eager = time_gpu(step.run, warmup=3, iters=20)
            step.use_graph = True
            graph = time_gpu(step.run, warmup=2, iters=20)   # the first warm-up call captures
        print(f"| {model} | {batch} | {eager:.3f} | {graph:.3f} | {batch / eager * 1e3:,.0f} | "
              f"{batch / graph * 1e3:,.0f} | {eager / graph:.2f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", action="store_true", help="host work per step on the emulator (no GPU)")
    a = ap.parse_args()
    if a.host:
        host_cost()
    elif device.gpu_available():
        gpu_table()
    else:
        print("no GPU: run with --host for the host-side cost per step", file=sys.stderr)
