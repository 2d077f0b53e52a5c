"""gpuconv predict / evaluate: a trained run on new images, accuracy and the confusion matrix."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from gpuconv import predict as pr  # noqa: E402
from gpuconv.cli import main  # noqa: E402
from gpuconv.data import apply_normalization  # noqa: E402
from gpuconv.imagefolder import read_image  # noqa: E402
from tests.test_imagefolder import COLOURS, make_folder  # noqa: E402

MODEL = "INPUT[12x12x3] -> CONV3-4 -> RELU -> POOL2 -> FC-3"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    """(run folder, image folder, metrics history) of a tiny run that learns three colours."""
    tmp = tmp_path_factory.mktemp("predict")
    mp = pytest.MonkeyPatch()
    mp.setenv("GPUCONV_CACHE_DIR", str(tmp / "cache"))
    mp.delenv("GPUCONV_DEVICE", raising=False)
    imgs = make_folder(tmp / "imgs", per_class=12)
    run = tmp / "run"
    rc = main(["train", "--model", MODEL, "--data", str(imgs), "--val-fraction", "0.25", "--epochs", "3",
               "--batch-size", "9", "--device", "cpu", "--lr", "0.01", "--out", str(run)])
    assert rc == 0
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    yield run, imgs, history
    mp.undo()


def test_predict_matches_a_hand_computed_forward(trained: tuple[Path, Path, list[dict]]) -> None:
    run_dir, imgs, _ = trained
    run = pr.load_run(run_dir)
    assert run.classes == ["blue", "green", "red"] and run.input_shape == (3, 12, 12)
    assert run.net.device.name == "cpu"
    paths = sorted((imgs / "red").glob("*"))[:3] + sorted((imgs / "blue").glob("*"))[:2]
    top = pr.predict_images(run, paths, top_k=3)
    for path, row in zip(paths, top):
        # reference: decode, scale, normalize with the checkpoint's statistics, forward, softmax
        x = read_image(path, (3, 12, 12))[None].astype(np.float32) / 255
        arrays = np.load(run_dir / "checkpoint.npz")
        s = run.net.forward(apply_normalization(x, arrays["norm.mean"], arrays["norm.std"]), train=False)
        p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        want = sorted(((run.classes[i], float(p[0, i])) for i in range(3)), key=lambda t: -t[1])
        assert [n for n, _ in row] == [n for n, _ in want]
        np.testing.assert_allclose([q for _, q in row], [q for _, q in want], rtol=1e-5)
        assert row[0][0] == path.parent.name  # and it learnt the colours
    assert len(pr.predict_images(run, paths[:1], top_k=1)[0]) == 1
    assert len(pr.predict_images(run, paths[:1], top_k=10)[0]) == 3  # at most the number of classes


def test_confusion_matrix_against_a_loop() -> None:
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    want = np.zeros((4, 4), int)
    for a, b in zip(t, p):
        want[a, b] += 1
    np.testing.assert_array_equal(pr.confusion_matrix(t, p, 4), want)


def test_evaluate_on_the_run_split_reproduces_the_training_accuracy(trained: tuple[Path, Path, list[dict]]) -> None:
    run_dir, _, history = trained
    run = pr.load_run(run_dir)
    what, acc, cm = pr.evaluate_run(run)
    assert "validation split" in what
    assert cm.sum() == 9 and acc == pytest.approx(history[-1]["test_acc"])


def test_evaluate_on_a_folder_agrees_with_predict(trained: tuple[Path, Path, list[dict]], tmp_path: Path) -> None:
    run_dir, _, _ = trained
    other = make_folder(tmp_path / "other", per_class=3, colours={"red": COLOURS["red"], "blue": COLOURS["blue"]},
                        seed=7)
    run = pr.load_run(run_dir)
    _, acc, cm = pr.evaluate_run(run, str(other))
    paths = pr.image_paths([other])
    pred = [run.classes.index(top[0][0]) for top in pr.predict_images(run, paths, 1)]
    true = [run.classes.index(p.parent.name) for p in paths]
    np.testing.assert_array_equal(cm, pr.confusion_matrix(np.array(true), np.array(pred), 3))
    assert acc == pytest.approx(np.mean(np.array(pred) == np.array(true)))


def test_predict_cli_prints_top_k_per_image(trained: tuple[Path, Path, list[dict]],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, imgs, _ = trained
    one = sorted((imgs / "green").glob("*"))[0]
    assert main(["predict", str(run_dir), str(one), str(imgs / "red"), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 12
    assert lines[0].startswith(f"{one}: green ") and lines[0].count("%") == 2
    assert all(" red " in line.split(":", 1)[1][:6] for line in lines[1:])


def test_evaluate_cli_prints_accuracy_and_matrix(trained: tuple[Path, Path, list[dict]],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, imgs, _ = trained
    assert main(["evaluate", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "confusion matrix" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["blue"], ["green"], ["red"])]
    assert len(rows) == 3 and sum(int(v) for r in rows for v in r[2:]) == 9


@pytest.mark.parametrize("model", ["INPUT[32x32x3] -> CONV3-4 -> RELU -> POOL4 -> FC-10", "small"])
def test_fashion_mnist_style_run_without_classes_json_uses_the_dataset_names(tmp_path: Path, model: str) -> None:
    """A run trained on a built-in dataset: the class names (and, for a zoo net, the input shape it was
    fitted to) come from the dataset (synthetic data here)."""
    out = tmp_path / "run"
    assert main(["train", "--model", model, "--dataset",
                 "synthetic", "--limit-train", "64", "--limit-test", "32", "--epochs", "1", "--batch-size", "32",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads((out / "classes.json").read_text())["classes"][0] == "class0"
    (out / "classes.json").unlink()
    run = pr.load_run(out)
    assert run.classes == [f"class{i}" for i in range(10)]
    _, acc, cm = pr.evaluate_run(run)
    assert cm.sum() == 32 and 0 <= acc <= 1


def _image(path: Path) -> Path:
    Image.new("RGB", (12, 12), (200, 10, 10)).save(path)
    return path


@pytest.mark.parametrize("argv, code, message", [
    (["predict", "{tmp}/nowhere", "{img}"], 2, "no such run folder"),
    (["predict", "{tmp}", "{img}"], 2, "not a run folder (no checkpoint.npz"),
    (["predict", "{run}", "{tmp}/missing.png"], 2, "missing.png: no such file or folder"),
    (["predict", "{run}", "{bad}"], 2, "bad.png: cannot read this image"),
    (["predict", "{run}", "{empty}"], 2, "no .png, .jpg, .jpeg images in this folder"),
    (["predict", "{run}", "{img}", "--top-k", "0"], 2, "--top-k must be >= 1"),
    (["evaluate", "{tmp}"], 2, "not a run folder"),
    (["evaluate", "{run}", "--data", "{unknown}"], 2, "are not classes of this run"),
    (["evaluate", "{run}", "--data", "{tmp}/none"], 2, "no such folder"),
    (["evaluate", "{corrupt}"], 1, "checkpoint.npz"),
    (["evaluate", "{run}", "--device", "cuda"], 2, "cuda"),
])
def test_errors_are_one_line_without_traceback(trained: tuple[Path, Path, list[dict]], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str], argv: list[str], code: int,
                                               message: str) -> None:
    run_dir, _, _ = trained
    if "cuda" in argv:
        from gpuconv.device import gpu_available

        if gpu_available():
            pytest.skip("a GPU is here: --device cuda works")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.png").write_bytes(b"not an image")
    for c in ("cyan", "red"):
        (tmp_path / "unknown" / c).mkdir(parents=True)
        _image(tmp_path / "unknown" / c / "a.png")
        _image(tmp_path / "unknown" / c / "b.png")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "checkpoint.npz").write_bytes(b"PK\x03\x04 truncated")
    subs = {"tmp": str(tmp_path), "run": str(run_dir), "img": str(_image(tmp_path / "x.png")),
            "bad": str(tmp_path / "bad.png"), "empty": str(tmp_path / "empty"),
            "unknown": str(tmp_path / "unknown"), "corrupt": str(tmp_path / "corrupt")}
    rc = main([a.format(**subs) for a in argv])
    err = capsys.readouterr().err
    assert rc == code
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_resume_on_a_changed_image_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The run records its image folder's files: resuming after they changed (another training set,
    another validation split) is one message and trains nothing; the same files resume."""
    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(tmp_path / "cache"))
    imgs = make_folder(tmp_path / "imgs", per_class=6)
    run = tmp_path / "run"
    args = ["--model", MODEL, "--data", str(imgs), "--val-fraction", "0.25", "--batch-size", "9",
            "--device", "cpu", "--out", str(run)]
    assert main(["train", *args, "--epochs", "1"]) == 0
    assert "files, sha256" in json.loads((run / "classes.json").read_text())["source"]
    extra = next((imgs / "blue").iterdir())
    Image.new("RGB", (12, 12), (1, 2, 3)).save(extra.with_name("added.png"))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "the image folder changed since this run began" in err and "Traceback" not in err, err
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    extra.with_name("added.png").unlink()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
