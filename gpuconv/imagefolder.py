"""Your own images: a folder with one sub-folder per class, as a :class:`~gpuconv.data.Dataset`.

Layout (the usual "image folder")::

    photos/
      cat/  a.jpg b.png ...
      dog/  c.jpeg ...

Class names are the sub-folder names, sorted; hidden entries are skipped.  Every
PNG/JPEG is decoded with Pillow, turned upright from its EXIF orientation,
converted to grayscale or RGB (the net's input channels), resized so that its
shorter side fits and center-cropped to the net's ``H x W`` (:func:`fit_image`, the
same transform ``gpuconv predict`` applies).

Decoding is paid once: the images are kept as one uint8 ``(N, C, H, W)`` ``.npy`` file
in ``$GPUCONV_CACHE_DIR/images`` (default ``~/.cache/gpuconv/images``), named by a
hash of the folder's path, every file's name, size and modification time, and
the target shape, and read back memory-mapped.  The data folder itself is never
written to (it may be read-only or shared), and touching, adding or removing
an image gives a new key.

Validation is split off per class by ``val_fraction`` with a fixed seed, so the
same folder and seed always give the same split (and a resumed run the same data).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .data import DataError, Dataset

__all__ = ["IMAGE_SUFFIXES", "CACHE_SUBDIR", "model_input_shape", "scan_folder", "fit_image", "read_image", "cache_dir",
           "cached_images", "load_image_folder"]

#: File suffixes read as images (case-insensitive); other files are ignored.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Sub-folder of ``$GPUCONV_CACHE_DIR`` holding the decoded arrays.
CACHE_SUBDIR = "images"
# Bump when fit_image's output for the same file changes, so old caches are not reused.
_CACHE_VERSION = 1


def model_input_shape(model: str) -> tuple[int, int, int]:
    """The ``(C, H, W)`` a zoo model (at its default size) or a pattern takes: what images are fitted to."""
    from .zoo import get_model  # noqa: PLC0415

    c, h, w = get_model(model).input_shape
    return (int(c), int(h), int(w))


def scan_folder(root: str | os.PathLike[str]) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(image path, class index), ...]) of an image folder, in a fixed order.

    Raises :class:`DataError` for a missing or empty folder, one without class
    sub-folders, fewer than two classes, or a class with no images.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (--data takes a folder with one sub-folder of images per class)")
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise DataError(f"{root}: the folder is empty (it needs one sub-folder of images per class)")
    classes = sorted(p.name for p in entries if p.is_dir())
    if not classes:
        raise DataError(f"{root}: no class sub-folders (put each class's images in a sub-folder named after it, "
                        f"e.g. {root}/cat/1.jpg)")
    if len(classes) < 2:
        raise DataError(f"{root}: only one class sub-folder ({classes[0]!r}); a classifier needs at least 2")
    files: list[tuple[Path, int]] = []
    for k, name in enumerate(classes):
        imgs = sorted(p for p in (root / name).iterdir()
                      if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
        if not imgs:
            raise DataError(f"{root / name}: class {name!r} has no images "
                            f"({', '.join(IMAGE_SUFFIXES)} files directly in its folder)")
        files += [(p, k) for p in imgs]
    return classes, files


def fit_image(img: "Image.Image", shape: Sequence[int]) -> np.ndarray:  # noqa: F821
    """A Pillow image as uint8 ``(C, H, W)``: upright, gray (C=1) or RGB (C=3), the shorter side
    resized to fit ``H x W`` and the rest center-cropped (aspect ratio kept, nothing stretched)."""
    from PIL import Image, ImageOps  # noqa: PLC0415

    c, h, w = (int(v) for v in shape)
    if c not in (1, 3):
        raise DataError(f"images can feed a net with 1 (grayscale) or 3 (RGB) input channels, not {c}")
    img = ImageOps.exif_transpose(img).convert("L" if c == 1 else "RGB")
    scale = max(h / img.height, w / img.width)
    size = (max(w, round(img.width * scale)), max(h, round(img.height * scale)))
    if size != img.size:
        img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (size[0] - w) // 2, (size[1] - h) // 2
    img = img.crop((left, top, left + w, top + h))
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if c == 1 else np.ascontiguousarray(a.transpose(2, 0, 1))


def read_image(path: str | os.PathLike[str], shape: Sequence[int]) -> np.ndarray:
    """Decode one image file into uint8 ``(C, H, W)`` (see :func:`fit_image`); DataError names the file."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    try:
        with Image.open(path) as img:
            img.load()
            return fit_image(img, shape)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:  # PIL raises all of these on bad files
        raise DataError(f"{path}: cannot read this image ({type(e).__name__}: {e})") from None


def cache_dir() -> Path:
    """``$GPUCONV_CACHE_DIR/images`` (default ``~/.cache/gpuconv/images``)."""
    from .kernel_config import current  # noqa: PLC0415

    return current().cache_dir / CACHE_SUBDIR


def _cache_key(root: Path, files: list[tuple[Path, int]], shape: Sequence[int]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([_CACHE_VERSION, str(root.resolve()), list(map(int, shape))]).encode())
    for p, k in files:
        st = p.stat()
        h.update(f"\0{p.relative_to(root)}\0{k}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def folder_fingerprint(root: Path, files: list[tuple[Path, int]]) -> str:
    """The image folder's files (relative names, classes, sizes): what a run was trained and split
    on.  Modification times are left out, so a copy of the folder on another machine matches."""
    h = hashlib.sha256()
    for p, k in files:
        h.update(f"\0{p.relative_to(root)}\0{k}\0{p.stat().st_size}".encode())
    return f"{len(files)} files, sha256 {h.hexdigest()[:16]}"


def cached_images(root: str | os.PathLike[str], files: list[tuple[Path, int]], shape: Sequence[int],
                  cache: str | os.PathLike[str] | None = None) -> np.ndarray:
    """All ``files`` decoded to uint8 ``(N, C, H, W)``, memory-mapped from the cache (built on first use).

    The cache file is written under a temporary name and renamed into place, so an
    interrupted build (or a bad image halfway) never leaves a cache that would be reused.
    """
    root = Path(root).expanduser()
    folder = Path(cache) if cache is not None else cache_dir()
    path = folder / f"{_cache_key(root, files, shape)}.npy"
    want = (len(files), *map(int, shape))
    if path.is_file():
        try:
            arr = np.load(path, mmap_mode="r")
            if arr.shape == want and arr.dtype == np.uint8:
                return arr
        except (OSError, ValueError):
            pass  # unreadable cache: rebuild it below
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the image cache folder {folder} ({e}); set GPUCONV_CACHE_DIR") from None
    tmp = folder / f"{path.stem}.{os.getpid()}.tmp.npy"
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=want)
        for i, (p, _) in enumerate(files):  # one image in memory at a time
            out[i] = read_image(p, shape)
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


def _split(labels: np.ndarray, num_classes: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): per class, a seeded shuffle, the first
    ``round(n * val_fraction)`` (at least one where the class has two images) to validation."""
    rng = np.random.default_rng([seed, 0x1F01DE5])
    train, val = [], []
    for k in range(num_classes):
        idx = np.flatnonzero(labels == k)
        idx = idx[rng.permutation(idx.size)]
        n_val = min(idx.size - 1, max(1, round(idx.size * val_fraction))) if idx.size > 1 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def load_image_folder(
    root: str | os.PathLike[str],
    input_shape: Sequence[int],
    val_fraction: float = 0.1,
    seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    cache: str | os.PathLike[str] | None = None,
) -> Dataset:
    """An image folder as a Dataset: float32 ``(N, C, H, W)`` in [0, 1], int32 labels, class names.

    ``input_shape`` is the net's ``(C, H, W)``.  The validation split (``x_test``) takes
    ``val_fraction`` of each class, chosen with ``seed``; ``limit_*`` then keep the first
    images of each split.  ``cache`` overrides the cache folder (default :func:`cache_dir`).
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    root = Path(root).expanduser()
    classes, files = scan_folder(root)
    images = cached_images(root, files, input_shape, cache)
    labels = np.array([k for _, k in files], dtype=np.int32)
    tr, va = _split(labels, len(classes), float(val_fraction), seed)
    if tr.size == 0 or va.size == 0:
        raise DataError(f"{root}: {len(files)} images are too few to split off a validation set "
                        f"(--val-fraction {val_fraction}); each class needs at least 2 images")
    tr, va = tr[:limit_train], va[:limit_test]

    def to_float(idx: np.ndarray) -> np.ndarray:
        return images[idx].astype(np.float32) * np.float32(1.0 / 255.0)

    return Dataset(root.name or str(root), to_float(tr), labels[tr], to_float(va), labels[va], classes,
                   source=folder_fingerprint(root, files))
