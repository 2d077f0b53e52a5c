"""Whole training runs: ours vs PyTorch in the same process and precision.

    python bench/bench_train.py --cpu-epoch            # one Fashion-MNIST-net epoch on the CPU (issue target: <= 1.5x PyTorch CPU)
    python bench/bench_train.py --cpu-step             # per-layer ms of one CPU training step
    python bench/bench_train.py                        # GPU: Fashion-MNIST net 10 epochs, VGG16 step at batch 64
    python bench/bench_train.py --vgg16-step fp32,tf32 # GPU: the VGG16 step alone (kernels per $GPUCONV_*)

GPU rows: time for 10 epochs, time per epoch and time to 91% test accuracy of the
benchmark net (batch 128, Adam; evaluation after each epoch counted on both sides), and
VGG16 training images/s at batch 64 (SGD momentum) in fp32 (TF32 off) and TF32.  Ours
runs each twice: the planned step launched kernel by kernel, and captured once as a
CUDA graph and replayed (``--cuda-graph``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Row, kernel_tag, set_torch_tf32, time_gpu, time_torch, torch  # noqa: E402
from gpuconv import device as devmod  # noqa: E402
from gpuconv.train import TrainConfig, train  # noqa: E402
from gpuconv.zoo import get_model  # noqa: E402


def torch_fmnist_net():  # the same architecture, for the side-by-side rows
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(3136, 1024), nn.ReLU(), nn.Dropout(0.4), nn.Linear(1024, 10))


def torch_train_fmnist(ds, epochs: int, batch: int, dev: str) -> tuple[float, float, list[tuple[float, float]]]:
    """Seconds, final test accuracy and (seconds so far, test accuracy) after each epoch, of
    PyTorch on the same data (uploaded once, as ours; evaluated after every epoch, as ours)."""
    torch.manual_seed(0)
    net = torch_fmnist_net().to(dev)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x = torch.as_tensor(ds.x_train, device=dev)
    y = torch.as_tensor(ds.y_train.astype(np.int64), device=dev)
    xt = torch.as_tensor(ds.x_test, device=dev)
    yt = torch.as_tensor(ds.y_test.astype(np.int64), device=dev)
    lossf = torch.nn.CrossEntropyLoss()
    if dev == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    history = []
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(x), device=dev)
        for i in range(0, len(x) - batch + 1, batch):
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            lossf(net(x[idx]), y[idx]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = sum(int((net(xt[i:i + 1000]).argmax(1) == yt[i:i + 1000]).sum())
                      for i in range(0, len(xt), 1000)) / len(xt)   # int(): a sync, as our epoch end
        history.append((time.perf_counter() - t, acc))
    return time.perf_counter() - t, history[-1][1], history


def seconds_to(history: list[tuple[float, float]], target: float) -> float | None:
    """Seconds until the first epoch whose test accuracy reaches ``target`` (None: never)."""
    return next((sec for sec, acc in history if acc >= target), None)


def cpu_epoch(batch: int = 128) -> list[Row]:
    from gpuconv.data import load_fashion_mnist  # noqa: PLC0415

    cfg = TrainConfig(model="fmnist", epochs=1, batch_size=batch, optimizer="adam", device="cpu",
                      save=False, log_every=100)
    t = time.perf_counter()
    res = train(cfg, stream=sys.stdout)
    ours = time.perf_counter() - t
    theirs = None
    if torch is not None:
        torch.set_num_threads(max(1, __import__("os").cpu_count() or 1))
        ds = load_fashion_mnist().normalize()
        theirs, tacc, _ = torch_train_fmnist(ds, 1, batch, "cpu")
        print(f"torch cpu: {theirs:.1f} s, acc {tacc:.4f}")
    return [Row("train", f"fmnist net 1 epoch CPU batch {batch} adam (acc {res.test_accuracy:.4f})", "fp32",
                ours * 1e3, None if theirs is None else theirs * 1e3, unit="s")]


def cpu_step_profile(batch: int = 128, steps: int = 10) -> None:
    """Per-layer milliseconds of one CPU training step of the benchmark net (synthetic batch, Adam)."""
    from gpuconv.optim import Optimizer  # noqa: PLC0415
    from gpuconv.step import TrainStep  # noqa: PLC0415

    net = get_model("fmnist").bind("cpu")
    opt = Optimizer("adam", 1e-3).bind(net)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    spent: dict[str, float] = {}

    def timed(key: str, fn):  # noqa: ANN001, ANN202
        def wrapper(*a, **k):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            out = fn(*a, **k)
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - t0
            return out
        return wrapper

    for i, layer in enumerate(net.layers):
        layer.forward = timed(f"{i}:{layer.describe()} fwd", layer.forward)
        layer.backward = timed(f"{i}:{layer.describe()} bwd", layer.backward)
    opt.step = timed("optimizer step", opt.step)   # the unplanned step calls opt.step()
    train_step = TrainStep(net, opt)

    def step() -> None:
        train_step.run(x, y)

    for _ in range(2):
        step()
    spent.clear()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    total = (time.perf_counter() - t0) / steps
    print(f"CPU step, fmnist net, batch {batch}: {total * 1e3:.1f} ms ({steps} steps)")
    for key, sec in spent.items():
        print(f"  {key:28s} {sec / steps * 1e3:7.1f} ms")
    if torch is not None:   # the same step in PyTorch CPU, now: a shared machine's speed drifts
        torch.set_num_threads(max(1, __import__("os").cpu_count() or 1))
        tnet = torch_fmnist_net()
        topt = torch.optim.Adam(tnet.parameters(), 1e-3)
        tx, ty = torch.as_tensor(x), torch.as_tensor(y.astype(np.int64))

        def tstep() -> None:
            topt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(tnet(tx), ty).backward()
            topt.step()

        for _ in range(2):
            tstep()
        t0 = time.perf_counter()
        for _ in range(steps):
            tstep()
        theirs = (time.perf_counter() - t0) / steps
        print(f"PyTorch CPU step: {theirs * 1e3:.1f} ms; ours / PyTorch = {total / theirs:.2f}x")


def gpu_fmnist(epochs: int = 10, batch: int = 128, target: float = 0.91, **config: object) -> list[Row]:
    """The benchmark net's training rows; ``config``: further TrainConfig fields (tests run a tiny
    model on a slice of the data this way; PyTorch's side then does not run)."""
    from gpuconv.data import load_fashion_mnist  # noqa: PLC0415

    theirs = None
    if torch is not None and torch.cuda.is_available() and not config:
        set_torch_tf32(False)
        torch.backends.cudnn.benchmark = True
        theirs = torch_train_fmnist(load_fashion_mnist().normalize(), epochs, batch, "cuda")
    rows = []
    for graph in (False, True):
        cfg = TrainConfig(**{"model": "fmnist", "epochs": epochs, "batch_size": batch, "optimizer": "adam",
                             "device": "cuda", "save": False, "log_every": 200, "cuda_graph": graph, **config})
        t = time.perf_counter()
        res = train(cfg, stream=sys.stdout)
        ours = time.perf_counter() - t
        # Our history's seconds count from the start of train() (data load included), as the wall time.
        hist = [(r["seconds"], r["test_acc"]) for r in res.history]
        tag = " CUDA graph" if graph else ""
        net_name = "fmnist net" if cfg.model == "fmnist" else cfg.model
        t_acc = None if theirs is None else round(theirs[1], 4)
        rows.append(Row("train", f"{net_name} {epochs} epochs wall s{tag} (ours acc {res.test_accuracy:.4f}, "
                        f"torch acc {t_acc})", "fp32", ours * 1e3, None if theirs is None else theirs[0] * 1e3,
                        unit="s"))
        per_epoch = np.diff([0.0] + [h[0] for h in hist])
        t_per = None if theirs is None else float(np.median(np.diff([0.0] + [h[0] for h in theirs[2]]))) * 1e3
        rows.append(Row("train", f"{net_name} s per epoch (median){tag}", "fp32", float(np.median(per_epoch)) * 1e3,
                        t_per, unit="s"))
        ours_t, their_t = seconds_to(hist, target), None if theirs is None else seconds_to(theirs[2], target)
        rows.append(Row("train", f"{net_name} s to {target:.0%} test acc{tag}", "fp32",
                        None if ours_t is None else ours_t * 1e3, None if their_t is None else their_t * 1e3,
                        unit="s"))
    return rows


def gpu_vgg16_step(batch: int = 64, precision: str = "fp32", model: str = "vgg16") -> list[Row]:
    """Images/s of one planned training step (SGD momentum), launched and graph-replayed, beside
    PyTorch's VGG16 (only when ``model`` is vgg16: tests pass a small zoo model or pattern)."""
    from gpuconv import cuda  # noqa: PLC0415
    from gpuconv.memory import PlannedExecutor, make_plan  # noqa: PLC0415
    from gpuconv.optim import Optimizer  # noqa: PLC0415
    from gpuconv.step import TrainStep  # noqa: PLC0415

    dev = devmod.get_device("cuda")
    cp = dev.xp
    net = get_model(model)
    net.set_precision(precision)
    ex = PlannedExecutor(net, make_plan(net, batch, optimizer="momentum"), dev)
    opt = Optimizer("momentum", 0.01).bind(net, state_buffers=ex.state_views(), hyper=ex.hyper_view())
    rng = cp.random.default_rng(0)
    ex.input_view()[...] = rng.standard_normal(ex.input_view().shape, dtype=cp.float32)
    ex.labels_view()[...] = rng.integers(0, net.output_shape[0], batch).astype(cp.int32)

    ours = {}
    for graph in (False, True):   # the same step, launched kernel by kernel, then as a replayed CUDA graph
        with cuda.capture_stream():
            ours[graph] = time_gpu(TrainStep(net, opt, ex, cuda_graph=graph).run, warmup=2, iters=5)
    theirs = None
    if torch is not None and torch.cuda.is_available() and model == "vgg16":
        set_torch_tf32(precision == "tf32")
        torch.backends.cudnn.benchmark = True
        nn = torch.nn
        cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
        layers, c = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
                c = v
        tnet = nn.Sequential(*layers, nn.Flatten(), nn.Linear(25088, 4096), nn.ReLU(True), nn.Dropout(),
                             nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 1000)).cuda()
        topt = torch.optim.SGD(tnet.parameters(), 0.01, momentum=0.9)
        x = torch.randn(batch, 3, 224, 224, device="cuda")
        y = torch.randint(0, 1000, (batch,), device="cuda")

        def tstep():
            topt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(tnet(x), y).backward()
            topt.step()

        theirs = time_torch(tstep, warmup=2, iters=5)
        del tnet, topt
        torch.cuda.empty_cache()
    del ex
    cp.get_default_memory_pool().free_all_blocks()
    tag = kernel_tag()   # e.g. " [algo=auto, wgmma]" when this process runs non-default kernels
    return [Row("train", f"{model} train step batch {batch}{' CUDA graph' if graph else ''}{tag}", precision, ms,
                theirs, work=batch, unit="img/s") for graph, ms in ours.items()]


def run(quick: bool = False) -> list[Row]:
    if not devmod.gpu_available():
        return []
    rows = gpu_fmnist(epochs=2 if quick else 10)
    for prec in ("fp32", "tf32"):
        try:
            rows += gpu_vgg16_step(64, prec)
        except Exception as exc:  # noqa: BLE001
            rows.append(Row("train", f"vgg16 step failed: {exc}"[:120], prec, None))
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu-epoch", action="store_true")
    ap.add_argument("--cpu-step", action="store_true", help="per-layer ms of one CPU training step")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--vgg16-step", default=None, metavar="PRECISIONS",
                    help="only the VGG16 step at batch 64 in these comma-separated precisions (fp32,tf32); "
                         "the kernels as $GPUCONV_CONV_ALGO / _GEMM_WGMMA / _GEMM_SCHEDULE / _AUTOTUNE say")
    ap.add_argument("--json", action="store_true", help="also print one JSON object per row")
    a = ap.parse_args()
    if a.cpu_step:
        cpu_step_profile()
    else:
        from bench.harness import comma_choices, streamer  # noqa: PLC0415
        emit = streamer(a.json)
        if a.vgg16_step:   # each precision's rows as they finish
            for prec in comma_choices(ap, "--vgg16-step", a.vgg16_step, ("fp32", "tf32")):
                emit(gpu_vgg16_step(64, prec))
        else:
            emit(cpu_epoch() if a.cpu_epoch else run(a.quick))
