"""Every kernel compiles with NVRTC for sm_80 and sm_90 (no GPU needed, only cupy + NVRTC)."""
import functools

import pytest

from gpuconv import cuda

try:
    from cupy.cuda import nvrtc  # noqa: F401
    HAVE_NVRTC = True
except Exception:  # noqa: BLE001
    HAVE_NVRTC = False

pytestmark = pytest.mark.nvrtc


@functools.lru_cache(maxsize=None)
def _ptx(name: str, arch: str, defines: tuple[str, ...] = ()) -> str:
    return cuda.compile_ptx(name, arch, defines)  # compiled once per session (conv takes seconds)


def test_there_are_kernels():
    assert {"conv", "pool", "fc", "loss", "optim", "activation"} <= set(cuda.kernel_names())


@pytest.mark.skipif(not HAVE_NVRTC, reason="cupy/NVRTC not installed")
@pytest.mark.parametrize("arch", cuda.TARGET_ARCHS)
@pytest.mark.parametrize("name", cuda.kernel_names())
def test_kernel_compiles(name, arch):
    ptx = _ptx(name, arch)
    assert ".entry" in ptx


@pytest.mark.skipif(not HAVE_NVRTC, reason="cupy/NVRTC not installed")
@pytest.mark.parametrize("arch", cuda.TARGET_ARCHS)
@pytest.mark.parametrize("name,defines", [(n, d) for n, vs in cuda.MODULE_VARIANTS.items() for d in vs])
def test_module_variant_compiles(name, defines, arch):
    ptx = _ptx(name, arch, defines)
    assert ".entry" in ptx and "cp.async" in ptx and "_async" in ptx
    assert "cp.async" not in _ptx(name, arch)  # the default module stays without them


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
