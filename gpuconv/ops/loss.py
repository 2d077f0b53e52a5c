"""Classifier losses (softmax cross-entropy, multiclass SVM), softmax and accuracy.

scores[N, C] float32/float64, labels[N] int32.  Losses are the mean over the batch
and come back as 0-d arrays on the scores' device (no host synchronization), with
``dscores`` = d(loss)/d(scores).

Bad labels: the CPU path raises OpArgumentError.  The GPU path cannot check without
a sync, so its kernels never index with a label outside [0, C): that row's loss and
dscores row become NaN (hence the mean loss is NaN), and it never counts as correct.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import cuda, device
from ._checks import OpArgumentError, check_array, check_out

_ROWS_PER_BLOCK = 8  # one warp per row, 8 warps per block (kernels/loss.cu)


@dataclass
class LossBuffers:
    """Preallocated memory for one loss evaluation (the memory plan's, in a training step):
    ``rows`` [N] per-example losses (GPU scratch), ``mean`` 0-d, the loss returned, and
    optionally ``running_sum``, a 0-d float64 the loss adds ``mean * N`` into (a training
    loop's total, kept on the device)."""

    rows: Any
    mean: Any
    running_sum: Any = None


def _check_scores(op: str, scores: Any) -> None:
    if not hasattr(scores, "dtype"):
        raise OpArgumentError(f"{op}: scores must be an array, got {type(scores).__name__}")
    if scores.dtype not in (np.float32, np.float64):
        raise OpArgumentError(f"{op}: scores must be float32 or float64, got {scores.dtype}")
    check_array(op, "scores", scores, ndim=2, dtype=scores.dtype)
    n, c = scores.shape
    if n < 1 or c < 1:
        raise OpArgumentError(f"{op}: scores must have at least one row and one class, got shape {tuple(scores.shape)}")
    if c > 2**31 - 1 or n > 2**31 - 1:
        raise OpArgumentError(f"{op}: scores shape {tuple(scores.shape)} exceeds the kernels' 32-bit limits")


def _check_labels(op: str, scores: Any, labels: Any) -> None:
    check_array(op, "labels", labels, shape=(scores.shape[0],), dtype=np.int32, like=scores)


def _check_label_range_cpu(op: str, labels: np.ndarray, c: int) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= c))
    if bad.size:
        i = int(bad[0])
        raise OpArgumentError(f"{op}: labels must be in [0, {c}); labels[{i}] = {int(labels[i])} "
                              f"({bad.size} out of range)")


def _suffix(a: Any) -> str:
    return "f64" if a.dtype == np.float64 else "f32"


def _row_grid(n: int) -> tuple[int, int, int]:
    return (cuda.cdiv(n, _ROWS_PER_BLOCK), 1, 1)


# ---------------------------------------------------------------- NumPy reference
def softmax_cpu(scores: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Row softmax, stabilised by subtracting the row max."""
    np.subtract(scores, scores.max(axis=1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


def softmax_cross_entropy_cpu(scores: np.ndarray, labels: np.ndarray, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """loss = mean_i (log sum_j e^{s_ij} - s_iy), dscores = (softmax - onehot) / N."""
    n = scores.shape[0]
    rows = np.arange(n)
    shifted = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    sums = e.sum(axis=1, keepdims=True)
    loss = np.mean(np.log(sums[:, 0]) - shifted[rows, labels])
    np.divide(e, sums, out=grad)
    grad[rows, labels] -= 1
    grad /= n
    return np.asarray(loss, dtype=scores.dtype), grad


def svm_loss_cpu(scores: np.ndarray, labels: np.ndarray, delta: float,
                 grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """loss = mean_i sum_{j != y_i} max(0, s_ij - s_iy + delta); the hinge's subgradient ([margin > 0])."""
    n = scores.shape[0]
    rows = np.arange(n)
    margins = scores - scores[rows, labels][:, None] + scores.dtype.type(delta)
    np.maximum(margins, 0, out=margins)
    margins[rows, labels] = 0
    loss = margins.sum() / n
    pos = (margins > 0).astype(scores.dtype)
    pos[rows, labels] = -pos.sum(axis=1)
    np.divide(pos, n, out=grad)
    return np.asarray(loss, dtype=scores.dtype), grad


def accuracy_count_cpu(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Number of rows whose (first) argmax equals the label, as a 0-d int64 array."""
    return np.asarray(np.count_nonzero(scores.argmax(axis=1) == labels), dtype=np.int64)


# ---------------------------------------------------------------- CUDA launchers
def _loss_rows_gpu(kernel: str, scores: Any, labels: Any, grad: Any, extra: tuple[Any, ...] = (),
                   buffers: LossBuffers | None = None) -> tuple[Any, Any]:
    xp = device.array_module(scores)
    n, c = scores.shape
    sfx = _suffix(scores)
    if buffers is None:
        buffers = LossBuffers(xp.empty((n,), dtype=scores.dtype), xp.empty((), dtype=scores.dtype))
    row_loss, loss = buffers.rows, buffers.mean
    cuda.launch("loss", f"{kernel}_{sfx}", _row_grid(n), (256, 1, 1), (scores, labels, grad, row_loss, n, c, *extra))
    if buffers.running_sum is None:
        cuda.launch("loss", f"mean_reduce_{sfx}", (1, 1, 1), (256, 1, 1), (row_loss, loss, n))
    else:
        cuda.launch("loss", f"mean_accumulate_{sfx}", (1, 1, 1), (256, 1, 1), (row_loss, loss, buffers.running_sum, n))
    return loss, grad


def softmax_cross_entropy_gpu(scores: Any, labels: Any, grad: Any, buffers: LossBuffers | None = None) -> tuple[Any, Any]:
    return _loss_rows_gpu("softmax_xent_rows", scores, labels, grad, buffers=buffers)


def svm_loss_gpu(scores: Any, labels: Any, delta: float, grad: Any,
                 buffers: LossBuffers | None = None) -> tuple[Any, Any]:
    d = np.float64(delta) if scores.dtype == np.float64 else np.float32(delta)
    return _loss_rows_gpu("svm_rows", scores, labels, grad, (d,), buffers=buffers)


def softmax_gpu(scores: Any, out: Any) -> Any:
    n, c = scores.shape
    cuda.launch("loss", f"softmax_rows_{_suffix(scores)}", _row_grid(n), (256, 1, 1), (scores, out, n, c))
    return out


def accuracy_count_gpu(scores: Any, labels: Any, into: Any = None) -> Any:
    n, c = scores.shape
    # the kernel adds into it (unsigned 64-bit atomics)
    count = device.array_module(scores).zeros((), dtype=np.int64) if into is None else into
    cuda.launch("loss", f"accuracy_rows_{_suffix(scores)}", _row_grid(n), (256, 1, 1), (scores, labels, count, n, c))
    return count


# ---------------------------------------------------------------- public API
def _check_buffers(op: str, scores: Any, buffers: LossBuffers | None) -> None:
    if buffers is None:
        return
    check_array(op, "buffers.rows", buffers.rows, shape=(scores.shape[0],), dtype=scores.dtype, like=scores)
    check_array(op, "buffers.mean", buffers.mean, shape=(), dtype=scores.dtype, like=scores)
    if buffers.running_sum is not None:
        check_array(op, "buffers.running_sum", buffers.running_sum, shape=(), dtype=np.float64, like=scores)


def _into_buffers_cpu(result: tuple[Any, Any], n: int, buffers: LossBuffers | None) -> tuple[Any, Any]:
    """The CPU path's loss, written where a planned step expects it."""
    loss, grad = result
    if buffers is None:
        return loss, grad
    buffers.mean[...] = loss
    if buffers.running_sum is not None:
        buffers.running_sum[...] += np.float64(buffers.mean * buffers.mean.dtype.type(n))
    return buffers.mean, grad


def softmax_cross_entropy(scores: Any, labels: Any, grad_out: Any = None,
                          buffers: LossBuffers | None = None) -> tuple[Any, Any]:
    """(mean softmax cross-entropy loss as a 0-d array, dscores[N, C]); grad_out receives dscores,
    ``buffers`` the loss (and its running sum)."""
    op = "softmax_cross_entropy"
    _check_scores(op, scores)
    _check_labels(op, scores, labels)
    _check_buffers(op, scores, buffers)
    grad = check_out(op, grad_out, scores.shape, like=scores, dtype=scores.dtype)
    if device.is_gpu_array(scores):
        return softmax_cross_entropy_gpu(scores, labels, grad, buffers)
    _check_label_range_cpu(op, labels, scores.shape[1])
    return _into_buffers_cpu(softmax_cross_entropy_cpu(scores, labels, grad), scores.shape[0], buffers)


def svm_loss(scores: Any, labels: Any, delta: float = 1.0, grad_out: Any = None,
             buffers: LossBuffers | None = None) -> tuple[Any, Any]:
    """(mean multiclass hinge loss as a 0-d array, dscores[N, C]); grad_out receives dscores,
    ``buffers`` the loss (and its running sum)."""
    op = "svm_loss"
    _check_scores(op, scores)
    _check_labels(op, scores, labels)
    _check_buffers(op, scores, buffers)
    grad = check_out(op, grad_out, scores.shape, like=scores, dtype=scores.dtype)
    if device.is_gpu_array(scores):
        return svm_loss_gpu(scores, labels, delta, grad, buffers)
    _check_label_range_cpu(op, labels, scores.shape[1])
    return _into_buffers_cpu(svm_loss_cpu(scores, labels, delta, grad), scores.shape[0], buffers)


def accuracy_count(scores: Any, labels: Any, into: Any = None) -> Any:
    """0-d int64 array: rows whose first argmax equals the label (out-of-range labels never match).

    ``into`` (0-d int64): add the count to it instead (a running total on the device)."""
    op = "accuracy_count"
    _check_scores(op, scores)
    _check_labels(op, scores, labels)
    if into is not None:
        check_array(op, "into", into, shape=(), dtype=np.int64, like=scores)
    if device.is_gpu_array(scores):
        return accuracy_count_gpu(scores, labels, into)
    count = accuracy_count_cpu(scores, labels)
    if into is None:
        return count
    into[...] += count
    return into


def softmax(scores: Any, out: Any = None) -> Any:
    """Row-wise softmax probabilities of scores[N, C]."""
    op = "softmax"
    _check_scores(op, scores)
    out = check_out(op, out, scores.shape, like=scores, dtype=scores.dtype)
    if device.is_gpu_array(scores):
        return softmax_gpu(scores, out)
    return softmax_cpu(scores, out)
