"""Training: the loop behind ``gpuconv train``.

Data is uploaded to the device once; batches are gathered there.  Loss and
accuracy accumulate on the device and reach the host only every ``log_every``
steps (for the progress line) and at the end of an epoch, so a GPU run has a
handful of sync points per epoch.  In the planned arena each step is a
:class:`~gpuconv.step.TrainStep`; ``cuda_graph`` captures it once and replays it.
Checkpoints are atomic ``.npz`` files (no pickle); ``resume`` continues exactly
where the run stopped: same seed, same batches, same dropout masks, same numbers.

Data-parallel (``mpirun -n K`` or ``gpuconv train --ranks K``, see :mod:`gpuconv.distributed`):
each rank plans and runs its B/K share of every global batch, the gradients are averaged
across ranks before each update, the metrics are summed over ranks at each sync point, and
rank 0 alone prints and writes the run folder.  A run resumes on any number of ranks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from . import cuda
from . import device as devmod
from .augment import augment as augment_batch
from .augment import augment_into, draw as augment_draws
from .checkpoint import load_checkpoint, save_checkpoint
from .data import DATASETS, BatchIterator, Dataset
from .curves import CURVES, draw_curves
from .net import CONV_ALGOS, Net
from .optim import STATE_SLOTS, Optimizer, Schedule
from .predict import write_run_classes
from .progress import MetricsWriter, Progress
from .step import TrainStep
from .zoo import MODELS, get_model
from . import run as runmod
from .distributed import DistributedError, GradReducer, ShardIterator, World, get_world, local_batch

SCHEDULES = ("constant", "step", "cosine")

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint, if one was saved, is kept."""


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
    out_dir: str | None = None      # the run folder; None: a new runs/<model>-<n>
    resume: bool = False            # continue the run in out_dir (its saved settings must match)
    overwrite: bool = False         # start over in an out_dir that holds a run (its files are deleted)
    augment: bool = False
    log_every: int = 50
    limit_train: int | None = None
    limit_test: int | None = None
    precision: str = "fp32"
    conv_algo: str | None = None    # gemm | winograd | auto | None (the kernel configuration's)
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
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        for name in ("limit_train", "limit_test"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.optimizer not in STATE_SLOTS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(STATE_SLOTS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.device not in devmod.VALID_DEVICES:
            raise ValueError(f"unknown device {self.device!r}: choose one of {', '.join(devmod.VALID_DEVICES)}")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues the run in its folder and --overwrite deletes it: give one of them")
        if not self.model.strip().upper().startswith("INPUT") and self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}: choose one of {', '.join(MODELS)} or give a pattern "
                             f"like 'INPUT[28x28x1] -> CONV3-8 -> RELU -> POOL2 -> FC-10'")


@dataclass
class TrainResult:
    epochs_done: int
    test_accuracy: float
    test_loss: float
    train_loss: float
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    net: Net | None = None
    out_dir: str = ""               # the run folder
    finished_before: bool = False   # the resumed run had already reached its epochs: nothing was trained


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


#: (C, H, W) and number of classes of each built-in dataset: known before its files are read, so the
#: net can be built and its memory plan checked before anything slow happens.
DATASET_GEOMETRY: dict[str, tuple[tuple[int, int, int], int]] = {
    "fashion-mnist": ((1, 28, 28), 10), "mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10), "synthetic": ((3, 32, 32), 10)}


def dataset_geometry(cfg: TrainConfig) -> tuple[tuple[int, int, int], int] | None:
    """(input shape, classes) of cfg's data without reading it; None where only the data can say."""
    if getattr(cfg, "data", None) is not None:
        return None
    return DATASET_GEOMETRY.get(cfg.dataset)


def check_data(cfg: TrainConfig) -> None:
    """Fail fast (DataError) when the data is not where it should be: before the net or data is built."""
    from .data import DataError, find_data_dir  # noqa: PLC0415

    folder = getattr(cfg, "data", None)
    if folder is not None:
        if not Path(folder).is_dir():
            raise DataError(f"--data {folder}: no such folder (give a folder with one sub-folder of images per class)")
    elif cfg.dataset != "synthetic":
        find_data_dir(cfg.dataset, cfg.data_dir)


def make_net(cfg: TrainConfig, input_shape: tuple[int, ...], classes: int) -> Net:
    """The run's net for data of ``input_shape`` and ``classes`` (a pattern must match the data's shape)."""
    pattern = cfg.model.strip().upper().startswith("INPUT")
    net = get_model(cfg.model) if pattern else get_model(cfg.model, input_shape=tuple(input_shape), classes=classes)
    if tuple(net.input_shape) != tuple(input_shape):
        raise ValueError(f"model {cfg.model!r} takes {_hwc(net.input_shape)} inputs, the data has "
                         f"{_hwc(input_shape)}")
    if net.output_shape[0] != classes:   # a pattern names its classes in its last FC
        raise ValueError(f"model {cfg.model!r} ends in {net.output_shape[0]} class scores, the data has "
                         f"{classes} classes: end the pattern with FC-{classes}")
    return net


def _hwc(shape: tuple[int, ...]) -> str:
    c, h, w = shape
    return f"{h}x{w}x{c}"


def check_budget(cfg: TrainConfig, net: Net, dev: devmod.Device, plan: Any = None) -> None:
    """Refuse a run whose memory plan does not fit the budget, before anything is allocated.

    On the GPU the budget is the card's memory (default: what is free now); on the CPU it is
    this machine's memory (default: MemAvailable): a given budget is never ignored.
    """
    from .memory import fits, make_plan, max_batch  # noqa: PLC0415
    from .memory.budget import BudgetError, parse_budget  # noqa: PLC0415

    where = "cuda" if dev.is_gpu else "cpu"
    plan = plan or make_plan(net, cfg.batch_size, optimizer=cfg.optimizer)
    # Ranks on one machine share its host memory (each GPU rank has a card of its own).
    share = 1 if dev.is_gpu else get_world().local_size
    try:
        limit = cfg.budget if share == 1 else parse_budget(cfg.budget, device=where) // share
        ok, detail = fits(plan, limit, device=where)
    except BudgetError:
        if cfg.budget is None and where == "cpu":
            return  # no budget given and the machine does not say what it has: nothing to check against
        raise
    if ok:
        return
    best = max_batch(net, limit, cfg.optimizer, device=where)
    budget = f"the budget {cfg.budget}" if cfg.budget is not None else (
        "the GPU's free memory" if dev.is_gpu else "this machine's available memory")
    if share > 1:
        budget += f" shared by the {share} ranks on this machine"
    ranks = max(1, cfg.batch_size // int(plan.batch))   # several ranks: each plans its share of the batch
    per_rank = f" per rank ({ranks} ranks)" if ranks > 1 else ""
    advice = (f"The largest batch that fits is {best}{per_rank}: run with --batch-size {best * ranks}"
              if best > 0 else f"Not even batch 1 fits {budget}: choose a smaller model or a larger budget")
    plan_cmd = ["gpuconv", "plan", cfg.model]
    if not cfg.model.strip().upper().startswith("INPUT"):
        plan_cmd += ["--input", _hwc(net.input_shape), "--classes", str(net.layers[-1].out_shape[0])]
    plan_cmd += ["--batch", str(plan.batch), "--optimizer", cfg.optimizer, "--device", where]
    if cfg.budget is not None:
        plan_cmd += ["--budget", str(cfg.budget)]
    raise PlanExceedsBudget(
        f"{net.name} at batch {plan.batch}{per_rank} does not fit {budget}: it {detail['summary']}. {advice}. "
        f"Where the memory goes: {shlex.join(plan_cmd)}")


def check_ranks(cfg: TrainConfig, ranks: int) -> None:
    """Refuse settings that cannot run on ``ranks`` ranks (before any rank starts, when launched by
    ``--ranks``): a global batch that does not split evenly, and a CUDA graph (NCCL's all-reduce
    inside a captured graph has not been verified on a GPU yet)."""
    if ranks > 1 and cfg.cuda_graph:
        raise DistributedError(f"--cuda-graph cannot run on {ranks} ranks yet (NCCL's all-reduce inside a "
                               f"captured CUDA graph is not verified): drop --cuda-graph, or train on one rank")
    local_batch(cfg.batch_size, ranks)


def per_rank_dropout(net: Net, rank: int) -> None:
    """Each rank its own dropout masks: the rank goes into the high 32 bits of every DROPOUT seed.

    Rank 0 keeps the one-process seeds, so its masks are those one process draws for the
    first B/K rows of each global batch; the other ranks draw distinct masks, the same on
    every run (the mask hashes the element's index within the rank's batch, so matching one
    process for every rank would need that index offset in the kernel)."""
    from .layers import Dropout  # noqa: PLC0415

    for layer in net.layers:
        if isinstance(layer, Dropout):
            layer.seed = (int(layer.seed) & 0xFFFFFFFF) | (int(rank) << 32)


def build(cfg: TrainConfig, ds: Dataset | None = None, dev: devmod.Device | None = None, *,
          geometry: tuple[tuple[int, ...], int] | None = None, batch: int | None = None
          ) -> tuple[Net, Optimizer, devmod.Device, Any]:
    """Net, optimizer, device and (when planned) the executor whose arena everything runs in.

    The net is built for ``geometry`` (input shape, classes), else for ``ds``'s; the memory plan is
    checked against the budget before anything is allocated.
    """
    dev = dev if dev is not None else devmod.get_device(cfg.device)
    if geometry is None:
        assert ds is not None, "build() needs the dataset or its geometry"
        geometry = (ds.input_shape, ds.num_classes)
    net = make_net(cfg, *geometry)
    net.set_precision(cfg.precision)
    if cfg.conv_algo is not None:
        net.set_conv_algo(cfg.conv_algo)
    schedule = Schedule(cfg.schedule, total_epochs=cfg.epochs, step_epochs=max(cfg.epochs // 3, 1))
    opt = Optimizer(cfg.optimizer, cfg.lr, weight_decay=cfg.weight_decay, schedule=schedule)
    from .memory import PlannedExecutor, make_plan  # noqa: PLC0415

    plan = make_plan(net, batch or cfg.batch_size, optimizer=cfg.optimizer)   # batch: this rank's share
    check_budget(cfg, net, dev, plan)  # refuse before allocating anything if the plan cannot fit
    if not cfg.planned:
        net.bind(dev, seed=cfg.seed)
        return net, opt.bind(net), dev, None
    executor = PlannedExecutor(net, plan, dev, seed=cfg.seed)
    opt.bind(net, state_buffers=executor.state_views(), hyper=executor.hyper_view())
    return net, opt, dev, executor


def evaluate(net: Net, x: Any, y: Any, batch: int = 1000, executor: Any = None) -> tuple[float, float]:
    """(accuracy, mean loss) over a device-resident set; one host sync at the end.

    The inference step of :class:`~gpuconv.step.TrainStep`: with an executor, full batches
    run in its planned memory (batch = the plan's); a smaller remainder runs unplanned.
    """
    return TrainStep(net, None, executor).evaluate(x, y, batch)


def _save(out: Path, net: Net, opt: Optimizer, cfg: TrainConfig, epoch: int, next_batch: int,
          history: list[dict[str, Any]], norm: tuple[np.ndarray, np.ndarray], seconds: float = 0.0) -> None:
    arrays = {**net.state_arrays(), **opt.state_arrays(), "norm.mean": norm[0], "norm.std": norm[1]}
    meta = {"config": _settings(cfg), "epoch": epoch, "next_batch": next_batch,
            "step": net.step, "history": history, "model": cfg.model, "dataset": cfg.dataset, "format": 1,
            "seconds": round(seconds, 3)}
    save_checkpoint(out / CHECKPOINT, arrays, meta)


def _settings(cfg: TrainConfig) -> dict[str, Any]:
    """The run's settings as saved in run.json (the learning rate resolved: the default is a number too)."""
    d = runmod.run_config(dataclasses.asdict(cfg))
    if d.get("lr") is None:
        from .optim import DEFAULT_LR  # noqa: PLC0415
        d["lr"] = DEFAULT_LR.get(cfg.optimizer)
    return d


def check_run_folder(cfg: TrainConfig) -> dict[str, Any] | None:
    """Apply the run-folder rules without writing anything; the checkpoint's meta when resuming one.

    A folder holding a run is refused unless resumed or overwritten; a resumed run's saved
    settings must equal ``cfg``'s, except :data:`gpuconv.run.MAY_CHANGE` (``epochs`` may grow).
    """
    if cfg.out_dir is None:
        if cfg.resume:
            raise runmod.RunError("--resume needs the run's folder: gpuconv train --resume DIR")
        return None
    if not cfg.save and not cfg.resume:
        return None   # nothing will be written
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise runmod.RunError(f"--out {out}: a file is in the way (a run folder is a directory)")
    if not cfg.resume:
        if runmod.holds_run(out) and not cfg.overwrite:
            meta = _progress_or_none(out)
            state = f" (epoch {meta.get('epoch')} done)" if meta else ""
            raise runmod.RunError(
                f"{out} already holds a run{state}. Continue it with: gpuconv train --resume {shlex.quote(str(out))}"
                f" (add --epochs N to train it further), or start it over with --overwrite, or choose another --out")
        return None
    if not runmod.holds_run(out):
        raise runmod.RunError(f"no run to resume in {out}" + ("" if out.is_dir() else " (no such folder)"))
    saved = runmod.load_run_config(out)
    diffs = runmod.differences(saved, _settings(cfg))
    if diffs:
        raise runmod.RunError(runmod.conflict_message(out, diffs))
    return runmod.progress_of(out)


def check_same_source(cfg: TrainConfig, ds: Dataset) -> None:
    """A resumed run must read the files it began on: an image folder whose files changed would
    give another training set and another validation split (DataError, before training)."""
    from .data import DataError  # noqa: PLC0415
    from .predict import CLASSES_FILE  # noqa: PLC0415

    path = Path(cfg.out_dir) / CLASSES_FILE
    try:
        saved = json.loads(path.read_text()).get("source", "")
    except (OSError, ValueError):
        return   # a run saved before its data's source was recorded: nothing to compare
    if saved and ds.source and saved != ds.source:
        raise DataError(f"--data {cfg.data}: the image folder changed since this run began (it had {saved}, it "
                        f"has {ds.source}); resuming would train and validate on other images. Restore the "
                        f"folder, or train a new run")


def _progress_or_none(out: Path) -> dict[str, Any] | None:
    try:
        return runmod.progress_of(out)
    except Exception:  # noqa: BLE001  (a corrupt checkpoint still makes the folder a run)
        return None


def _divergence_note(out: Path | None) -> str:
    """What is left on disk after the loss diverged: the checkpoint and the epoch it holds, or none."""
    meta = _progress_or_none(out) if out is not None else None
    if meta is None:
        return "No checkpoint was saved (the loss diverged before the end of the first epoch)"
    where = f"end of epoch {meta['epoch']}" if not meta.get("next_batch") else \
        f"epoch {int(meta['epoch']) + 1}, batch {meta['next_batch']}"
    return f"The last good checkpoint, {out / CHECKPOINT} ({where}), is kept"


def train(cfg: TrainConfig, stream: IO[str] | None = None) -> TrainResult:
    """Run (or resume) a training run; returns the final metrics.

    The checks that can fail come first, cheapest first, and write nothing: settings, device,
    run folder (see :mod:`gpuconv.run`), data on disk, the net and its memory plan against the
    budget; only then is the data read and the run folder written.
    """
    stream = stream if stream is not None else sys.stderr
    t0 = time.perf_counter()
    cfg.validate()
    world = get_world()
    stream = world.root_stream(stream)             # one progress line per run
    check_ranks(cfg, world.size)
    local = local_batch(cfg.batch_size, world.size)
    if world.distributed and devmod.resolve_device_name(cfg.device) == "cuda":
        world.use_gpu()                            # the local rank picks the GPU, before any allocation
    dev = devmod.get_device(cfg.device)
    meta = check_run_folder(cfg)
    if cfg.resume and meta is not None and not meta.get("next_batch") and int(meta["epoch"]) >= cfg.epochs:
        h = list(meta.get("history") or [])
        last = h[-1] if h else {}
        return TrainResult(int(meta["epoch"]), float(last.get("test_acc", float("nan"))),
                           float(last.get("test_loss", float("nan"))), float(last.get("train_loss", float("nan"))),
                           float(meta.get("seconds", 0.0)), h, None, str(cfg.out_dir), finished_before=True)
    check_data(cfg)
    geometry = dataset_geometry(cfg)
    ds = None if geometry is not None else load_dataset(cfg)
    if ds is not None and cfg.resume:
        check_same_source(cfg, ds)
    # Each rank plans its share; a plan that does not fit stops every rank together (one message).
    net, opt, dev, executor = _together(world, build, cfg, ds, dev, geometry=geometry, batch=local)
    reducer = None
    if world.distributed:
        if dev.is_gpu:
            world.init_nccl()
        world.broadcast_(net.param_buffer)         # one start for every replica
        reducer = GradReducer(world, net)
        per_rank_dropout(net, world.rank)
    if ds is None:
        ds = _together(world, _load_for, cfg, net)
    if cfg.planned and len(ds.x_train) < cfg.batch_size:
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the training set ({len(ds.x_train)} images)")
    xp = dev.xp
    start_epoch, start_batch, history, t_offset = 0, 0, [], 0.0
    out = Path(cfg.out_dir) if cfg.out_dir is not None else None
    if cfg.resume and meta is not None:
        assert out is not None
        arrays, meta = load_checkpoint(out / CHECKPOINT)
        net.load_state_arrays(arrays)
        opt.load_state_arrays(arrays)
        net.step = int(meta["step"])
        start_epoch, start_batch, history = int(meta["epoch"]), int(meta["next_batch"]), list(meta["history"])
        t_offset = float(meta.get("seconds", history[-1]["seconds"] if history else 0.0))
        print(f"resuming {out / CHECKPOINT}: epoch {start_epoch + 1}, batch {start_batch}", file=stream)
    save = cfg.save and world.is_root              # rank 0 writes the run folder
    world.barrier()   # every rank has checked the run folder before rank 0 writes it
    if save:  # the checks passed: from here on the run folder is written
        if out is None:
            out = runmod.new_run_dir(cfg.model)
            cfg.out_dir = str(out)
        elif cfg.overwrite:
            runmod.clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        runmod.save_run_config(out, _settings(cfg))
    if cfg.save and world.distributed:
        out = Path(world.bcast(str(out)))
        cfg.out_dir = str(out)
    out = out if out is not None else Path(".")
    # Upload once; from here on batches are gathered on the device.
    x_train, y_train = xp.asarray(ds.x_train), xp.asarray(ds.y_train)
    x_test, y_test = xp.asarray(ds.x_test), xp.asarray(ds.y_test)
    # Planned runs use full batches only (the arena is laid out for exactly batch_size).
    if world.distributed:   # each rank its share of every global batch (full batches only)
        batches: BatchIterator = ShardIterator(x_train, y_train, cfg.batch_size, world, seed=cfg.seed)
    else:
        batches = BatchIterator(x_train, y_train, cfg.batch_size, shuffle=True, seed=cfg.seed,
                                drop_last=executor is not None)
    opt.steps_per_epoch = len(batches)
    norm = (ds.mean, ds.std)
    if save:
        out.mkdir(parents=True, exist_ok=True)
        write_run_classes(out, ds)  # class names and input shape, for gpuconv predict/evaluate
    metrics = MetricsWriter(out / METRICS, append=True) if save else None   # never truncated
    graph = cfg.cuda_graph and dev.is_gpu
    note = ", CUDA graph" if graph else (" (no CUDA graph on the CPU)" if cfg.cuda_graph else "")
    print(f"gpuconv: training {net.name} ({net.num_params:,} params) on {ds.name} "
          f"({len(ds.x_train):,} train / {len(ds.x_test):,} test) on {dev.name}{note}, {cfg.optimizer} "
          f"lr {opt.base_lr:g}, batch {cfg.batch_size}, {cfg.epochs} epochs"
          + (f", {world.describe()}" if world.distributed else ""), file=stream)
    step = TrainStep(net, opt, executor, cuda_graph=graph, reducer=reducer)
    acc, test_loss, train_loss = float("nan"), float("nan"), float("nan")
    epoch = start_epoch
    # A graph is captured on, and replayed in, a stream of its own (the default stream cannot be).
    run_stream = cuda.capture_stream() if graph else contextlib.nullcontext()
    try:
        # several ranks: Ctrl-C stops every rank at the same sync point (see _train_epoch)
        with run_stream, world.deferred_interrupt(), warnings.catch_warnings():
            # A diverging loss makes NumPy warn on every op; the guard in the epoch loop says it once, clearly.
            warnings.filterwarnings("ignore", r"(overflow|invalid value|divide by zero) encountered", RuntimeWarning)
            for epoch in range(start_epoch, cfg.epochs):
                it = batches.for_epoch(epoch, start_batch if epoch == start_epoch else 0)
                train_loss, train_acc = _train_epoch(step, it, cfg, epoch, stream, world)
                acc, test_loss = _evaluate(step, world, x_test, y_test, cfg.eval_batch)
                record = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                          "test_loss": test_loss, "test_acc": acc,
                          "lr": opt.lr(), "seconds": round(t_offset + time.perf_counter() - t0, 3)}
                history.append(record)
                if metrics:
                    metrics.write(record)
                    draw_curves(history, out / CURVES)  # the training-curves picture, redrawn each epoch
                print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {train_loss:.4f}, test loss {test_loss:.4f}, "
                      f"test accuracy {acc * 100:.2f}%", file=stream)
                if save:
                    _save(out, net, opt, cfg, epoch + 1, 0, history, norm, t_offset + time.perf_counter() - t0)
    except KeyboardInterrupt:
        if save and getattr(net, "_batches_done", None) is not None:
            done = net._batches_done  # type: ignore[attr-defined]
            _save(out, net, opt, cfg, epoch, done, history, norm, t_offset + time.perf_counter() - t0)
            print(f"\ninterrupted: saved {out / CHECKPOINT} (epoch {epoch + 1}, {done} batches done)", file=stream)
        raise
    except TrainingDiverged as exc:
        # The epoch loop says where the loss diverged; what is on disk is said here, from the disk.
        raise TrainingDiverged(f"{exc} {_divergence_note(out if cfg.save else None)}; try a lower --lr") from None
    finally:
        if metrics:
            metrics.close()
    return TrainResult(len(history), acc, test_loss, train_loss, t_offset + time.perf_counter() - t0, history, net,
                       str(out) if cfg.save else "")


def _load_for(cfg: TrainConfig, net: Net) -> Dataset:
    ds = load_dataset(cfg)
    if tuple(ds.input_shape) != tuple(net.input_shape):
        raise ValueError(f"model {cfg.model!r} takes {_hwc(net.input_shape)} inputs, dataset {ds.name} has "
                         f"{_hwc(ds.input_shape)}")
    return ds


def _together(world: World, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; on several ranks an error on any rank stops every rank together
    (:meth:`World.settle`: rank 0 reports it, no rank is left waiting in a collective)."""
    if not world.distributed:
        return fn(*args, **kwargs)
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        from .cli import _exit_status  # noqa: PLC0415

        world.settle(exc, lambda e: _exit_status(e) or 1)
        raise
    world.settle(None)
    return result


def _batches(it: BatchIterator, step: TrainStep, augment: bool, epoch: int, seed: int) -> Any:
    """(xb, yb) per batch, augmented when asked (random crop with pad 2 and horizontal flip, drawn
    from ``default_rng([seed, epoch, batch])``).  Planned, each batch is gathered (and augmented)
    straight into the plan's input/labels views: nothing is allocated per batch."""
    pad = 2

    def rng(b: int) -> np.random.Generator:
        return np.random.default_rng([seed, epoch, b])

    xp = devmod.array_module(it.x)
    bs = it.batch_size
    if isinstance(it, ShardIterator):
        # One rank's share of global batch b: the draws one process makes for the whole global
        # batch, rows of this rank's share, so K ranks augment each image as one process would.
        lo = it.rank * bs

        def batch_draws(b: int) -> np.ndarray:
            return augment_draws(rng(b), it.global_batch, pad=pad)[lo:lo + bs]
    else:
        def batch_draws(b: int) -> np.ndarray:
            return augment_draws(rng(b), bs, pad=pad)

    if not step.planned:
        sharded = isinstance(it, ShardIterator)
        for b, (xb, yb) in enumerate(it, start=it.start_batch):
            if augment and sharded:
                n = int(xb.shape[0])
                xb = augment_into(xp.empty_like(xb), xb, xp.arange(n, dtype=np.int64),
                                  xp.asarray(batch_draws(b)), pad=pad)
            elif augment:
                xb = augment_batch(xb, rng(b), pad=pad)   # a last partial batch draws for its own rows
            yield xb, yb
        return
    ex = step.executor
    x_in, y_in = ex.input_view(), ex.labels_view()
    perm = xp.asarray(it.permutation())
    draws = xp.empty((bs, 3), dtype=np.int32) if augment else None   # the host's draws, per batch
    for b in range(it.start_batch, len(it)):
        idx = perm[b * bs:(b + 1) * bs]
        if draws is not None:
            devmod.copy_into(draws, batch_draws(b))
            augment_into(x_in, it.x, idx, draws, pad=pad)
        else:
            xp.take(it.x, idx, axis=0, out=x_in)
        xp.take(it.y, idx, axis=0, out=y_in)
        yield x_in, y_in


def _evaluate(step: TrainStep, world: World, x: Any, y: Any, batch: int) -> tuple[float, float]:
    """(accuracy, mean loss) over the test set: each rank its contiguous share, totals summed.
    BN layers use rank 0's running statistics (the ones the checkpoint keeps)."""
    if not world.distributed:
        return step.evaluate(x, y, batch)
    for layer in step.net.layers:
        if getattr(layer, "kind", "") == "BATCHNORM":
            world.broadcast_(layer.running_mean)
            world.broadcast_(layer.running_var)
    n = int(x.shape[0])
    lo, hi = n * world.rank // world.size, n * (world.rank + 1) // world.size
    acc, loss = step.evaluate(x[lo:hi], y[lo:hi], batch) if hi > lo else (0.0, 0.0)
    tot_correct, tot_loss, tot_n = world.sum([acc * (hi - lo), loss * (hi - lo), hi - lo])
    return float(round(tot_correct) / tot_n), float(tot_loss / tot_n)


def _train_epoch(step: TrainStep, it: BatchIterator, cfg: TrainConfig, epoch: int, stream: IO[str],
                 world: World | None = None) -> tuple[float, float]:
    """One epoch of ``step`` (planned or not: its loss/accuracy totals are planned device scalars
    or device temporaries).  Returns the epoch's mean training loss and accuracy."""
    net = step.net
    step.reset_metrics()
    loss_acc, correct_acc = step.loss_sum, step.correct   # device-side running sums since the last sync
    images_acc = 0
    epoch_loss, epoch_images, epoch_correct = 0.0, 0, 0
    pending = 0
    progress = Progress(len(it), stream=stream, desc=f"epoch {epoch + 1}/{cfg.epochs}", start=it.start_batch)
    net._batches_done = it.start_batch  # type: ignore[attr-defined]
    for b, (xb, yb) in enumerate(_batches(it, step, cfg.augment, epoch, cfg.seed), start=it.start_batch):
        step.run(xb, yb)
        images_acc += int(yb.shape[0])
        pending += 1
        net._batches_done = b + 1  # type: ignore[attr-defined]
        if pending == cfg.log_every or b + 1 == len(it):
            loss_sum = float(devmod.to_host(loss_acc))   # the only sync points of the loop
            correct = int(devmod.to_host(correct_acc))
            stop = False
            if world is not None and world.distributed:   # totals of all ranks: every rank sees the same
                loss_sum, c, images_acc, stop = world.sum([loss_sum, correct, images_acc, world.interrupted])
                correct, images_acc = int(c), int(images_acc)
            if not math.isfinite(loss_sum):
                progress.close()
                if world is not None:
                    world.together = world.distributed   # every rank saw the same loss: all stop here
                raise TrainingDiverged(f"loss became {loss_sum / images_acc} at epoch {epoch + 1}, batch {b + 1}: "
                                       f"stopping.")   # train() adds what is on disk
            progress.update(pending, loss=loss_sum / images_acc, acc=correct / images_acc, images=images_acc)
            epoch_loss += loss_sum
            epoch_images += images_acc
            epoch_correct += correct
            step.reset_metrics()
            images_acc, pending = 0, 0
            if stop:   # Ctrl-C on some rank: every rank stops after the same batch, rank 0 saves it
                progress.close()
                world.together = True   # type: ignore[union-attr]
                raise KeyboardInterrupt
    progress.close()
    return epoch_loss / max(epoch_images, 1), epoch_correct / max(epoch_images, 1)
