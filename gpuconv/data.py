"""Datasets: IDX (MNIST / Fashion-MNIST) and CIFAR-10 readers, synthetic data, batching.

Nothing here downloads anything: data must already be on disk (see
:func:`find_data_dir` for where we look and what to do when it is missing).
Loaders return host (NumPy) arrays; a training loop uploads them to the device
once and then batches them there with :class:`BatchIterator`, so images never
travel back to the host during training.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from gpuconv import device

__all__ = [
    "DataError",
    "Dataset",
    "channel_stats",
    "apply_normalization",
    "read_idx",
    "find_data_dir",
    "load_fashion_mnist",
    "load_mnist",
    "load_cifar10",
    "synthetic",
    "BatchIterator",
    "DATASETS",
    "DATA_ENV",
    "SYSTEM_DATA_ROOT",
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "CIFAR10_CLASSES",
]

#: Environment variable naming a data folder (the dataset folder itself or its parent).
DATA_ENV = "GPUCONV_DATA"
#: Where Debian's ``dataset-*`` packages install data (module attribute so tests can redirect it).
SYSTEM_DATA_ROOT = Path("/usr/share/datasets")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
MNIST_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_DIRNAME = "cifar-10-batches-py"
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


class DataError(RuntimeError):
    """Data is missing, corrupt, or inconsistent (the message says which file and why)."""


# --------------------------------------------------------------------------- Dataset


@dataclass
class Dataset:
    """An in-memory image classification set (host arrays).

    ``x_*`` are float32 ``(N, C, H, W)``: in [0, 1] as loaded, or standardized
    after :meth:`normalize` (then ``mean``/``std`` hold the per-channel
    statistics of the *training* set, to apply the same transform elsewhere).
    ``y_*`` are int32 class indices into ``classes``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    mean: np.ndarray | None = field(default=None, repr=False)
    std: np.ndarray | None = field(default=None, repr=False)
    #: What the set was read from, where that can change under a run (an image folder's files):
    #: saved with the run, so a resume on other files is refused.  "" for the fixed built-in sets.
    source: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        # Catch loader bugs here rather than as a shape error deep inside training.
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim != 4:
                raise DataError(f"{self.name}: x_{split} must be (N, C, H, W), got shape {x.shape}")
            if y.shape != (x.shape[0],):
                raise DataError(
                    f"{self.name}: y_{split} shape {y.shape} does not match {x.shape[0]} images"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"{self.name}: train images {self.x_train.shape[1:]} and test images "
                f"{self.x_test.shape[1:]} differ in shape"
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x_train.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def normalized(self) -> bool:
        return self.mean is not None

    def normalize(self) -> Dataset:
        """A copy standardized per channel with the training set's mean and std.

        The statistics come from ``x_train`` only (using the test set would leak
        information into training) and are stored on the result so the same
        transform can be applied to new images with :func:`apply_normalization`.
        """
        if self.normalized:
            # Normalizing twice would silently give ~N(0,1) data with wrong stored stats.
            raise DataError(f"{self.name}: dataset is already normalized")
        mean, std = channel_stats(self.x_train)
        return replace(
            self,
            x_train=apply_normalization(self.x_train, mean, std),
            x_test=apply_normalization(self.x_test, mean, std),
            mean=mean,
            std=std,
        )

    def subset(self, limit_train: int | None = None, limit_test: int | None = None) -> Dataset:
        """The first ``limit_train`` / ``limit_test`` examples (views, no copy)."""
        return replace(
            self,
            x_train=self.x_train[:limit_train], y_train=self.y_train[:limit_train],
            x_test=self.x_test[:limit_test], y_test=self.y_test[:limit_test],
        )


def channel_stats(x: np.ndarray, eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``(N, C, H, W)`` data, float32 shape ``(C,)``.

    Accumulated in float64 because float32 sums over ~50M pixels lose digits;
    std is floored at ``eps`` so a constant channel does not divide by zero.
    """
    if x.ndim != 4 or x.shape[0] == 0:
        raise DataError(f"channel_stats needs non-empty (N, C, H, W) data, got shape {x.shape}")
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    var = np.zeros_like(mean)
    for c in range(x.shape[1]):  # per channel to avoid a float64 copy of the whole set
        var[c] = np.mean((x[:, c].astype(np.float64) - mean[c]) ** 2)
    std = np.maximum(np.sqrt(var), eps)
    return mean.astype(np.float32), std.astype(np.float32)


def apply_normalization(x: Any, mean: np.ndarray, std: np.ndarray) -> Any:
    """``(x - mean) / std`` per channel, float32, on whichever device ``x`` lives."""
    xp = device.array_module(x)
    m = xp.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = xp.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((x - m) / s).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- IDX

# IDX type codes (third magic byte) -> big-endian dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw), the MNIST / Fashion-MNIST format.

    Layout: two zero bytes, a type code, the number of dimensions ``d``, then
    ``d`` big-endian uint32 sizes and the data.  Every part is checked and the
    data length must match the header exactly, so a truncated download fails
    here with :class:`DataError` instead of producing garbage images.
    Returns a native-byte-order array of the file's shape.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:  # truncated / not-gzip files
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from e

    if len(raw) < 4:
        raise DataError(f"{path}: file is {len(raw)} bytes, too short for an IDX header")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"{path}: bad magic number 0x{raw[:4].hex()} (IDX files start with two zero bytes)"
        )
    if code not in _IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX data type code 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(
            f"{path}: truncated header ({len(raw)} bytes, {ndim} dimensions need {header_len})"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = _IDX_DTYPES[code]
    expected = header_len + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: file {what}: header says shape {tuple(shape)} of {dtype.name} "
            f"({expected} bytes in all) but the file holds {len(raw)} bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    # Native byte order and a writable array (frombuffer on bytes is read-only).
    return data.astype(dtype.newbyteorder("="), copy=True)


# --------------------------------------------------------------------------- locating data

# name -> (sub-folder names to try under a parent folder, required files, how to get it)
_IDX_HINT = (
    "{apt}download the four IDX files "
    "(" + ", ".join(f + ".gz" for f in IDX_FILES) + ") into a folder and pass --data-dir FOLDER "
    f"or set {DATA_ENV}=FOLDER"
)
_LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "fashion-mnist": (("fashion-mnist",), IDX_FILES, _IDX_HINT.format(apt="on Debian/Ubuntu: apt-get install dataset-fashion-mnist ; otherwise ")),
    "mnist": (("mnist",), IDX_FILES, _IDX_HINT.format(apt="")),
    "cifar10": (
        (CIFAR10_DIRNAME, "cifar10", f"cifar10/{CIFAR10_DIRNAME}"),
        CIFAR10_FILES,
        "download cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html), "
        f"extract it so that {CIFAR10_DIRNAME}/ holds data_batch_1..5 and test_batch, and pass "
        f"--data-dir FOLDER or set {DATA_ENV}=FOLDER",
    ),
}


def _has_files(folder: Path, files: tuple[str, ...], gz_ok: bool) -> bool:
    return all(
        (folder / f).is_file() or (gz_ok and (folder / (f + ".gz")).is_file()) for f in files
    )


def find_data_dir(name: str = "fashion-mnist", data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding dataset ``name`` ('fashion-mnist', 'mnist' or 'cifar10').

    Looks, in order, at:

    1. ``data_dir`` (the ``--data-dir`` argument): the folder itself or its
       ``name/`` sub-folder.  When given, it is the only place searched: an
       explicit path that is wrong should be an error, not silently replaced
       by some other copy of the data.
    2. ``$GPUCONV_DATA``: the folder itself or a parent holding ``name/``.
    3. ``/usr/share/datasets/name`` (where Debian's ``dataset-fashion-mnist``
       package installs Fashion-MNIST).

    A folder counts when it holds all the required files (for IDX sets each
    file raw or ``.gz``).  Otherwise :class:`DataError` lists every place
    looked at and how to get the data.  Never downloads anything.
    """
    if name not in _LAYOUTS:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(_LAYOUTS)}")
    subdirs, files, hint = _LAYOUTS[name]
    gz_ok = name != "cifar10"

    def under(root: Path) -> list[Path]:
        return [root] + [root / s for s in subdirs]

    candidates: list[tuple[Path, str]] = []
    if data_dir is not None:
        candidates += [(p, "--data-dir") for p in under(Path(data_dir).expanduser())]
    else:
        env = os.environ.get(DATA_ENV)
        if env:
            candidates += [(p, f"${DATA_ENV}") for p in under(Path(env).expanduser())]
        candidates += [(Path(SYSTEM_DATA_ROOT) / s, "system") for s in subdirs]

    for folder, _ in candidates:
        if _has_files(folder, files, gz_ok):
            return folder

    looked = "\n".join(
        f"  {folder} ({why}: {'missing files' if folder.is_dir() else 'no such folder'})"
        for folder, why in candidates
    )
    if data_dir is None and not os.environ.get(DATA_ENV):
        looked += f"\n  (${DATA_ENV} is not set)"
    raise DataError(
        f"dataset {name!r} not found; it needs {', '.join(files)}"
        + (" (raw or .gz)" if gz_ok else "")
        + f". Looked in:\n{looked}\nTo get it: {hint}. Nothing is downloaded automatically."
    )


# --------------------------------------------------------------------------- IDX datasets


def _idx_path(folder: Path, stem: str) -> Path:
    # Prefer the uncompressed file (faster to read) when both are present.
    raw = folder / stem
    return raw if raw.is_file() else folder / (stem + ".gz")


def _load_idx_set(
    name: str, classes: list[str], data_dir: str | os.PathLike[str] | None,
    limit_train: int | None, limit_test: int | None,
) -> Dataset:
    folder = find_data_dir(name, data_dir)
    arrays = {}
    for stem in IDX_FILES:
        path = _idx_path(folder, stem)
        a = read_idx(path)
        want_ndim = 3 if "images" in stem else 1
        if a.ndim != want_ndim or a.dtype != np.uint8:
            raise DataError(
                f"{path}: expected {want_ndim}-d uint8 data, got shape {a.shape} {a.dtype}"
            )
        arrays[stem] = (a, path)

    def split(prefix: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
        (imgs, ipath), (labels, lpath) = arrays[f"{prefix}-images-idx3-ubyte"], arrays[f"{prefix}-labels-idx1-ubyte"]
        if imgs.shape[0] != labels.shape[0]:
            raise DataError(f"{ipath} has {imgs.shape[0]} images but {lpath} has {labels.shape[0]} labels")
        if labels.size and labels.max() >= len(classes):
            raise DataError(f"{lpath}: label {labels.max()} out of range for {len(classes)} classes")
        imgs, labels = imgs[:limit], labels[:limit]
        # Scale into a fresh float32 array; N x 1 x H x W is the layout every layer expects.
        x = (imgs.astype(np.float32) * np.float32(1.0 / 255.0))[:, None, :, :]
        return np.ascontiguousarray(x), labels.astype(np.int32)

    x_train, y_train = split("train", limit_train)
    x_test, y_test = split("t10k", limit_test)
    return Dataset(name, x_train, y_train, x_test, y_test, list(classes))


def load_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> Dataset:
    """Fashion-MNIST: float32 ``(N, 1, 28, 28)`` in [0, 1], int32 labels (60000 / 10000)."""
    return _load_idx_set("fashion-mnist", FASHION_MNIST_CLASSES, data_dir, limit_train, limit_test)


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> Dataset:
    """MNIST digits, same file layout and result format as :func:`load_fashion_mnist`."""
    return _load_idx_set("mnist", MNIST_CLASSES, data_dir, limit_train, limit_test)


# --------------------------------------------------------------------------- CIFAR-10


def _numpy_reconstruct() -> Callable[..., Any]:
    # numpy >= 2 moved the implementation to numpy._core; importing numpy.core
    # there emits a DeprecationWarning, so try the new home first.
    try:
        from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[attr-defined,no-redef]
    return _reconstruct


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can build only plain containers and NumPy arrays.

    CIFAR batches are pickles, and unpickling runs arbitrary code named in the
    file; allowing only the three globals an ndarray needs means a tampered
    file can at worst fail to load.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        # Resolve ourselves instead of importing `module`: no import side effects.
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return np.ndarray if name == "ndarray" else np.dtype


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the original files are Python 2 pickles with byte-string keys.
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # UnpicklingError, EOFError on truncation, ValueError, ...
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    d = {(k.encode() if isinstance(k, str) else k): v for k, v in obj.items()}
    if b"data" not in d or b"labels" not in d:
        raise DataError(f"{path}: missing b'data' or b'labels' entry (keys: {sorted(map(repr, d))})")
    data, labels = d[b"data"], np.asarray(d[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), got {shape} "
                        f"{getattr(data, 'dtype', type(data).__name__)}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= 10):
        raise DataError(f"{path}: labels outside 0..9 (min {labels.min()}, max {labels.max()})")
    return data, labels.astype(np.int32)


def load_cifar10(
    data_dir: str | os.PathLike[str] | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> Dataset:
    """CIFAR-10 from the "python version" batches (``cifar-10-batches-py/``).

    ``data_dir`` may be that folder or its parent (None: see
    :func:`find_data_dir`).  Images become float32 ``(N, 3, 32, 32)`` in
    [0, 1]; each 3072-byte row is stored channel-major (1024 R, 1024 G,
    1024 B), so a plain reshape gives NCHW.  Pickles are read with an
    unpickler that allows nothing but NumPy arrays (see ``_RestrictedUnpickler``).
    """
    folder = find_data_dir("cifar10", data_dir)
    train = [_read_cifar_batch(folder / f) for f in CIFAR10_FILES[:-1]]
    x_tr = np.concatenate([d for d, _ in train])[:limit_train]
    y_tr = np.concatenate([lab for _, lab in train])[:limit_train]
    x_te, y_te = _read_cifar_batch(folder / "test_batch")
    x_te, y_te = x_te[:limit_test], y_te[:limit_test]

    def to_float(a: np.ndarray) -> np.ndarray:
        return (a.astype(np.float32) * np.float32(1.0 / 255.0)).reshape(-1, 3, 32, 32)

    return Dataset("cifar10", to_float(x_tr), y_tr, to_float(x_te), y_te, list(CIFAR10_CLASSES))


# --------------------------------------------------------------------------- synthetic


def synthetic(
    n_train: int = 1024,
    n_test: int = 256,
    shape: tuple[int, int, int] = (3, 32, 32),
    classes: int = 10,
    seed: int = 0,
    noise: float = 0.35,
) -> Dataset:
    """Learnable random data: one smooth template per class plus pixel noise.

    Templates are coarse random grids upsampled to ``shape`` (so they have
    spatial structure a ConvNet can pick up); an image is its class template
    plus Gaussian noise of std ``noise``, clipped to [0, 1].  The same
    arguments always give the same arrays.  Generated in float32 directly so
    a large benchmark set does not pass through a float64 copy.
    """
    if n_train < 0 or n_test < 0 or classes < 1:
        raise DataError("synthetic: need n_train, n_test >= 0 and classes >= 1")
    c, h, w = shape
    rng = np.random.default_rng(seed)
    coarse = rng.random((classes, c, max(1, h // 4), max(1, w // 4)), dtype=np.float32)
    # Nearest-neighbour upsample by index maps: works for any h, w (not only multiples of 4).
    rows = np.arange(h) * coarse.shape[2] // h
    cols = np.arange(w) * coarse.shape[3] // w
    templates = coarse[:, :, rows[:, None], cols[None, :]]

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, size=n).astype(np.int32)
        x = rng.standard_normal((n, c, h, w), dtype=np.float32)
        x *= np.float32(noise)
        x += templates[y]
        np.clip(x, 0.0, 1.0, out=x)
        return x, y

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return Dataset("synthetic", x_train, y_train, x_test, y_test, [f"class{i}" for i in range(classes)])


# --------------------------------------------------------------------------- batching


class BatchIterator:
    """Mini-batches of ``(x, y)`` gathered on the device the arrays live on.

    ``x`` and ``y`` may be NumPy or CuPy arrays (uploaded once); each batch is
    gathered with an index array on that same device, so data never returns to
    the host.  The shuffle permutation is drawn on the host from
    ``numpy.random.default_rng([seed, epoch])``: it depends only on (seed,
    epoch), never on device or on how many batches were already taken, so a
    run resumed at (epoch, start_batch) sees exactly the batches it would have.

    ``len(it)`` is the number of batches in the whole epoch (independent of
    ``start_batch``, so batch numbers stay comparable across a resume);
    iteration yields batches ``start_batch .. len(it) - 1``.  Without
    ``drop_last`` the final batch may be smaller.
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
        start_batch: int = 0,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
        if device.is_gpu_array(x) != device.is_gpu_array(y):
            raise ValueError("x and y must live on the same device")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.drop_last = bool(drop_last)
        self.n = int(len(x))
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} outside 0..{len(self)}")
        self.start_batch = int(start_batch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    @property
    def remaining(self) -> int:
        """Batches this iterator will yield (``len(self) - start_batch``)."""
        return len(self) - self.start_batch

    def permutation(self) -> np.ndarray:
        """The host int64 order of examples for this epoch (identity without shuffle)."""
        if not self.shuffle:
            return np.arange(self.n, dtype=np.int64)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n).astype(np.int64)

    def for_epoch(self, epoch: int, start_batch: int = 0) -> BatchIterator:
        """Same data and settings, another epoch (and optional resume point)."""
        return BatchIterator(self.x, self.y, self.batch_size, self.shuffle, self.seed,
                             epoch, self.drop_last, start_batch)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        xp = device.array_module(self.x)
        bs = self.batch_size
        if not self.shuffle:
            # Contiguous slices are views: no gather, no copy.
            for b in range(self.start_batch, len(self)):
                yield self.x[b * bs:(b + 1) * bs], self.y[b * bs:(b + 1) * bs]
            return
        # One small host->device copy of the index array per epoch; images stay put.
        perm = xp.asarray(self.permutation())
        for b in range(self.start_batch, len(self)):
            idx = perm[b * bs:(b + 1) * bs]
            yield xp.take(self.x, idx, axis=0), xp.take(self.y, idx, axis=0)


# --------------------------------------------------------------------------- registry


def _load_synthetic(
    data_dir: str | os.PathLike[str] | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
) -> Dataset:
    """Registry adapter: synthetic CIFAR-shaped data with the loaders' signature."""
    del data_dir  # nothing on disk
    return synthetic(n_train=5000 if limit_train is None else limit_train,
                     n_test=1000 if limit_test is None else limit_test)


#: Dataset name -> loader ``(data_dir=None, limit_train=None, limit_test=None) -> Dataset``.
DATASETS: dict[str, Callable[..., Dataset]] = {
    "fashion-mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "synthetic": _load_synthetic,
}
