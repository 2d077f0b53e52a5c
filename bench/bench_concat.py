"""Channel concatenation, the planned copy: ours vs torch.cat / split (the same inputs, the same
process), fp32.

    python bench/bench_concat.py [--quick]

What a branch pays when its kernels cannot write into (or read from) its slice of the concat
buffer in place (concat.COPY_OPS).  A planned concat whose branches write their slices directly
launches nothing, so it has no row.  Forward: the branches copied into the buffer
(``torch.cat(..., out=)``); backward: the gradient's slices copied out contiguous (PyTorch's
``split`` and ``.contiguous()``).  GB/s = bytes read + written.  Every row is validated against
PyTorch's result on the same inputs (NumPy's without PyTorch): ``extra['result_rel_err']``,
``extra['invalid']`` past harness.REL_TOL.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (Row, guarded_case, main_quick, rel_err, set_torch_tf32, time_gpu, time_torch,  # noqa: E402
                           torch, validation)

# (N, branch channels, H, W): GoogLeNet's inception 3a and 4e outputs
SHAPES = [(64, (64, 128, 32, 32), 28, 28), (64, (256, 320, 128, 128), 14, 14)]
QUICK_SHAPES = [(32, (64, 128, 32, 32), 28, 28)]


def run(quick: bool = False) -> list[Row]:
    from gpuconv import device  # noqa: PLC0415
    from gpuconv.ops import concat  # noqa: PLC0415

    cp = device.get_device("cuda").xp
    set_torch_tf32(False)
    have_torch = torch is not None and torch.cuda.is_available()
    rows: list[Row] = []
    for n, channels, h, w in QUICK_SHAPES if quick else SHAPES:
        label = f"{n}x({'+'.join(map(str, channels))})x{h}x{w}"

        def case(n: int = n, channels: tuple[int, ...] = channels, h: int = h, w: int = w,
                 label: str = label) -> list[Row]:
            xs = [cp.random.standard_normal((n, c, h, w), dtype=cp.float32) for c in channels]
            total = (n, sum(channels), h, w)
            out = cp.empty(total, dtype=cp.float32)
            dy = cp.random.standard_normal(total, dtype=cp.float32)
            grads = [cp.empty_like(x) for x in xs]
            t_f = time_gpu(lambda: concat.concat_forward(xs, out=out))
            t_b = time_gpu(lambda: concat.concat_backward(dy, channels, out=grads))
            concat.concat_forward(xs, out=out)
            concat.concat_backward(dy, channels, out=grads)
            th_f = th_b = None
            if have_torch:
                txs, tdy = [torch.from_dlpack(x) for x in xs], torch.from_dlpack(dy)
                tout = torch.empty_like(tdy)
                th_f = time_torch(lambda: torch.cat(txs, dim=1, out=tout))
                th_b = time_torch(lambda: [t.contiguous() for t in torch.split(tdy, list(channels), dim=1)])
                ref_out = cp.from_dlpack(torch.cat(txs, dim=1))
                ref_grads = [cp.from_dlpack(t.contiguous()) for t in torch.split(tdy, list(channels), dim=1)]
                by = "torch"
            else:
                ref_out = cp.asarray(concat.concat_forward([x.get() for x in xs]))
                ref_grads = [cp.asarray(g) for g in concat.concat_backward(dy.get(), channels)]
                by = "numpy"
            nbytes = 2 * out.nbytes
            fwd = {**validation("fp32", {"result": rel_err(out, ref_out)}), "reference": by}
            bwd = {**validation("fp32", {"result": max(rel_err(g, r) for g, r in zip(grads, ref_grads))}),
                   "reference": by}
            return [Row("concat", f"concat {label} fwd (copy)", "fp32", t_f, th_f, nbytes, "GB/s", fwd),
                    Row("concat", f"concat {label} bwd (copy)", "fp32", t_b, th_b, nbytes, "GB/s", bwd)]

        rows += guarded_case("concat", label, "fp32", cp, case)
    return rows


def main() -> None:
    main_quick(run, __doc__)


if __name__ == "__main__":
    main()
