"""Image folders (gpuconv.imagefolder): decoding, resize + center crop, the uint8 cache, the split, errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from gpuconv import imagefolder  # noqa: E402
from gpuconv.data import DataError  # noqa: E402

COLOURS = {"blue": (30, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}


def make_folder(root: Path, per_class: int = 6, colours: dict = COLOURS, seed: int = 0) -> Path:
    """Solid-colour images with a little noise, of varying sizes, half PNG and half JPEG."""
    rng = np.random.default_rng(seed)
    for name, c in colours.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = 20 + 3 * (i % 4), 24 + 5 * (i % 3)
            a = np.clip(np.array(c)[None, None] + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / name / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_fit_image_keeps_aspect_and_crops_the_centre() -> None:
    # 20 high x 40 wide: red | green (the middle half) | blue.  Shorter side 20 -> 10 gives 10 x 20;
    # the centre 10 columns are exactly the green half.
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :10] = (255, 0, 0)
    a[:, 10:30] = (0, 255, 0)
    a[:, 30:] = (0, 0, 255)
    out = imagefolder.fit_image(Image.fromarray(a), (3, 10, 10))
    assert out.shape == (3, 10, 10) and out.dtype == np.uint8
    assert np.abs(out[:, :, 1:-1].astype(int) - np.array([0, 255, 0])[:, None, None]).max() <= 2
    # the same for a tall image: top | middle | bottom
    t = np.ascontiguousarray(a.transpose(1, 0, 2))
    out = imagefolder.fit_image(Image.fromarray(t), (3, 10, 10))
    assert np.abs(out[:, 1:-1, :].astype(int) - np.array([0, 255, 0])[:, None, None]).max() <= 2


def test_fit_image_grayscale_is_the_luma_of_rgb() -> None:
    a = np.full((8, 8, 3), (200, 100, 50), np.uint8)
    out = imagefolder.fit_image(Image.fromarray(a), (1, 8, 8))
    assert out.shape == (1, 8, 8)
    assert np.all(np.abs(out.astype(int) - round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)) <= 1)
    with pytest.raises(DataError, match="1 .grayscale. or 3"):
        imagefolder.fit_image(Image.fromarray(a), (2, 8, 8))


def test_fit_image_upsamples_a_small_image() -> None:
    a = np.full((4, 6, 3), 77, np.uint8)
    out = imagefolder.fit_image(Image.fromarray(a), (3, 16, 16))
    assert out.shape == (3, 16, 16) and np.all(out == 77)


def test_load_image_folder_labels_split_and_classes(tmp_path: Path, cache: Path) -> None:
    root = make_folder(tmp_path / "imgs", per_class=10)
    ds = imagefolder.load_image_folder(root, (3, 12, 12), val_fraction=0.2, seed=3, cache=cache)
    assert ds.classes == ["blue", "green", "red"]
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.x_train.shape == (24, 3, 12, 12) and ds.x_test.shape == (6, 3, 12, 12)
    # stratified: 2 of each class's 10 held out
    assert np.bincount(ds.y_test, minlength=3).tolist() == [2, 2, 2]
    # every image has its class's colour (the labels follow the folders)
    for x, y in [(ds.x_train, ds.y_train), (ds.x_test, ds.y_test)]:
        mean_rgb = x.mean(axis=(2, 3)) * 255
        want = np.array([COLOURS[ds.classes[k]] for k in y])
        assert np.abs(mean_rgb - want).max() < 12
    # same seed: same split; another seed: another one
    again = imagefolder.load_image_folder(root, (3, 12, 12), val_fraction=0.2, seed=3, cache=cache)
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    other = imagefolder.load_image_folder(root, (3, 12, 12), val_fraction=0.2, seed=4, cache=cache)
    assert not np.array_equal(other.x_test, ds.x_test)
    # limits keep the first images of each split
    lim = imagefolder.load_image_folder(root, (3, 12, 12), 0.2, 3, limit_train=5, limit_test=2, cache=cache)
    np.testing.assert_array_equal(lim.x_train, ds.x_train[:5])
    np.testing.assert_array_equal(lim.y_test, ds.y_test[:2])


def test_images_match_direct_decoding(tmp_path: Path, cache: Path) -> None:
    root = make_folder(tmp_path / "imgs", per_class=3)
    classes, files = imagefolder.scan_folder(root)
    arr = imagefolder.cached_images(root, files, (1, 9, 7), cache)
    assert isinstance(arr, np.memmap) or isinstance(getattr(arr, "base", None), np.memmap)
    assert arr.shape == (len(files), 1, 9, 7) and arr.dtype == np.uint8
    for i, (p, _) in enumerate(files):  # the cache holds exactly what decoding each file gives
        np.testing.assert_array_equal(arr[i], imagefolder.read_image(p, (1, 9, 7)))


def test_cache_is_built_once_and_keyed_by_mtime_and_shape(tmp_path: Path, cache: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_folder(tmp_path / "imgs", per_class=3)
    first = imagefolder.load_image_folder(root, (3, 8, 8), cache=cache)
    assert len(list(cache.glob("*.npy"))) == 1

    def boom(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("decoded again although cached")

    monkeypatch.setattr(imagefolder, "read_image", boom)
    second = imagefolder.load_image_folder(root, (3, 8, 8), cache=cache)
    np.testing.assert_array_equal(first.x_train, second.x_train)
    monkeypatch.undo()
    # a changed file (new mtime) or another shape is a new cache entry
    f = root / "red" / "00.jpg"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    imagefolder.load_image_folder(root, (3, 8, 8), cache=cache)
    imagefolder.load_image_folder(root, (1, 8, 8), cache=cache)
    assert len(list(cache.glob("*.npy"))) == 3
    assert not list(cache.glob("*.tmp*"))


def test_cache_dir_follows_gpuconv_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(tmp_path / "c"))
    assert imagefolder.cache_dir() == tmp_path / "c" / "images"
    root = make_folder(tmp_path / "imgs", per_class=2)
    imagefolder.load_image_folder(root, (3, 8, 8), val_fraction=0.5)
    assert len(list((tmp_path / "c" / "images").glob("*.npy"))) == 1
    assert not (root / ".gpuconv-cache").exists()  # the data folder is never written to


def test_hidden_and_other_files_are_ignored(tmp_path: Path, cache: Path) -> None:
    root = make_folder(tmp_path / "imgs", per_class=2)
    (root / "notes.txt").write_text("not a class")
    (root / ".hidden").mkdir()
    (root / "red" / "readme.txt").write_text("not an image")
    (root / "red" / ".x.png").write_bytes(b"junk")
    classes, files = imagefolder.scan_folder(root)
    assert classes == ["blue", "green", "red"] and len(files) == 6


@pytest.mark.parametrize("layout, message", [
    (None, "no such folder"),
    ({}, "folder is empty"),
    ({"a.png": "file"}, "no class sub-folders"),
    ({"cats": 2}, "only one class"),
    ({"cats": 2, "dogs": 0}, "class 'dogs' has no images"),
])
def test_bad_folders_are_clear_errors(tmp_path: Path, cache: Path, layout: dict | None, message: str) -> None:
    root = tmp_path / "data"
    if layout is not None:
        root.mkdir()
        for name, n in layout.items():
            if n == "file":
                Image.new("RGB", (4, 4)).save(root / name)
                continue
            (root / name).mkdir()
            for i in range(n):
                Image.new("RGB", (4, 4), (i, 0, 0)).save(root / name / f"{i}.png")
    with pytest.raises(DataError, match=message):
        imagefolder.load_image_folder(root, (3, 8, 8), cache=cache)


def test_a_file_for_a_folder_is_refused(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="not a folder"):
        imagefolder.load_image_folder(tmp_path / "x.png", (3, 8, 8), cache=cache)


def test_unreadable_image_names_the_file_and_leaves_no_cache(tmp_path: Path, cache: Path) -> None:
    root = make_folder(tmp_path / "imgs", per_class=2)
    bad = root / "green" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(DataError, match="broken.png: cannot read this image"):
        imagefolder.load_image_folder(root, (3, 8, 8), cache=cache)
    assert not list(cache.glob("*"))  # nothing half-built is left to be reused


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 1.5])
def test_val_fraction_must_be_inside_0_1(tmp_path: Path, cache: Path, frac: float) -> None:
    root = make_folder(tmp_path / "imgs", per_class=2)
    with pytest.raises(DataError, match="--val-fraction"):
        imagefolder.load_image_folder(root, (3, 8, 8), val_fraction=frac, cache=cache)


def test_classes_with_one_image_cannot_be_split(tmp_path: Path, cache: Path) -> None:
    root = make_folder(tmp_path / "imgs", per_class=1)
    with pytest.raises(DataError, match="too few to split"):
        imagefolder.load_image_folder(root, (3, 8, 8), cache=cache)


def test_model_input_shape() -> None:
    assert imagefolder.model_input_shape("small") == (1, 28, 28)
    assert imagefolder.model_input_shape("cifar-vgg") == (3, 32, 32)
    assert imagefolder.model_input_shape("INPUT[16x12x3] -> FC-2") == (3, 16, 12)


def test_train_on_an_image_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gpuconv train --data: learns the colours, saves class names and the curves beside the checkpoint."""
    from gpuconv.cli import main

    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "imgs", per_class=12)
    out = tmp_path / "run"
    rc = main(["train", "--model", "INPUT[12x12x3] -> CONV3-4 -> RELU -> POOL2 -> FC-3", "--data", str(root),
               "--val-fraction", "0.25", "--epochs", "3", "--batch-size", "9", "--device", "cpu", "--lr", "0.01",
               "--out", str(out)])
    assert rc == 0
    info = json.loads((out / "classes.json").read_text())
    assert info["classes"] == ["blue", "green", "red"] and info["input_shape"] == [3, 12, 12]
    assert (out / "curves.png").is_file()
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["test_acc"] == 1.0 and "train_acc" in history[-1]
    # the default zoo net takes grayscale 28x28: the same folder is fitted to it
    rc = main(["train", "--data", str(root), "--epochs", "1", "--batch-size", "8", "--device", "cpu",
               "--out", str(tmp_path / "run2")])
    assert rc == 0
    assert json.loads((tmp_path / "run2" / "classes.json").read_text())["input_shape"] == [1, 28, 28]
