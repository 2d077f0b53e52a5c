"""Checkpoints as plain ``.npz`` files, written atomically, never pickled.

A checkpoint is a set of named arrays (parameters, optimizer state, ...) plus
a JSON-able ``meta`` dict (epoch, batch, seeds, config).  ``meta`` is stored as
UTF-8 JSON bytes in a uint8 array named ``__meta__``, so the whole file loads
with ``allow_pickle=False``: opening a checkpoint can never run code.

Saving writes ``<path>.tmp`` next to the target, fsyncs it, then
``os.replace``-s it over ``<path>``; a crash at any point leaves either the
old checkpoint or the new one, never a half-written file at ``<path>``.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from gpuconv import device

__all__ = ["CheckpointError", "META_KEY", "save_checkpoint", "load_checkpoint", "read_checkpoint_meta"]

META_KEY = "__meta__"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read (the message says which file and why)."""


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; best effort (not possible on every OS/filesystem)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    path: str | os.PathLike[str],
    arrays: Mapping[str, Any],
    meta: Mapping[str, Any],
    compress: bool = False,
) -> None:
    """Atomically write ``arrays`` and ``meta`` to the ``.npz`` file ``path`` (name used as given).

    Arrays may be NumPy or CuPy (copied to the host).  Object arrays are
    refused, since storing them would need pickle.  Everything is validated
    before the temporary file is opened, so a bad argument never touches the
    previous checkpoint.  If writing fails, the partial ``<path>.tmp`` is
    removed and the exception propagates; ``<path>`` is unchanged.
    """
    path = Path(path)
    host: dict[str, np.ndarray] = {}
    for name, a in arrays.items():
        if not isinstance(name, str) or not name or name == META_KEY:
            raise CheckpointError(f"{path}: invalid array name {name!r}")
        arr = device.to_host(a)
        if arr.dtype.hasobject:
            raise CheckpointError(f"{path}: array {name!r} has object dtype (would need pickle)")
        host[name] = arr
    try:
        meta_json = json.dumps(dict(meta), sort_keys=True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: meta is not JSON-serializable: {e}") from e
    host[META_KEY] = np.frombuffer(meta_json.encode("utf-8"), dtype=np.uint8)

    tmp = Path(str(path) + ".tmp")  # same folder, so os.replace is an atomic rename
    save = np.savez_compressed if compress else np.savez
    try:
        with open(tmp, "wb") as f:
            save(f, **host)
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        # Our own partial file is useless; the previous checkpoint at `path` is untouched.
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent if str(path.parent) else Path("."))


def read_checkpoint_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Only the ``meta`` of a checkpoint (epoch, history, config): the arrays are not read."""
    path = Path(path)
    _check_exists(path)
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise CheckpointError(f"{path}: not an .npz archive")
        with z:
            if META_KEY not in z.files:
                raise CheckpointError(f"{path}: no {META_KEY} entry (not a gpuconv checkpoint)")
            raw = z[META_KEY]
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({type(e).__name__}: {e})") from e
    return _decode_meta(path, raw)


def _check_exists(path: Path) -> None:
    if not path.is_file():
        msg = f"no checkpoint at {path}"
        tmp = Path(str(path) + ".tmp")
        if tmp.exists():
            msg += f" ({tmp} exists: an interrupted save; it was left untouched)"
        raise CheckpointError(msg)


def _decode_meta(path: Path, raw: np.ndarray) -> dict[str, Any]:
    try:
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError(f"{META_KEY} has dtype {raw.dtype} and shape {raw.shape}")
        meta = json.loads(raw.tobytes().decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"{META_KEY} holds a {type(meta).__name__}, not an object")
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: bad metadata: {e}") from e
    return meta


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(arrays, meta)``.

    Host NumPy arrays, fully read (the file is closed on return).  Missing,
    truncated or otherwise corrupt files raise :class:`CheckpointError`;
    nothing is ever deleted or repaired here.
    """
    path = Path(path)
    _check_exists(path)
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a bare .npy file loads as an array
            raise CheckpointError(f"{path}: not an .npz archive")
        with z:
            arrays = {name: z[name] for name in z.files}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({type(e).__name__}: {e})") from e
    if META_KEY not in arrays:
        raise CheckpointError(f"{path}: no {META_KEY} entry (not a gpuconv checkpoint)")
    return arrays, _decode_meta(path, arrays.pop(META_KEY))
