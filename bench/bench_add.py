"""Residual add bandwidth: ours vs PyTorch (the same inputs, the same process), fp32.

    python bench/bench_add.py [--quick]

Rows: the plain sum; the fused add+ReLU of a residual block against PyTorch's two kernels
(``torch.add`` then in-place ``relu_``, as torchvision's blocks do) and against our own unfused
pair; its backward (``threshold_backward``); the in-place gradient accumulation (``add_``); and
the sum written into a channel slice of a concat buffer.  GB/s = bytes read + written.  Every
row is validated: our result against PyTorch's on the same inputs (NumPy's without PyTorch),
``extra['result_rel_err']``, ``extra['invalid']`` past harness.REL_TOL.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (Row, guarded_case, main_quick, rel_err, set_torch_tf32, time_gpu, time_torch,  # noqa: E402
                           torch, validation)

SHAPE, QUICK_SHAPE = (64, 256, 56, 56), (32, 256, 28, 28)   # a ResNet-50 stage-1 block output


def _torch_on(a: Any) -> Any:
    return torch.from_dlpack(a)


def _check(cp: Any, ours: Any, theirs: Callable[[], Any] | None, numpy_ref: Callable[[], Any]) -> dict[str, Any]:
    """Validation fields: ours vs PyTorch's result (``theirs()``), or vs the NumPy reference."""
    if theirs is not None:
        ref, by = cp.from_dlpack(theirs()), "torch"
    else:
        ref, by = cp.asarray(numpy_ref()), "numpy"
    return {**validation("fp32", {"result": rel_err(ours, ref)}), "reference": by}


def run(quick: bool = False) -> list[Row]:
    from gpuconv import device  # noqa: PLC0415
    from gpuconv.ops import activation as act  # noqa: PLC0415
    from gpuconv.ops import add as addop  # noqa: PLC0415

    cp = device.get_device("cuda").xp
    set_torch_tf32(False)
    shape = QUICK_SHAPE if quick else SHAPE
    have_torch = torch is not None and torch.cuda.is_available()
    label = "x".join(map(str, shape))

    def case() -> list[Row]:
        a = cp.random.standard_normal(shape, dtype=cp.float32)
        b = cp.random.standard_normal(shape, dtype=cp.float32)
        dy = cp.random.standard_normal(shape, dtype=cp.float32)
        y, dx = cp.empty_like(a), cp.empty_like(a)
        ha, hb, hdy = a.get(), b.get(), dy.get()
        nbytes = a.nbytes
        ta = tb = tdy = ty = None
        if have_torch:
            ta, tb, tdy = _torch_on(a), _torch_on(b), _torch_on(dy)
            ty = torch.empty_like(ta)
        rows = []

        def row(name: str, ours: Callable[[], Any], theirs: Callable[[], Any] | None, nb: int,
                result: Callable[[], Any], torch_result: Callable[[], Any] | None,
                numpy_ref: Callable[[], Any]) -> None:
            t_ours = time_gpu(ours)
            t_theirs = time_torch(theirs) if have_torch and theirs is not None else None
            extra = _check(cp, result(), torch_result if have_torch else None, numpy_ref)
            rows.append(Row("add", f"{name} {label}", "fp32", t_ours, t_theirs, nb, "GB/s", extra))

        relu_ref = lambda: addop.add_forward(ha, hb, relu=True)   # noqa: E731
        row("add fwd", lambda: addop.add_forward(a, b, out=y),
            (lambda: torch.add(ta, tb, out=ty)) if have_torch else None, 3 * nbytes,
            lambda: addop.add_forward(a, b, out=y), lambda: torch.add(ta, tb), lambda: ha + hb)
        row("add+relu fwd (fused)", lambda: addop.add_forward(a, b, relu=True, out=y),
            (lambda: torch.add(ta, tb, out=ty).relu_()) if have_torch else None, 3 * nbytes,
            lambda: addop.add_forward(a, b, relu=True, out=y), lambda: torch.relu(ta + tb), relu_ref)
        row("add -> relu fwd (unfused)", lambda: act.relu_forward(addop.add_forward(a, b, out=y), out=y),
            (lambda: torch.add(ta, tb, out=ty).relu_()) if have_torch else None, 5 * nbytes,
            lambda: act.relu_forward(addop.add_forward(a, b, out=y), out=y), lambda: torch.relu(ta + tb), relu_ref)
        addop.add_forward(a, b, relu=True, out=y)
        hy = y.get()
        ty_ref = torch.relu(ta + tb) if have_torch else None
        row("add+relu bwd", lambda: addop.add_backward(dy, y=y, relu=True, out=dx),
            (lambda: torch.ops.aten.threshold_backward(tdy, ty_ref, 0.0)) if have_torch else None, 3 * nbytes,
            lambda: addop.add_backward(dy, y=y, relu=True, out=dx),
            lambda: torch.ops.aten.threshold_backward(tdy, ty_ref, 0.0),
            lambda: addop.add_backward(hdy, y=hy, relu=True, out=hdy.copy()))
        acc = cp.empty_like(a)
        tacc = ta.clone() if have_torch else None

        def ours_acc() -> None:   # the timed call accumulates into a fixed start, so it stays finite
            addop.accumulate_(acc, dy)
        acc[...] = a
        t_ours = time_gpu(ours_acc)
        t_theirs = time_torch(lambda: tacc.add_(tdy)) if have_torch else None
        acc[...] = a
        addop.accumulate_(acc, dy)
        ref = (lambda: ta + tdy) if have_torch else None
        rows.append(Row("add", f"accumulate (dst += src) {label}", "fp32", t_ours, t_theirs, 3 * nbytes, "GB/s",
                        _check(cp, acc, ref, lambda: ha + hdy)))
        n, c = shape[:2]
        buf = cp.empty((n, 2 * c, *shape[2:]), dtype=cp.float32)
        view = buf[:, c:]
        tview = _torch_on(buf)[:, c:] if have_torch else None
        row("add fwd into a channel slice", lambda: addop.add_forward(a, b, relu=True, out=view),
            (lambda: torch.add(ta, tb, out=tview).relu_()) if have_torch else None, 3 * nbytes,
            lambda: addop.add_forward(a, b, relu=True, out=view), lambda: torch.relu(ta + tb), relu_ref)
        return rows

    return guarded_case("add", label, "fp32", cp, case)


def main() -> None:
    main_quick(run, __doc__)


if __name__ == "__main__":
    main()
