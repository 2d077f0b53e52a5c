"""Benchmark the loss kernels (softmax cross-entropy, SVM, accuracy) against PyTorch.

Usage: python bench/bench_loss.py [--quick]   (needs a CUDA GPU; imports cleanly without one)
Rate: GB/s of scores read + dscores written.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.harness import Row, main_quick, set_torch_tf32, time_gpu, time_torch, torch  # noqa: E402

SHAPES = [(128, 10), (128, 1000), (1024, 1000), (4096, 1000)]  # (batch, classes)


def run(quick: bool = False) -> list[Row]:
    from gpuconv import device  # noqa: PLC0415
    from gpuconv.ops import loss as L  # noqa: PLC0415

    cp = device.get_device("cuda").xp

    set_torch_tf32(False)
    iters = 5 if quick else 50
    rows: list[Row] = []
    rs = cp.random.default_rng()
    for n, c in (SHAPES[:2] if quick else SHAPES):
        s = rs.standard_normal((n, c), dtype=cp.float32) * 3
        y = rs.integers(0, c, size=n).astype(cp.int32)
        g = cp.empty_like(s)
        nbytes = 2.0 * s.nbytes
        ts = ty = None
        if torch is not None and torch.cuda.is_available():
            ts = torch.randn(n, c, device="cuda", requires_grad=True)
            ty = torch.randint(0, c, (n,), device="cuda")

        def torch_xent():
            ls = torch.nn.functional.cross_entropy(ts, ty)
            return torch.autograd.grad(ls, ts)

        def torch_svm():
            ls = torch.nn.functional.multi_margin_loss(ts, ty) * (c)  # sum over j != y, mean over N
            return torch.autograd.grad(ls, ts)

        planned = L.LossBuffers(cp.empty((n,), cp.float32), cp.empty((), cp.float32), cp.zeros((), cp.float64))
        correct = cp.zeros((), cp.int64)
        for label, ours, theirs, work in [
            ("softmax xent fwd+bwd", lambda: L.softmax_cross_entropy(s, y, grad_out=g), torch_xent, nbytes),
            ("softmax xent fwd+bwd, planned buffers + running sum",
             lambda: L.softmax_cross_entropy(s, y, grad_out=g, buffers=planned), torch_xent, nbytes),
            ("accuracy into a running total", lambda: L.accuracy_count(s, y, into=correct),
             lambda: (ts.argmax(1) == ty).sum(), s.nbytes),
            ("svm fwd+bwd", lambda: L.svm_loss(s, y, grad_out=g), torch_svm, nbytes),
            ("accuracy", lambda: L.accuracy_count(s, y),
             lambda: (ts.argmax(1) == ty).sum(), s.nbytes),
        ]:
            r = Row("loss", f"{n}x{c} {label}", "fp32", time_gpu(ours, iters=iters),
                    time_torch(theirs, iters=iters) if ts is not None else None, work=work, unit="GB/s")
            rows.append(r)
    return rows


def main() -> None:
    main_quick(run, __doc__)


if __name__ == "__main__":
    main()
