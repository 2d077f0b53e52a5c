"""Batch augmentation (padded random crop + flip), gathered from the data set: one kernel vs array ops, fp32.

    python bench/bench_augment.py [--quick]

"ours" is ``augment.augment_into`` (kernels/augment.cu: gather, crop and flip in one pass, written
into the planned input batch); "theirs" is the same batch made with whole-batch array operations
(``xp.take`` then ``augment.augment``: a padded copy, a gather and a select, each a new array).
The draws are made on the host in both.  GB/s = bytes of the batch read + written.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Row, main_quick, time_gpu  # noqa: E402

# (data set size, C, H, W, batch): CIFAR-10 at batch 128 and 512, an ImageNet-size crop batch
SHAPES = [(50000, 3, 32, 32, 128), (50000, 3, 32, 32, 512), (2000, 3, 224, 224, 64)]
QUICK_SHAPES = [(10000, 3, 32, 32, 128), (256, 3, 224, 224, 32)]
PAD = 4


def run(quick: bool = False) -> list[Row]:
    from gpuconv import augment, device  # noqa: PLC0415

    cp = device.get_device("cuda").xp
    rows: list[Row] = []
    for s, c, h, w, n in QUICK_SHAPES if quick else SHAPES:
        src = cp.random.standard_normal((s, c, h, w), dtype=cp.float32)
        idx = cp.asarray(np.random.default_rng(0).permutation(s)[:n].astype(np.int64))
        out = cp.empty((n, c, h, w), cp.float32)
        draws = cp.empty((n, 3), cp.int32)
        rng = np.random.default_rng(1)

        def fused() -> None:
            device.copy_into(draws, augment.draw(rng, n, pad=PAD))
            augment.augment_into(out, src, idx, draws, PAD)

        def array_ops() -> None:
            out[...] = augment.augment(cp.take(src, idx, axis=0), rng, pad=PAD)

        ours, theirs = time_gpu(fused), time_gpu(array_ops)
        rows.append(Row("augment", f"pad {PAD} + flip {n}x{c}x{h}x{w} from {s}", "fp32", ours, theirs,
                        2 * out.nbytes, "GB/s"))
        del src, idx, out, draws
        cp.get_default_memory_pool().free_all_blocks()
    return rows


def main() -> None:
    main_quick(run, __doc__)


if __name__ == "__main__":
    main()
