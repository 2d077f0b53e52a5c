"""Run folders: where a training run lives, and the rules that keep it from being clobbered.

A run folder holds ``run.json`` (the run's whole configuration, written before
the first step), ``checkpoint.npz`` and ``metrics.jsonl``.  The rules:

- without ``--out`` every run gets a fresh folder, ``runs/<model>-<n>``;
- a folder that already holds a run is refused unless the run is resumed
  (``--resume``) or explicitly started over (``--overwrite``);
- a resumed run takes its configuration from ``run.json``; ``--epochs`` may
  extend it, and a few settings that do not change the numbers
  (:data:`MAY_CHANGE`) may differ; any other setting that differs is refused,
  with every difference listed in one message.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from .checkpoint import CheckpointError, read_checkpoint_meta

RUN_CONFIG = "run.json"
CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.jsonl"
RUNS_ROOT = "runs"
#: Files that make a folder a run folder (and that --overwrite removes).
RUN_FILES = (RUN_CONFIG, CHECKPOINT, CHECKPOINT + ".tmp", METRICS)

#: Settings that are about this machine or this invocation, not about the run's numbers (a run may move
#: to another machine, another device):
#: a resume may give other values.  ``epochs`` may grow (it extends the run).
MAY_CHANGE = frozenset({"epochs", "log_every", "data_dir", "budget", "device", "out_dir", "resume", "overwrite",
                        "save", "eval_batch"})
#: Flag spelling of each setting, for messages.
FLAG_NAMES = {"planned": "--unplanned", "out_dir": "--out", "batch_size": "--batch-size"}


class RunError(ValueError):
    """A run folder cannot be used as asked (exists, missing, conflicting settings)."""


def flag(key: str) -> str:
    return FLAG_NAMES.get(key, "--" + key.replace("_", "-"))


def model_slug(model: str) -> str:
    """A folder-name-safe form of a zoo name; patterns are 'custom'."""
    if model.strip().upper().startswith("INPUT"):
        return "custom"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", model).strip("-") or "run"


def new_run_dir(model: str, root: str | os.PathLike[str] = RUNS_ROOT) -> Path:
    """Create and return ``root/<model>-<n>``, n one more than the highest taken (never reused)."""
    root = Path(root)
    slug = model_slug(model)
    taken = [int(m.group(1)) for p in (root.iterdir() if root.is_dir() else [])
             if (m := re.fullmatch(re.escape(slug) + r"-(\d+)", p.name))]
    n = max(taken, default=0) + 1
    root.mkdir(parents=True, exist_ok=True)
    while True:  # another process may take a number at the same moment: mkdir decides
        path = root / f"{slug}-{n}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def holds_run(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds (part of) a run: its configuration, checkpoint or metrics."""
    folder = Path(folder)
    return any((folder / name).exists() for name in RUN_FILES)


def clear_run(folder: str | os.PathLike[str]) -> None:
    """Remove a run's own files (for --overwrite); anything else in the folder is left alone."""
    for name in RUN_FILES:
        try:
            (Path(folder) / name).unlink()
        except FileNotFoundError:
            pass


def save_run_config(folder: str | os.PathLike[str], config: Mapping[str, Any]) -> None:
    """Write ``run.json`` atomically (a crash leaves the old file or the new one)."""
    path = Path(folder) / RUN_CONFIG
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dict(config), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def load_run_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The saved configuration of the run in ``folder`` (``run.json``, else the checkpoint's copy)."""
    folder = Path(folder)
    path = folder / RUN_CONFIG
    if path.is_file():
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: unreadable run configuration ({e})") from e
        if not isinstance(cfg, dict):
            raise CheckpointError(f"{path}: not a run configuration (a JSON object)")
        return cfg
    if (folder / CHECKPOINT).is_file():
        meta = read_checkpoint_meta(folder / CHECKPOINT)
        if isinstance(meta.get("config"), dict):
            return dict(meta["config"])
    if not folder.is_dir():
        raise RunError(f"no run to resume: {folder} does not exist")
    raise RunError(f"no run to resume in {folder}: it has no {RUN_CONFIG} or {CHECKPOINT}")


def run_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """What is saved in ``run.json``: every setting except the per-invocation ones."""
    return {k: v for k, v in config.items() if k not in ("out_dir", "resume", "overwrite", "save")}


def differences(saved: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """One line per setting in ``given`` that differs from ``saved`` and may not change."""
    out = []
    for key, value in given.items():
        if key in MAY_CHANGE or key not in saved or saved[key] == value:
            continue
        if isinstance(value, (int, float)) and isinstance(saved[key], (int, float)) \
                and not isinstance(value, bool) and float(value) == float(saved[key]):
            continue
        out.append(f"{flag(key)}: the run has {_show(saved[key])}, given {_show(value)}")
    return out


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return "none" if v is None else repr(v) if isinstance(v, str) else str(v)


def conflict_message(folder: str | os.PathLike[str], diffs: list[str]) -> str:
    lines = "\n".join(f"  {d}" for d in diffs)
    return (f"cannot resume {folder} with other settings ({len(diffs)} differ from the saved run):\n{lines}\n"
            f"Resume without them (--epochs may grow the run; --log-every, --data-dir, --budget and --device may "
            f"change), or train into a new folder")


def progress_of(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The checkpoint's meta of the run in ``folder`` (epoch, next_batch, history, ...); None without one."""
    path = Path(folder) / CHECKPOINT
    return read_checkpoint_meta(path) if path.is_file() else None
