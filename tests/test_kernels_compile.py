"""Every kernel compiles with NVRTC down to SASS for sm_80 and sm_90 (no GPU needed, only cupy +
NVRTC): PTX, the cubin ptxas makes of it (which assembles the inline PTX), and ptxas's report of
each entry's registers and spills, held to the allowances below."""
import functools
import re

import pytest

from gpuconv import cuda

try:
    from cupy.cuda import nvrtc  # noqa: F401
    HAVE_NVRTC = True
except Exception:  # noqa: BLE001
    HAVE_NVRTC = False

pytestmark = pytest.mark.nvrtc


@functools.lru_cache(maxsize=None)
def _build(name: str, arch: str, defines: tuple[str, ...] = ()) -> cuda.Build:
    return cuda.compile_build(name, arch, defines)  # compiled once per session (conv takes seconds)


def _ptx(name: str, arch: str, defines: tuple[str, ...] = ()) -> str:
    return _build(name, arch, defines).ptx


# Every build CI makes: each module for sm_80 and sm_90, its variants, its arch-only variants.
BUILDS = ([(n, (), a) for n in cuda.kernel_names() for a in cuda.REAL_ARCHS]
          + [(n, d, a) for n, vs in cuda.MODULE_VARIANTS.items() for d in vs for a in cuda.REAL_ARCHS]
          + [(n, (d,), a) for n, vs in cuda.ARCH_VARIANTS.items() for d, a in vs.items()])

# Spill stores (bytes per thread) each entry may have; any entry not listed must have none.  The
# speed-path kernels are sized not to spill in their main loops (conv.cu's MINB and fc.cu's
# batched entries say where and why a few values live in local memory); a change that makes
# any other entry spill, or one of these spill more, fails here before a GPU sees it.  Ceilings
# cover NVRTC 13.0 (the lent H100's, as nvcc 13.0 reports) and 13.5 (CI's wheel).
SPILL_ALLOWANCE = {
    r"conv_fwd_f32_128x128_fp32(_async)?": 160,           # conv.cu MINB: two blocks per SM
    r"conv_bwd[df]_f32_128x128_fp32(_async)?": 64,
    r"conv_(fwd|bwdf)_f32_128x128_tf32(_wgmma|_async)?": 32,  # _async fwd, sm_90: 4 B (the residual epilogue)
    r"gemm_(f32|tf32)_batched_n[nt]": 128,                # fc.cu: the per-batch base pointers
    r"conv_bwdd_direct_f32_c[348]_\d+x\d+": 128,         # outside the tap loop (prologue)
    r"bn_stats_partial_f64": 48,                          # float64: the gradient checks, not speed
}


def test_there_are_kernels():
    assert {"conv", "pool", "fc", "loss", "optim", "activation"} <= set(cuda.kernel_names())


@pytest.mark.skipif(not HAVE_NVRTC, reason="cupy/NVRTC not installed")
@pytest.mark.parametrize("name,defines,arch", BUILDS)
def test_kernel_compiles_to_sass(name, defines, arch):
    """PTX and a cubin: ptxas assembled every entry (inline PTX included), and reported it."""
    b = _build(name, arch, defines)
    entries = set(re.findall(r"\.entry (\w+)\(", b.ptx))
    assert entries and b.cubin[:4] == b"\x7fELF"
    assert set(b.resources) == entries, sorted(entries ^ set(b.resources))
    for e in entries:
        assert e.encode() in b.cubin


@pytest.mark.skipif(not HAVE_NVRTC, reason="cupy/NVRTC not installed")
@pytest.mark.parametrize("name,defines,arch", BUILDS)
def test_no_entry_spills_beyond_its_allowance(name, defines, arch):
    over = {}
    for entry, r in _build(name, arch, defines).resources.items():
        allowed = max((v for pat, v in SPILL_ALLOWANCE.items() if re.fullmatch(pat, entry)), default=0)
        if r.spill_stores > allowed:
            over[entry] = f"{r.spill_stores} B spill stores ({r.registers} registers), allowed {allowed}"
    assert not over, f"{name}.cu {defines} {arch}: {over}"


def test_ptxas_report_is_parsed():
    log = """ptxas info    : 0 bytes gmem
ptxas info    : Function properties for helper
ptxas         .     16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function 'k1' for 'sm_90'
ptxas info    : Function properties for k1
ptxas         .     80 bytes stack frame, 76 bytes spill stores, 72 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers, 80 bytes cumulative stack size, 17408 bytes smem, 400 bytes cmem[0]
ptxas info    : Compile time = 1.5 ms
ptxas info    : Compiling entry function 'k2' for 'sm_90'
ptxas info    : Function properties for k2
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 31 registers, used 0 barriers
"""
    assert cuda.parse_ptxas_log(log) == {
        "k1": cuda.EntryResources(registers=128, stack=80, spill_stores=76, spill_loads=72, smem=17408),
        "k2": cuda.EntryResources(registers=31, stack=0, spill_stores=0, spill_loads=0, smem=0),
    }
    with pytest.raises(ValueError, match="real target"):
        cuda.compile_build("pool", "compute_90")


def _expected_entries() -> dict[str, list[str]]:
    """Entry points each module must export: the names the ops' launchers call."""
    from gpuconv.ops import conv as C  # noqa: PLC0415

    both = lambda *fns: [f"{fn}_{suf}" for fn in fns for suf in ("f32", "f64")]  # noqa: E731
    return {
        "batchnorm": both("bn_stats_partial", "bn_stats_finalize", "bn_eval_stats", "bn_apply", "bn_bwd_partial",
                          "bn_bwd_finalize", "bn_bwd_dx"),
        "conv": [f"conv_{kind}_f32_{bm}x{bn}_{prec}" for bm, bn in C._TILES for kind in ("fwd", "bwdd", "bwdf")
                 for prec in C.PRECISIONS]
        + [f"conv_bwdd_direct_f32_c{ct}_{ty}x{4 * tx}" for ct in C._DIRECT_CTS for ty, tx in C._DIRECT_TILES]
        + ["conv_fwd_direct_f64", "conv_bwdd_direct_f64", "conv_bwdf_direct_f64", "conv_bias_grad_f32",
           "conv_bias_grad_f64"],
        "fc": ["gemm_f32_nn", "gemm_tf32_tt", "gemm_f64_tn", "splitk_reduce_f32", "colsum_f64",
               "gemm_f32_batched_nn", "gemm_f32_batched_nt"],
        "local": both("local_fwd", "local_bwd_filter", "local_bwd_bias", "local_bwd_data"),
        "loss": ["softmax_xent_rows_f32", "svm_rows_f64", "softmax_rows_f32", "accuracy_rows_f64", "mean_reduce_f32"],
        "lrn": both("lrn_fwd", "lrn_bwd"),
        "optim": ["sgd_f32", "momentum_f64", "adagrad_f32", "rmsprop_f64", "adam_f32"],
        "winograd": ["wino_input_f32", "wino_filter_f32", "wino_output_f32", "wino_grad_output_f32",
                     "wino_filter_grad_f32"],
    }


@pytest.mark.skipif(not HAVE_NVRTC, reason="cupy/NVRTC not installed")
@pytest.mark.parametrize("arch", cuda.REAL_ARCHS)
@pytest.mark.parametrize("name", ["batchnorm", "conv", "fc", "local", "loss", "lrn", "optim", "winograd"])
def test_kernel_exports_its_entry_points(name, arch):
    ptx = _ptx(name, arch)
    missing = [e for e in _expected_entries()[name] if f".entry {e}(" not in ptx]
    assert not missing, f"{name}.cu ({arch}) lacks {missing}"
    if name in ("conv", "fc"):
        assert "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in ptx


@pytest.mark.skipif(not HAVE_NVRTC, reason="cupy/NVRTC not installed")
@pytest.mark.parametrize("arch", cuda.REAL_ARCHS)
@pytest.mark.parametrize("name,defines", [(n, d) for n, vs in cuda.MODULE_VARIANTS.items() for d in vs])
def test_module_variant_holds_the_async_entries(name, defines, arch):
    ptx = _ptx(name, arch, defines)
    assert ".entry" in ptx and "cp.async" in ptx and "_async" in ptx
    assert "cp.async" not in _ptx(name, arch)  # the default module stays without them


@pytest.mark.skipif(not HAVE_NVRTC, reason="cupy/NVRTC not installed")
@pytest.mark.parametrize("name,define,arch", [(n, d, a) for n, vs in cuda.ARCH_VARIANTS.items() for d, a in vs.items()])
def test_arch_variant_compiles_to_a_whole_cubin(name, define, arch):
    """fc.cu's and conv.cu's wgmma GEMMs: PTX and a cubin (ptxas ran) for sm_90a, the ELF whole
    (CuPy's getCUBIN drops its last byte), and the variant holds only the wgmma entries."""
    import struct

    ptx = _ptx(name, arch, (define,))
    entries = set(re.findall(r"\.entry (\w+)\(", ptx))
    expected = {
        "fc": {f"gemm_tf32_wgmma_{t}" for t in ("nn", "nt", "tn", "tt")},
        "conv": {f"conv_{k}_f32_{bm}x{bn}_tf32_wgmma" for k in ("fwd", "bwdd", "bwdf")
                 for bm in (128, 64) for bn in (128, 64)},
    }
    assert entries == expected[name]
    assert "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32" in ptx and "fence.proxy.async" in ptx
    if name == "conv":  # the narrower tiles' instructions
        assert "m64n64k8.f32.tf32.tf32" in ptx and "m64n32k8.f32.tf32.tf32" in ptx
    assert "wgmma" not in _ptx(name, "sm_90")  # the portable module stays without it
    cubin = _build(name, arch, (define,)).cubin
    phoff, shoff = struct.unpack_from("<QQ", cubin, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", cubin, 0x36)
    assert cubin[:4] == b"\x7fELF" and len(cubin) == max(phoff + phentsize * phnum, shoff + shentsize * shnum)
    with pytest.raises(cuda.KernelCompileError, match="sm_90"):
        cuda.compile_ptx(name, "compute_90", (define,))  # refused where wgmma does not exist


@pytest.mark.skipif(not HAVE_NVRTC, reason="cupy/NVRTC not installed")
def test_loader_cubin_holds_the_builds_entries():
    """compile_cubin (what the loader of an arch variant caches) is a whole ELF with every entry."""
    cubin = cuda.compile_cubin("activation", "sm_90")
    assert cubin[:4] == b"\x7fELF" and all(e.encode() in cubin for e in _build("activation", "sm_90").resources)


def test_variant_arch():
    assert cuda.variant_arch("fc", ("GEMM_WGMMA",)) == "sm_90a"
    assert cuda.variant_arch("fc", ("GEMM_ASYNC",)) is None
    assert cuda.variant_arch("conv", ("GEMM_WGMMA",)) == "sm_90a"
    assert cuda.variant_arch("pool", ("GEMM_WGMMA",)) is None
    assert cuda.variant_arch("fc", ()) is None


def test_large_dynamic_shared_memory_opt_in(monkeypatch):
    """Above 48 KB a kernel must opt in (the wgmma GEMM takes 97 KB): a RawKernel through its
    attribute, a cubin module's Function through cuFuncSetAttribute; once per kernel and size."""
    import types

    calls = []
    driver = types.SimpleNamespace(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES=8,
                                   funcSetAttribute=lambda ptr, attr, v: calls.append((ptr, attr, v)))
    monkeypatch.setattr(cuda.device, "_cupy", lambda: types.SimpleNamespace(cuda=types.SimpleNamespace(driver=driver)))
    monkeypatch.setattr(cuda, "_shared_opt_in", {})
    raw = types.SimpleNamespace(max_dynamic_shared_size_bytes=0)
    func = types.SimpleNamespace(ptr=1234)
    for _ in range(2):
        cuda._allow_dynamic_shared(raw, 99_328)
        cuda._allow_dynamic_shared(func, 99_328)
    assert raw.max_dynamic_shared_size_bytes == 99_328
    assert calls == [(1234, 8, 99_328)]
    cuda._allow_dynamic_shared(func, 50_000)   # already allowed more
    cuda._allow_dynamic_shared(func, 120_000)  # a bigger request opts in again
    assert calls == [(1234, 8, 99_328), (1234, 8, 120_000)]


@pytest.mark.parametrize("name", cuda.kernel_names())
def test_kernel_header_says_what_layout_and_geometry(name):
    head = cuda.kernel_source(name)[:3000].lower()
    assert head.lstrip().startswith(("/*", "//")), f"{name}.cu must open with a header comment"
    assert any(w in head for w in ("nchw", "layout", "row-major", "contiguous", "flat")), \
        f"{name}.cu header must state the memory layout"
    assert "grid" in head or "block" in head, f"{name}.cu header must state the launch geometry"


def test_compile_error_is_reported(tmp_path, monkeypatch):
    if not HAVE_NVRTC:
        pytest.skip("cupy/NVRTC not installed")
    (tmp_path / "broken.cu").write_text('extern "C" __global__ void k() { this is not C; }')
    monkeypatch.setattr(cuda, "KERNEL_DIR", tmp_path)
    with pytest.raises(cuda.KernelCompileError, match="broken.cu"):
        cuda.compile_ptx("broken")


@pytest.mark.skipif(not HAVE_NVRTC, reason="cupy/NVRTC not installed")
def test_cli_prints_each_entrys_resources(monkeypatch, capsys):
    from gpuconv import cli  # noqa: PLC0415

    monkeypatch.setattr(cuda, "kernel_names", lambda: ["activation"])   # one small module, no variants
    monkeypatch.setattr(cuda, "MODULE_VARIANTS", {})
    assert cli.main(["kernels", "--resources", "--arch", "sm_90", "--filter", "_f32$"]) == 0
    out = capsys.readouterr().out
    shown = {e: r for e, r in _build("activation", "sm_90").resources.items() if e.endswith("_f32")}
    assert shown and f"{len(_build('activation', 'sm_90').resources)} entries" in out
    for entry, r in shown.items():
        assert re.search(rf"{entry}\s+{r.registers} regs\s+stack\s+{r.stack}\s+spill st/ld\s+{r.spill_stores}/", out)
    assert "_f64" not in out.split("entries", 1)[1]                    # filtered out
    assert cli.main(["kernels", "--resources", "--arch", "compute_90"]) == 2   # no ptxas, no report
    assert cli.main(["kernels", "--resources", "--filter", "("]) == 2
    assert "real target" in capsys.readouterr().err
