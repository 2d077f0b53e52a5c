"""One training step, and the inference step beside it: planned or not, eager or replayed as a CUDA graph.

``TrainStep(net, opt, executor=None, cuda_graph=False, reducer=None)`` is the only place that runs
forward, loss, accuracy count, backward and the optimizer update; with a ``reducer``
(:class:`gpuconv.distributed.GradReducer`) the gradients are averaged across ranks between
backward and the update, bucket by bucket as backward finishes them.  Its modes:

- **unplanned** (``executor=None``): the ops allocate what they need as they go, and
  the scalars that change every step (learning rate, Adam's bias corrections,
  dropout keys) are kernel arguments.  The running loss total and correct count are
  two device temporaries the step makes once.
- **planned** (a :class:`~gpuconv.memory.arena.PlannedExecutor`): every tensor is a
  view of the plan's memory, so a step allocates nothing.  The batch is copied into
  the plan's input/labels views; the per-step scalars are written into planned memory
  (``step.hyper``, ``step.dropout_keys``) before the step, stream-ordered, and the
  kernels read them when they run; the loss and accuracy kernels add into the planned
  running totals (read by the host only at log points).
- **captured** (planned, ``cuda_graph=True``, on a GPU): since a planned step is the
  same launches on the same pointers every time, the second step is captured once
  (``cuda.capture``) and replayed for every later one: one graph launch instead of
  dozens of kernel launches from Python.  The first step always runs eagerly, so
  kernels are compiled and the autotuner's trials (which time and synchronize) are
  done before the capture.

Planned and unplanned steps give the same numbers bit for bit on the CPU; a replayed
step gives the eager step's numbers bit for bit on the kernel emulator.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import cuda
from . import device as devmod
from .ops import loss as loss_ops
from .ops.dropout import dropout_keys


class TrainStep:
    """forward, loss, accuracy count, backward and the optimizer update of one step; and inference."""

    def __init__(self, net: Any, opt: Any = None, executor: Any = None, *, cuda_graph: bool = False,
                 reducer: Any = None) -> None:
        planned = executor is not None
        if planned and opt is not None and opt.hyper is None:
            raise ValueError("TrainStep: bind the optimizer with hyper=executor.hyper_view() so its "
                             "per-step scalars live in planned memory")
        if planned and executor.net is not net:
            raise ValueError("TrainStep: the executor's views are bound to another net")
        if cuda_graph and not planned:
            raise ValueError("TrainStep: a CUDA graph replays the planned step: give it a PlannedExecutor")
        if net.device is None:
            raise RuntimeError("TrainStep: bind the net to a device first (net.bind, or a PlannedExecutor)")
        self.net, self.opt, self.executor = net, opt, executor
        self.reducer = reducer   # gpuconv.distributed.GradReducer: averages gradients across ranks
        self.planned = planned
        self.xp = net.device.xp
        self.use_graph = bool(cuda_graph) and net.device.is_gpu
        if self.use_graph and reducer is not None:
            raise ValueError("TrainStep: a CUDA graph with a gradient reducer is not supported yet (NCCL's "
                             "all-reduce inside a captured graph is not verified)")
        self.graph: Any = None
        self.eager_steps = 0
        self._dropout: list[Any] = []
        self._train_bufs: list[Any] | None = None
        self._loss: loss_ops.LossBuffers | None = None
        if planned and opt is not None and not executor.plan.inference:
            # in the order of the plan's step.dropout_keys
            self._dropout = [net.layers[i] for i in executor.dropout_layers()]
            self._train_bufs = executor.train_step_buffers()
            rows, mean, running = executor.loss_views()
            self._loss = loss_ops.LossBuffers(rows, mean, running)
            self.loss_sum = executor.loss_sum_view()   # float64: sum over steps of mean loss * batch
            self.correct = executor.correct_view()     # int64: correct predictions over steps
        else:
            # Unplanned, or a step for inference only (which leaves the plan's training totals alone).
            self.loss_sum = self.xp.zeros((), dtype=np.float64)
            self.correct = self.xp.zeros((), dtype=np.int64)
        self.reset_metrics()

    # ---- running totals ----------------------------------------------------------------
    def reset_metrics(self) -> None:
        """Zero the running loss total and correct count (stream-ordered, no sync)."""
        self.loss_sum[...] = 0
        self.correct[...] = 0

    # ---- the batch -----------------------------------------------------------------------
    def load(self, xb: Any = None, yb: Any = None) -> None:
        """Planned: copy a batch (host or device) into the plan's input/labels views, unless it is them."""
        ex = self.executor
        if ex is None:
            raise RuntimeError("TrainStep.load: an unplanned step has no planned views; pass the batch to run()")
        if xb is not None and xb is not ex.input_view():
            devmod.copy_into(ex.input_view(), xb)   # host data: no temporary device copy
        if yb is not None and yb is not ex.labels_view():
            devmod.copy_into(ex.labels_view(), yb)

    # ---- training --------------------------------------------------------------------------
    def _write_step_scalars(self) -> None:
        """What changes every step, into planned memory, stream-ordered (no sync): the dropout
        keys of step ``net.step`` and the optimizer's [lr, bc1, bc2]."""
        ex = self.executor
        if self._dropout:
            keys = [k for layer in self._dropout for k in dropout_keys(layer.seed, self.net.step)]
            devmod.copy_into(ex.dropout_keys_view(), np.array(keys, dtype=np.uint32))
        devmod.copy_into(ex.hyper_view(), np.asarray(self.opt.hyper_values(), dtype=ex.plan.dtype))

    def _launches(self) -> None:
        """The planned step's launches: what a capture records."""
        net, ex = self.net, self.executor
        scores = net.forward(ex.input_view(), train=True, buffers=self._train_bufs)
        _, dscores = net.loss_and_grad(scores, ex.labels_view(), grad_out=ex.dscores_view(), buffers=self._loss)
        # Count now: the scores' memory is reused during backward.
        loss_ops.accuracy_count(scores, ex.labels_view(), into=self.correct)
        self._backward(dscores, self._train_bufs)
        self.opt.launch_update()

    def _backward(self, dscores: Any, buffers: Any) -> None:
        """Backward, and with a reducer the gradients averaged across ranks (buckets launched as
        backward finishes them, all done before the update)."""
        red = self.reducer
        if red is None:
            self.net.backward(dscores, buffers=buffers)
            return
        red.start()
        self.net.backward(dscores, buffers=buffers, after_layer=red.layer_done)
        red.finish()

    def _unplanned(self, xb: Any, yb: Any) -> None:
        net = self.net
        scores = net.forward(xb, train=True)
        loss, dscores = net.loss_and_grad(scores, yb)
        loss_ops.accuracy_count(scores, yb, into=self.correct)   # before backward, as the planned step
        self._backward(dscores, None)
        self.opt.step()
        self.loss_sum += loss * int(yb.shape[0])

    def run(self, xb: Any = None, yb: Any = None) -> None:
        """One training step on ``(xb, yb)``.  Planned, they may be left out: the batch already
        in the executor's input/labels views is used."""
        if self.opt is None:
            raise RuntimeError("TrainStep: an optimizer is needed to train (this step was made for inference)")
        if not self.planned:
            if xb is None or yb is None:
                raise ValueError("TrainStep.run: an unplanned step needs the batch (xb, yb)")
            self._unplanned(xb, yb)
            self.net.step += 1
            return
        if self._train_bufs is None:
            raise RuntimeError("TrainStep: this executor runs an inference plan: make_plan(..., inference=False) "
                               "to train")
        self.load(xb, yb)
        self._write_step_scalars()
        if self.graph is None and self.use_graph and self.eager_steps > 0:
            self.graph = cuda.capture(self._launches)
        if self.graph is not None:
            self.graph.launch()
        else:
            self._launches()
            self.eager_steps += 1
        self.opt.t += 1
        self.net.step += 1

    # ---- inference -------------------------------------------------------------------------
    def infer(self, xb: Any = None) -> Any:
        """Class scores of a batch in inference mode.  Planned: the batch is copied into the input
        view (left out: the one there is used) and the scores are a view into the arena (copy to keep)."""
        if not self.planned:
            if xb is None:
                raise ValueError("TrainStep.infer: an unplanned step needs the batch")
            return self.net.forward(xb, train=False)
        self.load(xb)
        ex = self.executor
        return self.net.forward(ex.input_view(), train=False, buffers=ex.inference_buffers())

    def evaluate(self, x: Any, y: Any, batch: int = 1000) -> tuple[float, float]:
        """(accuracy, mean loss) over a set already on the net's device; one host sync at the end.

        Planned, batches have the plan's size and run in its memory (a smaller remainder runs
        unplanned).  The totals are device temporaries of their own: the training totals are
        left as they are."""
        xp = devmod.array_module(x)
        correct = xp.zeros((), dtype=np.int64)
        loss_sum = xp.zeros((), dtype=np.float64)
        ex = self.executor
        planned_loss = None
        if self.planned:
            batch = ex.plan.batch
            if not ex.plan.inference:
                rows, mean, _ = ex.loss_views()
                planned_loss = (ex.dscores_view(), loss_ops.LossBuffers(rows, mean))
        for i in range(0, x.shape[0], batch):
            xb, yb = x[i:i + batch], y[i:i + batch]
            full = self.planned and yb.shape[0] == batch
            scores = self.infer(xb) if full else self.net.forward(xb, train=False)
            if full and planned_loss is not None:
                loss, _ = self.net.loss_and_grad(scores, yb, grad_out=planned_loss[0], buffers=planned_loss[1])
            else:
                loss, _ = self.net.loss_and_grad(scores, yb)
            loss_sum += loss * yb.shape[0]
            loss_ops.accuracy_count(scores, yb, into=correct)
        n = int(x.shape[0])
        return float(devmod.to_host(correct)) / n, float(devmod.to_host(loss_sum)) / n
