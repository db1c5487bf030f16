"""Predict on every kind of input a user has, with the out-of-distribution check and Grad-CAM overlays."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from brainmri.cli import app
from brainmri.core.hashing import file_digest
from brainmri.core.imaging import decode_image
from brainmri.core.inputs import INPUT_LIMITS
from brainmri.model.checkpoint import load_checkpoint
from brainmri.model.inference import check_features, logits_and_features
from brainmri.model.ood import NOT_MRI, LayerGaussian, OODCheck
from brainmri.model.temperature import Temperature, softmax
from brainmri.serving.predict import predict_paths
from conftest import CLASSES, untrained_checkpoint

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """An untrained small_cnn: predictions are arbitrary but the plumbing is the real one."""
    return untrained_checkpoint(tmp_path / "model.pt", SIZE)


def slice_like(seed: int, shape=(120, 100)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    head = ((yy - shape[0] / 2) / (shape[0] * 0.4)) ** 2 + ((xx - shape[1] / 2) / (shape[1] * 0.4)) ** 2 < 1
    return np.clip(head * rng.normal(140, 20, shape), 0, 255).astype(np.uint8)


def inputs_of_every_kind(folder: Path) -> dict[str, Path]:
    """Grey, RGB, RGBA, 16-bit, odd sizes, a folder, a zip, and things that are not images."""
    grey = slice_like(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "grey": folder / "grey.png",
        "rgb": folder / "rgb.jpg",
        "rgba": folder / "rgba.png",
        "wide16": folder / "wide16.png",
        "tiny_odd": folder / "odd.bmp",
        "huge_odd": folder / "huge.tif",
    }
    Image.fromarray(grey).save(paths["grey"])
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(paths["rgb"], quality=95)
    Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 200)]), mode="RGBA").save(paths["rgba"])
    Image.fromarray(grey.astype(np.uint16) * 257).save(paths["wide16"])
    Image.fromarray(slice_like(1, (9, 31))).save(paths["tiny_odd"])
    Image.fromarray(slice_like(2, (700, 1300))).save(paths["huge_odd"])
    nested = folder / "nested" / "deeper"
    nested.mkdir(parents=True)
    Image.fromarray(slice_like(3)).save(nested / "inside.png")
    (nested / "notes.jpg").write_text("this is text named like an image")
    (nested / "ignored.txt").write_text("not an image suffix: not looked at")
    archive = folder.parent / "upload.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.write(paths["grey"], "scans/a.png")
        handle.writestr("scans/broken.png", b"\x89PNG\r\n\x1a\n truncated")
        handle.writestr("../escape.png", paths["grey"].read_bytes())
    return {**paths, "folder": folder, "zip": archive}


def test_every_kind_of_input_is_predicted_and_bad_ones_are_skipped_with_a_reason(tmp_path, checkpoint, capsys):
    made = inputs_of_every_kind(tmp_path / "in")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    out = tmp_path / "out.json"
    result = predict_paths([made["folder"], made["zip"], empty, tmp_path / "missing.png"], checkpoint, out)
    payload = json.loads(out.read_text())
    files = [row["file"] for row in payload["predictions"]]
    assert len(files) == 8 and result == {"predicted": 8, "not_brain_mri": 0, "skipped": 5, "out": str(out)}
    assert any(f.endswith("upload.zip/scans/a.png") for f in files)
    for row in payload["predictions"]:
        assert row["predicted"] in CLASSES
        assert sum(row[f"p_{c}"] for c in CLASSES) == pytest.approx(1, abs=1e-5)
    reasons = {Path(s["file"]).name: s["error"] for s in payload["skipped"]}
    assert reasons["notes.jpg"].startswith("not an image")
    assert reasons["broken.png"].startswith(("corrupt image", "not an image"))
    assert "escape.png" in reasons, "a zip member whose path escapes the archive is refused, not read"
    assert reasons["empty.png"].startswith("empty file")
    assert reasons["missing.png"] == "not found"
    printed = capsys.readouterr().out
    assert "skipped" in printed and "notes.jpg" in printed


def test_formats_of_one_image_agree(tmp_path, checkpoint):
    made = inputs_of_every_kind(tmp_path / "in")
    out = tmp_path / "out.csv"
    predict_paths([made[k] for k in ("grey", "rgb", "rgba")], checkpoint, out)
    table = pd.read_csv(out)
    assert len(table) == 3  # RGBA is composited over black (dimmer) and still predicted
    grey, rgb, _ = table[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(grey, rgb, atol=0.02), "an RGB copy of a grey image is the same image"


def _check_for(checkpoint: Path, accepted: np.ndarray, threshold: float) -> OODCheck:
    """A check centred on the features of ``accepted``: that image scores 0, anything else scores more."""
    model, meta = load_checkpoint(checkpoint)
    _, features = logits_and_features(model, [accepted], meta.image_size)
    blocks = tuple(LayerGaussian(f, np.eye(f.shape[1])) for f in features)
    return OODCheck(blocks, np.zeros(len(blocks)), np.ones(len(blocks)), threshold, 0.99, file_digest(checkpoint))


def test_out_of_distribution_images_get_no_class(tmp_path, checkpoint):
    made = inputs_of_every_kind(tmp_path / "in")
    accepted = decode_image(made["grey"].read_bytes(), "grey", INPUT_LIMITS)
    ood = tmp_path / "ood.npz"
    _check_for(checkpoint, accepted, threshold=1e-3).save(ood)
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(noise)
    out = tmp_path / "out.csv"
    result = predict_paths([made["grey"], noise], checkpoint, out, ood=ood, gradcam_dir=tmp_path / "cams")
    table = pd.read_csv(out, keep_default_na=False)
    assert result["predicted"] == 1 and result["not_brain_mri"] == 1
    grey_row, noise_row = table.iloc[0], table.iloc[1]
    assert grey_row["predicted"] in CLASSES and float(grey_row["ood_score"]) < 1e-3
    assert noise_row["predicted"] == NOT_MRI and float(noise_row["ood_score"]) > 1e-3
    assert noise_row["p_glioma"] == "" and noise_row["gradcam"] == ""
    assert Path(grey_row["gradcam"]).is_file() and len(list((tmp_path / "cams").iterdir())) == 1


def test_a_stretched_check_accepts_a_darker_copy_that_an_as_is_check_refuses(tmp_path, checkpoint):
    """Exposure is not what makes an image a brain MRI: a check of the ``stretched`` view centred on a slice scores
    the same slice at a third of its brightness as nearly the same; one of the ``as_is`` view does not."""
    model, meta = load_checkpoint(checkpoint)
    bright = slice_like(3)
    dark = (bright // 3).astype(np.uint8)
    paths = []
    for name, pixels in (("bright", bright), ("dark", dark)):
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(pixels).save(paths[-1])
    dark_score = {}
    for view in ("as_is", "stretched"):
        centre = check_features(model, [bright], meta.image_size, view)
        blocks = tuple(LayerGaussian(f, np.eye(f.shape[1])) for f in centre)
        check = OODCheck(blocks, np.zeros(len(blocks)), np.ones(len(blocks)), 0.0, 0.99, file_digest(checkpoint), view)
        dark_score[view] = float(check.score(check_features(model, [dark], meta.image_size, view))[0])
        check.save(tmp_path / f"{view}.npz")
    assert dark_score["stretched"] < 0.1 * dark_score["as_is"]

    threshold = (dark_score["stretched"] + dark_score["as_is"]) / 2  # between the two: the plumbing decides
    verdicts = {}
    for view in ("as_is", "stretched"):
        check = OODCheck.load(tmp_path / f"{view}.npz")
        OODCheck(check.layers, check.loc, check.scale, threshold, 0.99, check.checkpoint_sha256, check.view).save(
            tmp_path / f"{view}.npz"
        )
        predict_paths(paths, checkpoint, tmp_path / f"{view}.csv", ood=tmp_path / f"{view}.npz")
        table = pd.read_csv(tmp_path / f"{view}.csv", keep_default_na=False)
        verdicts[view] = [row != NOT_MRI for row in table["predicted"]]
        assert float(table["ood_score"].iloc[1]) == pytest.approx(dark_score[view], abs=1e-3)
    assert verdicts == {"as_is": [True, False], "stretched": [True, True]}


def test_an_ood_check_of_an_older_format_is_refused_in_one_line(tmp_path, checkpoint):
    old = tmp_path / "old.npz"
    np.savez(
        old,
        means=np.zeros((1, 4)),
        precision=np.eye(4),
        threshold=1.0,
        quantile=0.99,
        checkpoint_sha256=file_digest(checkpoint),
    )
    image = tmp_path / "x.png"
    Image.fromarray(slice_like(0)).save(image)
    result = CliRunner().invoke(
        app, ["predict", str(image), "--model", str(checkpoint), "--ood", str(old), "--out", str(tmp_path / "o.csv")]
    )
    assert (
        result.exit_code == 1
        and "another version of the check" in result.output
        and "rerun the evaluate stage" in result.output
    )


def test_an_ood_check_of_another_model_is_refused(tmp_path, checkpoint):
    other = tmp_path / "other.npz"
    OODCheck((LayerGaussian(np.zeros((1, 4)), np.eye(4)),), np.zeros(1), np.ones(1), 1.0, 0.99, "0" * 64).save(other)
    image = tmp_path / "x.png"
    Image.fromarray(slice_like(0)).save(image)
    result = CliRunner().invoke(
        app, ["predict", str(image), "--model", str(checkpoint), "--ood", str(other), "--out", str(tmp_path / "o.csv")]
    )
    assert result.exit_code == 1 and "fitted for another checkpoint" in result.output


def test_cli_without_a_check_says_so_and_predicts(tmp_path, checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(slice_like(0)).save(tmp_path / "x.png")
    result = CliRunner().invoke(
        app, ["predict", "x.png", "--model", str(checkpoint), "--out", "o.csv", "--gradcam", "cams"]
    )
    assert result.exit_code == 0, result.output
    assert "not checked for being brain MRI" in result.output and "probabilities are not calibrated" in result.output
    assert len(pd.read_csv(tmp_path / "o.csv")) == 1 and len(list((tmp_path / "cams").glob("*.png"))) == 1


def test_cli_finds_the_files_where_params_put_them(tmp_path, checkpoint, params, monkeypatch):
    """predict's and export's defaults are the stages' folders in params.yaml, not fixed build/ paths."""
    import shutil

    import yaml

    monkeypatch.chdir(tmp_path)
    params["train"]["out_dir"], params["evaluate"]["out_dir"] = "build/elsewhere/model", "build/elsewhere/eval"
    Path("params.yaml").write_text(yaml.safe_dump(params))
    Path("build/elsewhere/model").mkdir(parents=True)
    shutil.copy(checkpoint, "build/elsewhere/model/model.pt")
    Image.fromarray(slice_like(0)).save("x.png")
    result = CliRunner().invoke(app, ["predict", "x.png", "--out", "o.csv"])
    assert result.exit_code == 0, result.output
    assert "no build/elsewhere/eval/ood.npz" in result.output
    assert "no build/elsewhere/eval/temperature.json" in result.output
    assert len(pd.read_csv("o.csv")) == 1

    Temperature(1.5, file_digest(checkpoint)).save(Path("build/elsewhere/eval/temperature.json"))
    with_temperature = CliRunner().invoke(app, ["predict", "x.png", "--out", "t.csv", "--no-ood"])
    assert with_temperature.exit_code == 0 and "not calibrated" not in with_temperature.output
    assert not np.allclose(
        pd.read_csv("o.csv")[[f"p_{c}" for c in CLASSES]], pd.read_csv("t.csv")[[f"p_{c}" for c in CLASSES]]
    )


def test_batches_do_not_change_results(tmp_path, checkpoint):
    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(7):
        Image.fromarray(slice_like(k, (60 + k, 70))).save(folder / f"{k}.png")
    predict_paths([folder], checkpoint, tmp_path / "a.csv", batch_size=3)
    predict_paths([folder], checkpoint, tmp_path / "b.csv", batch_size=64)
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert list(a["file"]) == list(b["file"]) and len(a) == 7
    assert np.allclose(a[[f"p_{c}" for c in CLASSES]], b[[f"p_{c}" for c in CLASSES]], atol=1e-5)


def test_the_evaluate_stages_temperature_is_applied(tmp_path, checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(slice_like(0)).save(tmp_path / "x.png")
    model, meta = load_checkpoint(checkpoint)
    logits, _ = logits_and_features(
        model, [decode_image((tmp_path / "x.png").read_bytes(), "x", INPUT_LIMITS)], meta.image_size
    )
    Temperature(0.25, file_digest(checkpoint)).save(tmp_path / "t.json")
    result = CliRunner().invoke(
        app, ["predict", "x.png", "--model", str(checkpoint), "--no-ood", "--temperature", "t.json", "--out", "o.csv"]
    )
    assert result.exit_code == 0, result.output
    reported = pd.read_csv(tmp_path / "o.csv")[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(reported, softmax(logits, 0.25), atol=1e-6)
    assert not np.allclose(reported, softmax(logits), atol=1e-3), (
        "the temperature must visibly sharpen these probabilities"
    )


def test_a_temperature_of_another_model_is_refused(tmp_path, checkpoint):
    Temperature(0.5, "0" * 64).save(tmp_path / "t.json")
    Image.fromarray(slice_like(0)).save(tmp_path / "x.png")
    args = [
        "predict",
        str(tmp_path / "x.png"),
        "--model",
        str(checkpoint),
        "--temperature",
        str(tmp_path / "t.json"),
        "--out",
        str(tmp_path / "o.csv"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "fitted for another checkpoint" in result.output
