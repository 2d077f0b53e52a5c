"""A CPU emulator for our CUDA C: run ``kernels/*.cu`` without a GPU, for tests.

CI has no GPU, yet every kernel should be checked against its NumPy reference
there, not only compiled.  This module compiles a kernel file with the host C++
compiler (g++) against ``runtime.h`` (CUDA built-ins on fibers, see its header)
and ``ptx.cuh`` (our inline-PTX wrappers: TF32 rounding, ``mma.sync``,
``cp.async``), then launches kernels on NumPy arrays.  It is slow (one block at a
time, one fiber per thread) and meant for small shapes.

What it checks beyond the values: kernel arguments must match the parameters'
kinds and sizes (cupy passes bytes as given, so a float64 where a float is
expected would be silent garbage on the GPU); each array argument sits between
guard bands filled with NaN bytes (reads past the end poison the result, writes
there raise :class:`EmulatorError`); divergent ``__syncthreads``, deadlocks and
misaligned 16-byte ``cp.async`` are errors.  It does not model timing, memory
ordering between blocks, or races (compute-sanitizer on a GPU does that).

``emulated()`` makes the ops' GPU launchers run here: it puts :data:`BACKEND` (an
:class:`EmuBackend`, the device interface of ``gpuconv.device.Backend``) in front, so arrays
made by :func:`asarray` count as device arrays and ``cuda.launch`` goes to :func:`launch`.

CUDA-graph capture (``cuda.capture``) is modelled exactly: while capturing, a
kernel launch or a memset is recorded instead of run, and the replay runs the
recorded list with the arguments as they were (a graph freezes scalars and
pointers).  Anything else that touches device data while capturing (a NumPy
operation on an EmuArray, an allocation) is an :class:`EmulatorError`: on a GPU
it would either not be replayed or leave the graph writing into memory the pool
may hand to someone else.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .. import cuda, device
from ..kernel_config import current

HERE = Path(__file__).resolve().parent
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = ("-std=c++17", "-O1", "-fPIC", "-shared", "-fwrapv", "-fno-strict-aliasing", "-w")
GUARD = 4096  # bytes of NaN-filled guard band on each side of an array argument
_POISON = 0xFF  # 0xffffffff is a NaN as float32, 0xffff...ff as float64

_KERNEL_DECL = re.compile(r'extern\s+"C"\s+void\s+(\w+)\s*\(')
# extern __shared__ T name[];  ->  a pointer to the launch's dynamic shared memory
_DYN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([\w:]+)\s+(\w+)\s*\[\s*\]\s*;")


class EmulatorError(RuntimeError):
    """A kernel misbehaved under emulation, or could not be built or called."""


def available() -> bool:
    """True when a C++ compiler is on PATH."""
    return shutil.which(CXX) is not None


def cache_dir() -> Path:
    """Where built kernel libraries are kept: the kernel configuration's cache dir + /emu
    ($GPUCONV_CACHE_DIR, default ~/.cache/gpuconv), or a per-user temporary folder when that
    cannot be created (a read-only home)."""
    path = current().cache_dir / "emu"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:
        fallback = Path(tempfile.gettempdir()) / f"gpuconv-emu-{os.getuid()}"
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


_EMULATED_HEADERS = {"ptx.cuh": HERE / "ptx.cuh", "wgmma.cuh": HERE / "wgmma.cuh"}  # stand-ins for the inline-PTX headers


def emulator_source(name: str) -> str:
    """kernels/<name>.cu with the emulator's stand-ins for its inline-PTX headers."""
    return cuda.kernel_source(name, headers=_EMULATED_HEADERS)


def _glue(names: Sequence[str]) -> str:
    out = []
    for n in names:
        out.append(
            f'extern "C" int emu_sig_{n}(int* codes) {{ return emu::signature(&{n}, codes); }}\n'
            f"static void emu_body_{n}(void** a) {{ emu::invoke(&{n}, a); }}\n"
            f'extern "C" const char* emu_launch_{n}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, '
            f"unsigned by, unsigned bz, size_t smem, void** a) {{\n"
            f"    return emu::launch({{gx, gy, gz}}, {{bx, by, bz}}, smem, emu_body_{n}, a);\n}}\n")
    out.append('extern "C" const char* emu_kernel_names() { return "' + " ".join(names) + '"; }\n')
    return "".join(out)


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise EmulatorError(f"{what} failed ({' '.join(cmd[:3])} ...):\n{proc.stderr[-4000:]}")
    return proc.stdout


class Module:
    """One kernel file built for the emulator: its kernels by name."""

    def __init__(self, name: str, lib: ctypes.CDLL) -> None:
        self.name = name
        self._lib = lib
        lib.emu_kernel_names.restype = ctypes.c_char_p
        self.kernels: tuple[str, ...] = tuple(lib.emu_kernel_names().decode().split())
        self._sigs: dict[str, tuple[int, ...]] = {}

    def signature(self, kernel: str) -> tuple[int, ...]:
        """Each parameter as size | kind << 8 (kind 1 pointer, 2 floating, 3 integral)."""
        if kernel not in self._sigs:
            if kernel not in self.kernels:
                raise EmulatorError(f"{self.name}.cu has no kernel {kernel!r}")
            codes = (ctypes.c_int * 64)()
            n = getattr(self._lib, f"emu_sig_{kernel}")(codes)
            self._sigs[kernel] = tuple(codes[:n])
        return self._sigs[kernel]

    def launch(self, kernel: str, grid: Sequence[int], block: Sequence[int], argv: Any, shared_mem: int) -> None:
        fn = getattr(self._lib, f"emu_launch_{kernel}")
        fn.restype = ctypes.c_char_p
        with _launch_lock:  # __shared__ variables are process-wide statics: one launch at a time
            err = fn(*(ctypes.c_uint(int(v)) for v in (*grid, *block)), ctypes.c_size_t(shared_mem), argv)
        if err:
            raise EmulatorError(f"{self.name}.cu {kernel} grid={tuple(grid)} block={tuple(block)}: {err.decode()}")


_modules: dict[str, Module] = {}
_build_lock = threading.Lock()
_launch_lock = threading.Lock()


def build(name: str, defines: Sequence[str] = ()) -> Module:
    """Compile kernels/<name>.cu (a module variant: with ``#define``s) for the emulator,
    cached on disk by content hash."""
    key = name + "".join(f"+{d}" for d in defines)
    with _build_lock:
        mod = _modules.get(key)
        if mod is not None:
            return mod
    return build_source(key, "".join(f"#define {d} 1\n" for d in defines) + emulator_source(name))


def build_source(name: str, src: str) -> Module:
    """Compile CUDA C source text as module ``name`` (tests use it for small probe kernels)."""
    if not available():
        raise EmulatorError(f"no C++ compiler ({CXX}) on PATH: the kernel emulator is unavailable")
    src = cuda.expand_includes(src, {**cuda.kernel_headers(), **_EMULATED_HEADERS})
    src = _DYN_SHARED.sub(r"\1* \2 = (\1*)emu::dyn_smem();", src)
    with _build_lock:
        runtime = HERE / "runtime.h"
        key = hashlib.sha256("\0".join([src, runtime.read_text(), CXX, *CXXFLAGS]).encode()).hexdigest()[:20]
        lib_path = cache_dir() / f"{name.replace('+', '_')}-{key}.so"
        if not lib_path.is_file():
            with tempfile.TemporaryDirectory(prefix="gpuconv-emu-") as tmp:
                cpp = Path(tmp) / f"{name}.cpp"
                cpp.write_text(src)
                pre = _run([CXX, "-std=c++17", "-E", "-P", "-include", str(runtime), str(cpp)], f"preprocessing {name}.cu")
                names = [n for n in dict.fromkeys(_KERNEL_DECL.findall(pre)) if not n.startswith("emu_")]
                cpp.write_text(src + "\n" + _glue(names))
                out = Path(tmp) / "k.so"
                _run([CXX, *CXXFLAGS, "-include", str(runtime), str(cpp), "-o", str(out)], f"compiling {name}.cu")
                os.replace(out, lib_path)  # atomic: a concurrent build never sees half a file
        mod = Module(name, ctypes.CDLL(str(lib_path)))
        _modules[name] = mod
        return mod


# ---------------------------------------------------------------- device arrays
class _Pointer:
    __slots__ = ("ptr",)

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr


class _EmuDevice:
    id = 0

    def __repr__(self) -> str:
        return "<emulated CUDA device 0>"


EMU_DEVICE = _EmuDevice()


# While a capture is in progress: the recorded operations (see capture()); None otherwise.
_recording: list[Any] | None = None

# NumPy functions that read no array data (metadata only): allowed while capturing.
_METADATA_FUNCTIONS = frozenset({"shape", "ndim", "size", "shares_memory", "may_share_memory", "result_type"})


def _refuse_in_capture(what: str) -> None:
    if _recording is not None:
        raise EmulatorError(
            f"{what} while capturing a CUDA graph: a captured step may only launch kernels and clear memory "
            f"(cuda.launch, cuda.zero). A graph would not replay it, or would keep writing into memory the "
            f"pool hands to someone else")


class EmuArray(np.ndarray):
    """A NumPy array standing in for a cupy array: ``.data.ptr``, ``.device.id``, ``.get()``."""

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        _refuse_in_capture(f"NumPy {ufunc.__name__}.{method} on a device array")
        plain = [a.view(np.ndarray) if isinstance(a, EmuArray) else a for a in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, EmuArray) else o for o in kwargs["out"])
        out = getattr(ufunc, method)(*plain, **kwargs)
        if isinstance(out, tuple):
            return tuple(o.view(EmuArray) if type(o) is np.ndarray else o for o in out)
        return out.view(EmuArray) if type(out) is np.ndarray else out

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        if func.__name__ not in _METADATA_FUNCTIONS:
            _refuse_in_capture(f"numpy.{func.__name__} on a device array")
        return super().__array_function__(func, types, args, kwargs)

    def __setitem__(self, key: Any, value: Any) -> None:
        _refuse_in_capture("writing into a device array from the host (a[...] = v)")
        super().__setitem__(key, value)

    def fill(self, value: Any) -> None:
        _refuse_in_capture("a.fill() on a device array")
        super().fill(value)

    @property
    def data(self) -> _Pointer:  # type: ignore[override]
        return _Pointer(self.__array_interface__["data"][0])

    @property
    def device(self) -> _EmuDevice:  # type: ignore[override]
        return EMU_DEVICE

    def get(self) -> np.ndarray:
        _refuse_in_capture("copying a device array to the host (a.get())")
        return np.array(self, copy=True).view(np.ndarray)

    def set(self, a: Any) -> None:
        """Host -> device copy (cupy's ``ndarray.set``)."""
        _refuse_in_capture("copying host data into a device array (a.set())")
        np.copyto(self.view(np.ndarray), a)


def asarray(a: Any, dtype: Any = None) -> EmuArray:
    """An emulated device array holding a copy of ``a``."""
    return np.array(a, dtype=dtype, copy=True).view(EmuArray)


class _EmuGenerator:
    """``cupy.random.Generator`` on the CPU: numpy's Generator, its arrays on the emulated device."""

    def __init__(self, seed: Any = None) -> None:
        self._gen = np.random.default_rng(seed)

    def __getattr__(self, name: str) -> Any:
        draw = getattr(self._gen, name)

        def on_device(*args: Any, **kwargs: Any) -> Any:
            _refuse_in_capture(f"xp.random: {name}")
            out = draw(*args, **kwargs)
            return np.asarray(out).view(EmuArray) if isinstance(out, np.ndarray) else out
        return on_device


class _EmuRandom:
    """``cupy.random`` on the CPU: the module functions that take ``dtype=`` (numpy's legacy ones
    do not) and ``default_rng``; draws come from one generator, seeded per process."""

    def __init__(self) -> None:
        self._shared = _EmuGenerator(0)

    def default_rng(self, seed: Any = None) -> _EmuGenerator:
        return _EmuGenerator(seed)

    def standard_normal(self, size: Any = None, dtype: Any = np.float64) -> Any:
        return self._shared.standard_normal(size, dtype=dtype)

    def uniform(self, low: float = 0.0, high: float = 1.0, size: Any = None, dtype: Any = np.float64) -> Any:
        return self._shared.uniform(low, high, size).astype(dtype, copy=False)

    def random(self, size: Any = None, dtype: Any = np.float64) -> Any:
        return self._shared.random(size, dtype=dtype)

    def randint(self, low: int, high: int | None = None, size: Any = None, dtype: Any = np.int64) -> Any:
        return self._shared.integers(low, high, size, dtype=dtype)


class _EmuMemoryPool:
    """``cupy.get_default_memory_pool()``'s surface that callers use; the emulator has no pool."""

    def free_all_blocks(self) -> None:
        pass

    def used_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 0


class _EmuXP:
    """The array module of emulated device arrays: numpy, with allocations returning EmuArray
    (and cupy's own names where numpy has none or differs: ``random``, ``get_default_memory_pool``)."""

    ndarray = EmuArray
    random = _EmuRandom()
    _pool = _EmuMemoryPool()

    def get_default_memory_pool(self) -> _EmuMemoryPool:
        return self._pool

    def __getattr__(self, name: str) -> Any:
        value = getattr(np, name)
        if isinstance(value, type) or not callable(value):
            return value  # dtypes (xp.float32) and constants as they are

        def on_device(*args: Any, **kwargs: Any) -> Any:
            _refuse_in_capture(f"xp.{name}")
            out = value(*args, **kwargs)
            return out.view(EmuArray) if type(out) is np.ndarray else out
        return on_device

    def asarray(self, a: Any, dtype: Any = None) -> EmuArray:
        if not (isinstance(a, EmuArray) and dtype in (None, a.dtype)):
            _refuse_in_capture("allocating a device array (xp.asarray)")
        return a if isinstance(a, EmuArray) and dtype in (None, a.dtype) else asarray(a, dtype)

    def empty(self, shape: Any, dtype: Any = float) -> EmuArray:
        # never zeros: all bits set (NaN for floats), so reading unwritten memory shows
        _refuse_in_capture("allocating a device array (xp.empty)")
        out = np.empty(shape, dtype=dtype)
        out.reshape(-1).view(np.uint8).fill(_POISON)
        return out.view(EmuArray)

    def zeros(self, shape: Any, dtype: Any = float) -> EmuArray:
        _refuse_in_capture("allocating a device array (xp.zeros)")
        return np.zeros(shape, dtype=dtype).view(EmuArray)

    def ones(self, shape: Any, dtype: Any = float) -> EmuArray:
        _refuse_in_capture("allocating a device array (xp.ones)")
        return np.ones(shape, dtype=dtype).view(EmuArray)

    def empty_like(self, a: Any, dtype: Any = None) -> EmuArray:
        return self.empty(a.shape, dtype or a.dtype)

    def zeros_like(self, a: Any, dtype: Any = None) -> EmuArray:
        return self.zeros(a.shape, dtype or a.dtype)

    def asnumpy(self, a: Any) -> np.ndarray:
        return np.array(a, copy=True).view(np.ndarray)


xp = _EmuXP()


# ---------------------------------------------------------------- launching
def _scalar_buffer(i: int, value: Any, code: int, kernel: str) -> np.ndarray:
    size, kind = code & 0xFF, code >> 8
    v = cuda._as_kernel_arg(value)
    if kind == 2:
        if not isinstance(v, np.floating) or v.dtype.itemsize != size:
            raise EmulatorError(f"{kernel}: argument {i} must be a {size * 8}-bit float, got {type(value).__name__}")
        return np.array([v], dtype=v.dtype)
    if not isinstance(v, (np.integer, np.bool_)) or v.dtype.itemsize != size:
        raise EmulatorError(f"{kernel}: argument {i} must be a {size * 8}-bit integer, got "
                            f"{type(value).__name__} ({getattr(v, 'dtype', '?')})")
    return np.array([v], dtype=v.dtype)


def _overlapping(arrays: list[tuple[int, np.ndarray]]) -> set[int]:
    """Indices of array arguments sharing memory with another one (passed as they are)."""
    shared = set()
    for j, (i, a) in enumerate(arrays):
        for k, b in arrays[j + 1:]:
            if np.shares_memory(a, b):
                shared |= {i, k}
    return shared


def launch(module: str, function: str, grid: Sequence[int], block: Sequence[int],
           args: Sequence[Any], shared_mem: int = 0, defines: Sequence[str] = ()) -> None:
    """``cuda.launch`` on the CPU: same arguments, NumPy arrays for device pointers.

    While capturing, the launch is checked against the kernel's signature and recorded."""
    if _recording is not None:
        args = tuple(args)
        sig = build(module, defines).signature(function)
        if len(args) != len(sig):
            raise EmulatorError(f"{function}: {len(sig)} parameters, {len(args)} arguments")
        _recording.append(lambda: _execute(module, function, grid, block, args, shared_mem, defines))
        return
    _execute(module, function, grid, block, args, shared_mem, defines)


def _execute(module: str, function: str, grid: Sequence[int], block: Sequence[int],
             args: Sequence[Any], shared_mem: int = 0, defines: Sequence[str] = ()) -> None:
    grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    block = tuple(int(b) for b in block) + (1,) * (3 - len(block))
    if any(g <= 0 for g in grid) or any(b <= 0 for b in block):
        return
    mod = build(module, defines)
    sig = mod.signature(function)
    if len(args) != len(sig):
        raise EmulatorError(f"{function}: {len(sig)} parameters, {len(args)} arguments")
    arrays = [(i, a) for i, a in enumerate(args) if isinstance(a, np.ndarray)]
    shared = _overlapping(arrays)
    keep: list[Any] = []       # buffers that must outlive the call
    guarded: list[tuple[int, np.ndarray, np.ndarray, int]] = []  # (arg, original, buffer, data offset)
    addrs = []
    for i, (a, code) in enumerate(zip(args, sig)):
        if code >> 8 != 1:
            buf = _scalar_buffer(i, a, code, function)
        else:
            if not isinstance(a, np.ndarray):
                raise EmulatorError(f"{function}: argument {i} must be an array (a device pointer), "
                                    f"got {type(a).__name__}")
            if not a.flags.c_contiguous:
                raise EmulatorError(f"{function}: argument {i} is not C-contiguous; the kernel would read it "
                                    "as if it were")
            ptr = a.__array_interface__["data"][0]
            if i not in shared and a.nbytes > 0:
                # Same address modulo 256 as the original, so alignment-dependent paths stay as chosen.
                raw = np.full(a.nbytes + 2 * GUARD + 512, _POISON, dtype=np.uint8)
                base = raw.__array_interface__["data"][0]
                off = (-(base + GUARD) % 256) + GUARD + ptr % 256
                raw[off:off + a.nbytes] = a.reshape(-1).view(np.uint8)
                guarded.append((i, a, raw, off))
                ptr = base + off
            buf = np.array([ptr], dtype=np.uint64)
        keep.append(buf)
        addrs.append(buf.__array_interface__["data"][0])
    argv = (ctypes.c_void_p * max(len(addrs), 1))(*addrs)
    mod.launch(function, grid, block, argv, shared_mem)
    for i, a, raw, off in guarded:
        before, after = raw[:off], raw[off + a.nbytes:]
        if (before != _POISON).any() or (after != _POISON).any():
            lo = off - int(np.flatnonzero(before != _POISON)[0]) if (before != _POISON).any() else 0
            hi = int(np.flatnonzero(after != _POISON)[-1]) + 1 if (after != _POISON).any() else 0
            raise EmulatorError(f"{module}.cu {function}: out-of-bounds write to argument {i} "
                                f"({lo} bytes before its start, {hi} bytes past its end)")
        data = raw[off:off + a.nbytes]
        if a.flags.writeable:
            a.reshape(-1).view(np.uint8)[...] = data
        elif (data != a.reshape(-1).view(np.uint8)).any():
            raise EmulatorError(f"{module}.cu {function}: wrote to argument {i}, a read-only array")


def zero(a: Any) -> None:
    """``cuda.zero`` on the CPU: clear a contiguous device array (recorded while capturing)."""
    if not (isinstance(a, np.ndarray) and a.flags.c_contiguous):
        raise EmulatorError("cuda.zero: the array must be a C-contiguous device array")
    raw = a.view(np.ndarray)
    if _recording is not None:
        _recording.append(lambda: raw.fill(0))
        return
    raw.fill(0)


class Graph:
    """A captured step: the recorded launches and memsets, replayed in order."""

    def __init__(self, ops: list[Any]) -> None:
        self.ops = ops

    @property
    def num_nodes(self) -> int:
        return len(self.ops)

    def launch(self) -> None:
        for op in self.ops:
            op()


def capture(fn: Any) -> Graph:
    """``cuda.capture`` on the CPU: run ``fn`` recording (not running) its launches and memsets."""
    global _recording
    if _recording is not None:
        raise EmulatorError("cuda.capture: a capture is already in progress")
    _recording = []
    try:
        fn()
        return Graph(_recording)
    finally:
        _recording = None


class EmuBackend(device.Backend):
    """The device interface on the CPU: EmuArrays are its device arrays, launches run the
    kernels built by :func:`build`, capture records them (:class:`Graph`).  It reports an
    H100's SM count (so launch heuristics choose as they would there) and models sm_90a's
    wgmma.  Timing is not modelled: ``time_ms`` runs ``fn`` and reports 0 (ties keep the
    first candidate, as on a GPU when two variants are equally fast)."""

    name = "emu"

    @property
    def xp(self) -> _EmuXP:
        return xp

    def owns(self, a: Any) -> bool:
        return isinstance(a, EmuArray)

    def launch(self, module: str, function: str, grid: Sequence[int], block: Sequence[int],
               args: Sequence[Any], shared_mem: int = 0, defines: Sequence[str] = ()) -> None:
        launch(module, function, grid, block, args, shared_mem, defines)

    def zero(self, a: Any) -> None:
        zero(a)

    def capture(self, fn: Any) -> Graph:
        return capture(fn)

    def capture_stream(self) -> Any:
        return contextlib.nullcontext()  # one in-order "stream" here

    def sm_count(self, dev_id: int | None = None) -> int:
        return device.SM_COUNT_HINT

    def wgmma_capable(self, dev_id: int | None = None) -> bool:
        return True

    def time_ms(self, fn: Any, reps: int = 5, warmup: int = 1) -> float:
        fn()
        return 0.0

    def synchronize(self) -> None:
        pass   # launches run to completion when they are made

    def device_key(self) -> str:
        return "Emulated sm_90"


BACKEND = EmuBackend()


@contextlib.contextmanager
def emulated() -> Iterator[_EmuXP]:
    """Within: EmuArrays are device arrays and the ops' GPU launchers run on the emulator."""
    with device.use_backend(BACKEND):
        yield xp
