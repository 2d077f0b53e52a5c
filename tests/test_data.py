"""Tests for gpuconv.data: IDX and CIFAR readers, data location, synthetic data, batching."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from gpuconv import data
from gpuconv.data import DataError


# --------------------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    """Hand-built IDX file: 0, 0, type code, ndim, big-endian sizes, big-endian data."""
    be = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(be).tobytes()


def write_idx_set(folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = True, seed: int = 0):
    """The four Fashion-MNIST files with known random contents; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", imgs), (f"{prefix}-labels-idx1-ubyte", labels)):
            raw = idx_bytes(arr)
            if gz:
                (folder / (stem + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (folder / stem).write_bytes(raw)
        out[prefix] = (imgs, labels)
    return out


@pytest.fixture
def no_env(monkeypatch, tmp_path):
    """No $GPUCONV_DATA and an empty system folder, so only the test's own files count."""
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setattr(data, "SYSTEM_DATA_ROOT", tmp_path / "system-empty")


# --------------------------------------------------------------------------- read_idx


def test_read_idx_known_bytes(tmp_path):
    # A 2x3 uint8 array spelled out byte by byte, independent of idx_bytes().
    raw = bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 250, 251, 252])
    p = tmp_path / "tiny-idx2-ubyte"
    p.write_bytes(raw)
    a = data.read_idx(p)
    assert a.dtype == np.uint8
    np.testing.assert_array_equal(a, [[1, 2, 3], [250, 251, 252]])


@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16),
                                        (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)])
def test_read_idx_dtypes_roundtrip(tmp_path, code, dtype):
    arr = (np.arange(24).reshape(2, 3, 4) - (0 if dtype == np.uint8 else 12)).astype(dtype)
    p = tmp_path / "x.idx"
    p.write_bytes(idx_bytes(arr, code))
    got = data.read_idx(p)
    assert got.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(got, arr)
    assert got.flags.writeable


def test_read_idx_gz(tmp_path):
    arr = np.arange(10, dtype=np.uint8)
    p = tmp_path / "labels-idx1-ubyte.gz"
    p.write_bytes(gzip.compress(idx_bytes(arr)))
    np.testing.assert_array_equal(data.read_idx(p), arr)


@pytest.mark.parametrize(
    "raw,needle",
    [
        (bytes([1, 0, 8, 1, 0, 0, 0, 1, 7]), "magic"),
        (bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 7]), "type code"),
        (bytes([0, 0, 8, 0]), "0 dimensions"),
        (bytes([0, 0, 8, 3, 0, 0, 0, 1]), "truncated header"),
        (bytes([0, 0, 8]), "too short"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2, 3]), "truncated"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 1, 1, 2]), "trailing"),
    ],
)
def test_read_idx_corrupt(tmp_path, raw, needle):
    p = tmp_path / "bad-idx"
    p.write_bytes(raw)
    with pytest.raises(DataError) as e:
        data.read_idx(p)
    assert needle in str(e.value)
    assert str(p) in str(e.value)


def test_read_idx_truncated_gz(tmp_path):
    full = gzip.compress(idx_bytes(np.zeros((50, 28, 28), np.uint8) + 3))
    p = tmp_path / "cut-idx3-ubyte.gz"
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="cut-idx3-ubyte.gz"):
        data.read_idx(p)


def test_read_idx_missing(tmp_path):
    with pytest.raises(DataError, match="not found"):
        data.read_idx(tmp_path / "nope")


# --------------------------------------------------------------------------- find_data_dir


def test_find_data_dir_order(tmp_path, monkeypatch):
    arg, env_parent, system = tmp_path / "arg", tmp_path / "env", tmp_path / "sys"
    write_idx_set(arg)
    write_idx_set(env_parent / "fashion-mnist")
    write_idx_set(system / "fashion-mnist")
    monkeypatch.setattr(data, "SYSTEM_DATA_ROOT", system)
    monkeypatch.setenv(data.DATA_ENV, str(env_parent))

    assert data.find_data_dir("fashion-mnist", arg) == arg  # argument first
    assert data.find_data_dir("fashion-mnist") == env_parent / "fashion-mnist"  # then env (parent form)
    monkeypatch.setenv(data.DATA_ENV, str(env_parent / "fashion-mnist"))
    assert data.find_data_dir("fashion-mnist") == env_parent / "fashion-mnist"  # env (folder form)
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "empty"))
    assert data.find_data_dir("fashion-mnist") == system / "fashion-mnist"  # env without data -> system
    monkeypatch.delenv(data.DATA_ENV)
    assert data.find_data_dir("fashion-mnist") == system / "fashion-mnist"


def test_find_data_dir_argument_is_authoritative(tmp_path, monkeypatch):
    system = tmp_path / "sys"
    write_idx_set(system / "fashion-mnist")
    monkeypatch.setattr(data, "SYSTEM_DATA_ROOT", system)
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    with pytest.raises(DataError) as e:
        data.find_data_dir("fashion-mnist", tmp_path / "wrong")
    assert str(tmp_path / "wrong") in str(e.value)


def test_find_data_dir_accepts_raw_and_parent_arg(tmp_path, no_env):
    write_idx_set(tmp_path / "p" / "fashion-mnist", gz=False)
    assert data.find_data_dir("fashion-mnist", tmp_path / "p") == tmp_path / "p" / "fashion-mnist"


def test_find_data_dir_incomplete_folder(tmp_path, no_env):
    folder = tmp_path / "d"
    write_idx_set(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing files"):
        data.find_data_dir("fashion-mnist", folder)


def test_find_data_dir_error_lists_places_and_help(tmp_path, monkeypatch):
    env_dir, system = tmp_path / "envdir", tmp_path / "sys"
    monkeypatch.setenv(data.DATA_ENV, str(env_dir))
    monkeypatch.setattr(data, "SYSTEM_DATA_ROOT", system)
    with pytest.raises(DataError) as e:
        data.find_data_dir("fashion-mnist")
    msg = str(e.value)
    for place in (env_dir, env_dir / "fashion-mnist", system / "fashion-mnist"):
        assert str(place) in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--data-dir" in msg and data.DATA_ENV in msg
    assert "train-images-idx3-ubyte" in msg


def test_find_data_dir_unknown_name():
    with pytest.raises(DataError, match="unknown dataset"):
        data.find_data_dir("imagenet")


# --------------------------------------------------------------------------- IDX loaders


@pytest.mark.parametrize("gz", [True, False])
def test_load_fashion_mnist_small(tmp_path, no_env, gz):
    written = write_idx_set(tmp_path, n_train=6, n_test=4, gz=gz)
    ds = data.load_fashion_mnist(tmp_path)
    assert ds.name == "fashion-mnist"
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and ds.num_classes == 10
    assert ds.x_train.shape == (6, 1, 28, 28) and ds.x_train.dtype == np.float32
    assert ds.x_test.shape == (4, 1, 28, 28)
    assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    np.testing.assert_allclose(ds.x_train[:, 0], written["train"][0] / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(ds.y_train, written["train"][1])
    np.testing.assert_array_equal(ds.y_test, written["t10k"][1])
    assert ds.input_shape == (1, 28, 28)


def test_load_limits_and_mnist(tmp_path, no_env):
    written = write_idx_set(tmp_path / "mnist", n_train=6, n_test=4)
    ds = data.load_mnist(tmp_path, limit_train=3, limit_test=2)
    assert ds.name == "mnist" and ds.classes == [str(i) for i in range(10)]
    assert ds.x_train.shape == (3, 1, 28, 28) and ds.x_test.shape == (2, 1, 28, 28)
    np.testing.assert_array_equal(ds.y_train, written["train"][1][:3])


def test_load_label_count_mismatch(tmp_path, no_env):
    write_idx_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8))))
    with pytest.raises(DataError, match="6 images but .* 5 labels"):
        data.load_fashion_mnist(tmp_path)


def test_load_label_out_of_range(tmp_path, no_env):
    write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.full(4, 10, np.uint8))))
    with pytest.raises(DataError, match="out of range"):
        data.load_fashion_mnist(tmp_path)


def _real_fashion_dir() -> Path | None:
    try:
        return data.find_data_dir("fashion-mnist")
    except DataError:
        return None


@pytest.mark.skipif(_real_fashion_dir() is None, reason="Fashion-MNIST not installed "
                    "(/usr/share/datasets/fashion-mnist or $GPUCONV_DATA)")
def test_real_fashion_mnist():
    ds = data.load_fashion_mnist()
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert ds.y_train.min() == 0 and ds.y_train.max() == 9
    assert set(np.unique(ds.y_test)) == set(range(10))
    # Fashion-MNIST is balanced: 6000 training images per class.
    np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 6000))
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    # Published per-pixel statistics of the training set.
    n = ds.normalize()
    assert abs(float(n.mean[0]) - 0.2860) < 1e-3 and abs(float(n.std[0]) - 0.3530) < 1e-3


# --------------------------------------------------------------------------- Dataset


def test_normalize_uses_train_stats():
    rng = np.random.default_rng(1)
    xtr = rng.random((20, 3, 4, 4), dtype=np.float32) * np.array([1, 2, 3], np.float32).reshape(1, 3, 1, 1)
    xte = rng.random((5, 3, 4, 4), dtype=np.float32)
    ds = data.Dataset("t", xtr, np.zeros(20, np.int32), xte, np.zeros(5, np.int32), ["a"])
    n = ds.normalize()
    mean = xtr.astype(np.float64).mean(axis=(0, 2, 3))
    std = xtr.astype(np.float64).std(axis=(0, 2, 3))
    np.testing.assert_allclose(n.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(n.std, std, rtol=1e-5)
    np.testing.assert_allclose(n.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(n.x_train.std(axis=(0, 2, 3)), 1, atol=1e-4)
    # Test set uses the *training* statistics.
    np.testing.assert_allclose(n.x_test, (xte - mean.reshape(1, 3, 1, 1)) / std.reshape(1, 3, 1, 1), atol=1e-5)
    assert n.x_train.dtype == np.float32 and n.x_test.dtype == np.float32
    assert ds.mean is None and ds.x_train is xtr  # original untouched
    with pytest.raises(DataError, match="already normalized"):
        n.normalize()


def test_dataset_shape_checks():
    x = np.zeros((3, 1, 2, 2), np.float32)
    with pytest.raises(DataError, match="does not match"):
        data.Dataset("t", x, np.zeros(2, np.int32), x, np.zeros(3, np.int32), ["a"])
    with pytest.raises(DataError, match="differ in shape"):
        data.Dataset("t", x, np.zeros(3, np.int32), np.zeros((3, 1, 3, 3), np.float32), np.zeros(3, np.int32), ["a"])


# --------------------------------------------------------------------------- CIFAR-10


def write_cifar(folder: Path, n_per_batch: int = 3, seed: int = 0, protocol: int = pickle.DEFAULT_PROTOCOL):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in data.CIFAR10_FILES:
        d = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n_per_batch)]
        batch = {
            b"batch_label": f"{name} of 5".encode(),
            b"labels": labels,
            b"data": d,
            b"filenames": [f"img{i}.png".encode() for i in range(n_per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        written[name] = (d, labels)
    return written


@pytest.mark.parametrize("protocol", [3, 4])
def test_load_cifar10(tmp_path, no_env, protocol):
    written = write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    ds = data.load_cifar10(tmp_path)  # parent folder works
    assert ds.name == "cifar10" and ds.classes[0] == "airplane" and ds.classes[9] == "truck"
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    d1, l1 = written["data_batch_1"]
    d5, l5 = written["data_batch_5"]
    # Row layout: 1024 red, then green, then blue values, each row-major 32x32.
    np.testing.assert_allclose(ds.x_train[0, 1, 0, 5], d1[0, 1024 + 5] / 255.0, atol=1e-7)
    np.testing.assert_allclose(ds.x_train[14, 2, 31, 31], d5[2, 3071] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(ds.y_train[:3], l1)
    np.testing.assert_array_equal(ds.y_test, written["test_batch"][1])
    # The batches folder itself works too, and limits apply.
    small = data.load_cifar10(tmp_path / "cifar-10-batches-py", limit_train=4, limit_test=1)
    assert small.x_train.shape == (4, 3, 32, 32) and small.x_test.shape == (1, 3, 32, 32)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_refuses_foreign_globals(tmp_path, no_env):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": _Evil()}, f)
    with pytest.raises(DataError) as e:
        data.load_cifar10(folder)
    assert "data_batch_3" in str(e.value) and "refusing" in str(e.value)


def test_cifar_bad_contents(tmp_path, no_env):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match=r"test_batch.*\(N, 3072\)"):
        data.load_cifar10(folder)
    raw = (folder / "data_batch_1").read_bytes()
    (folder / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="test_batch"):
        data.load_cifar10(folder)


def test_cifar_missing_lists_help(tmp_path, no_env):
    with pytest.raises(DataError) as e:
        data.load_cifar10(tmp_path)
    assert "cifar-10-python.tar.gz" in str(e.value) and str(tmp_path) in str(e.value)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_learnable():
    a = data.synthetic(400, 200, shape=(3, 8, 8), classes=4, seed=3)
    b = data.synthetic(400, 200, shape=(3, 8, 8), classes=4, seed=3)
    c = data.synthetic(400, 200, shape=(3, 8, 8), classes=4, seed=4)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.x_train.shape == (400, 3, 8, 8) and a.x_train.dtype == np.float32
    assert a.y_train.dtype == np.int32 and set(np.unique(a.y_train)) == set(range(4))
    assert a.x_train.min() >= 0 and a.x_train.max() <= 1
    # Learnable: nearest class-mean (from train) classifies the test set well above chance (25%).
    means = np.stack([a.x_train[a.y_train == k].mean(0) for k in range(4)])
    d = ((a.x_test[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
    assert (d.argmin(1) == a.y_test).mean() > 0.9


def test_synthetic_odd_shape():
    ds = data.synthetic(5, 2, shape=(1, 7, 5), classes=3)
    assert ds.x_train.shape == (5, 1, 7, 5) and ds.num_classes == 3


def test_datasets_registry():
    assert set(data.DATASETS) == {"fashion-mnist", "mnist", "cifar10", "synthetic"}
    ds = data.DATASETS["synthetic"](None, limit_train=8, limit_test=4)
    assert ds.x_train.shape == (8, 3, 32, 32) and ds.x_test.shape[0] == 4


# --------------------------------------------------------------------------- BatchIterator


def _xy(n=10):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    return x, np.arange(n, dtype=np.int32)


def test_batches_no_shuffle():
    x, y = _xy(10)
    it = data.BatchIterator(x, y, 4, shuffle=False)
    assert len(it) == 3
    batches = list(it)
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    np.testing.assert_array_equal(batches[1][0], x[4:8])
    it2 = data.BatchIterator(x, y, 4, shuffle=False, drop_last=True)
    assert len(it2) == 2 and [len(b[1]) for b in it2] == [4, 4]


def test_batches_shuffle_is_permutation_and_reproducible():
    x, y = _xy(23)
    it = data.BatchIterator(x, y, 5, seed=7, epoch=2)
    ys = np.concatenate([yb for _, yb in it])
    assert sorted(ys.tolist()) == list(range(23)) and ys.tolist() != list(range(23))
    # Pairs stay aligned: row i of x is (2i, 2i+1).
    for xb, yb in it:
        np.testing.assert_array_equal(xb[:, 0], 2 * yb)
    # Exactly numpy's Generator seeded with (seed, epoch).
    np.testing.assert_array_equal(ys, np.random.default_rng([7, 2]).permutation(23))
    again = np.concatenate([yb for _, yb in data.BatchIterator(x, y, 5, seed=7, epoch=2)])
    np.testing.assert_array_equal(ys, again)
    other = np.concatenate([yb for _, yb in it.for_epoch(3)])
    assert not np.array_equal(ys, other)


def test_batches_resume_mid_epoch():
    x, y = _xy(23)
    full = list(data.BatchIterator(x, y, 5, seed=1, epoch=4))
    it = data.BatchIterator(x, y, 5, seed=1, epoch=4, start_batch=3)
    assert len(it) == 5 and it.remaining == 2
    rest = list(it)
    assert len(rest) == 2
    for (xa, ya), (xb, yb) in zip(full[3:], rest):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert list(data.BatchIterator(x, y, 5, start_batch=5)) == []
    with pytest.raises(ValueError):
        data.BatchIterator(x, y, 5, start_batch=6)


def test_batches_drop_last_shuffle():
    x, y = _xy(23)
    it = data.BatchIterator(x, y, 5, seed=0, drop_last=True)
    sizes = [len(yb) for _, yb in it]
    assert sizes == [5, 5, 5, 5] and len(it) == 4


def test_batches_validation():
    x, y = _xy(4)
    with pytest.raises(ValueError):
        data.BatchIterator(x, y[:3], 2)
    with pytest.raises(ValueError):
        data.BatchIterator(x, y, 0)
    assert len(data.BatchIterator(x[:0], y[:0], 3)) == 0


@pytest.mark.gpu
def test_batches_stay_on_gpu(cp):
    x, y = _xy(23)
    xd, yd = cp.asarray(x), cp.asarray(y)
    host = list(data.BatchIterator(x, y, 5, seed=9, epoch=1))
    dev = list(data.BatchIterator(xd, yd, 5, seed=9, epoch=1))
    for (xa, ya), (xb, yb) in zip(host, dev):
        assert isinstance(xb, cp.ndarray) and isinstance(yb, cp.ndarray)
        np.testing.assert_array_equal(xa, xb.get())
        np.testing.assert_array_equal(ya, yb.get())
