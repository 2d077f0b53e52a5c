"""Output-size arithmetic for sliding windows, checked before anything is allocated.

The notes' formula: a window of size F (dilated: D*(F-1)+1) sliding with stride S
over W inputs padded by P on each side gives (W - F + 2P)/S + 1 outputs, which
must be a positive integer (``rounding="exact"``, the default everywhere).

The nets of the ResNet and GoogLeNet papers break that rule (a 3x3 stride-2 layer over an
even width), and round instead: ``"floor"`` (PyTorch's: the last window that fits inside the
padded input is the last output) or ``"ceil"`` (Caffe's pooling, PyTorch's ceil_mode: one more
window, reaching past the padded input, kept only where it starts inside the input or its
left padding, so that no window holds padding alone).  Either way the windows start at
-P, -P+S, ..., and any position outside the input reads as padding: the kernels bounds-check
every read, so a rounded layer is the ordinary op given that output size.
"""
from __future__ import annotations


ROUNDINGS = ("exact", "floor", "ceil")


class GeometryError(ValueError):
    """A layer's hyperparameters do not fit its input volume."""


def effective_filter(f: int, dilation: int = 1) -> int:
    """Receptive extent of a dilated filter: D*(F-1)+1."""
    return dilation * (f - 1) + 1


def check_rounding(rounding: str, layer: str = "layer") -> str:
    if rounding not in ROUNDINGS:
        raise ValueError(f"{layer}: rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    return rounding


def window_output_size(w: int, f: int, s: int, p: int = 0, dilation: int = 1, *,
                       layer: str = "layer", axis: str = "width", rounding: str = "exact") -> int:
    """(W - F_eff + 2P)/S + 1, or GeometryError naming the layer, formula and numbers.

    ``rounding``: "exact" (the division must be exact), "floor" or "ceil" (see the module doc)."""
    check_rounding(rounding, layer)
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
    r = num % s
    if r and rounding == "floor":
        return num // s + 1
    if r and rounding == "ceil":
        # one more window, reaching past the padded input, only where it starts inside the
        # input or its left padding (PyTorch's ceil_mode rule)
        return num // s + 2 if (num // s + 1) * s < w + p else num // s + 1
    if r:
        raise GeometryError(
            f"{layer}: output {axis} is not an integer: (W - F + 2P)/S + 1 with "
            f"W={w}, F={fe}, P={p}, S={s}{dil} gives ({w} - {fe} + 2*{p})/{s} + 1 = {num / s + 1:g}; "
            f"change the stride or padding so that {s} divides {num}")
    return num // s + 1


def window_pad_after(w: int, f: int, s: int, p: int, out: int, dilation: int = 1) -> int:
    """The padding after the input that ``out`` windows reach (P where exact, less for floor, a
    negative value where the last rows are never read; more for ceil)."""
    return (out - 1) * s + effective_filter(f, dilation) - w - p
