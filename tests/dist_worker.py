"""One rank of a data-parallel training run, for tests/test_distributed.py.

Run alone it is the single-process reference; under ``mpiexec -n K`` each rank trains on
its shard of every global batch and averages gradients with the world before each
optimizer step (forward, loss, backward, ``allreduce_mean_``, ``opt.step``).  Rank 0
writes the final parameters, the global loss of every step and whether the ranks' replicas
agree bit for bit to ``--out`` (an .npz).

Faults: ``--fail-rank R --fail-step S`` makes rank R raise (``--fail-mode raise``) or
SIGKILL itself (``kill``) at step S; rank 0 writes a checkpoint after every step with
``--checkpoint PATH`` so the test can check that the last one survives.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import numpy as np

from gpuconv.checkpoint import save_checkpoint
from gpuconv.distributed import ShardIterator, get_world, local_batch
from gpuconv.graph import Graph
from gpuconv.memory import PlannedExecutor, make_plan
from gpuconv.ops import loss as loss_ops
from gpuconv.optim import Optimizer
from gpuconv.step import TrainStep
from gpuconv.zoo import get_model

CHAIN = "INPUT[12x12x2] -> CONV3-6 -> RELU -> POOL2 -> CONV3-8 -> RELU -> FC-16 -> RELU -> FC-5"


def branching() -> object:
    """A residual block and an Inception-like concat, no BN (BN statistics are per rank)."""
    g = Graph((2, 12, 12), name="branchy")
    x = g.relu(g.conv(g.input(), 3, 6))
    y = g.add(x, g.conv(g.relu(g.conv(x, 3, 6)), 3, 6), relu=True)
    z = g.concat(g.conv(y, 1, 4), g.relu(g.conv(y, 3, 4)))
    z = g.pool(z, 2)
    return g.build(classes=5)


def make_net(kind: str, model: str | None = None) -> object:
    if model is not None:
        return get_model(model)
    return branching() if kind == "branch" else get_model(CHAIN)


def data(n: int, shape: tuple[int, ...], classes: int, seed: int = 123) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    y = rng.integers(0, classes, size=n).astype(np.int32)
    return x, y


def planned_batches(it: ShardIterator, executor: PlannedExecutor):  # noqa: ANN201
    x_in, y_in = executor.input_view(), executor.labels_view()
    perm, bs = it.permutation(), it.batch_size
    for b in range(it.start_batch, len(it)):
        idx = perm[b * bs:(b + 1) * bs]
        np.take(it.x, idx, axis=0, out=x_in)
        np.take(it.y, idx, axis=0, out=y_in)
        yield x_in, y_in


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", default="chain", choices=["chain", "branch"])
    ap.add_argument("--optimizer", default="momentum")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=12, help="global batch")
    ap.add_argument("--examples", type=int, default=36)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--fail-rank", type=int, default=-1)
    ap.add_argument("--fail-step", type=int, default=-1)
    ap.add_argument("--fail-mode", default="raise", choices=["raise", "kill"])
    ap.add_argument("--planned", action="store_true", help="train in the planned arena with TrainStep")
    ap.add_argument("--model", default=None, help="a zoo name or pattern instead of --net (timing runs)")
    args = ap.parse_args(argv)

    world = get_world()
    with world.guard():
        net = make_net(args.net, args.model)
        opt = Optimizer(args.optimizer, args.lr)
        if args.planned:
            # The training loop's pieces: the planned arena at the local batch, TrainStep, each
            # rank's rows gathered into the plan's input view as the planned loop does (slices of
            # permutation() of batch_size rows).  The all-reduce goes between backward and the
            # update (wrapping the update launches).
            executor = PlannedExecutor(net, make_plan(net, local_batch(args.batch, world.size),
                                                      optimizer=args.optimizer), "cpu", seed=0)
            opt.bind(net, state_buffers=executor.state_views(), hyper=executor.hyper_view())
            update = opt.launch_update

            def reduced_update() -> None:
                world.allreduce_mean_(net.grad_buffer)
                update()

            opt.launch_update = reduced_update  # type: ignore[method-assign]
            train_step = TrainStep(net, opt, executor)
        else:
            net.bind("cpu", seed=0)
            opt.bind(net)
        world.broadcast_(net.param_buffer)        # same start everywhere (bind is seeded too)
        x, y = data(args.examples, net.input_shape, net.output_shape[0])
        it = ShardIterator(x, y, args.batch, world, seed=7)
        opt.steps_per_epoch = len(it)
        losses, accs, step = [], [], 0
        t0 = time.perf_counter()
        for epoch in range(args.epochs):
            if args.planned:
                for xb, yb in planned_batches(it.for_epoch(epoch), executor):
                    train_step.reset_metrics()
                    train_step.run(xb, yb)
                    mean_loss, acc, _ = world.metrics(float(train_step.loss_sum), int(train_step.correct), len(yb))
                    losses.append(mean_loss)
                    accs.append(acc)
                    step += 1
                continue
            for xb, yb in it.for_epoch(epoch):
                if step == args.fail_step and world.rank == args.fail_rank:
                    if args.fail_mode == "kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    raise RuntimeError(f"injected failure at step {step}")
                scores = net.forward(xb, train=True)
                loss, dscores = net.loss_and_grad(scores, yb)
                correct = int(loss_ops.accuracy_count(scores, yb))
                net.backward(dscores)
                world.allreduce_mean_(net.grad_buffer)
                opt.step()
                net.step += 1
                mean_loss, acc, _ = world.metrics(float(loss) * len(yb), correct, len(yb))
                losses.append(mean_loss)
                accs.append(acc)
                step += 1
                if args.checkpoint and world.is_root:
                    save_checkpoint(args.checkpoint, {**net.state_arrays(), **opt.state_arrays()},
                                    {"step": step, "ranks": world.size})
        seconds = time.perf_counter() - t0
        in_sync = world.in_sync(net.param_buffer)
        local_ranks = world.comm.allgather(world.local_rank) if world.comm is not None else [world.local_rank]
        if world.is_root:
            images = step * args.batch
            print(f"ranks {world.size}: {step} steps, {images} images in {seconds:.3f} s: "
                  f"{images / seconds:.1f} img/s", flush=True)
            if args.out:
                np.savez(args.out, params=np.asarray(net.param_buffer), losses=np.array(losses),
                         accs=np.array(accs), in_sync=np.array(in_sync), size=np.array(world.size),
                         local_ranks=np.array(local_ranks),
                         seconds=np.array(seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
