"""Batch data augmentation on the device: random horizontal flips and padded random crops.

All randomness is drawn on the host from a ``numpy.random.Generator`` (a few
numbers per image), then applied with whole-batch array operations of the
batch's own array module (NumPy or CuPy).  So the result depends only on the
generator's state, not on the device, and no image leaves the device.

:func:`augment` returns a new batch.  A planned training run uses
:func:`augment_into` instead: the same draws (:func:`draw`), applied while the
batch is gathered from the data set straight into the plan's input batch, so
augmentation allocates nothing (on the GPU it is one kernel, ``kernels/augment.cu``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from gpuconv import device
from gpuconv.ops.augment import augment_gather

__all__ = ["random_flip", "random_crop", "augment", "draw", "augment_into"]


def _check_batch(x: Any, what: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{what} expects an (N, C, H, W) batch, got shape {tuple(x.shape)}")


def random_flip(x: Any, rng: np.random.Generator, p: float = 0.5) -> Any:
    """Mirror each image left-right with probability ``p``; returns a new array.

    Draws ``rng.random(N)`` once (image ``i`` is flipped when draw ``i`` < p),
    then selects between the batch and its mirror in one ``where``: no
    per-image Python loop.
    """
    _check_batch(x, "random_flip")
    xp = device.array_module(x)
    flip = rng.random(x.shape[0]) < p
    mask = xp.asarray(flip).reshape(-1, 1, 1, 1)
    return xp.where(mask, x[..., ::-1], x)


def random_crop(x: Any, pad: int, rng: np.random.Generator) -> Any:
    """Zero-pad each image by ``pad`` on every side, then crop back to H x W at a random offset.

    Offsets are drawn as ``rng.integers(0, 2*pad + 1, size=(2, N))`` (row
    offsets, then column offsets); offset ``pad`` is the identity.  The crop
    is one gather with per-image row/column index arrays.  ``pad == 0``
    returns ``x`` itself (and draws nothing).
    """
    _check_batch(x, "random_crop")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad == 0:
        return x
    xp = device.array_module(x)
    n, c, h, w = x.shape
    padded = xp.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    padded[:, :, pad:pad + h, pad:pad + w] = x
    offsets = rng.integers(0, 2 * pad + 1, size=(2, n))
    oy = xp.asarray(offsets[0]).reshape(n, 1, 1, 1)
    ox = xp.asarray(offsets[1]).reshape(n, 1, 1, 1)
    rows = oy + xp.arange(h).reshape(1, 1, h, 1)   # (N, 1, H, 1)
    cols = ox + xp.arange(w).reshape(1, 1, 1, w)   # (N, 1, 1, W)
    ni = xp.arange(n).reshape(n, 1, 1, 1)
    ci = xp.arange(c).reshape(1, c, 1, 1)
    return padded[ni, ci, rows, cols]


def augment(x: Any, rng: np.random.Generator, pad: int = 4, flip: bool = True) -> Any:
    """The standard CIFAR recipe: :func:`random_crop` (if ``pad`` > 0), then :func:`random_flip`.

    Draw order is fixed (crop offsets, then flips) so a given generator state
    always gives the same batch.
    """
    out = random_crop(x, pad, rng) if pad > 0 else x
    if flip:
        out = random_flip(out, rng)
    return out


def draw(rng: np.random.Generator, n: int, pad: int = 4, flip: bool = True, p: float = 0.5) -> np.ndarray:
    """The draws of :func:`augment` for ``n`` images, in its order, as an (n, 3) int32 host array:
    per image the crop's row and column offsets in the padded image (``pad``: no shift) and
    whether it is mirrored (0/1).  ``pad == 0`` draws no offsets, ``flip=False`` no flips."""
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    out = np.full((n, 3), pad, dtype=np.int32)
    if pad > 0:
        out[:, :2] = rng.integers(0, 2 * pad + 1, size=(2, n)).T
    out[:, 2] = (rng.random(n) < p) if flip else 0
    return out


def augment_into(out: Any, src: Any, idx: Any, draws: Any, pad: int) -> Any:
    """``out[i] = augment(src[idx[i]])`` with the crop offsets and flips of ``draws`` (see :func:`draw`),
    gathered from ``src`` (N_src, C, H, W) straight into ``out`` (n, C, H, W): no other array is made on
    the device.  ``idx`` (n,) and ``draws`` (n, 3) int32 live on the device of ``src`` and ``out``."""
    return augment_gather(src, idx, draws, pad, out)
