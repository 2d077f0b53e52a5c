"""Training: the loop behind ``gpuconv train``.

Data is uploaded to the device once; batches are gathered there.  Loss and
accuracy accumulate on the device and reach the host only every ``log_every``
steps (for the progress line) and at the end of an epoch, so a GPU run has a
handful of sync points per epoch.  In the planned arena each step is a
:class:`~gpuconv.step.TrainStep`; ``cuda_graph`` captures it once and replays it.
Checkpoints are atomic ``.npz`` files (no pickle); ``resume`` continues exactly
where the run stopped: same seed, same batches, same dropout masks, same numbers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from . import cuda
from . import device as devmod
from .augment import augment as augment_batch
from .checkpoint import load_checkpoint, save_checkpoint
from .data import DATASETS, BatchIterator, Dataset
from .curves import CURVES, draw_curves
from .net import CONV_ALGOS, Net
from .ops import loss as loss_ops
from .optim import Optimizer, Schedule
from .predict import write_run_classes
from .progress import MetricsWriter, Progress
from .step import TrainStep
from .zoo import get_model

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    model: str = "small"
    dataset: str = "fashion-mnist"
    epochs: int = 3
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float | None = None
    weight_decay: float = 0.0
    schedule: str = "constant"
    device: str = "auto"
    seed: int = 0
    data_dir: str | None = None
    out_dir: str = "runs/latest"
    resume: bool = False
    augment: bool = False
    log_every: int = 50
    limit_train: int | None = None
    limit_test: int | None = None
    precision: str = "fp32"
    conv_algo: str | None = None    # gemm | winograd | auto | None ($GPUCONV_CONV_ALGO)
    eval_batch: int = 1000
    save: bool = True
    budget: str | None = None       # e.g. "12GiB" or "0.9"; GPU default: the free device memory
    planned: bool = True            # run inside the memory plan's arena (False: allocate as you go)
    cuda_graph: bool = False        # GPU: capture the planned step once as a CUDA graph, replay it
    data: str | None = None         # an image folder (one sub-folder per class) instead of --dataset
    val_fraction: float = 0.1       # with data: the share of each class held out for validation

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "log_every", "eval_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.precision not in ("fp32", "tf32"):
            raise ValueError(f"--precision must be fp32 or tf32, got {self.precision!r}")
        if self.conv_algo is not None and self.conv_algo not in CONV_ALGOS:
            raise ValueError(f"--conv-algo must be one of {', '.join(CONV_ALGOS)}, got {self.conv_algo!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}")
        if self.cuda_graph and not self.planned:
            raise ValueError("--cuda-graph replays the planned step: it cannot run with --unplanned")


@dataclass
class TrainResult:
    epochs_done: int
    test_accuracy: float
    test_loss: float
    train_loss: float
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    net: Net | None = None


def load_dataset(cfg: TrainConfig) -> Dataset:
    if cfg.data is not None:  # your own images, decoded to the net's input shape (cached once)
        from .imagefolder import load_image_folder, model_input_shape  # noqa: PLC0415
        ds = load_image_folder(cfg.data, model_input_shape(cfg.model), cfg.val_fraction, cfg.seed,
                               cfg.limit_train, cfg.limit_test)
    else:
        ds = DATASETS[cfg.dataset](data_dir=cfg.data_dir, limit_train=cfg.limit_train, limit_test=cfg.limit_test)
    return ds.normalize()


class PlanExceedsBudget(RuntimeError):
    """The memory plan does not fit the device budget; the message gives a batch that would."""


def build(cfg: TrainConfig, ds: Dataset) -> tuple[Net, Optimizer, devmod.Device, Any]:
    """Net, optimizer, device and (when planned) the executor whose arena everything runs in."""
    dev = devmod.get_device(cfg.device)
    net = get_model(cfg.model, input_shape=ds.input_shape, classes=ds.num_classes) \
        if not cfg.model.strip().upper().startswith("INPUT") else get_model(cfg.model)
    if net.input_shape != ds.input_shape:
        raise ValueError(f"model {cfg.model!r} takes {net.input_shape} inputs, dataset {ds.name} has {ds.input_shape}")
    net.set_precision(cfg.precision)
    if cfg.conv_algo is not None:
        net.set_conv_algo(cfg.conv_algo)
    schedule = Schedule(cfg.schedule, total_epochs=cfg.epochs, step_epochs=max(cfg.epochs // 3, 1))
    opt = Optimizer(cfg.optimizer, cfg.lr, weight_decay=cfg.weight_decay, schedule=schedule)
    if not cfg.planned:
        net.bind(dev, seed=cfg.seed)
        return net, opt.bind(net), dev, None
    from .memory import PlannedExecutor, fits, make_plan, max_batch  # noqa: PLC0415

    plan = make_plan(net, cfg.batch_size, optimizer=cfg.optimizer)
    if dev.is_gpu:  # refuse before allocating anything if the plan cannot fit
        ok, detail = fits(plan, cfg.budget)
        if not ok:
            best = max_batch(net, cfg.budget, cfg.optimizer)
            raise PlanExceedsBudget(
                f"{net.name} at batch {cfg.batch_size} {detail['summary']}: it does not fit. "
                f"The largest batch that fits is {best}; run with --batch-size {best} "
                f"(see `gpuconv plan {cfg.model} --batch {cfg.batch_size}` for where the memory goes)")
    executor = PlannedExecutor(net, plan, dev, seed=cfg.seed)
    opt.bind(net, state_buffers=executor.state_views(), hyper=executor.hyper_view())
    return net, opt, dev, executor


def evaluate(net: Net, x: Any, y: Any, batch: int = 1000, executor: Any = None) -> tuple[float, float]:
    """(accuracy, mean loss) over a device-resident set; one host sync at the end.

    With an executor, full batches run in its planned buffers (batch = the plan's);
    a smaller remainder runs unplanned.
    """
    xp = devmod.array_module(x)
    correct = xp.zeros((), dtype=np.int64)
    loss_sum = xp.zeros((), dtype=np.float64)
    bufs = executor.train_step_buffers() if executor is not None else None
    if executor is not None:
        batch = executor.plan.batch
    for i in range(0, x.shape[0], batch):
        yb = y[i:i + batch]
        if bufs is not None and yb.shape[0] == batch:
            executor.input_view()[...] = x[i:i + batch]
            scores = net.forward(executor.input_view(), train=False, buffers=bufs)
        else:
            scores = net.forward(x[i:i + batch], train=False)
        loss, _ = net.loss_and_grad(scores, yb)
        loss_sum += loss * yb.shape[0]
        correct += loss_ops.accuracy_count(scores, yb)
    n = int(x.shape[0])
    return float(devmod.to_host(correct)) / n, float(devmod.to_host(loss_sum)) / n


def _save(out: Path, net: Net, opt: Optimizer, cfg: TrainConfig, epoch: int, next_batch: int,
          history: list[dict[str, Any]], norm: tuple[np.ndarray, np.ndarray]) -> None:
    arrays = {**net.state_arrays(), **opt.state_arrays(), "norm.mean": norm[0], "norm.std": norm[1]}
    meta = {"config": dataclasses.asdict(cfg), "epoch": epoch, "next_batch": next_batch, "step": net.step,
            "history": history, "model": cfg.model, "dataset": cfg.dataset, "format": 1}
    save_checkpoint(out / CHECKPOINT, arrays, meta)


def train(cfg: TrainConfig, stream: IO[str] | None = None) -> TrainResult:
    """Run (or resume) a training run; returns the final metrics."""
    stream = stream if stream is not None else sys.stderr
    cfg.validate()
    out = Path(cfg.out_dir)
    t0 = time.perf_counter()
    ds = load_dataset(cfg)
    if cfg.planned and len(ds.x_train) < cfg.batch_size:
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the training set ({len(ds.x_train)} images)")
    net, opt, dev, executor = build(cfg, ds)
    xp = dev.xp
    start_epoch, start_batch, history = 0, 0, []
    if cfg.resume:
        arrays, meta = load_checkpoint(out / CHECKPOINT)
        if meta.get("model") != cfg.model or meta.get("dataset") != cfg.dataset:
            raise ValueError(f"{out / CHECKPOINT} is a {meta.get('model')}/{meta.get('dataset')} run, "
                             f"not {cfg.model}/{cfg.dataset}")
        net.load_state_arrays(arrays)
        opt.load_state_arrays(arrays)
        net.step = int(meta["step"])
        start_epoch, start_batch, history = int(meta["epoch"]), int(meta["next_batch"]), list(meta["history"])
        print(f"resuming {out / CHECKPOINT}: epoch {start_epoch + 1}, batch {start_batch}", file=stream)
    # Upload once; from here on batches are gathered on the device.
    x_train, y_train = xp.asarray(ds.x_train), xp.asarray(ds.y_train)
    x_test, y_test = xp.asarray(ds.x_test), xp.asarray(ds.y_test)
    # Planned runs use full batches only (the arena is laid out for exactly batch_size).
    batches = BatchIterator(x_train, y_train, cfg.batch_size, shuffle=True, seed=cfg.seed,
                            drop_last=executor is not None)
    opt.steps_per_epoch = len(batches)
    norm = (ds.mean, ds.std)
    if cfg.save:
        out.mkdir(parents=True, exist_ok=True)
        write_run_classes(out, ds)  # class names and input shape, for gpuconv predict/evaluate
    metrics = MetricsWriter(out / METRICS, append=cfg.resume) if cfg.save else None
    graph = cfg.cuda_graph and dev.is_gpu
    note = ", CUDA graph" if graph else (" (no CUDA graph on the CPU)" if cfg.cuda_graph else "")
    print(f"gpuconv: training {net.name} ({net.num_params:,} params) on {ds.name} "
          f"({len(ds.x_train):,} train / {len(ds.x_test):,} test) on {dev.name}{note}, {cfg.optimizer} "
          f"lr {opt.base_lr:g}, batch {cfg.batch_size}, {cfg.epochs} epochs", file=stream)
    step = TrainStep(net, opt, executor, cuda_graph=graph) if executor is not None else None
    acc, test_loss, train_loss = float("nan"), float("nan"), float("nan")
    epoch = start_epoch
    # A graph is captured on, and replayed in, a stream of its own (the default stream cannot be).
    run_stream = cuda.capture_stream() if graph else contextlib.nullcontext()
    try:
        with run_stream:
            for epoch in range(start_epoch, cfg.epochs):
                it = batches.for_epoch(epoch, start_batch if epoch == start_epoch else 0)
                train_loss, train_acc = _train_epoch(net, opt, it, cfg, epoch, stream, xp, executor, step)
                acc, test_loss = evaluate(net, x_test, y_test, cfg.eval_batch, executor)
                record = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                          "test_loss": test_loss, "test_acc": acc,
                          "lr": opt.lr(), "seconds": round(time.perf_counter() - t0, 3)}
                history.append(record)
                if metrics:
                    metrics.write(record)
                    draw_curves(history, out / CURVES)  # the training-curves picture, redrawn each epoch
                print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {train_loss:.4f}, test loss {test_loss:.4f}, "
                      f"test accuracy {acc * 100:.2f}%", file=stream)
                if cfg.save:
                    _save(out, net, opt, cfg, epoch + 1, 0, history, norm)
    except KeyboardInterrupt:
        if cfg.save and getattr(net, "_batches_done", None) is not None:
            _save(out, net, opt, cfg, epoch, net._batches_done, history, norm)  # type: ignore[attr-defined]
            print(f"\ninterrupted: saved {out / CHECKPOINT}; continue with --resume", file=stream)
        raise
    finally:
        if metrics:
            metrics.close()
    return TrainResult(len(history), acc, test_loss, train_loss, time.perf_counter() - t0, history, net)


def _batches(it: BatchIterator, executor: Any) -> Any:
    """(xb, yb) per batch; with an executor they are gathered straight into its planned views."""
    if executor is None:
        yield from it
        return
    xp = devmod.array_module(it.x)
    x_in, y_in = executor.input_view(), executor.labels_view()
    perm = xp.asarray(it.permutation())
    bs = it.batch_size
    for b in range(it.start_batch, len(it)):
        idx = perm[b * bs:(b + 1) * bs]
        xp.take(it.x, idx, axis=0, out=x_in)
        xp.take(it.y, idx, axis=0, out=y_in)
        yield x_in, y_in


def _train_epoch(net: Net, opt: Optimizer, it: BatchIterator, cfg: TrainConfig, epoch: int,
                 stream: IO[str], xp: Any, executor: Any = None, step: TrainStep | None = None) -> tuple[float, float]:
    """One epoch.  Planned runs go through ``step`` (whose loss/accuracy totals are planned
    device scalars); unplanned ones run the layers directly with device temporaries.
    Returns the epoch's mean training loss and accuracy."""
    if step is not None:
        step.reset_metrics()
        loss_acc, correct_acc = step.loss_sum, step.correct   # device-side running sums since the last sync
    else:
        loss_acc, correct_acc = xp.zeros((), dtype=np.float64), xp.zeros((), dtype=np.int64)
    images_acc = 0
    epoch_loss, epoch_images, epoch_correct = 0.0, 0, 0
    pending = 0
    progress = Progress(len(it), stream=stream, desc=f"epoch {epoch + 1}/{cfg.epochs}", start=it.start_batch)
    net._batches_done = it.start_batch  # type: ignore[attr-defined]
    for b, (xb, yb) in enumerate(_batches(it, executor), start=it.start_batch):
        if cfg.augment:
            aug = augment_batch(xb, np.random.default_rng([cfg.seed, epoch, b]), pad=2)
            if executor is not None:
                xb[...] = aug
            else:
                xb = aug
        if step is not None:
            step.run()
        else:
            scores = net.forward(xb, train=True)
            loss, dscores = net.loss_and_grad(scores, yb)
            correct_acc += loss_ops.accuracy_count(scores, yb)
            net.backward(dscores)
            opt.step()
            net.step += 1
            loss_acc += loss * int(yb.shape[0])
        images_acc += int(yb.shape[0])
        pending += 1
        net._batches_done = b + 1  # type: ignore[attr-defined]
        if pending == cfg.log_every or b + 1 == len(it):
            loss_sum = float(devmod.to_host(loss_acc))   # the only sync points of the loop
            correct = int(devmod.to_host(correct_acc))
            if not math.isfinite(loss_sum):
                progress.close()
                raise TrainingDiverged(
                    f"loss became {loss_sum / images_acc} at epoch {epoch + 1}, batch {b + 1}: stopping. The last "
                    f"good checkpoint (end of epoch {epoch}) is kept; try a lower --lr")
            progress.update(pending, loss=loss_sum / images_acc, acc=correct / images_acc, images=images_acc)
            epoch_loss += loss_sum
            epoch_images += images_acc
            epoch_correct += correct
            loss_acc[...] = 0
            correct_acc[...] = 0
            images_acc, pending = 0, 0
    progress.close()
    return epoch_loss / max(epoch_images, 1), epoch_correct / max(epoch_images, 1)
