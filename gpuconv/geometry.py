"""Output-size arithmetic for sliding windows, checked before anything is allocated.

The notes' formula: a window of size F (dilated: D*(F-1)+1) sliding with stride S
over W inputs padded by P on each side gives (W - F + 2P)/S + 1 outputs, which
must be a positive integer.
"""
from __future__ import annotations


class GeometryError(ValueError):
    """A layer's hyperparameters do not fit its input volume."""


def effective_filter(f: int, dilation: int = 1) -> int:
    """Receptive extent of a dilated filter: D*(F-1)+1."""
    return dilation * (f - 1) + 1


def window_output_size(w: int, f: int, s: int, p: int = 0, dilation: int = 1, *,
                       layer: str = "layer", axis: str = "width") -> int:
    """(W - F_eff + 2P)/S + 1, or GeometryError naming the layer, formula and numbers."""
    for name, value, low in (("F", f, 1), ("S", s, 1), ("P", p, 0), ("dilation", dilation, 1)):
        if int(value) != value or value < low:
            raise GeometryError(f"{layer}: {name}={value} must be an integer >= {low}")
    fe = effective_filter(f, dilation)
    num = w - fe + 2 * p
    dil = f" (effective F = D*(F-1)+1 = {dilation}*({f}-1)+1 = {fe})" if dilation != 1 else ""
    if num < 0:
        raise GeometryError(
            f"{layer}: filter does not fit the input {axis}: (W - F + 2P)/S + 1 with "
            f"W={w}, F={fe}, P={p}, S={s}{dil} gives ({w} - {fe} + 2*{p})/{s} + 1 = {num / s + 1:g}, "
            f"not a positive integer")
    if num % s != 0:
        raise GeometryError(
            f"{layer}: output {axis} is not an integer: (W - F + 2P)/S + 1 with "
            f"W={w}, F={fe}, P={p}, S={s}{dil} gives ({w} - {fe} + 2*{p})/{s} + 1 = {num / s + 1:g}; "
            f"change the stride or padding so that {s} divides {num}")
    return num // s + 1
