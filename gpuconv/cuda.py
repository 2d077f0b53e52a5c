"""Kernel loading: compile ``kernels/*.cu`` with NVRTC through cupy.RawModule.

This and ``gpuconv.device`` are the only modules that touch cupy.  Modules are
compiled once per (device, file) and cached in memory; CuPy also caches the
compiled cubin on disk (``~/.cupy/kernel_cache``) keyed by source and options,
which is why the kernels are plain ``extern "C"`` functions with types fixed in
the source (``name_expressions`` would bypass that cache).

``compile_ptx`` runs NVRTC alone, with no GPU and no driver.  ``compile_build`` does the
same for a real target (sm_80, sm_90, sm_90a): NVRTC then runs ptxas too, which checks the
inline PTX and reports each entry's registers, spills and shared memory (``EntryResources``).
CI uses it to prove that every kernel assembles for sm_80 and sm_90 and that no kernel spills
beyond what is documented for it.

Arch-specific variants (``ARCH_VARIANTS``: fc.cu's and conv.cu's Hopper wgmma GEMMs, which need the
``sm_90a`` target) cannot go through RawModule, which appends its own ``-arch=sm_90``.
``compile_cubin`` runs NVRTC for that target and the module is loaded from the cubin
bytes (cached on disk under ``$GPUCONV_CACHE_DIR/kernels``, keyed by source, options and
NVRTC version).
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from . import device
from .kernel_config import current


def _kernel_dir() -> Path:
    """$GPUCONV_KERNEL_DIR, else a checkout's kernels/ beside the package, else the installed copy.

    A wheel or a non-editable install carries the sources as package data in ``gpuconv/_kernels``
    (setup.py maps the top-level kernels/ there); an editable install or a plain checkout reads kernels/.
    """
    env = os.environ.get("GPUCONV_KERNEL_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    package = Path(__file__).resolve().parent
    checkout = package.parent / "kernels"
    return checkout if (checkout / "conv.cu").is_file() else package / "_kernels"


KERNEL_DIR = _kernel_dir()
# -std=c++17 for constexpr/if constexpr; CuPy adds -arch itself (and -ftz=true).
NVRTC_OPTIONS: tuple[str, ...] = ("-std=c++17",)
TARGET_ARCHS: tuple[str, ...] = ("compute_80", "compute_90")
REAL_ARCHS: tuple[str, ...] = ("sm_80", "sm_90")  # the same targets down to SASS (compile_build)

# Module variants: the same source compiled with extra preprocessor defines.  A variant
# holds entry points that only some users need (GEMM_ASYNC: the cp.async GEMM schedule),
# so the default module's compile time is not paid for them.
MODULE_VARIANTS: dict[str, tuple[tuple[str, ...], ...]] = {"conv": (("GEMM_ASYNC",),), "fc": (("GEMM_ASYNC",),)}

# Variants that exist for one architecture only: the define -> the NVRTC target they need.
# GEMM_WGMMA: fc.cu's and conv.cu's wgmma GEMMs (sm_90a: wgmma is not part of sm_90, so it runs on compute
# capability 9.0 exactly).
ARCH_VARIANTS: dict[str, dict[str, str]] = {"fc": {"GEMM_WGMMA": "sm_90a"}, "conv": {"GEMM_WGMMA": "sm_90a"}}

# Dynamic shared memory a launch may use without opting in (cudaFuncSetAttribute).
DEFAULT_DYNAMIC_SHARED = 48 * 1024

_modules: dict[tuple[int, str, tuple[str, ...]], Any] = {}


class KernelCompileError(RuntimeError):
    """NVRTC rejected a kernel source; the message carries NVRTC's log."""


def kernel_names() -> list[str]:
    """Every kernel file's stem, e.g. ['conv', 'pool', ...]."""
    return sorted(p.stem for p in KERNEL_DIR.glob("*.cu"))


_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[^\n]*$', re.MULTILINE)


def expand_includes(src: str, headers: Mapping[str, Path], seen: frozenset[str] = frozenset()) -> str:
    """Replace each ``#include "h"`` with the text of ``headers[h]``, recursively.

    Textual inclusion keeps the source self-contained: CuPy keys its on-disk cache on
    the source text and the options, so an edited header must change the source.
    """
    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in headers:
            raise FileNotFoundError(f'#include "{name}": no such header beside the kernels')
        if name in seen:
            return ""  # included already (the headers are #pragma once)
        return expand_includes(headers[name].read_text(), headers, seen | {name})
    return _INCLUDE.sub(repl, src)


def kernel_headers() -> dict[str, Path]:
    """The quoted-include headers that kernels may use: kernels/*.cuh."""
    return {p.name: p for p in KERNEL_DIR.glob("*.cuh")}


def kernel_source(name: str, headers: Mapping[str, Path] | None = None) -> str:
    """kernels/<name>.cu with its quoted includes expanded (``headers`` overrides kernels/*.cuh)."""
    path = KERNEL_DIR / f"{name}.cu"
    if not path.is_file():
        raise FileNotFoundError(f"kernel source {path} not found (set GPUCONV_KERNEL_DIR?)")
    return expand_includes(path.read_text(), {**kernel_headers(), **(headers or {})})


def _define_options(defines: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"-D{d}" for d in defines)


def _text(b: Any) -> str:
    """NVRTC's PTX / log as text (CuPy hands back bytes, NUL-terminated, or str)."""
    return (b.decode(errors="replace") if isinstance(b, bytes) else str(b)).rstrip("\0")


def _nvrtc_compile(name: str, arch: str, defines: Sequence[str], output: str,
                   extra: Sequence[str] = ()) -> Any:
    """Run NVRTC alone (no GPU) on kernels/<name>.cu for ``arch``.  ``output``: "PTX", "CUBIN"
    (a real target only), or "ALL" for (PTX, cubin, log) of one run."""
    from cupy.cuda import nvrtc  # noqa: PLC0415

    prog = nvrtc.createProgram(kernel_source(name), f"{name}.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [*NVRTC_OPTIONS, *_define_options(defines), f"-arch={arch}", "-ftz=true",
                                        *extra])
        except nvrtc.NVRTCError as exc:
            raise KernelCompileError(f"{name}.cu for {arch}:\n{nvrtc.getProgramLog(prog)}") from exc
        if output == "ALL":
            return nvrtc.getPTX(prog), nvrtc.getCUBIN(prog), nvrtc.getProgramLog(prog)
        return nvrtc.getPTX(prog) if output == "PTX" else nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)


@dataclass(frozen=True)
class EntryResources:
    """What ptxas reports for one kernel entry: registers per thread, and bytes of stack frame,
    spill stores / loads (local memory per thread) and static shared memory per block."""
    registers: int
    stack: int
    spill_stores: int
    spill_loads: int
    smem: int


@dataclass(frozen=True)
class Build:
    """One NVRTC run of a module for a real target: its PTX, cubin and ptxas's report per entry."""
    name: str
    arch: str
    defines: tuple[str, ...]
    ptx: str
    cubin: bytes
    resources: dict[str, EntryResources]


_PTXAS_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_PTXAS_PROPS = re.compile(r"Function properties for (\w+)")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas_log(log: str) -> dict[str, EntryResources]:
    """Entry name -> resources, from the log of ``ptxas -v`` (NVRTC ``-Xptxas=-v``).  Per entry it
    prints "Compiling entry function", "Function properties for" with the stack/spill line, then
    "Used N registers[, ..., M bytes smem]"; properties of non-inlined device functions (no
    "Compiling entry function" line) are skipped."""
    out: dict[str, EntryResources] = {}
    entries: set[str] = set()
    current: str | None = None
    frame: tuple[int, int, int] = (0, 0, 0)
    for line in log.splitlines():
        if m := _PTXAS_ENTRY.search(line):
            entries.add(m.group(1))
        elif m := _PTXAS_PROPS.search(line):
            current, frame = m.group(1), (0, 0, 0)
        elif (m := _PTXAS_FRAME.search(line)) and current is not None:
            frame = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        elif (m := _PTXAS_USED.search(line)) and current in entries:
            smem = _PTXAS_SMEM.search(line)
            out[current] = EntryResources(int(m.group(1)), *frame, int(smem.group(1)) if smem else 0)
            current = None
    return out


def compile_build(name: str, arch: str, defines: Sequence[str] = ()) -> Build:
    """Compile kernels/<name>.cu for a real target (``sm_80``, ``sm_90``, ``sm_90a``) with NVRTC
    only (no GPU): ptxas runs inside it, so inline PTX is assembled and each entry's resources
    are known."""
    if not arch.startswith("sm_"):
        raise ValueError(f"compile_build needs a real target like sm_90, got {arch!r}")
    ptx, cubin, log = _nvrtc_compile(name, arch, defines, "ALL", ("-Xptxas=-v",))
    return Build(name, arch, tuple(defines), _text(ptx), _whole_elf(bytes(cubin)), parse_ptxas_log(_text(log)))


def compile_ptx(name: str, arch: str = "compute_90", defines: Sequence[str] = ()) -> str:
    """Compile kernels/<name>.cu (with ``-D`` defines) to PTX with NVRTC only (no GPU needed)."""
    return _text(_nvrtc_compile(name, arch, defines, "PTX"))


def variant_arch(name: str, defines: Sequence[str]) -> str | None:
    """The NVRTC target a module variant is tied to (e.g. "sm_90a"), or None for a portable one."""
    archs = {ARCH_VARIANTS.get(name, {}).get(d) for d in defines} - {None}
    if len(archs) > 1:
        raise ValueError(f"{name}.cu: defines {tuple(defines)} ask for different targets {sorted(archs)}")
    return archs.pop() if archs else None


def compile_cubin(name: str, arch: str, defines: Sequence[str] = ()) -> bytes:
    """Compile kernels/<name>.cu to a cubin for ``arch`` (e.g. "sm_90a") with NVRTC only (no GPU)."""
    cubin = _nvrtc_compile(name, arch, defines, "CUBIN")
    return _whole_elf(cubin if isinstance(cubin, bytes) else bytes(cubin))


def _whole_elf(image: bytes) -> bytes:
    """The cubin with the zero bytes its ELF headers say it has restored at the end.

    CuPy's ``nvrtc.getCUBIN`` drops the last byte, as if the image were a NUL-terminated
    string like PTX (CuPy's own loads survive because a Python bytes buffer ends in a NUL).
    The file then fails in cuobjdump; the headers give the true size, and the lost bytes
    are the zero padding at the end."""
    import struct  # noqa: PLC0415

    if len(image) < 64 or image[:4] != b"\x7fELF" or image[4] != 2:  # 64-bit ELF only
        return image
    phoff, shoff = struct.unpack_from("<QQ", image, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", image, 0x36)
    end = max(phoff + phentsize * phnum, shoff + shentsize * shnum)
    return image + b"\0" * (end - len(image)) if 0 < end - len(image) <= 8 else image


def _cached_cubin(name: str, arch: str, defines: Sequence[str]) -> bytes:
    """compile_cubin, cached on disk like CuPy's own kernel cache (a cubin is tens of KB)."""
    import hashlib  # noqa: PLC0415

    from cupy.cuda import nvrtc  # noqa: PLC0415

    opts = [*NVRTC_OPTIONS, *_define_options(defines), arch]
    key = hashlib.sha256("\0".join([kernel_source(name), *opts, str(nvrtc.getVersion())]).encode()).hexdigest()[:24]
    path = current().cache_dir / "kernels" / f"{name}-{key}.cubin"
    if path.is_file():
        return path.read_bytes()
    cubin = compile_cubin(name, arch, defines)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(cubin)
        os.replace(tmp, path)  # atomic: a concurrent process never reads half a file
    except OSError:
        pass  # a read-only home only costs the next process a compile
    return cubin


class _CubinModule:
    """A module loaded from cubin bytes; ``get_function`` returns cupy's launchable Function."""

    def __init__(self, cp: Any, cubin: bytes) -> None:
        self._module = cp.cuda.function.Module()
        self._module.load(cubin)
        self._functions: dict[str, Any] = {}

    def get_function(self, function: str) -> Any:
        fn = self._functions.get(function)
        if fn is None:
            fn = self._functions[function] = self._module.get_function(function)
        return fn


def get_module(name: str, defines: Sequence[str] = ()) -> Any:
    """The compiled module for kernels/<name>.cu (a variant: with -D defines) on the current device:
    a cupy.RawModule, or for an arch-specific variant a module loaded from its cubin."""
    cp = device._cupy()
    if cp is None:
        raise device.DeviceError("cupy is not installed: CUDA kernels are unavailable")
    key = (cp.cuda.runtime.getDevice(), name, tuple(defines))
    mod = _modules.get(key)
    if mod is None:
        arch = variant_arch(name, defines)
        if arch is not None:
            have = cp.cuda.Device().compute_capability
            if f"sm_{have}" != arch.rstrip("a"):
                raise device.DeviceError(f"{name}.cu with {', '.join(defines)} is built for {arch}; "
                                         f"this GPU is sm_{have}")
            mod = _CubinModule(cp, _cached_cubin(name, arch, defines))
        else:
            mod = cp.RawModule(code=kernel_source(name), options=NVRTC_OPTIONS + _define_options(defines))
            try:
                mod.compile()
            except cp.cuda.compiler.CompileException as exc:
                raise KernelCompileError(f"{name}.cu: {exc}") from exc
        _modules[key] = mod
    return mod


def _cuda_wgmma_capable(dev_id: int | None = None) -> bool:
    """Whether the sm_90a variants run on GPU ``dev_id`` (None: the current one, where launches
    go): compute capability 9.0 exactly (H100, H200)."""
    cp = device._cupy()
    if cp is None:
        return False
    try:
        return _compute_capability(cp.cuda.runtime.getDevice() if dev_id is None else dev_id) == "90"
    except Exception:  # noqa: BLE001  (no usable device: nothing runs sm_90a code)
        return False


@functools.lru_cache(maxsize=16)
def _compute_capability(dev_id: int) -> str:
    return str(device._cupy().cuda.Device(dev_id).compute_capability)


def get_function(module: str, function: str, defines: Sequence[str] = ()) -> Any:
    """A launchable kernel: ``get_function('conv', 'conv_fwd')`` (a cupy RawKernel, or a cupy
    Function for an arch-specific variant; both are called as ``fn(grid, block, args, shared_mem=)``)."""
    return get_module(module, defines).get_function(function)


# id(kernel) -> (kernel, dynamic shared bytes it is allowed); holding the kernel keeps its id unique
_shared_opt_in: dict[int, tuple[Any, int]] = {}


def _allow_dynamic_shared(fn: Any, nbytes: int) -> None:
    """Opt a kernel in to more than 48 KB of dynamic shared memory (once per size)."""
    if _shared_opt_in.get(id(fn), (fn, DEFAULT_DYNAMIC_SHARED))[1] >= nbytes:
        return
    cp = device._cupy()
    if hasattr(fn, "max_dynamic_shared_size_bytes"):  # RawKernel
        fn.max_dynamic_shared_size_bytes = nbytes
    else:  # cupy.cuda.function.Function (a cubin module's)
        drv = cp.cuda.driver
        drv.funcSetAttribute(fn.ptr, drv.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, nbytes)
    _shared_opt_in[id(fn)] = (fn, nbytes)


def _as_kernel_arg(a: Any) -> Any:
    # Plain Python ints/floats become int32/float32 (what most kernel parameters are).
    # Exact type checks on purpose: np.float64 subclasses float and must stay 64-bit.
    if type(a) is bool or type(a) is int:
        return np.int32(a)
    if type(a) is float:
        return np.float32(a)
    return a


def _cuda_launch(module: str, function: str, grid: Sequence[int], block: Sequence[int],
                 args: Sequence[Any], shared_mem: int = 0, defines: Sequence[str] = ()) -> None:
    """Launch a kernel on the current stream, converting Python scalars to int32/float32.

    ``defines`` picks a module variant (see MODULE_VARIANTS)."""
    grid = tuple(int(g) for g in grid)
    block = tuple(int(b) for b in block)
    if any(g <= 0 for g in grid) or any(b <= 0 for b in block):
        return  # empty problem: nothing to launch (a zero grid is a CUDA error)
    fn = get_function(module, function, defines)
    if shared_mem > DEFAULT_DYNAMIC_SHARED:
        _allow_dynamic_shared(fn, shared_mem)
    fn(grid, block, tuple(_as_kernel_arg(a) for a in args), shared_mem=shared_mem)


def _cuda_time_ms(fn: Any, reps: int = 5, warmup: int = 1) -> float:
    """Median milliseconds of ``fn()`` on the current stream, timed with CUDA events."""
    cp = device._cupy()
    for _ in range(warmup):
        fn()
    cp.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(reps):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def _cuda_device_key() -> str:
    """Which GPU this is, for caches of tuned choices: name and compute capability."""
    cp = device._cupy()
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return f"{name} sm_{dev.compute_capability}"


def cdiv(a: int, b: int) -> int:
    """Ceiling division, for grid sizes."""
    return -(-a // b)


# ---------------------------------------------------------------- CUDA graphs
# A training step in the planned arena allocates nothing and launches only our kernels
# (and memsets), always with the same pointers: it can be captured once as a CUDA graph
# and replayed, one launch per step instead of dozens.  The emulator's backend models the same
# semantics (gpuconv.emu), which is how CI tests them.

def _cuda_zero(a: Any) -> None:
    """Clear a C-contiguous device array on the current stream (a memset node when captured)."""
    cp = device._cupy()
    if not a.flags.c_contiguous:
        raise ValueError("cuda.zero: the array must be C-contiguous")
    if a.nbytes:
        cp.cuda.runtime.memsetAsync(a.data.ptr, 0, a.nbytes, cp.cuda.get_current_stream().ptr)


class CapturedGraph:
    """An instantiated CUDA graph; ``launch()`` replays it on the current stream."""

    def __init__(self, graph: Any) -> None:
        self._graph = graph

    def launch(self) -> None:
        self._graph.launch()


def _cuda_capture(fn: Any) -> CapturedGraph:
    """Capture what ``fn()`` enqueues on the current stream as a CUDA graph, without running it.

    The stream must not be the legacy default stream (see :func:`capture_stream`).  ``fn``
    must not synchronize, copy to the host or allocate: CuPy raises on a synchronizing call
    during capture, and a pool allocation would leave the graph writing into memory the
    pool later hands to another array.
    """
    cp = device._cupy()
    stream = cp.cuda.get_current_stream()
    if stream.ptr == 0:
        raise RuntimeError("cuda.capture: the current stream is the default stream, which cannot be "
                           "captured; run inside `with cuda.capture_stream():`")
    stream.begin_capture()
    try:
        fn()
    except BaseException:
        try:
            stream.end_capture()
        except Exception:  # noqa: BLE001  (the capture is already invalid: keep fn's error)
            pass
        raise
    graph = stream.end_capture()
    graph.upload(stream)  # instantiate and upload now, so the first replay is not slower
    return CapturedGraph(graph)


@contextlib.contextmanager
def _cuda_capture_stream() -> Iterator[Any]:
    """Within: a fresh non-blocking stream is current (capturable).  The device is synchronized
    on entry (work queued on the default stream is done) and the stream on exit."""
    cp = device._cupy()
    cp.cuda.Device().synchronize()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        yield stream
    stream.synchronize()


@functools.lru_cache(maxsize=16)
def _cuda_sm_count(dev_id: int) -> int:
    try:
        return int(device._cupy().cuda.Device(dev_id).attributes["MultiProcessorCount"])
    except Exception:  # noqa: BLE001  (a heuristic input only)
        return device.SM_COUNT_HINT


# ---------------------------------------------------------------- the backend
class CudaBackend(device.Backend):
    """The GPU through CuPy: NVRTC-compiled modules, the current stream, CuPy's allocator."""

    name = "cuda"

    @property
    def xp(self) -> Any:
        return device.get_device("cuda").xp

    def owns(self, a: Any) -> bool:
        cp = device._cupy()
        return cp is not None and isinstance(a, cp.ndarray)

    def launch(self, module: str, function: str, grid: Sequence[int], block: Sequence[int],
               args: Sequence[Any], shared_mem: int = 0, defines: Sequence[str] = ()) -> None:
        _cuda_launch(module, function, grid, block, args, shared_mem, defines)

    def zero(self, a: Any) -> None:
        _cuda_zero(a)

    def capture(self, fn: Any) -> CapturedGraph:
        return _cuda_capture(fn)

    def capture_stream(self) -> Any:
        return _cuda_capture_stream()

    def sm_count(self, dev_id: int | None = None) -> int:
        cp = device._cupy()
        if cp is None:
            return device.SM_COUNT_HINT
        try:
            return _cuda_sm_count(cp.cuda.runtime.getDevice() if dev_id is None else dev_id)
        except Exception:  # noqa: BLE001  (no usable device: the hint)
            return device.SM_COUNT_HINT

    def wgmma_capable(self, dev_id: int | None = None) -> bool:
        return _cuda_wgmma_capable(dev_id)

    def time_ms(self, fn: Any, reps: int = 5, warmup: int = 1) -> float:
        return _cuda_time_ms(fn, reps, warmup)

    def synchronize(self) -> None:
        device._cupy().cuda.get_current_stream().synchronize()

    def device_key(self) -> str:
        return _cuda_device_key()


CUDA = CudaBackend()


# ---------------------------------------------------------------- what the ops call
# Each goes to the backend in force (device.backend(): CUDA, or a scoped one like the emulator).

def launch(module: str, function: str, grid: Sequence[int], block: Sequence[int],
           args: Sequence[Any], shared_mem: int = 0, defines: Sequence[str] = ()) -> None:
    """Launch a kernel (Python ints/floats become int32/float32; ``defines`` picks a module
    variant, see MODULE_VARIANTS)."""
    device.backend().launch(module, function, grid, block, args, shared_mem, defines)


def zero(a: Any) -> None:
    """Clear a C-contiguous device array on the current stream (a memset node when captured)."""
    device.backend().zero(a)


def capture(fn: Any) -> Any:
    """Capture what ``fn()`` enqueues as a graph, without running it (see ``_cuda_capture``:
    the stream must be capturable and ``fn`` must not synchronize, copy to the host or allocate)."""
    return device.backend().capture(fn)


def capture_stream() -> Any:
    """A context in which a capturable stream is current (see ``_cuda_capture_stream``)."""
    return device.backend().capture_stream()


def time_ms(fn: Any, reps: int = 5, warmup: int = 1) -> float:
    """Median milliseconds of ``fn()`` on the device."""
    return device.backend().time_ms(fn, reps=reps, warmup=warmup)


def device_key() -> str:
    """Which GPU this is, for caches of tuned choices: name and compute capability."""
    return device.backend().device_key()


def wgmma_capable(dev_id: int | None = None) -> bool:
    """Whether the sm_90a variants (Hopper wgmma) run on the device (compute capability 9.0)."""
    return device.backend().wgmma_capable(dev_id)


def sm_count(dev_id: int | None = None) -> int:
    """Streaming multiprocessors of the device (the launch heuristics' input)."""
    return device.backend().sm_count(dev_id)
