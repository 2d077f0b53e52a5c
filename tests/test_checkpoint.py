"""Tests for gpuconv.checkpoint: roundtrip, atomicity under a crash, clear errors."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from gpuconv import checkpoint
from gpuconv.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def sample():
    arrays = {
        "conv1.w": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
        "fc.b": np.array([1.5, -2.0], np.float64),
        "step": np.array(7, np.int64),
        "empty": np.zeros((0, 3), np.float32),
    }
    meta = {"epoch": 3, "batch": 120, "lr": 0.05, "name": "été", "nested": {"a": [1, 2]}}
    return arrays, meta


def test_roundtrip(tmp_path):
    arrays, meta = sample()
    p = tmp_path / "ck.npz"
    save_checkpoint(p, arrays, meta)
    got, got_meta = load_checkpoint(p)
    assert got_meta == meta
    assert set(got) == set(arrays)
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        np.testing.assert_array_equal(got[k], v)
    assert not (tmp_path / "ck.npz.tmp").exists()
    # A plain npz any numpy can read, metadata as JSON bytes, no pickle needed.
    with np.load(p, allow_pickle=False) as z:
        assert json.loads(z["__meta__"].tobytes()) == meta


def test_name_used_as_given_and_compressed(tmp_path):
    arrays, meta = sample()
    p = tmp_path / "ckpt"  # np.savez would add .npz to a bare path
    save_checkpoint(p, arrays, meta, compress=True)
    assert p.is_file() and not (tmp_path / "ckpt.npz").exists()
    with zipfile.ZipFile(p) as z:
        assert any(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    np.testing.assert_array_equal(load_checkpoint(str(p))[0]["conv1.w"], arrays["conv1.w"])


def test_overwrite(tmp_path):
    p = tmp_path / "ck.npz"
    save_checkpoint(p, {"a": np.zeros(2)}, {"epoch": 1})
    save_checkpoint(p, {"b": np.ones(3)}, {"epoch": 2})
    arrays, meta = load_checkpoint(p)
    assert meta == {"epoch": 2} and list(arrays) == ["b"]


def test_crash_during_write_keeps_previous(tmp_path, monkeypatch):
    arrays, meta = sample()
    p = tmp_path / "ck.npz"
    save_checkpoint(p, arrays, meta)
    before = p.read_bytes()

    def crashing_savez(f, **kw):
        f.write(b"PK\x03\x04 half a zip file")  # some bytes reach the temp file first
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(checkpoint.np, "savez", crashing_savez)
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_checkpoint(p, {"x": np.ones(5)}, {"epoch": 99})
    monkeypatch.undo()

    assert p.read_bytes() == before
    got, got_meta = load_checkpoint(p)
    assert got_meta == meta
    np.testing.assert_array_equal(got["conv1.w"], arrays["conv1.w"])
    assert not (tmp_path / "ck.npz.tmp").exists()


def test_crash_before_rename_keeps_previous(tmp_path, monkeypatch):
    p = tmp_path / "ck.npz"
    save_checkpoint(p, {"a": np.arange(3)}, {"epoch": 1})

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(checkpoint.os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        save_checkpoint(p, {"a": np.arange(4)}, {"epoch": 2})
    monkeypatch.undo()
    arrays, meta = load_checkpoint(p)
    assert meta == {"epoch": 1}
    np.testing.assert_array_equal(arrays["a"], np.arange(3))


def test_bad_inputs_do_not_touch_previous(tmp_path):
    p = tmp_path / "ck.npz"
    save_checkpoint(p, {"a": np.arange(3)}, {"epoch": 1})
    before = p.read_bytes()
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(p, {"a": np.arange(3)}, {"bad": object()})
    with pytest.raises(CheckpointError, match="object dtype"):
        save_checkpoint(p, {"a": np.array([{}, 1], dtype=object)}, {})
    with pytest.raises(CheckpointError, match="invalid array name"):
        save_checkpoint(p, {"__meta__": np.zeros(1)}, {})
    assert p.read_bytes() == before


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.npz")
    (tmp_path / "nope.npz.tmp").write_bytes(b"partial")
    with pytest.raises(CheckpointError, match="interrupted save"):
        load_checkpoint(tmp_path / "nope.npz")
    assert (tmp_path / "nope.npz.tmp").exists()  # never deleted


def test_truncated_file(tmp_path):
    arrays, meta = sample()
    p = tmp_path / "ck.npz"
    save_checkpoint(p, arrays, meta)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(p)
    assert p.exists()


@pytest.mark.parametrize("content", [b"", b"garbage that is not a zip", b"\x93NUMPY"])
def test_garbage_file(tmp_path, content):
    p = tmp_path / "ck.npz"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(p.name)):
        load_checkpoint(p)


def test_not_a_gpuconv_checkpoint(tmp_path):
    p = tmp_path / "plain.npz"
    np.savez(p, a=np.zeros(2))
    with pytest.raises(CheckpointError, match="__meta__"):
        load_checkpoint(p)
    q = tmp_path / "single.npy"
    np.save(q, np.zeros(2))
    with pytest.raises(CheckpointError, match="not an .npz"):
        load_checkpoint(q)
    r = tmp_path / "badmeta.npz"
    np.savez(r, __meta__=np.frombuffer(b"{not json", np.uint8))
    with pytest.raises(CheckpointError, match="bad metadata"):
        load_checkpoint(r)


def test_refuses_pickled_arrays(tmp_path):
    p = tmp_path / "pickled.npz"
    np.savez(p, __meta__=np.frombuffer(b"{}", np.uint8), evil=np.array([{}, 1], dtype=object))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(p)


@pytest.mark.gpu
def test_gpu_arrays_saved(tmp_path, cp):
    p = tmp_path / "ck.npz"
    save_checkpoint(p, {"w": cp.arange(6, dtype=cp.float32)}, {"epoch": 0})
    arrays, _ = load_checkpoint(p)
    assert isinstance(arrays["w"], np.ndarray)
    np.testing.assert_array_equal(arrays["w"], np.arange(6, dtype=np.float32))


def test_meta_alone_matches_the_full_load_and_fails_the_same_way(tmp_path):
    p = tmp_path / "c.npz"
    meta = {"epoch": 3, "history": [{"epoch": 1, "test_acc": 0.5}], "config": {"model": "small"}}
    save_checkpoint(p, {"w": np.arange(6, dtype=np.float32)}, meta)
    assert checkpoint.read_checkpoint_meta(p) == load_checkpoint(p)[1] == meta
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        checkpoint.read_checkpoint_meta(tmp_path / "missing.npz")
    p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        checkpoint.read_checkpoint_meta(p)
    np.savez(p, w=np.zeros(2))
    with pytest.raises(CheckpointError, match="not a gpuconv checkpoint"):
        checkpoint.read_checkpoint_meta(p)
    np.savez(p, __meta__=np.frombuffer(b"[1, 2]", dtype=np.uint8))
    with pytest.raises(CheckpointError, match="bad metadata"):
        checkpoint.read_checkpoint_meta(p)
