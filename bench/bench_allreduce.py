"""The gradient all-reduce on the GPU: NCCL over the flat gradient buffer, whole or in buckets.

    python bench/bench_allreduce.py                  # one rank: the NCCL path's own overhead
    mpiexec -n 8 python bench/bench_allreduce.py     # 8 GPUs of one machine (local rank = GPU)

Per model (VGG16, ResNet-50): ms of one all-reduce of the whole gradient buffer, of the
planned 25 MiB buckets launched one after another on NCCL's stream and joined, and the
bus bandwidth the whole-buffer time implies (2(K-1)/K x bytes / time; 0 for one rank,
where NCCL copies nothing and the figure is the call's fixed cost).  Only the buffers are
allocated, not the nets' activations.  Rank 0 prints; CUDA-event medians of 20.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpuconv import cuda, device  # noqa: E402
from gpuconv.distributed import GradReducer, get_world  # noqa: E402
from gpuconv.zoo import get_model  # noqa: E402


class _Grads:
    """What GradReducer needs of a net: its layout and a gradient buffer on the GPU."""

    def __init__(self, net, xp) -> None:
        self.layers, self.slots, self.dtype, self.num_params = net.layers, net.slots, net.dtype, net.num_params
        self.grad_buffer = xp.ones(net.num_params, dtype=net.dtype)
        self.device = device.get_device("cuda")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="vgg16,resnet50")
    ap.add_argument("--bucket-mb", type=float, default=25.0)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    world = get_world()
    with world.guard():
        world.use_gpu()
        xp = device.get_device("cuda").xp
        world.init_nccl()
        if world.is_root:
            print("| model | ranks | gradient MB | whole buffer ms | buckets | bucketed ms | bus GB/s |")
            print("|---|---|---|---|---|---|---|")
        for name in args.models.split(","):
            g = _Grads(get_model(name), xp)
            red = GradReducer(world, g, int(args.bucket_mb * (1 << 20)))
            whole = cuda.time_ms(lambda: world.allreduce_mean_(g.grad_buffer), reps=args.reps, warmup=3)

            def bucketed() -> None:
                red.start()
                for i in range(len(g.layers) - 1, -1, -1):
                    red.layer_done(i)
                red.finish()

            buckets = cuda.time_ms(bucketed, reps=args.reps, warmup=3)
            nbytes = g.num_params * np.dtype(g.dtype).itemsize
            bus = 2 * (world.size - 1) / world.size * nbytes / (whole * 1e-3) / 1e9
            if world.is_root:
                print(f"| {name} | {world.size} | {nbytes / 1e6:.1f} | {whole:.3f} | {len(red.plan.buckets)} | "
                      f"{buckets:.3f} | {bus:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
