"""The notes' per-layer table: output volume, activations (memory) and weights."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .net import Net


def volume(shape: tuple[int, ...]) -> str:
    """(C, H, W) -> '[HxWxC]' as the notes write it; (D,) -> '[1x1xD]'."""
    if len(shape) == 3:
        c, h, w = shape
        return f"[{h}x{w}x{c}]"
    return f"[1x1x{shape[0]}]"


def volume_product(shape: tuple[int, ...]) -> str:
    if len(shape) == 3:
        c, h, w = shape
        return f"{h}*{w}*{c}"
    return f"{shape[0]}"


def _reads(net: "Net", i: int) -> str:
    """The inputs of node i, where they are not simply the row above (a chain reads the row above)."""
    src = net.sources[i]
    if src == (i - 1,):
        return ""
    # Inside a block, its own nodes are named relative to it: 'b1.relu1' for 'inception3a.b1.relu1'.
    name = net.layers[i].name
    scope = name[:name.rfind(".") + 1]
    names = [net.node_name(p) for p in src]
    return "<- " + ", ".join(n[len(scope):] if scope and n.startswith(scope) else n for n in names)


def summary_table(net: "Net") -> str:
    """A table like the notes' VGGNet breakdown, with the true totals.

    A branching net gets one more column, ``reads``: for a node that does not read the row
    above it (a branch's first layer, a merge, the node after a block), the nodes it reads."""
    graph = not getattr(net, "is_chain", True)
    rows = [("INPUT", "", volume(net.input_shape), volume_product(net.input_shape),
             int(math.prod(net.input_shape)), 0, 0)]
    for i, layer in enumerate(net.layers):
        acts = 0 if layer.inplace else int(math.prod(layer.out_shape))  # type: ignore[arg-type]
        expr = "(in place)" if layer.inplace else volume_product(layer.out_shape)  # type: ignore[arg-type]
        rows.append((f"{layer.name} {layer.describe()}", _reads(net, i) if graph else "",
                     volume(layer.out_shape), expr, acts,  # type: ignore[arg-type]
                     layer.num_weights, layer.num_params))
    w0 = max(len(r[0]) for r in rows)
    wr = max(len(r[1]) for r in rows)
    w1 = max(len(r[2]) for r in rows)
    w2 = max(len(f"{r[3]} = {r[4]:,}") for r in rows)
    reads = f"{'reads':<{wr}}  " if graph else ""
    lines = [f"{'layer':<{w0}}  {reads}{'output volume':<{w1}}  {'activations':<{w2}}  {'weights':>13}  "
             f"{'params':>13}"]
    for name, src, vol, expr, acts, weights, params in rows:
        col = f"{src:<{wr}}  " if graph else ""
        lines.append(f"{name:<{w0}}  {col}{vol:<{w1}}  {f'{expr} = {acts:,}':<{w2}}  {weights:>13,}  {params:>13,}")
    total_acts = sum(r[4] for r in rows)
    total_w = sum(r[5] for r in rows)
    lines.append("-" * len(lines[0]))
    lines.append(f"TOTAL activations: {total_acts:,} per example ({total_acts * net.dtype.itemsize / 2**20:.1f} MiB "
                 f"in {net.dtype.name}, forward only; about 2x with gradients)")
    lines.append(f"TOTAL params: {net.num_params:,} ({total_w:,} weights + {net.num_params - total_w:,} biases "
                 f"and other parameters)")
    if graph:
        kinds: dict[str, int] = {}
        for layer in net.layers:
            if len(net.sources[net.layers.index(layer)]) > 1:
                kinds[layer.kind] = kinds.get(layer.kind, 0) + 1
        merges = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        lines.append(f"Graph: {len(net.layers)} nodes, {merges or 'no'} merge nodes; '<-' names the inputs of a "
                     f"node that does not read the row above it")
    if net.name.startswith("vgg16"):
        lines.append("Note: the CS231n notes print 'TOTAL memory: 24M' for VGG16; that is an arithmetic slip: "
                     "their own rows sum to the ~15.2M above.")
    return "\n".join(lines)
