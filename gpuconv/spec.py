"""The notes' layer-pattern language, parsed properly (no eval).

    INPUT[32x32x3] -> [[CONV3-64 -> RELU]*2 -> POOL2]*3 -> [FC-512 -> RELU]*1 -> FC-10

Grammar::

    net    := 'INPUT' '[' H 'x' W 'x' C ']' ('->' item)*
    item   := '[' seq ']' ('*' INT)?  |  '{' branch ('|' branch)* '}' ('+')?  |  block  |  layer
    seq    := item ('->' item)*
    branch := seq | (nothing: the identity)
    layer  := CONV<F>-<K>[/S][pP][dD]   (P defaults to (F-1)//2: 'same' padding as the notes advise)
            | LOCAL<F>-<K>[/S][pP]      | POOL<F>[/S][pP] | AVGPOOL<F>[/S][pP] | L2POOL<F>[/S] | GAP
            | RELU | LEAKYRELU[<slope>] | FC-<M> | DROPOUT[<p>] | BN | BATCHNORM | LRN[<n>] | FLATTEN
    block  := RES<F>-<K>[/S]            (basic residual block: two CONV<F>-<K> with BN, + shortcut, RELU)
            | BOTTLENECK-<K>[/S]        (1x1-K, 3x3-K/S, 1x1-4K with BN, + shortcut, RELU)
            | INCEPTION(<1x1>,<3x3 reduce>-<3x3>,<5x5 reduce>-<5x5>,<pool proj>)

A residual block's shortcut is the identity where the block keeps the shape, else a
projection (1x1 CONV/S and BN); its strided layers round the output size down as
PyTorch's do.  ``{ a | b | c }`` runs the branches on the same input and concatenates
their outputs along channels; ``{ a | b }+`` adds two branches (an empty branch is the
identity: ``{ CONV3-16 -> BN -> RELU -> CONV3-16 -> BN | }+ -> RELU`` is a residual
block written out).  A pattern with blocks or branches builds a graph
(:class:`gpuconv.graph.Graph`); without them, a chain as before.

``INPUT[N]`` (one number) declares a vector input.  Errors name the column.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import numpy as np

from .geometry import GeometryError
from .graph import Graph, Node
from .layers import FC, LRN, AvgPool, BatchNorm, Conv, Dropout, Flatten, GlobalAvgPool, L2Pool, Layer, \
    LocallyConnected, MaxPool, ReLU
from .net import Net


class SpecError(ValueError):
    """The pattern string is malformed; the message points at the column."""


_TOKEN = re.compile(r"\s*(?:(->)|(\[)|(\])|(\*)|(\{)|(\})|(\|)|(\+)|([A-Za-z][A-Za-z0-9_.\-/]*(?:\([^)]*\)?)?))")


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


@_layer(r"(?:MAX)?POOL(\d+)?(?:/(\d+))?(?:p(\d+))?")
def _pool(f: str | None, s: str | None, p: str | None) -> Layer:
    F = _i(f, 2)
    return MaxPool(F, _i(s, F), _i(p, 0))


@_layer(r"AVGPOOL(\d+)?(?:/(\d+))?(?:p(\d+))?")
def _avgpool(f: str | None, s: str | None, p: str | None) -> Layer:
    F = _i(f, 2)
    return AvgPool(F, _i(s, F), _i(p, 0))


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


@_layer(r"GAP")
def _gap() -> Layer:
    return GlobalAvgPool()


# ---- blocks: words that declare several nodes of a graph ------------------------------------------

@dataclass
class Block:
    """A pattern item that adds nodes to a graph (a residual block, an Inception module, branches)."""

    word: str
    column: int

    def apply(self, g: Graph, x: Node) -> Node:
        raise NotImplementedError


@dataclass
class Residual(Block):
    F: int = 3
    K: int = 64
    stride: int = 1
    bottleneck: bool = False

    def apply(self, g: Graph, x: Node) -> Node:
        if self.bottleneck:
            return g.bottleneck(x, self.K, self.stride)
        return g.basic_block(x, self.K, self.stride, F=self.F)


@dataclass
class Inception(Block):
    sizes: tuple[int, ...] = ()

    def apply(self, g: Graph, x: Node) -> Node:
        return g.inception(x, *self.sizes)


Item = Union[Layer, Block]


@dataclass
class Branches(Block):
    """``{ a | b | ... }``: the branches read the same input; concatenated, or added with '+'."""

    branches: list[list[Item]] = field(default_factory=list)
    add: bool = False

    def apply(self, g: Graph, x: Node) -> Node:
        with g._block_scope("branches", None):
            outs = []
            for j, items in enumerate(self.branches, start=1):
                with g.scope(f"b{j}"):
                    outs.append(apply_items(g, x, items))
            return g.add(*outs, name="add") if self.add else g.concat(*outs, name="concat")


def apply_items(g: Graph, x: Node, items: list[Item]) -> Node:
    """Declare ``items`` one after the other on ``g``, starting from ``x``."""
    for it in items:
        x = it.apply(g, x) if isinstance(it, Block) else g.layer(it, x)
    return x


_RES = re.compile(r"RES(\d+)-(\d+)(?:/(\d+))?$", re.IGNORECASE)
_BOTTLENECK = re.compile(r"BOTTLENECK-(\d+)(?:/(\d+))?$", re.IGNORECASE)
_INCEPTION = re.compile(r"INCEPTION\(\s*(\d+)\s*,\s*(\d+)\s*-\s*(\d+)\s*,\s*(\d+)\s*-\s*(\d+)\s*,\s*(\d+)\s*\)$",
                        re.IGNORECASE)
BLOCK_WORDS = "RES<F>-<K>[/S], BOTTLENECK-<K>[/S], INCEPTION(<1x1>,<3r>-<3x3>,<5r>-<5x5>,<pool proj>)"


def parse_block(word: str, column: int = 0) -> Block | None:
    """The block a word declares, or None when it is no block word."""
    m = _RES.match(word)
    if m:
        return Residual(word, column, int(m.group(1)), int(m.group(2)), int(m.group(3) or 1))
    m = _BOTTLENECK.match(word)
    if m:
        return Residual(word, column, 3, int(m.group(1)), int(m.group(2) or 1), bottleneck=True)
    m = _INCEPTION.match(word)
    if m:
        return Inception(word, column, tuple(int(v) for v in m.groups()))
    return None


def parse_layer(word: str, column: int = 0, text: str = "") -> Layer:
    for pattern, make in _LAYER_PATTERNS:
        m = pattern.match(word)
        if m:
            return make(*m.groups())
    where = f" at column {column + 1}:\n  {text}\n  {' ' * column}^" if text else ""
    what = "block" if re.match(r"(RES|BOTTLENECK|INCEPTION)", word, re.IGNORECASE) else "layer"
    raise SpecError(f"unknown {what} {word!r}{where}\n  known: CONV<F>-<K>[/S][pP][dD], LOCAL<F>-<K>, POOL<F>[/S][pP], "
                    f"AVGPOOL<F>[/S][pP], L2POOL<F>, GAP, RELU, LEAKYRELU, FC-<M>, DROPOUT<p>, BN, LRN<n>, FLATTEN; "
                    f"blocks: {BLOCK_WORDS}; branches: {{ a | b }} (concat), {{ a | b }}+ (add)")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def error(self, msg: str, col: int | None = None) -> SpecError:
        if col is None:
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

    def net(self) -> tuple[tuple[int, ...], list[Item]]:
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
        layers: list[Item] = []
        while self.peek() == "->":
            self.i += 1
            layers.extend(self.item())
        if self.peek() is not None:
            raise self.error(f"expected '->' or end of input, found {self.peek()!r}")
        return shape, layers

    def item(self) -> list[Item]:
        tok = self.peek()
        if tok == "{":
            return [self.branches()]
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
        if tok is None or tok in ("->", "]", "*", "}", "|", "+"):
            raise self.error(f"expected a layer or '[', found {'end of input' if tok is None else repr(tok)}")
        col = self.tokens[self.i][1]
        self.i += 1
        block = parse_block(tok, col)
        if block is not None:
            if isinstance(block, Residual) and (block.K < 1 or block.F < 1 or block.stride < 1):
                raise self.error(f"{tok}: sizes and stride must be >= 1", col)
            if isinstance(block, Inception) and min(block.sizes) < 1:
                raise self.error(f"{tok}: every branch needs at least one filter", col)
            return [block]
        layer = parse_layer(tok, col, self.text)
        layer._spec_word = tok  # type: ignore[attr-defined]
        return [layer]

    def branches(self) -> Branches:
        col = self.tokens[self.i][1]
        self.i += 1  # '{'
        branches = [self.branch()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.branch())
        self.expect("}")
        add = self.peek() == "+"
        if add:
            self.i += 1
            if len(branches) != 2:
                raise self.error(f"'{{ a | b }}+' adds exactly two branches, found {len(branches)}", col)
        elif len(branches) < 2:
            raise self.error("'{ ... }' needs two or more branches separated by '|'", col)
        if all(not b for b in branches):
            raise self.error("every branch is empty (the identity): nothing to merge", col)
        return Branches(self.text[col:self.tokens[self.i - 1][1] + 1], col, branches, add)

    def branch(self) -> list[Item]:
        if self.peek() in ("|", "}"):
            return []  # the identity
        return self.seq()

    @classmethod
    def _replay(cls, body: list[Item]) -> list[Item]:
        """Fresh layers for another repetition (blocks declare fresh nodes each time they are applied)."""
        fresh: list[Item] = []
        for item in body:
            if isinstance(item, Branches):
                fresh.append(Branches(item.word, item.column, [cls._replay(b) for b in item.branches], item.add))
            elif isinstance(item, Block):
                fresh.append(item)
            else:
                new = parse_layer(item._spec_word)  # type: ignore[attr-defined]
                new._spec_word = item._spec_word  # type: ignore[attr-defined]
                fresh.append(new)
        return fresh

    def seq(self) -> list[Item]:
        layers = self.item()
        while self.peek() == "->":
            self.i += 1
            layers.extend(self.item())
        return layers


def parse(text: str) -> tuple[tuple[int, ...], list[Item]]:
    """Pattern string -> (per-example input shape (C,H,W) or (D,), list of fresh layers).

    Blocks and branch groups appear in the list as :class:`Block` items (a graph, see net_from_spec)."""
    if not text.strip():
        raise SpecError("empty pattern: expected INPUT[HxWxC] -> ...")
    return _Parser(text).net()


def net_from_spec(text: str, *, name: str = "net", loss: str = "softmax", dtype: Any = np.float32) -> Net:
    """Build a Net from a pattern string; geometry is checked here, before any allocation.

    Layers only: a chain.  With blocks or branches: a graph, whose geometry errors (two branches
    that do not fit, say) also point at the pattern's column of the block."""
    shape, items = parse(text)
    if all(isinstance(it, Layer) for it in items):
        return Net(items, shape, loss=loss, dtype=dtype, name=name)  # type: ignore[arg-type]
    g = Graph(shape, name=name)
    x = g.input()
    for it in items:
        if not isinstance(it, Block):
            x = g.layer(it, x)
            continue
        try:
            x = it.apply(g, x)
        except GeometryError as e:
            col = it.column
            raise GeometryError(f"{e}\n  in {it.word} at column {col + 1}:\n  {text}\n  {' ' * col}^") from None
    return g.build(loss=loss, dtype=dtype)
