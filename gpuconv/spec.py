"""The notes' layer-pattern language, parsed properly (no eval).

    INPUT[32x32x3] -> [[CONV3-64 -> RELU]*2 -> POOL2]*3 -> [FC-512 -> RELU]*1 -> FC-10

Grammar::

    net   := 'INPUT' '[' H 'x' W 'x' C ']' ('->' item)*
    item  := '[' seq ']' ('*' INT)?  |  layer
    seq   := item ('->' item)*
    layer := CONV<F>-<K>[/S][pP][dD]   (P defaults to (F-1)//2: 'same' padding as the notes advise)
           | LOCAL<F>-<K>[/S][pP]      | POOL<F>[/S] | AVGPOOL<F>[/S] | L2POOL<F>[/S]
           | RELU | LEAKYRELU[<slope>] | FC-<M> | DROPOUT[<p>] | BN | BATCHNORM | LRN[<n>] | FLATTEN

``INPUT[N]`` (one number) declares a vector input.  Errors name the column.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np

from .layers import FC, LRN, AvgPool, BatchNorm, Conv, Dropout, Flatten, L2Pool, Layer, LocallyConnected, \
    MaxPool, ReLU
from .net import Net


class SpecError(ValueError):
    """The pattern string is malformed; the message points at the column."""


_TOKEN = re.compile(r"\s*(?:(->)|(\[)|(\])|(\*)|([A-Za-z][A-Za-z0-9_.\-/]*))")


def _tokenize(text: str) -> list[tuple[str, int]]:
    tokens: list[tuple[str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            # numbers after '*' and inside INPUT[...] are words too: handle digits here
            m2 = re.compile(r"\s*([0-9][0-9x.]*)").match(text, pos)
            if not m2:
                raise SpecError(f"unexpected character {text[pos:].strip()[0]!r} at column {pos + 1}:\n"
                                f"  {text}\n  {' ' * pos}^")
            tokens.append((m2.group(1), m2.start(1)))
            pos = m2.end()
            continue
        tok = next(g for g in m.groups() if g is not None)
        tokens.append((tok, m.start(m.lastindex or 0)))
        pos = m.end()
    return tokens


_LAYER_PATTERNS: list[tuple[re.Pattern[str], Callable[..., Layer]]] = []


def _layer(pattern: str) -> Callable[[Callable[..., Layer]], Callable[..., Layer]]:
    def register(fn: Callable[..., Layer]) -> Callable[..., Layer]:
        _LAYER_PATTERNS.append((re.compile(pattern + r"$", re.IGNORECASE), fn))
        return fn
    return register


def _i(v: str | None, default: int | None = None) -> int | None:
    return default if v is None else int(v)


@_layer(r"CONV(\d+)-(\d+)(?:/(\d+))?(?:p(\d+))?(?:d(\d+))?")
def _conv(f: str, k: str, s: str | None, p: str | None, d: str | None) -> Layer:
    F, D = int(f), _i(d, 1)
    return Conv(int(k), F, _i(s, 1), _i(p, (D * (F - 1)) // 2), D)


@_layer(r"LOCAL(\d+)-(\d+)(?:/(\d+))?(?:p(\d+))?")
def _local(f: str, k: str, s: str | None, p: str | None) -> Layer:
    return LocallyConnected(int(k), int(f), _i(s, 1), _i(p, 0))


@_layer(r"(?:MAX)?POOL(\d+)?(?:/(\d+))?")
def _pool(f: str | None, s: str | None) -> Layer:
    F = _i(f, 2)
    return MaxPool(F, _i(s, F))


@_layer(r"AVGPOOL(\d+)?(?:/(\d+))?")
def _avgpool(f: str | None, s: str | None) -> Layer:
    F = _i(f, 2)
    return AvgPool(F, _i(s, F))


@_layer(r"L2POOL(\d+)?(?:/(\d+))?")
def _l2pool(f: str | None, s: str | None) -> Layer:
    F = _i(f, 2)
    return L2Pool(F, _i(s, F))


@_layer(r"RELU")
def _relu() -> Layer:
    return ReLU()


@_layer(r"LEAKYRELU([0-9.]+)?")
def _leaky(slope: str | None) -> Layer:
    return ReLU(float(slope) if slope else 0.01)


@_layer(r"FC-?(\d+)")
def _fc(m: str) -> Layer:
    return FC(int(m))


@_layer(r"DROPOUT([0-9.]+)?")
def _dropout(p: str | None) -> Layer:
    return Dropout(float(p) if p else 0.5)


@_layer(r"(?:BN|BATCHNORM)")
def _bn() -> Layer:
    return BatchNorm()


@_layer(r"LRN(\d+)?")
def _lrn(n: str | None) -> Layer:
    return LRN(_i(n, 5))  # type: ignore[arg-type]


@_layer(r"FLATTEN")
def _flatten() -> Layer:
    return Flatten()


def parse_layer(word: str, column: int = 0, text: str = "") -> Layer:
    for pattern, make in _LAYER_PATTERNS:
        m = pattern.match(word)
        if m:
            return make(*m.groups())
    where = f" at column {column + 1}:\n  {text}\n  {' ' * column}^" if text else ""
    raise SpecError(f"unknown layer {word!r}{where}\n  known: CONV<F>-<K>[/S][pP][dD], LOCAL<F>-<K>, POOL<F>[/S], "
                    f"AVGPOOL<F>, L2POOL<F>, RELU, LEAKYRELU, FC-<M>, DROPOUT<p>, BN, LRN<n>, FLATTEN")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def error(self, msg: str) -> SpecError:
        col = self.tokens[self.i][1] if self.i < len(self.tokens) else len(self.text)
        return SpecError(f"{msg} at column {col + 1}:\n  {self.text}\n  {' ' * col}^")

    def expect(self, tok: str) -> None:
        if self.peek() != tok:
            found = self.peek()
            raise self.error(f"expected {tok!r} but found {'end of input' if found is None else repr(found)}")
        self.i += 1

    def number(self) -> int:
        tok = self.peek()
        if tok is None or not tok.isdigit():
            raise self.error(f"expected a positive integer, found {tok!r}")
        self.i += 1
        if int(tok) < 1:
            raise self.error("repetition count must be >= 1")
        return int(tok)

    def net(self) -> tuple[tuple[int, ...], list[Layer]]:
        if (self.peek() or "").upper() != "INPUT":
            raise self.error("a pattern starts with INPUT[HxWxC]")
        self.i += 1
        self.expect("[")
        dims = self.peek() or ""
        if not re.fullmatch(r"\d+(x\d+x\d+)?", dims):
            raise self.error(f"INPUT needs [HxWxC] or [D], found {dims!r}")
        self.i += 1
        self.expect("]")
        parts = [int(v) for v in dims.split("x")]
        shape = (parts[2], parts[0], parts[1]) if len(parts) == 3 else (parts[0],)
        layers: list[Layer] = []
        while self.peek() == "->":
            self.i += 1
            layers.extend(self.item())
        if self.peek() is not None:
            raise self.error(f"expected '->' or end of input, found {self.peek()!r}")
        return shape, layers

    def item(self) -> list[Layer]:
        tok = self.peek()
        if tok == "[":
            self.i += 1
            body = self.seq()
            self.expect("]")
            times = 1
            if self.peek() == "*":
                self.i += 1
                times = self.number()
            # Each repetition gets fresh layer objects, re-parsed from the same words.
            return body + [layer for _ in range(times - 1) for layer in self._replay(body)]
        if tok is None or tok in ("->", "]", "*"):
            raise self.error(f"expected a layer or '[', found {'end of input' if tok is None else repr(tok)}")
        col = self.tokens[self.i][1]
        self.i += 1
        layer = parse_layer(tok, col, self.text)
        layer._spec_word = tok  # type: ignore[attr-defined]
        return [layer]

    @staticmethod
    def _replay(body: list[Layer]) -> list[Layer]:
        fresh = []
        for layer in body:
            new = parse_layer(layer._spec_word)  # type: ignore[attr-defined]
            new._spec_word = layer._spec_word  # type: ignore[attr-defined]
            fresh.append(new)
        return fresh

    def seq(self) -> list[Layer]:
        layers = self.item()
        while self.peek() == "->":
            self.i += 1
            layers.extend(self.item())
        return layers


def parse(text: str) -> tuple[tuple[int, ...], list[Layer]]:
    """Pattern string -> (per-example input shape (C,H,W) or (D,), list of fresh layers)."""
    if not text.strip():
        raise SpecError("empty pattern: expected INPUT[HxWxC] -> ...")
    return _Parser(text).net()


def net_from_spec(text: str, *, name: str = "net", loss: str = "softmax", dtype: Any = np.float32) -> Net:
    """Build a Net from a pattern string; geometry is checked here, before any allocation."""
    shape, layers = parse(text)
    return Net(layers, shape, loss=loss, dtype=dtype, name=name)
