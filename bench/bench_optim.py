"""Benchmark the fused optimizer updates against PyTorch's fused/foreach optimizers.

Usage: python bench/bench_optim.py [--quick]   (needs a CUDA GPU; imports cleanly without one)
One flat parameter buffer; rate in GB/s of the bytes each update must read and write.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.harness import Row, main_quick, set_torch_tf32, time_gpu, time_torch, torch  # noqa: E402

SIZES = [1_000_000, 60_000_000]  # parameters (60M ~ AlexNet)


def _torch_opt(name: str, p):  # noqa: ANN001
    o = torch.optim
    kw = {"lr": 1e-3}
    extra = {"fused": True} if name in ("sgd", "momentum", "adam") else {"foreach": True}
    try:
        if name == "sgd":
            return o.SGD([p], **kw, **extra)
        if name == "momentum":
            return o.SGD([p], momentum=0.9, **kw, **extra)
        if name == "adagrad":
            return o.Adagrad([p], **kw, **extra)
        if name == "rmsprop":
            return o.RMSprop([p], **kw, **extra)
        return o.Adam([p], **kw, **extra)
    except (TypeError, RuntimeError):  # older torch without fused=/foreach=
        return {"sgd": lambda: o.SGD([p], **kw), "momentum": lambda: o.SGD([p], momentum=0.9, **kw),
                "adagrad": lambda: o.Adagrad([p], **kw), "rmsprop": lambda: o.RMSprop([p], **kw),
                "adam": lambda: o.Adam([p], **kw)}[name]()


def run(quick: bool = False) -> list[Row]:
    from gpuconv import device  # noqa: PLC0415
    from gpuconv.ops import optim as O  # noqa: PLC0415

    cp = device.get_device("cuda").xp

    set_torch_tf32(False)
    iters = 5 if quick else 20
    rows: list[Row] = []
    rs = cp.random.default_rng()
    for n in (SIZES[:1] if quick else SIZES):
        p = rs.standard_normal(n, dtype=cp.float32)
        g = rs.standard_normal(n, dtype=cp.float32)
        s1 = cp.abs(rs.standard_normal(n, dtype=cp.float32))
        s2 = cp.abs(rs.standard_normal(n, dtype=cp.float32))
        step = [0]

        def adam():
            step[0] += 1
            O.adam_update(p, g, s1, s2, lr=1e-3, t=step[0], weight_decay=1e-4)

        cases = [  # (name, ours, arrays read+written in bytes)
            ("sgd", lambda: O.sgd_update(p, g, lr=1e-3, weight_decay=1e-4), 3 * 4 * n),
            ("momentum", lambda: O.momentum_update(p, g, s1, lr=1e-3), 5 * 4 * n),
            ("adagrad", lambda: O.adagrad_update(p, g, s1, lr=1e-3), 5 * 4 * n),
            ("rmsprop", lambda: O.rmsprop_update(p, g, s1, lr=1e-3), 5 * 4 * n),
            ("adam", adam, 7 * 4 * n),
        ]
        # The same updates reading lr (and Adam's bias corrections) from memory, as a planned step does
        hyper = cp.asarray(O.hyper_values(1e-3, 1), dtype=cp.float32)
        cases += [
            ("sgd, hyper from memory", lambda: O.sgd_update(p, g, lr=0.0, weight_decay=1e-4, hyper=hyper), 3 * 4 * n),
            ("adam, hyper from memory",
             lambda: O.adam_update(p, g, s1, s2, lr=0.0, t=1, weight_decay=1e-4, hyper=hyper), 7 * 4 * n),
        ]
        for name, ours, nbytes in cases:
            theirs_ms = None
            if torch is not None and torch.cuda.is_available():
                tp = torch.randn(n, device="cuda", requires_grad=True)
                tp.grad = torch.randn(n, device="cuda")
                opt = _torch_opt(name.split(",")[0], tp)
                theirs_ms = time_torch(opt.step, iters=iters)
            rows.append(Row("optim", f"{name} {n / 1e6:g}M params", "fp32", time_gpu(ours, iters=iters),
                            theirs_ms, work=nbytes, unit="GB/s"))
    return rows


def main() -> None:
    main_quick(run, __doc__)


if __name__ == "__main__":
    main()
