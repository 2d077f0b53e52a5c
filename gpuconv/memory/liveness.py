"""Liveness on a branching net: activations and gradients of a graph, with their lifetimes.

The planner's timeline is the same as for a chain (forward of node i at step i, the loss at
step L, backward of node i at step 2L-1-i, nodes in the Net's topological order); what
changes is who reads what:

- an activation lives from its node's forward until the last of its readers is done with
  it: a reader's forward, and its backward when it keeps its input (a skip tensor read by
  an ADD and by the next block's first CONV lives until that CONV's backward);
- a gradient is what :meth:`gpuconv.net.Net.backward` makes of it.  This module replays
  that function's bookkeeping on planned tensors instead of arrays: the same tokens decide,
  node by node, whether a reader's dx becomes the pending gradient, is accumulated in place
  into it (the pending one lives on, the other ends there), or (both shared) needs a sum of
  its own; an ADD hands its dy to both inputs (one tensor, alive until the later of their
  backwards), a fused RELU or FLATTEN passes it through, and a CONCAT whose dy is its own hands
  the branches that end in a CONV their slices of it (no tensor of their own; dy lives on).

A CONV that only a CONCAT reads (``Net.concat_output_views``) writes its output into its channel
slice of the CONCAT's output: it has no tensor of its own (``layer_tensors[i]['out']`` names the
concat's, ``'out_slice'`` gives channels (c0, c1)), and the concat's tensor is live from the first
such branch output to the last use of any of them or of the concat.

A CONV whose residual ADD is fused (``Net.residual_fusions``) runs at its ADD's step, into the
ADD's output: it has no output tensor of its own, and its input lives until then.

For a chain this gives exactly the chain planner's tensors (a test holds the two equal).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .plan import PlannedTensor


class _Token:
    __slots__ = ("holders",)

    def __init__(self, holders: int = 0) -> None:
        self.holders = holders


def graph_tensors(net: Any, batch: int, *, inference: bool, fdt: np.dtype, cast: Callable[[Any], np.dtype],
                  input_t: PlannedTensor, is_inplace: Callable[[Any, bool], bool],
                  layer_tensors: list[dict[str, Any]]) -> list[PlannedTensor]:
    """The activation and gradient tensors of ``net`` (a :class:`~gpuconv.net.Net`, chain or graph),
    with their intervals; fills ``layer_tensors[i]['out'|'dx']``.

    A merge node's per-input gradients (CONCAT's) go to ``layer_tensors[i]['dxs']`` (one per input, in
    order: the gradients of its inputs' outputs, as a chain's 'dx').  The other gradients a node's
    backward needs memory for go to ``layer_tensors[i]['workspace']``, the views the executor hands
    the layer by key (the plan's table counts them in its scratch column): the copy of a shared dy that
    the layer would overwrite as 'dy_copy', the sum of two shared gradients as 'gradsum<j>'."""
    from ..net import _grad_aliases_dy, _overwrites_dy, is_merge  # noqa: PLC0415  (the layers import the ops)

    layers = list(net.layers)
    L = len(layers)
    loss_step = L
    num_steps = L if inference else 2 * L

    def bwd(i: int) -> int:
        return 2 * L - 1 - i

    def nbytes(shape: Any, d: np.dtype) -> int:
        return int(math.prod(shape)) * d.itemsize

    def shape_of(p: int) -> tuple[int, ...]:
        return tuple(net.input_shape) if p < 0 else tuple(layers[p].out_shape)

    tensors: list[PlannedTensor] = []
    consumers: list[list[int]] = [[] for _ in layers]
    for i, src in enumerate(net.sources):
        for p in src:
            if p >= 0:
                consumers[p].append(i)

    # a conv whose residual add is fused runs at its ADD's step: it reads its input there
    fused = net.residual_fusions() if hasattr(net, "residual_fusions") else {}

    # a conv that only a concat reads writes into its channel slice of the concat's output
    slices = net.concat_output_views() if hasattr(net, "concat_output_views") else {}

    def new_act(i: int, start: int) -> PlannedTensor:
        spec = layers[i].output_spec(batch)
        d = cast(spec.dtype)
        t = PlannedTensor(f"{layers[i].name}.out", "activation", i, tuple(spec.shape), d.name,
                          nbytes(spec.shape, d), start=start)
        tensors.append(t)
        layer_tensors[i]["out"] = t.name
        return t

    # ---- activations: a node's output, or (in place) the tensor of the node it reads
    act_of: dict[int, PlannedTensor] = {-1: input_t}
    concat_t: dict[int, PlannedTensor] = {}  # concat node -> its output, made at its first slice's writer
    ends: dict[int, int] = {}
    for i, layer in enumerate(layers):
        if is_inplace(layer, inference) or i in fused:  # a fused conv writes nothing of its own
            t = act_of[net.sources[i][0]]
            t.aliases = (*t.aliases, f"{layer.name}.out")
        elif i in slices:
            # the concat's buffer is live from here (its first branch output) to its last use: the
            # conv's readers (and its own backward, for a fused ReLU's mask) extend it through ends
            k, c0, c1 = slices[i]
            if k not in concat_t:
                concat_t[k] = new_act(k, i)
            t = concat_t[k]
            t.aliases = (*t.aliases, f"{layer.name}.out")
            layer_tensors[i]["out"] = t.name
            layer_tensors[i]["out_slice"] = (c0, c1)
        elif i in concat_t:
            t = concat_t[i]
        else:
            t = new_act(i, i)
        act_of[i] = t
        if i == L - 1:
            last = loss_step if not inference else num_steps - 1  # the scores outlive the pass
        else:
            last = max(fused.get(c, c) for c in consumers[i])
        if not inference:
            for c in consumers[i]:
                if layers[c].keeps_input:
                    last = max(last, bwd(c))
            if layer.keeps_output:
                last = max(last, bwd(i))
        ends[id(t)] = max(ends.get(id(t), t.start), last)
    for t in tensors:
        t.end = ends[id(t)]
        t.intervals = ((t.start, t.end),)
    if inference:
        return tensors

    # ---- gradients: Net.backward's bookkeeping, on planned tensors
    grads: list[PlannedTensor] = []

    def new_grad(name: str, node: int, shape: tuple[int, ...], step: int) -> PlannedTensor:
        g = PlannedTensor(name, "gradient", node, (batch, *shape), fdt.name, nbytes((batch, *shape), fdt),
                          start=step, end=step)
        grads.append(g)
        return g

    pending: dict[int, tuple[PlannedTensor, _Token]] = {
        L - 1: (new_grad("dscores", L - 1, shape_of(L - 1), loss_step), _Token(1))}
    for i in range(L - 1, -1, -1):
        layer = layers[i]
        g, tok = pending.pop(i)
        g.end = max(g.end, bwd(i))  # backward i reads it
        if tok.holders > 1 and _overwrites_dy(layer):
            tok.holders -= 1
            g, tok = new_grad(f"{layer.name}.dy", i, shape_of(i), bwd(i)), _Token(1)
            layer_tensors[i]["workspace"]["dy_copy"] = g.name
        aliases = _grad_aliases_dy(layer)
        src = net.sources[i]
        merge = is_merge(layer)
        # CONCAT with a dy of its own hands view-taking branches their slices of it (Net.backward)
        views = layer.view_inputs if getattr(layer, "kind", "") == "CONCAT" and tok.holders == 1 else []
        for j, p in enumerate(src):
            if not merge and not (getattr(layer, "computes_input_grad", True) or p >= 0):
                continue  # a layer reading the data skips its gradient
            if aliases:
                t, tk = g, tok
                if not merge:
                    g.aliases = (*g.aliases, f"{layer.name}.dx")
            elif j < len(views) and views[j]:  # a slice of g: g lives until the branch is done with it
                t, tk = g, _Token()
                g.aliases = (*g.aliases, f"{layer.name}.dx{j}")
            else:
                name = f"{layer.name}.dx" + (str(j) if merge else "")
                t, tk = new_grad(name, p, shape_of(p), bwd(i)), _Token()
                if merge:  # one gradient per input (CONCAT's slices of dy): Buffers.dxs[j]
                    layer_tensors[i]["dxs"].append(name)
                else:
                    layer_tensors[i]["dx"] = name
            tk.holders += 1
            if p not in pending:
                pending[p] = (t, tk)
                continue
            a, ta = pending[p]
            a.end = max(a.end, bwd(i))  # read (and maybe written) by the sum
            if ta.holders == 1:      # accumulated into the pending gradient
                tk.holders -= 1
            elif tk.holders == 1:    # the pending one is shared: accumulated into the new one
                ta.holders -= 1
                pending[p] = (t, tk)
            else:                    # both shared: a sum of their own
                ta.holders -= 1
                tk.holders -= 1
                s = new_grad(f"{layer.name}.gradsum{j}", p, shape_of(p), bwd(i))
                layer_tensors[i]["workspace"][f"gradsum{j}"] = s.name
                pending[p] = (s, _Token(1))
        tok.holders -= 1
    for g in grads:
        g.intervals = ((g.start, g.end),)
    return tensors + grads
