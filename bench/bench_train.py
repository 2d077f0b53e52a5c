"""Whole training runs: ours vs PyTorch in the same process and precision.

    python bench/bench_train.py --cpu-epoch            # one Fashion-MNIST-net epoch on the CPU (issue target: <= 1.5x PyTorch CPU)
    python bench/bench_train.py --cpu-step             # per-layer ms of one CPU training step
    python bench/bench_train.py                        # GPU: Fashion-MNIST net 10 epochs, VGG16 step at batch 64
    python bench/bench_train.py --vgg16-step fp32,tf32 # GPU: the VGG16 step alone (kernels per $GPUCONV_*)
    python bench/bench_train.py --resnet20-cpu --limit-train 2048   # resnet20 epoch, ours vs its PyTorch twin (CPU)
    python bench/bench_train.py --resnet20-gpu          # GPU: resnet20 on Fashion-MNIST 10 epochs beside the twin
    python bench/bench_train.py --twin-step fp32,tf32   # GPU: resnet50 step at batch 64 beside its PyTorch twin

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

from bench.harness import Row, guarded_case, kernel_tag, set_torch_tf32, time_gpu, time_torch, torch  # noqa: E402
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


# ---- branching nets beside their PyTorch twin (bench/torch_nets.py): same graph, same parameters ----

def _model_net(model: str, input_shape: tuple[int, ...] | None = None, classes: int | None = None):  # noqa: ANN202
    """A zoo model for this input shape and class count (a pattern string: as written)."""
    if model.strip().upper().startswith("INPUT"):
        return get_model(model)
    kw = {k: v for k, v in (("input_shape", input_shape), ("classes", classes)) if v is not None}
    return get_model(model, **kw)


def twin_reference(net, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray] | None:  # noqa: ANN001
    """Train-mode scores and parameter gradients of the net's PyTorch twin (its parameters as they
    are now, fp32 with TF32 off, our dropout masks) on (x, y); None without torch."""
    if torch is None:
        return None
    from bench.torch_nets import torch_twin, twin_grads, twin_loss  # noqa: PLC0415

    dev = "cuda" if net.device.is_gpu and torch.cuda.is_available() else "cpu"
    set_torch_tf32(False)
    twin = torch_twin(net, device=dev, dropout="ours")
    scores = twin(torch.as_tensor(x, device=dev))
    twin_loss(net)(scores, torch.as_tensor(y.astype(np.int64), device=dev)).backward()
    out = {"scores": scores.detach().cpu().numpy(), "grads": twin_grads(net, twin)}
    del twin, scores
    if dev == "cuda":
        torch.cuda.empty_cache()
    return out


def _planned_fwd_bwd(net, ex) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Our train-mode scores and parameter gradients of the batch in the executor's input views,
    computed in the plan's memory by the kernels the step runs (no update)."""
    from gpuconv.ops.dropout import dropout_keys  # noqa: PLC0415

    if ex.dropout_layers():   # the step writes this step's dropout keys first (TrainStep)
        keys = [k for i in ex.dropout_layers() for k in dropout_keys(net.layers[i].seed, net.step)]
        devmod.copy_into(ex.dropout_keys_view(), np.array(keys, dtype=np.uint32))
    bufs = ex.train_step_buffers()
    scores = net.forward(ex.input_view(), train=True, buffers=bufs)
    host_scores = np.array(devmod.to_host(scores), copy=True)   # its memory is reused during backward
    _, dscores = net.loss_and_grad(scores, ex.labels_view())
    net.backward(dscores, buffers=bufs)
    return {"scores": host_scores, "grads": np.array(devmod.to_host(net.grad_buffer), copy=True)}


# A whole net's distance from its twin before a row is marked invalid.  Scores: the op tolerance
# (harness.REL_TOL).  Gradients (L2 over all parameters): looser, because a ReLU whose input lies
# within rounding of 0 may fall on the other side of the kink in one of two equally accurate fp32
# computations, and BN's backward spreads that over its whole channel: resnet20 at batch 64 on
# Fashion-MNIST measured 1.9e-3 (ours fp32 vs the twin's fp32), both within 2e-3 of float64.
# A wrong kernel moves the gradients by O(1).
NET_TOL = {"fp32": {"scores": 5e-4, "grads_l2": 2e-2}, "tf32": {"scores": 2e-2, "grads_l2": 1e-1}}


def validate_against_twin(net, ex, precision: str) -> dict[str, object]:  # noqa: ANN001
    """A row's validation fields: our planned scores and gradients on the batch in ``ex``'s input
    views against the twin's on the same inputs (``invalid`` where over ``NET_TOL``, as
    ``harness.validation`` marks the op rows);
    ``{"unvalidated": ...}`` where there is no reference (no torch)."""
    from bench.harness import rel_err  # noqa: PLC0415

    x = np.array(devmod.to_host(ex.input_view()), copy=True)
    y = np.array(devmod.to_host(ex.labels_view()), copy=True)
    ref = twin_reference(net, x, y)   # first: our pass below moves the BN running statistics
    if ref is None:
        return {"unvalidated": "no PyTorch reference"}
    ours = _planned_fwd_bwd(net, ex)
    # Gradients as a whole (L2): through a deep ReLU net one activation within rounding of 0 takes
    # the other side of the kink in one precision, moving a few gradient entries by a visible
    # amount (max-norm ~1e-3 in fp32 on resnet20); a wrong kernel moves the whole vector.
    g, gr = ours["grads"].astype(np.float64), ref["grads"].astype(np.float64)
    l2 = float(np.linalg.norm(g - gr) / max(float(np.linalg.norm(gr)), 1e-30))
    errors = {"scores": rel_err(ours["scores"], ref["scores"]), "grads_l2": l2}
    extra: dict[str, object] = {f"{k}_rel_err": v for k, v in errors.items()}
    bad = [k for k, v in errors.items() if not v <= NET_TOL[precision][k]]   # NaN fails too
    if bad:
        extra["invalid"] = bad
        print(f"WARNING: {precision} {net.name} off its PyTorch twin: "
              + ", ".join(f"{k} {errors[k]:.2e} (tolerance {NET_TOL[precision][k]:.0e})" for k in bad), flush=True)
    return extra


def gpu_twin_step(model: str = "resnet50", batch: int = 64, precision: str = "fp32", *,
                  input_shape: tuple[int, ...] | None = None, classes: int | None = None,
                  optimizer: str = "momentum") -> list[Row]:
    """Images/s of one planned training step of a zoo net (SGD momentum), launched and CUDA-graph
    replayed, beside its PyTorch twin (same graph and parameters, same precision: TF32 off for
    fp32, on for tf32); each row carries our scores' and gradients' distance from the twin's
    (computed with TF32 off) on the same inputs."""
    from gpuconv import cuda  # noqa: PLC0415
    from gpuconv.memory import PlannedExecutor, make_plan  # noqa: PLC0415
    from gpuconv.optim import Optimizer  # noqa: PLC0415
    from gpuconv.step import TrainStep  # noqa: PLC0415

    dev = devmod.get_device("cuda")
    cp = dev.xp
    net = _model_net(model, input_shape, classes)
    net.set_precision(precision)
    ex = PlannedExecutor(net, make_plan(net, batch, optimizer=optimizer), dev)
    opt = Optimizer(optimizer, 0.01).bind(net, state_buffers=ex.state_views(), hyper=ex.hyper_view())
    rng = np.random.default_rng(0)
    devmod.copy_into(ex.input_view(), rng.standard_normal(ex.input_view().shape).astype(np.float32))
    devmod.copy_into(ex.labels_view(), rng.integers(0, net.output_shape[0], batch).astype(np.int32))
    extra = validate_against_twin(net, ex, precision)

    ours = {}
    for graph in (False, True):
        with cuda.capture_stream():
            ours[graph] = time_gpu(TrainStep(net, opt, ex, cuda_graph=graph).run, warmup=2, iters=5)
    theirs = None
    if torch is not None and torch.cuda.is_available():
        from bench.torch_nets import torch_optimizer, torch_twin, twin_loss  # noqa: PLC0415

        set_torch_tf32(precision == "tf32")
        torch.backends.cudnn.benchmark = True
        twin = torch_twin(net, device="cuda")
        topt = torch_optimizer(net, twin, optimizer, 0.01)
        lossf = twin_loss(net)
        x = torch.as_tensor(devmod.to_host(ex.input_view()), device="cuda")
        y = torch.as_tensor(devmod.to_host(ex.labels_view()).astype(np.int64), device="cuda")

        def tstep() -> None:
            topt.zero_grad(set_to_none=True)
            lossf(twin(x), y).backward()
            topt.step()

        theirs = time_torch(tstep, warmup=2, iters=5)
        del twin, topt, x, y
        torch.cuda.empty_cache()
    del ex
    cp.get_default_memory_pool().free_all_blocks()
    tag = kernel_tag()
    return [Row("train", f"{model} train step batch {batch}{' CUDA graph' if graph else ''}{tag}", precision, ms,
                theirs, work=batch, unit="img/s", extra=dict(extra)) for graph, ms in ours.items()]


def twin_epochs(model: str = "resnet20", *, device: str = "cpu", epochs: int = 1, batch: int = 128,
                optimizer: str = "adam", lr: float | None = None, dataset: str = "fashion-mnist",
                limit_train: int | None = None, limit_test: int | None = None, cuda_graph: bool = False,
                seed: int = 0) -> list[Row]:
    """Epochs of ours and of the PyTorch twin in this process: the same net, initial parameters,
    data, batches (one permutation per epoch, full batches), optimizer and batch size; each side
    evaluates on the test set after every epoch (counted in its time).  Epochs alternate between
    the two sides, so a shared machine's drift reaches both.  Ours is ``gpuconv train``'s step
    (``TrainStep`` in the planned arena, ``cuda_graph`` replayed on a GPU) without its progress
    line; the twin is float32 with TF32 off.  Rows: wall seconds of all epochs and the median
    epoch, each with both accuracies; the first step's scores and gradients validated."""
    from gpuconv.data import DATASETS  # noqa: PLC0415
    from gpuconv.memory import PlannedExecutor, make_plan  # noqa: PLC0415
    from gpuconv.optim import Optimizer  # noqa: PLC0415
    from gpuconv.step import TrainStep  # noqa: PLC0415

    dev = devmod.get_device(device)
    xp = dev.xp
    ds = DATASETS[dataset](data_dir=None, limit_train=limit_train, limit_test=limit_test).normalize()
    net = _model_net(model, tuple(ds.input_shape), ds.num_classes)
    ex = PlannedExecutor(net, make_plan(net, batch, optimizer=optimizer), dev, seed=seed)
    opt = Optimizer(optimizer, lr).bind(net, state_buffers=ex.state_views(), hyper=ex.hyper_view())
    n = len(ds.x_train) // batch * batch
    opt.steps_per_epoch = n // batch
    perms = [np.random.default_rng([seed, e]).permutation(len(ds.x_train))[:n] for e in range(epochs)]
    devmod.copy_into(ex.input_view(), ds.x_train[perms[0][:batch]])
    devmod.copy_into(ex.labels_view(), ds.y_train[perms[0][:batch]].astype(np.int32))
    extra: dict[str, object] = dict(validate_against_twin(net, ex, "fp32"))
    step = TrainStep(net, opt, ex, cuda_graph=cuda_graph and dev.is_gpu)
    x_tr, y_tr = xp.asarray(ds.x_train), xp.asarray(ds.y_train.astype(np.int32))
    x_te, y_te = xp.asarray(ds.x_test), xp.asarray(ds.y_test.astype(np.int32))

    tside = None
    if torch is not None and (not dev.is_gpu or torch.cuda.is_available()):
        from bench.torch_nets import torch_optimizer, torch_twin, twin_loss  # noqa: PLC0415

        tdev = "cuda" if dev.is_gpu else "cpu"
        if tdev == "cpu":
            torch.set_num_threads(max(1, __import__("os").cpu_count() or 1))
        set_torch_tf32(False)
        torch.backends.cudnn.benchmark = True
        twin = torch_twin(net, device=tdev)   # our parameters now: the same initial state
        tside = (twin, torch_optimizer(net, twin, optimizer, lr), twin_loss(net), tdev,
                 torch.as_tensor(ds.x_train, device=tdev), torch.as_tensor(ds.y_train.astype(np.int64), device=tdev),
                 torch.as_tensor(ds.x_test, device=tdev), torch.as_tensor(ds.y_test.astype(np.int64), device=tdev))

    def ours_epoch(perm: np.ndarray) -> float:
        idx_all = xp.asarray(perm)
        for b in range(0, n, batch):
            idx = idx_all[b:b + batch]
            xp.take(x_tr, idx, axis=0, out=ex.input_view())
            xp.take(y_tr, idx, axis=0, out=ex.labels_view())
            step.run()
        float(devmod.to_host(step.loss_sum))   # the epoch's sync point, as train()'s
        step.reset_metrics()
        return step.evaluate(x_te, y_te, 1000)[0]

    def torch_epoch(perm: np.ndarray) -> float:
        twin, topt, lossf, tdev, tx, ty, tx_te, ty_te = tside  # type: ignore[misc]
        twin.train()
        idx_all = torch.as_tensor(perm, device=tdev)
        for b in range(0, n, batch):
            idx = idx_all[b:b + batch]
            topt.zero_grad(set_to_none=True)
            lossf(twin(tx[idx]), ty[idx]).backward()
            topt.step()
        twin.eval()
        with torch.no_grad():
            correct = sum(int((twin(tx_te[i:i + 1000]).argmax(1) == ty_te[i:i + 1000]).sum())
                          for i in range(0, len(tx_te), 1000))
        return correct / len(tx_te)

    ours_s, theirs_s, ours_acc, theirs_acc = [], [], float("nan"), None
    for e in range(epochs):
        t = time.perf_counter()
        ours_acc = ours_epoch(perms[e])
        ours_s.append(time.perf_counter() - t)
        if tside is not None:
            t = time.perf_counter()
            theirs_acc = torch_epoch(perms[e])
            theirs_s.append(time.perf_counter() - t)
        print(f"epoch {e + 1}/{epochs}: ours {ours_s[-1]:.2f} s acc {ours_acc:.4f}"
              + (f", torch {theirs_s[-1]:.2f} s acc {theirs_acc:.4f}" if theirs_s else ""), flush=True)
    where = ("GPU" + (" CUDA graph" if step.use_graph else "")) if dev.is_gpu else "CPU"
    subset = "" if limit_train is None else f", {n} train images"
    t_acc = None if theirs_acc is None else round(theirs_acc, 4)
    extra.update(ours_acc=round(ours_acc, 4), torch_acc=t_acc, train_images=n, test_images=len(ds.x_test))
    name = f"{model} {dataset} {epochs} epoch{'s' if epochs > 1 else ''} {where} batch {batch} {optimizer}{subset}"
    return [Row("train", f"{name} wall s (ours acc {ours_acc:.4f}, torch acc {t_acc})", "fp32", sum(ours_s) * 1e3,
                sum(theirs_s) * 1e3 if theirs_s else None, unit="s", extra=dict(extra)),
            Row("train", f"{name} s per epoch (median)", "fp32", float(np.median(ours_s)) * 1e3,
                float(np.median(theirs_s)) * 1e3 if theirs_s else None, unit="s", extra=dict(extra))]


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
    ap.add_argument("--resnet20-cpu", action="store_true",
                    help="resnet20 on Fashion-MNIST on the CPU beside its PyTorch twin (--epochs, default 1)")
    ap.add_argument("--resnet20-gpu", action="store_true",
                    help="resnet20 on Fashion-MNIST on the GPU beside its PyTorch twin (--epochs, default 10)")
    ap.add_argument("--twin-step", default=None, metavar="PRECISIONS",
                    help="only the --model (default resnet50) step at --batch (default 64) beside its PyTorch twin, "
                         "in these comma-separated precisions (fp32,tf32)")
    ap.add_argument("--model", default=None, help="model of --twin-step / --resnet20-*")
    ap.add_argument("--batch", type=int, default=None, help="batch of --twin-step (64) / --resnet20-* (128)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--limit-train", type=int, default=None, help="--resnet20-*: the first N training images")
    ap.add_argument("--limit-test", type=int, default=None, help="--resnet20-*: the first N test images")
    a = ap.parse_args()
    if a.cpu_step:
        cpu_step_profile()
    elif a.resnet20_cpu or a.resnet20_gpu or a.twin_step:
        from bench.harness import comma_choices, streamer  # noqa: PLC0415
        emit = streamer(a.json)
        if a.twin_step:
            for prec in comma_choices(ap, "--twin-step", a.twin_step, ("fp32", "tf32")):
                emit(guarded_case("train", f"{a.model or 'resnet50'} twin step", prec, devmod.get_device("cuda").xp,
                                  lambda: gpu_twin_step(a.model or "resnet50", a.batch or 64, prec)))
        for flag, where, epochs in ((a.resnet20_cpu, "cpu", 1), (a.resnet20_gpu, "cuda", 10)):
            if flag:
                try:   # a net the planner or a kernel refuses is an error row, as in guarded_case
                    emit(twin_epochs(a.model or "resnet20", device=where, epochs=a.epochs or epochs,
                                     batch=a.batch or 128, limit_train=a.limit_train, limit_test=a.limit_test,
                                     cuda_graph=where == "cuda"))
                except Exception as exc:  # noqa: BLE001
                    __import__("traceback").print_exc()
                    emit([Row("train", f"{a.model or 'resnet20'} epochs {where}", "fp32", None,
                              extra={"error": f"{type(exc).__name__}: {exc}"})])
    else:
        from bench.harness import comma_choices, streamer  # noqa: PLC0415
        emit = streamer(a.json)
        if a.vgg16_step:   # each precision's rows as they finish
            for prec in comma_choices(ap, "--vgg16-step", a.vgg16_step, ("fp32", "tf32")):
                emit(gpu_vgg16_step(64, prec))
        else:
            emit(cpu_epoch() if a.cpu_epoch else run(a.quick))
