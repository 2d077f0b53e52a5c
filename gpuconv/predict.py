"""Use a trained run: ``gpuconv predict`` (top-k classes per image) and ``gpuconv evaluate``.

A run folder holds ``checkpoint.npz`` (parameters, the training set's normalization,
the run's configuration in its meta) and ``classes.json`` (class names and the
net's input shape, written by ``gpuconv train``).  Images given to ``predict`` go
through the same decoding, resize and center crop as training on an image folder
(:func:`gpuconv.imagefolder.read_image`) and the run's saved normalization.

The net is loaded on the CPU unless ``--device`` or ``$GPUCONV_DEVICE`` say
otherwise: a few images do not repay compiling the kernels.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .data import DataError, Dataset

__all__ = ["CLASSES_FILE", "RunError", "Run", "write_run_classes", "load_run", "image_paths", "predict_images",
           "confusion_matrix", "evaluate_run", "add_commands"]

CLASSES_FILE = "classes.json"
_CHECKPOINT = "checkpoint.npz"   # the name gpuconv.train saves under


class RunError(ValueError):
    """The folder given is not a run that can be used (missing, no checkpoint, no class names)."""


def write_run_classes(folder: str | os.PathLike[str], ds: Dataset) -> None:
    """Save the class names and input shape of a run's data beside its checkpoint."""
    info = {"dataset": ds.name, "classes": list(ds.classes), "input_shape": list(ds.input_shape)}
    if ds.source:
        info["source"] = ds.source
    path = Path(folder) / CLASSES_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, path)


@dataclass
class Run:
    """A trained net ready for inference, with what it needs to read new images."""

    folder: Path
    net: Any
    classes: list[str]
    input_shape: tuple[int, int, int]
    mean: np.ndarray
    std: np.ndarray
    config: dict[str, Any]

    def scores(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        """Class probabilities (softmax) for uint8 ``(N, C, H, W)`` images, as float64 ``(N, classes)``."""
        from .data import apply_normalization  # noqa: PLC0415
        from .device import to_host  # noqa: PLC0415

        xp = self.net.device.xp
        out = []
        for i in range(0, len(x), batch):
            xb = apply_normalization(x[i:i + batch].astype(np.float32) * np.float32(1 / 255), self.mean, self.std)
            s = to_host(self.net.forward(xp.asarray(xb), train=False)).astype(np.float64)
            s = s[:, :len(self.classes)]   # a pattern's FC may have more outputs than the data had classes
            s -= s.max(axis=1, keepdims=True)
            p = np.exp(s)
            out.append(p / p.sum(axis=1, keepdims=True))
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))


def _device_name(flag: str | None) -> str:
    from .device import DEVICE_ENV  # noqa: PLC0415

    return flag or os.environ.get(DEVICE_ENV, "").strip() or "auto"


def load_run(folder: str | os.PathLike[str], device: str | None = None) -> Run:
    """The run saved in ``folder`` with its net bound on ``device`` (None: $GPUCONV_DEVICE, else auto)."""
    from .checkpoint import CheckpointError, load_checkpoint  # noqa: PLC0415
    from .data import DATASETS  # noqa: PLC0415
    from .device import get_device  # noqa: PLC0415
    from .zoo import get_model  # noqa: PLC0415

    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"{folder}: no such run folder")
    ckpt = folder / _CHECKPOINT
    if not ckpt.is_file():
        raise RunError(f"{folder}: not a run folder (no {_CHECKPOINT}; train one with gpuconv train --out {folder})")
    arrays, meta = load_checkpoint(ckpt)   # CheckpointError: a corrupt file (it ran and failed)
    config = _run_config(folder, meta)
    model = config.get("model") or meta.get("model")
    if not model:
        raise CheckpointError(f"{ckpt}: the checkpoint does not say which model it holds")
    info_path = folder / CLASSES_FILE
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
            classes, shape = list(info["classes"]), tuple(int(v) for v in info["input_shape"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{info_path}: unreadable ({type(e).__name__}: {e})") from None
    else:  # a run from before classes.json: a built-in dataset names its classes
        name = config.get("dataset") or meta.get("dataset")
        if config.get("data") or name not in DATASETS:
            raise RunError(f"{folder}: no {CLASSES_FILE}, so the class names are unknown")
        ds = DATASETS[name](limit_train=1, limit_test=1, data_dir=config.get("data_dir"))
        classes, shape = ds.classes, ds.input_shape
    try:
        if model.strip().upper().startswith("INPUT"):
            net = get_model(model)
        else:
            net = get_model(model, input_shape=shape, classes=len(classes))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{ckpt}: cannot rebuild its model {model!r}: {e}") from None
    if "norm.mean" not in arrays or "norm.std" not in arrays:
        raise CheckpointError(f"{ckpt}: no saved normalization (norm.mean / norm.std)")
    dev = get_device(_device_name(device))
    net.bind(dev, seed=0)
    try:
        net.load_state_arrays(arrays)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{ckpt}: {e}") from None
    return Run(folder, net, classes, tuple(net.input_shape), np.asarray(arrays["norm.mean"]),
               np.asarray(arrays["norm.std"]), config)


def _run_config(folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The run's settings: its ``run.json`` where there is one, else the checkpoint's copy."""
    path = folder / "run.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(cfg, dict):
                return cfg
        except (OSError, ValueError):
            pass  # fall back to the checkpoint's copy
    return dict(meta.get("config") or {})


def image_paths(items: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files named directly, plus the PNG/JPEG files anywhere under named folders (sorted)."""
    from .imagefolder import IMAGE_SUFFIXES  # noqa: PLC0415

    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise DataError(f"{p}: no {', '.join(IMAGE_SUFFIXES)} images in this folder")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return out


def predict_images(run: Run, paths: Sequence[Path], top_k: int = 3) -> list[list[tuple[str, float]]]:
    """Per image, the ``top_k`` (class name, probability) pairs, most probable first."""
    from .imagefolder import read_image  # noqa: PLC0415

    x = np.stack([read_image(p, run.input_shape) for p in paths]) if paths else \
        np.zeros((0, *run.input_shape), dtype=np.uint8)
    probs = run.scores(x)
    k = min(top_k, len(run.classes))
    res = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]
        res.append([(run.classes[i], float(row[i])) for i in order])
    return res


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 ``(classes, classes)``: row = true class, column = predicted class."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return m


def _run_split(run: Run) -> tuple[str, np.ndarray, np.ndarray]:
    """(description, uint8 images, labels) of the run's own test / validation split, as trained."""
    from .data import DATASETS  # noqa: PLC0415
    from .imagefolder import load_image_folder  # noqa: PLC0415

    cfg = run.config
    if cfg.get("data"):
        ds = load_image_folder(cfg["data"], run.input_shape, cfg.get("val_fraction", 0.1), cfg.get("seed", 0),
                               limit_train=1, limit_test=cfg.get("limit_test"))
        what = f"validation split of {cfg['data']}"
    else:
        name = cfg.get("dataset")
        if name not in DATASETS:
            raise RunError(f"{run.folder}: its configuration names no dataset to evaluate on; pass --data FOLDER")
        ds = DATASETS[name](data_dir=cfg.get("data_dir"), limit_train=1, limit_test=cfg.get("limit_test"))
        what = f"{name} test set"
    if ds.input_shape != run.input_shape:
        raise RunError(f"{what}: images are {ds.input_shape}, the net takes {run.input_shape}")
    return what, np.round(ds.x_test * 255).astype(np.uint8), ds.y_test


def _folder_split(run: Run, folder: str) -> tuple[str, np.ndarray, np.ndarray]:
    """Every image of another image folder, its class names matched to the run's."""
    from .imagefolder import cached_images, scan_folder  # noqa: PLC0415

    classes, files = scan_folder(folder)
    unknown = [c for c in classes if c not in run.classes]
    if unknown:
        raise DataError(f"{folder}: class folders {', '.join(map(repr, unknown))} are not classes of this run "
                        f"({', '.join(run.classes)})")
    images = cached_images(folder, files, run.input_shape)
    labels = np.array([run.classes.index(classes[k]) for _, k in files], dtype=np.int64)
    return f"all {len(files)} images of {folder}", np.asarray(images), labels


def evaluate_run(run: Run, data: str | None = None) -> tuple[str, float, np.ndarray]:
    """(what was evaluated, accuracy, confusion matrix) on ``data`` (an image folder) or the run's split."""
    what, x, y = _folder_split(run, data) if data else _run_split(run)
    if len(y) == 0:
        raise DataError(f"{what}: no images to evaluate")
    pred = run.scores(x).argmax(axis=1)
    cm = confusion_matrix(y, pred, len(run.classes))
    return what, float(np.trace(cm)) / len(y), cm


def format_confusion(cm: np.ndarray, classes: Sequence[str], width: int = 10) -> str:
    """The matrix as text: one row per true class, one column per predicted class."""
    names = [c if len(c) <= width else c[:width - 1] + "~" for c in classes]
    cell = max(5, len(str(int(cm.max(initial=0)))) + 1)
    head = " " * (width + 2) + "".join(f"{i:>{cell}d}" for i in range(len(names)))
    lines = ["confusion matrix (rows: true class, columns: predicted, numbered as the rows):", head]
    for i, (name, row) in enumerate(zip(names, cm)):
        lines.append(f"{name:>{width}s} {i:<1d}" + "".join(f"{int(v):>{cell}d}" for v in row))
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``predict`` and ``evaluate`` on the ``gpuconv`` command."""
    p = sub.add_parser("predict", help="top-k class names with probabilities for images, from a trained run")
    p.add_argument("run", metavar="DIR", help="a run folder (written by gpuconv train --out DIR)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG files, or folders searched for them")
    p.add_argument("--top-k", type=int, default=3, help="how many classes to print per image (default 3)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="where to run the net (default: $GPUCONV_DEVICE, else cpu)")
    p.set_defaults(func=_predict_command)
    p = sub.add_parser("evaluate", help="accuracy and confusion matrix of a trained run")
    p.add_argument("run", metavar="DIR", help="a run folder (written by gpuconv train --out DIR)")
    p.add_argument("--data", default=None, metavar="FOLDER", help="an image folder (one sub-folder per class) "
                   "to evaluate on; default: the run's own test / validation split")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="where to run the net (default: $GPUCONV_DEVICE, else cpu)")
    p.set_defaults(func=_evaluate_command)


def _fail(command: str, exc: BaseException) -> int:
    """One line on stderr; exit 2 when the command cannot work as given (a path that is not a run or
    an image, a bad flag, a device that is not there), 1 when it ran and failed (a corrupt checkpoint)."""
    from .checkpoint import CheckpointError  # noqa: PLC0415

    print(f"gpuconv {command}: {exc}", file=sys.stderr)
    return 1 if isinstance(exc, (CheckpointError, OSError)) else 2


def _predict_command(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError  # noqa: PLC0415
    from .device import DeviceError  # noqa: PLC0415

    try:
        if args.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
        paths = image_paths(args.images)
        run = load_run(args.run, args.device)
        results = predict_images(run, paths, args.top_k)
    except (ValueError, DataError, DeviceError, CheckpointError, OSError) as exc:
        return _fail("predict", exc)
    for path, top in zip(paths, results):
        print(f"{path}: " + ", ".join(f"{name} {p * 100:.1f}%" for name, p in top))
    return 0


def _evaluate_command(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError  # noqa: PLC0415
    from .device import DeviceError  # noqa: PLC0415

    try:
        run = load_run(args.run, args.device)
        what, acc, cm = evaluate_run(run, args.data)
    except (ValueError, DataError, DeviceError, CheckpointError, OSError) as exc:
        return _fail("evaluate", exc)
    print(f"{what}: accuracy {acc * 100:.2f}% ({int(np.trace(cm))}/{int(cm.sum())})")
    print(format_confusion(cm, run.classes))
    return 0
