"""One training step in the planned arena, run eagerly or replayed as a CUDA graph.

A planned step allocates nothing and launches only our kernels, always on the same
arena views.  What changes from step to step is data, not launches:

- the batch, gathered into the plan's input/labels views before the step;
- the optimizer's learning rate and Adam's bias corrections, and every dropout
  layer's keys: written into planned memory (``step.hyper``, ``step.dropout_keys``)
  before the step, stream-ordered, and read by the kernels when they run;
- the loss total and the correct count, which the loss and accuracy kernels add
  into planned device scalars (read by the host only at log points).

So the launches of one step can be captured once (``cuda.capture``) and replayed
for every later step: one graph launch instead of dozens of kernel launches from
Python.  The first step always runs eagerly, so kernels are compiled and the
autotuner's trials (which time and synchronize) are done before the capture.
"""
from __future__ import annotations

from typing import Any

from . import cuda
from .ops import loss as loss_ops


class TrainStep:
    """forward, loss, accuracy count, backward and the optimizer update of one planned step."""

    def __init__(self, net: Any, opt: Any, executor: Any, *, cuda_graph: bool = False) -> None:
        if opt.hyper is None:
            raise ValueError("TrainStep: bind the optimizer with hyper=executor.hyper_view() so its "
                             "per-step scalars live in planned memory")
        self.net, self.opt, self.executor = net, opt, executor
        self.use_graph = bool(cuda_graph) and executor.device.is_gpu
        self.graph: Any = None
        self.eager_steps = 0
        self._bufs = executor.train_step_buffers()
        self._loss = executor.loss_buffers(running_sum=True)
        self.loss_sum = executor.loss_sum_view()   # float64: sum over steps of mean loss * batch
        self.correct = executor.correct_view()     # int64: correct predictions over steps
        self.reset_metrics()

    def reset_metrics(self) -> None:
        """Zero the running loss total and correct count (stream-ordered, no sync)."""
        self.loss_sum[...] = 0
        self.correct[...] = 0

    def _launches(self) -> None:
        net, ex = self.net, self.executor
        scores = net.forward(ex.input_view(), train=True, buffers=self._bufs)
        _, dscores = net.loss_and_grad(scores, ex.labels_view(), grad_out=ex.dscores_view(), buffers=self._loss)
        # Count now: the scores' memory is reused during backward.
        loss_ops.accuracy_count(scores, ex.labels_view(), into=self.correct)
        net.backward(dscores, buffers=self._bufs)
        self.opt.launch_update()

    def run(self) -> None:
        """One step on the batch already in the executor's input/labels views."""
        net, opt = self.net, self.opt
        self.executor.write_step_scalars(net.step, opt.hyper_values())
        if self.graph is None and self.use_graph and self.eager_steps > 0:
            self.graph = cuda.capture(self._launches)
        if self.graph is not None:
            self.graph.launch()
        else:
            self._launches()
            self.eager_steps += 1
        opt.t += 1
        net.step += 1
