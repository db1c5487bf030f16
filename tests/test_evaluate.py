"""The evaluate stage on a tiny split: metrics, localisation, OOD check, overlays, model card, byte-for-byte reruns."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainmri.config import EvaluateConfig
from brainmri.core.hashing import file_digest
from brainmri.evaluation.evaluate import evaluate_model, gradcam_sample, load_resized, present_macro_f1
from brainmri.model.checkpoint import load_checkpoint
from brainmri.model.inference import check_features
from brainmri.model.ood import OODCheck
from brainmri.model.temperature import Temperature
from conftest import CLASSES, blob_image, untrained_checkpoint, write_grey_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_project(root: Path) -> tuple[pd.DataFrame, Path]:
    """A split table of blob images (tumour rows of source_a carry masks, of source_b boxes) and an untrained
    checkpoint."""
    rng = np.random.default_rng(0)
    rows = []
    for split, per_class in (("train", 6), ("val", 3), ("test", 3)):
        for label in CLASSES:
            for k in range(per_class):
                source = "source_a" if k % 2 == 0 else "source_b"
                image_id = f"{source}-{split}-{label}-{k}"
                centre = rng.uniform(20, 44, 2)
                path = write_grey_png(root / "images" / f"{image_id}.png", blob_image(rng, 64, centre=centre))
                mask_path, box = "", ""
                if label != "no_tumor" and source == "source_a":
                    yy, xx = np.mgrid[:64, :64]
                    mask = (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) < 100).astype(np.uint8) * 255
                    mask_path = str(write_grey_png(root / "masks" / f"{image_id}.png", mask))
                elif label != "no_tumor":
                    box = f"{centre[1] / 64} {centre[0] / 64} {20 / 64} {20 / 64}"
                rows.append(
                    {
                        "image_id": image_id,
                        "path": str(path),
                        "label": label,
                        "source": source,
                        "split": split,
                        "mask_path": mask_path,
                        "box": box,
                    }
                )
    checkpoint = untrained_checkpoint(
        root / "model.pt", params={"seed": 1, "train": {"lr": 0.01}}, data_version="sha256:x"
    )
    return pd.DataFrame(rows), checkpoint


def run(root: Path, table: pd.DataFrame, checkpoint: Path, reports: bool = False) -> dict:
    cfg = EvaluateConfig(out_dir=root / "evaluate", bootstrap=20, gradcam_per_class=1, ood_quantile=0.9)
    extra = {}
    if reports:
        (root / "dedup.json").write_text(
            json.dumps({"images_in": 60, "images_kept": 48, "dropped_by_reason": {"duplicate": 12}})
        )
        (root / "split.json").write_text(
            json.dumps(
                {
                    "images": 48,
                    "groups": 40,
                    "leakage": {"cross_split_duplicate_pairs": 0, "patients_in_several_splits": 0},
                }
            )
        )
        extra = {"dedup_report": root / "dedup.json", "split_report": root / "split.json"}
    return evaluate_model(table, checkpoint, cfg, seed=3, metrics_dir=root / "metrics", **extra)


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix != ".pt"
    }


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> tuple[Path, pd.DataFrame, Path, dict]:
    """One evaluate run on the blob project, with the dedup and split reports: (root, table, checkpoint, summary)."""

    root = tmp_path_factory.mktemp("evaluate")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one_torch_thread, for the module's shared run
    try:
        table, checkpoint = make_project(root)
        return root, table, checkpoint, run(root, table, checkpoint, reports=True)
    finally:
        torch.set_num_threads(threads)


def test_evaluate_writes_metrics_with_localisation_where_a_region_is_known(evaluated):
    root, _, _, summary = evaluated
    assert set(summary) == {"val", "test", "ood"}
    metrics = json.loads((root / "metrics" / "metrics.json").read_text())
    located = metrics["localisation"]
    assert set(located) == {"glioma", "meningioma", "pituitary", "all"}  # no region is known for no_tumor
    assert located["all"]["n"] == 9 and 0 < located["all"]["chance"] < 0.2
    methods = metrics["localisation_methods"]
    assert set(methods) == {"gradcam", "gradcam_pp", "input_gradient"}
    assert methods["gradcam"] == located  # default: Grad-CAM
    for summary in methods.values():
        assert set(summary) == set(located) and summary["all"]["pointing_game_15px"] >= summary["all"]["pointing_game"]


def test_evaluate_runs_the_tumour_removal_test_on_every_test_tumour_slice(evaluated):
    root, table, _, _ = evaluated
    removal = json.loads((root / "metrics" / "metrics.json").read_text())["tumour_removal"]
    test_tumours = int(((table["split"] == "test") & (table["label"] != "no_tumor")).sum())
    assert removal["tumour_slices"] == test_tumours == 9
    assert removal["healed"] + sum(removal["not_healed"].values()) == test_tumours
    assert "no tumour region known" not in removal["not_healed"]  # every tumour row has a mask or a box
    card = (root / "evaluate" / "MODEL_CARD.md").read_text()
    assert "## Tumour-removal test" in card


def test_evaluate_fits_and_saves_the_ood_check_for_its_checkpoint(evaluated):
    root, table, checkpoint, _ = evaluated
    ood = json.loads((root / "metrics" / "metrics.json").read_text())["ood"]
    assert (
        ood["quantile"] == 0.9 and ood["test"]["n"] == 12 and set(ood["test"]["per_source"]) == {"source_a", "source_b"}
    )
    assert ood["non_mri"]["n"] > 30 and 0 <= ood["non_mri"]["detection_rate"] <= 1
    near = ood["near_distribution"]["per_kind"]
    assert set(near) == {"ct_head_like_brain_window", "ct_head_like_bone_window", "ct_shepp_logan", "mri_body_like"}
    assert sum(k["n"] for k in near.values()) == ood["near_distribution"]["n"] == 13
    check = OODCheck.load(root / "evaluate" / "ood.npz")
    assert check.checkpoint_sha256 == file_digest(checkpoint) and check.quantile == 0.9
    assert check.view == "stretched"  # the default evaluate.ood_view
    # the scores written for the test images are the check's own, on the images as its view shows them
    model, meta = load_checkpoint(checkpoint)
    predictions = pd.read_csv(root / "evaluate" / "predictions.csv")
    test = predictions[predictions["split"] == "test"].merge(table[["image_id", "path"]], on="image_id")
    images = load_resized(test["path"], meta.image_size, meta.preprocess)
    scores = check.score(check_features(model, images, meta.image_size, check.view))
    assert np.allclose(scores, test["ood_score"], atol=1e-4)


def test_evaluate_reports_calibrated_probabilities_with_the_temperature_fitted_on_val(evaluated):
    root, _, checkpoint, _ = evaluated
    metrics = json.loads((root / "metrics" / "metrics.json").read_text())
    calibration = metrics["calibration"]
    assert calibration["fitted_on"] == "val" and calibration["temperature"] > 0
    assert calibration["val"]["log_loss_calibrated"] <= calibration["val"]["log_loss_uncalibrated"], (
        "fitted on val by log loss"
    )
    assert calibration["test"]["ece_calibrated"] == pytest.approx(metrics["test"]["ece"], abs=1e-4), (
        "reported test metrics are calibrated"
    )
    assert calibration["test"]["log_loss_calibrated"] == pytest.approx(metrics["test"]["log_loss"], abs=1e-3)
    assert Temperature.load(root / "evaluate" / "temperature.json", file_digest(checkpoint)).value == pytest.approx(
        calibration["temperature"], abs=1e-4
    )


def test_evaluate_writes_gradcam_overlays_figures_and_predictions(evaluated):
    out = evaluated[0] / "evaluate"
    overlays = sorted(p.relative_to(out / "gradcam").as_posix() for p in (out / "gradcam").rglob("*.png"))
    assert overlays and all(
        p.split("/")[0] in CLASSES and p.split("/")[1].startswith(("correct_", "wrong_")) for p in overlays
    )
    assert len(overlays) <= 2 * len(CLASSES)
    for name in ("gradcam.png", "ood_scores.png", "confusion_matrix.png", "predictions.csv"):
        assert (out / name).is_file(), name
    predictions = pd.read_csv(out / "predictions.csv")
    assert {"ood_score", "ood_verdict"} <= set(predictions.columns) and len(predictions) == 24


def test_evaluate_writes_a_model_card_from_what_it_measured(evaluated):
    card = (evaluated[0] / "evaluate" / "MODEL_CARD.md").read_text()
    for heading in (
        "## Intended use",
        "## Data",
        "## Results",
        "## Explanations",
        "## Out-of-distribution check",
        "## Limitations",
    ):
        assert heading in card, heading
    assert "| gradcam_pp | glioma |" in card and "Other medical images (generated look-alikes) refused" in card
    assert (
        "Not for diagnosis" in card and "Images merged from the sources: 60" in card and "`train.lr` | `0.01`" in card
    )
    assert "[95% CI]" in card and "source_a" in card and "temperature-scaled" in card


def test_evaluate_reruns_byte_for_byte(evaluated):
    root, table, checkpoint, _ = evaluated
    first = digest(root)
    run(root, table, checkpoint, reports=True)
    assert digest(root) == first, "evaluate outputs must be byte-identical on a rerun"


def test_card_without_reports_says_so(tmp_path):
    table, checkpoint = make_project(tmp_path)
    run(tmp_path, table, checkpoint)
    card = (tmp_path / "evaluate" / "MODEL_CARD.md").read_text()
    assert "reports were not given" in card and "Images per split and class" in card


def test_per_source_macro_f1_averages_over_the_classes_the_source_holds():
    """A 3-class source with one image predicted as the class it lacks: that error lowers the recall of
    its true class (0 of 2 here) but adds no zero-F1 term for the absent class."""
    y = np.array([0, 0, 1, 1, 3, 3])
    predicted = np.array([0, 0, 2, 1, 3, 3])  # one class-1 image called class 2, which this source never holds
    f1_class1 = 2 * 1.0 * 0.5 / (1.0 + 0.5)
    assert present_macro_f1(y, predicted) == pytest.approx((1.0 + f1_class1 + 1.0) / 3)
    assert present_macro_f1(np.array([2, 2]), np.array([2, 2])) == 1.0


def test_gradcam_sample_takes_correct_and_wrong_per_class_with_the_seed():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 0, 0, 1, 1, 0, 0, 2])
    first = gradcam_sample(y, predicted, 3, per_class=2, seed=1)
    assert first == gradcam_sample(y, predicted, 3, per_class=2, seed=1)
    chosen = set(first)
    assert (
        len([i for i in chosen if y[i] == 0 and predicted[i] == 0]) == 2 and 3 in chosen
    )  # class 0: 2 right, its 1 wrong
    assert 4 in chosen and {5, 6} <= chosen and 7 in chosen
    assert gradcam_sample(y, predicted, 3, per_class=0, seed=1) == []


def test_unknown_type_tumours_are_scored_for_detection_only(evaluated, tmp_path):
    root, table, checkpoint, _ = evaluated
    tumours = table[table["label"] != "no_tumor"].groupby("split").head(4)
    unknown = tumours.assign(image_id=tumours["image_id"] + "-unknown", label="tumor_unknown", source="source_c")
    run(tmp_path, pd.concat([table, unknown], ignore_index=True), checkpoint)
    metrics = json.loads((tmp_path / "metrics" / "metrics.json").read_text())
    plain = json.loads((root / "metrics" / "metrics.json").read_text())
    for split in ("val", "test"):
        assert metrics[split]["accuracy"] == plain[split]["accuracy"]  # class metrics: class rows only
    assert metrics["calibration"] == plain["calibration"]
    predictions = pd.read_csv(tmp_path / "evaluate" / "predictions.csv")
    scored = predictions[predictions["label"] == "tumor_unknown"]
    assert sorted(scored["image_id"]) == sorted(unknown.loc[unknown["split"] != "train", "image_id"])
    for split in ("val", "test"):
        rows = scored[scored["split"] == split]
        block = metrics[split]["unknown_type_tumours"]
        assert block["n"] == len(rows) and block["missed"] == int((rows["predicted"] == "no_tumor").sum())
        assert block["sensitivity"] == round(float((rows["predicted"] != "no_tumor").mean()), 4)
        assert sum(block["called"].values()) == len(rows) and set(block["per_source"]) == {"source_c"}
        assert block["ood_rejected"] == int((rows["ood_verdict"] != "brain MRI").sum())
    check = OODCheck.load(tmp_path / "evaluate" / "ood.npz")
    assert all(len(layer.means) == len(CLASSES) + 1 for layer in check.layers)  # the unknown type: a group of its own
    card = (tmp_path / "evaluate" / "MODEL_CARD.md").read_text()
    assert "Tumours of unknown type" in card and f"| test | {metrics['test']['unknown_type_tumours']['n']} |" in card
    with pytest.raises(ValueError, match="'cat'"):
        run(tmp_path / "bad", pd.concat([table, unknown.assign(label="cat")], ignore_index=True), checkpoint)
