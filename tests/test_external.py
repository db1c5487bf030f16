"""External sets of any label shape: metrics checked against hand-computed values, reading sets with patient
tables, the overlap check, the `brainmri external` command, and the DVC stage's parameters."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from brainmri.cli import app
from brainmri.config import DedupConfig, EvaluateConfig, ExternalPatients, ExternalSetConfig
from brainmri.dataset.fingerprints import compute_fingerprints
from brainmri.evaluation.evaluate import evaluate_model
from brainmri.evaluation.external import external_metrics, patient_of, read_external, run_external
from brainmri.evaluation.metrics import bootstrap_intervals
from conftest import CLASSES, ROOT, blob_image, write_grey_png, write_zip
from test_evaluate import make_project

G, M, N, P = (np.eye(4)[k] for k in range(4))


def probabilities(*rows) -> np.ndarray:
    return np.array(rows, dtype=float)


# ---------------------------------------------------------------- metrics, by hand


def test_binary_set_gets_detection_only_with_hand_computed_values():
    """3 tumours of unknown type and 2 tumour-free slices of 3 patients.

    P(tumour) = 1 - P(no_tumor): 0.9, 0.4, 0.8 for the tumours, 0.3, 0.7 for the others; the second tumour is
    called no_tumor (missed), the second tumour-free slice is called glioma (a false alarm).
    ROC-AUC = pairs (tumour, tumour-free) ranked right / 6 = 5/6 (only 0.4 < 0.7 is wrong).
    Per patient (max over slices): A = {0.9, 0.4} tumour, B = {0.8, 0.3} tumour, C = {0.7} tumour-free called
    tumour: sensitivity 2/2, specificity 0/1, ROC-AUC 1 (0.9 and 0.8 above 0.7).
    """
    labels = np.array(["tumor_unknown", "tumor_unknown", "tumor_unknown", "no_tumor", "no_tumor"])
    proba = probabilities(
        [0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.6, 0.2], [0.2, 0.5, 0.2, 0.1], [0.1, 0.1, 0.7, 0.1], [0.5, 0.1, 0.3, 0.1]
    )
    patients = np.array(["A", "A", "B", "B", "C"])
    rejected = np.array([False, False, True, False, False])
    result = external_metrics(labels, proba, CLASSES, rejected=rejected, patients=patients, resamples=50, seed=1)

    assert "classification" not in result, "one class (no_tumor) is present: no multi-class metrics"
    assert result["n"] == 5 and result["labels"] == {"no_tumor": 2, "tumor_unknown": 3}
    assert (result["ood_rejected"], result["ood_rejection_rate"]) == (1, pytest.approx(0.2))
    slices = result["tumour_detection"]
    assert (slices["positives"], slices["negatives"], slices["missed"], slices["false_alarms"]) == (3, 2, 1, 1)
    assert slices["sensitivity"] == pytest.approx(2 / 3)
    assert slices["specificity"] == pytest.approx(1 / 2)
    assert slices["roc_auc"] == pytest.approx(5 / 6)
    assert slices["intervals_resample"] == "patients"
    for key in ("sensitivity", "specificity", "roc_auc"):
        low, high = slices[f"{key}_ci95"]
        assert 0 <= low <= high <= 1
    per_patient = result["per_patient"]
    assert (per_patient["n"], per_patient["positives"], per_patient["negatives"]) == (3, 2, 1)
    assert (per_patient["sensitivity"], per_patient["specificity"], per_patient["roc_auc"]) == (1.0, 0.0, 1.0)


def test_three_class_set_is_averaged_over_its_own_classes():
    """glioma, meningioma and no_tumor, two each; one meningioma called glioma, one glioma called pituitary
    (a class the set lacks). Per class: glioma P 1/2 R 1/2 F1 1/2; meningioma P 1 R 1/2 F1 2/3; no_tumor 1, 1, 1.
    Macro-F1 over the three classes 0.7222 (a 4-class average would add a 0 for pituitary: 0.5417);
    accuracy 4/6; balanced accuracy (1/2 + 1/2 + 1)/3. Every tumour is called some tumour: sensitivity 1."""
    labels = np.array(["glioma", "glioma", "meningioma", "meningioma", "no_tumor", "no_tumor"])
    proba = probabilities(
        [0.8, 0.1, 0.05, 0.05],
        [0.3, 0.1, 0.1, 0.5],
        [0.1, 0.8, 0.05, 0.05],
        [0.6, 0.3, 0.05, 0.05],
        [0.05, 0.05, 0.85, 0.05],
        [0.1, 0.1, 0.7, 0.1],
    )
    result = external_metrics(labels, proba, CLASSES, resamples=50, seed=1)

    c = result["classification"]
    assert c["classes"] == ["glioma", "meningioma", "no_tumor"] and c["n"] == 6
    assert c["accuracy"] == pytest.approx(4 / 6)
    assert c["balanced_accuracy"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert c["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert c["per_class"]["glioma"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2, "roc_auc": c["per_class"]["glioma"]["roc_auc"]}
    )
    assert (c["per_class"]["meningioma"]["precision"], c["per_class"]["meningioma"]["recall"]) == (1.0, 0.5)
    assert "pituitary" not in c["per_class"]
    # glioma one-vs-rest: glioma scores 0.8, 0.3 against 0.1, 0.6, 0.05, 0.1: 7 of 8 pairs ranked right
    assert c["per_class"]["glioma"]["roc_auc"] == pytest.approx(7 / 8)
    assert c["macro_f1_ci95"][0] <= c["macro_f1"] <= c["macro_f1_ci95"][1]
    detection = result["tumour_detection"]
    assert (detection["sensitivity"], detection["specificity"], detection["roc_auc"]) == (1.0, 1.0, 1.0)
    assert detection["intervals_resample"] == "images" and "per_patient" not in result
    assert "ood_rejected" not in result, "no OOD check given: nothing reported"


def test_unknown_tumours_take_no_part_in_class_metrics():
    labels = np.array(["glioma", "no_tumor", "tumor_unknown", "tumor_unknown"])
    proba = probabilities(G, N, N, M)  # one unknown tumour missed, one called meningioma
    result = external_metrics(labels, proba, CLASSES)
    assert result["classification"]["n"] == 2 and result["classification"]["accuracy"] == 1.0
    assert (
        result["tumour_detection"]["sensitivity"] == pytest.approx(2 / 3)
        and result["tumour_detection"]["specificity"] == 1.0
    )
    assert "accuracy_ci95" not in result["classification"], "no bootstrap asked for"


def test_empty_part_reports_its_size_only():
    assert external_metrics(np.array([], dtype=str), np.zeros((0, 4)), CLASSES, rejected=np.zeros(0, dtype=bool)) == {
        "n": 0,
        "labels": {},
        "ood_rejected": 0,
        "ood_rejection_rate": None,
    }


def test_grouped_bootstrap_draws_whole_groups():
    groups = np.array(["a"] * 3 + ["b"] * 5 + ["c"] * 2)
    drawn = []
    bootstrap_intervals({"x": lambda rows: drawn.append(rows) or 0.0}, len(groups), 30, seed=0, groups=groups)
    sizes = {"a": 3, "b": 5, "c": 2}
    for rows in drawn:
        names, counts = np.unique(groups[rows], return_counts=True)
        assert all(count % sizes[name] == 0 for name, count in zip(names, counts, strict=True))
        assert sum(count // sizes[name] for name, count in zip(names, counts, strict=True)) == 3, (
            "as many groups as there are"
        )
    assert bootstrap_intervals({"x": lambda rows: None}, 4, 10, seed=0) == {"x_ci95": None}


# ---------------------------------------------------------------- reading sets


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_patient_table_inside_a_zip_names_files_by_their_last_components(tmp_path):
    rng = np.random.default_rng(5)
    table = "label,file,patient\ntumour,a_1.jpg,A\nno_tumour,a_2.jpg,A\ntumour,sub/b_1.jpg,B\n"
    members = [
        ("set/tumour/a_1.jpg", jpeg(blob_image(rng))),
        ("set/no_tumour/a_2.jpg", jpeg(blob_image(rng))),
        ("set/tumour/sub/b_1.jpg", jpeg(blob_image(rng))),
        ("set/tumour/c_1.jpg", jpeg(blob_image(rng))),  # not in the table
        ("set/other/x.jpg", jpeg(blob_image(rng))),  # no mapped folder
        ("set/slices.csv", table.encode()),
    ]
    path = write_zip(tmp_path / "set.zip", members)
    spec = ExternalSetConfig(
        name="s", path=path, labels={"tumour": "tumor_unknown", "no_tumour": "no_tumor"}, patients=ExternalPatients()
    )
    data = read_external(spec)
    assert data.counts == {"unlabelled": 1, "unreadable": 0, "without_patient": 1}
    assert dict(zip(data.rows["relative"], data.rows["patient"], strict=True)) == {
        "set/tumour/a_1.jpg": "A",
        "set/no_tumour/a_2.jpg": "A",
        "set/tumour/sub/b_1.jpg": "B",
        "set/tumour/c_1.jpg": "",
    }
    assert patient_of("x/b_1.jpg", {"sub/b_1.jpg": "B"}) == "", "a trailing part must match whole components"


def test_patient_table_beside_a_folder_and_bad_tables_are_one_line(tmp_path):
    write_grey_png(tmp_path / "set" / "yes" / "1.png", blob_image(np.random.default_rng(1)))
    spec = ExternalSetConfig(
        name="s",
        path=tmp_path / "set",
        labels={"yes": "tumor_unknown"},
        patients=ExternalPatients(table="cases.csv", file_column="image", patient_column="case"),
    )
    with pytest.raises(FileNotFoundError, match="patient table 'cases.csv' is neither inside"):
        read_external(spec)
    (tmp_path / "cases.csv").write_text("image,subject\n1.png,P1\n")
    with pytest.raises(ValueError, match="no column 'case'"):
        read_external(spec)
    (tmp_path / "cases.csv").write_text("image,case\n1.png,P1\n1.png,P2\n")
    with pytest.raises(ValueError, match="cases.csv: line 3: image '1.png' is already on line 2"):
        read_external(spec)
    (tmp_path / "cases.csv").write_text("image,case\n1.png,\n")
    with pytest.raises(ValueError, match="cases.csv: line 2: empty 'case'"):
        read_external(spec)
    (tmp_path / "cases.csv").write_text("image,case\n1.png,P1\n")
    assert read_external(spec).rows["patient"].tolist() == ["P1"]
    with pytest.raises(FileNotFoundError, match="external set s: .*missing not found"):
        read_external(spec.model_copy(update={"path": tmp_path / "missing"}))


def test_external_set_params_are_validated():
    with pytest.raises(ValidationError, match="labels must map folder names"):
        ExternalSetConfig(name="x", path=Path("x"), labels={"yes": "tumour"})
    assert ExternalSetConfig(name="x", path=Path("x"), labels={"yes": "tumor_unknown"}).labels == {
        "yes": "tumor_unknown"
    }
    spec = ExternalSetConfig(name="x", path=Path("x"), labels={"a": "glioma"})
    with pytest.raises(ValidationError, match="unique"):
        EvaluateConfig(external=[spec, spec])


# ---------------------------------------------------------------- end to end on a tiny checkpoint


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A tiny split and untrained checkpoint, evaluated (ood.npz, temperature.json), with split.csv and the
    dedup stage's fingerprints written where the pipeline keeps them."""
    import torch

    root = tmp_path_factory.mktemp("external")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    table, checkpoint = make_project(root)
    evaluate_model(
        table,
        checkpoint,
        EvaluateConfig(out_dir=root / "evaluate", bootstrap=0, gradcam_per_class=0, ood_quantile=0.9),
        seed=3,
        metrics_dir=root / "metrics",
    )
    torch.set_num_threads(threads)
    (root / "split").mkdir()
    table.to_csv(root / "split" / "split.csv", index=False)
    dedup = DedupConfig()
    compute_fingerprints(
        list(table["image_id"]),
        list(table["path"]),
        dedup.hash_size,
        dedup.thumb_size,
        workers=1,
        frame_spread=dedup.frame_spread,
    ).save(root / "fingerprints.npz")
    return root, table, checkpoint


def run_set(root: Path, checkpoint: Path, spec: ExternalSetConfig) -> dict:
    return run_external(
        spec,
        checkpoint=checkpoint,
        ood=root / "evaluate" / "ood.npz",
        temperature=root / "evaluate" / "temperature.json",
        split_csv=root / "split" / "split.csv",
        fingerprints=root / "fingerprints.npz",
        dedup=DedupConfig(),
        resamples=20,
        seed=3,
        out_dir=root / "out" / spec.name,
        metrics_path=root / "out" / f"{spec.name}.json",
    )


def detection_by_hand(frame: pd.DataFrame) -> tuple[float, float]:
    tumours = frame[frame["label"] != "no_tumor"]
    free = frame[frame["label"] == "no_tumor"]
    return (tumours["predicted"] != "no_tumor").mean(), (free["predicted"] == "no_tumor").mean()


def test_binary_zip_set_with_patients_and_a_copy_of_a_train_image(evaluated, one_torch_thread):
    root, table, checkpoint = evaluated
    rng = np.random.default_rng(11)
    train_image = np.asarray(Image.open(table.loc[table["split"] == "train", "path"].iloc[0]))
    members, rows = [], ["file,patient"]
    for k in range(12):
        folder = "tumour" if k % 3 else "no_tumour"
        members.append((f"tcga/{folder}/p{k % 4}_{k}.jpg", jpeg(blob_image(rng, 64))))
        rows.append(f"p{k % 4}_{k}.jpg,P{k % 4}")
    members.append(("tcga/tumour/copy.jpg", jpeg(train_image)))
    rows.append("copy.jpg,P9")
    members.append(("tcga/slices.csv", "\n".join(rows).encode()))
    spec = ExternalSetConfig(
        name="binary",
        path=write_zip(root / "binary.zip", members),
        labels={"tumour": "tumor_unknown", "no_tumour": "no_tumor"},
        patients=ExternalPatients(),
    )
    result = run_set(root, checkpoint, spec)

    assert (
        result["images"],
        result["unlabelled"],
        result["unreadable"],
        result["without_patient"],
        result["overlapping_train_val"],
    ) == (13, 0, 0, 0, 1)
    assert json.loads((root / "out" / "binary.json").read_text()) == result
    overlaps = pd.read_csv(root / "out" / "binary" / "overlaps.csv")
    assert [Path(f).name for f in overlaps["file"]] == ["copy.jpg"] and overlaps["split"].tolist() == ["train"]

    predictions = pd.read_csv(root / "out" / "binary" / "predictions.csv", keep_default_na=False)
    assert len(predictions) == 13 and set(predictions["ood_verdict"]) <= {"brain MRI", "not a brain MRI"}
    clean = predictions[~predictions["overlaps_train_val"]]
    metrics = result["clean"]
    assert "classification" not in metrics and metrics["labels"] == {"no_tumor": 4, "tumor_unknown": 8}
    sensitivity, specificity = detection_by_hand(clean)
    assert (metrics["tumour_detection"]["sensitivity"], metrics["tumour_detection"]["specificity"]) == (
        pytest.approx(sensitivity),
        pytest.approx(specificity),
    )
    assert metrics["ood_rejection_rate"] == pytest.approx((clean["ood_verdict"] == "not a brain MRI").mean())
    patients = (
        clean.assign(actual=clean["label"] != "no_tumor", called=clean["predicted"] != "no_tumor")
        .groupby("patient")[["actual", "called"]]
        .max()
    )
    assert metrics["per_patient"]["n"] == 4 and metrics["per_patient"]["positives"] == int(patients["actual"].sum())
    assert metrics["per_patient"]["sensitivity"] == pytest.approx(patients.loc[patients["actual"], "called"].mean())
    assert result["with_overlap"]["n"] == 13 and result["with_overlap"]["per_patient"]["n"] == 5


def test_three_class_folder_set(evaluated, one_torch_thread):
    root, _, checkpoint = evaluated
    rng = np.random.default_rng(12)
    for folder in ("gl", "me", "healthy"):
        for k in range(4):
            write_grey_png(root / "three" / folder / f"{k}.png", blob_image(rng, 64))
    spec = ExternalSetConfig(
        name="three", path=root / "three", labels={"gl": "glioma", "me": "meningioma", "healthy": "no_tumor"}
    )
    result = run_set(root, checkpoint, spec)

    predictions = pd.read_csv(root / "out" / "three" / "predictions.csv", keep_default_na=False)
    c = result["clean"]["classification"]
    assert c["classes"] == ["glioma", "meningioma", "no_tumor"] and c["n"] == 12
    assert c["accuracy"] == pytest.approx((predictions["label"] == predictions["predicted"]).mean())
    recalls = [(predictions.loc[predictions["label"] == k, "predicted"] == k).mean() for k in c["classes"]]
    assert c["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    sensitivity, specificity = detection_by_hand(predictions)
    assert result["clean"]["tumour_detection"]["sensitivity"] == pytest.approx(sensitivity)
    assert result["clean"]["tumour_detection"]["specificity"] == pytest.approx(specificity)
    assert "per_patient" not in result["clean"] and "without_patient" not in result


def test_a_set_with_no_usable_image_is_reported_not_failed(evaluated, one_torch_thread):
    root, _, checkpoint = evaluated
    write_grey_png(root / "empty" / "unmapped" / "0.png", blob_image(np.random.default_rng(14), 64))
    spec = ExternalSetConfig(name="empty", path=root / "empty", labels={"yes": "tumor_unknown"})
    result = run_set(root, checkpoint, spec)
    assert (result["images"], result["unlabelled"], result["overlapping_train_val"]) == (0, 1, 0)
    assert result["clean"] == {"n": 0, "labels": {}, "ood_rejected": 0, "ood_rejection_rate": None}


def test_cli_evaluates_a_listed_set_and_prints_a_table(evaluated, params, tmp_path, monkeypatch, one_torch_thread):
    root, _, checkpoint = evaluated
    rng = np.random.default_rng(13)
    for folder in ("yes", "no"):
        for k in range(3):
            write_grey_png(tmp_path / "br" / folder / f"{k}.png", blob_image(rng, 64))
    # Output folders must sit inside build/ (config validation): lay the fixture's outputs out there.
    build = tmp_path / "build"
    shutil.copytree(checkpoint.parent, build / "model")
    shutil.copytree(root / "evaluate", build / "evaluate")
    shutil.copytree(root / "split", build / "split")
    (build / "dedup").mkdir()
    shutil.copy(root / "fingerprints.npz", build / "dedup" / "fingerprints.npz")
    params["train"]["out_dir"] = "build/model"
    labels = {"yes": "tumor_unknown", "no": "no_tumor"}
    params["evaluate"].update(
        out_dir="build/evaluate",
        bootstrap=10,
        external=[{"name": "br", "path": str(tmp_path / "br"), "labels": labels}],
    )
    params["split"]["out_dir"] = "build/split"
    params["dedup"]["out_dir"] = "build/dedup"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(app, ["external"])
    assert result.exit_code == 0, result.output
    assert (
        "br (" in result.output and "clean, slices" in result.output and "refused as not a brain MRI" in result.output
    )
    written = json.loads((tmp_path / "metrics" / "external" / "br.json").read_text())
    assert written["clean"]["n"] == 6 and written["calibrated"] is True
    assert (tmp_path / "build" / "external" / "br" / "predictions.csv").is_file()

    result = CliRunner().invoke(app, ["external", "nope"])
    assert (
        result.exit_code == 1
        and result.output.strip() == "error: no external set 'nope' in evaluate.external (listed: br)"
    )


# ---------------------------------------------------------------- the DVC stages


def test_evaluate_stage_depends_on_every_evaluate_param_but_the_external_sets():
    """Adding an external set must not rerun evaluate (each set has its own stage), and no other evaluate key may be
    missed."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    listed = set(stages["evaluate"]["params"]) - {"seed", "train.num_threads"}
    assert listed == {f"evaluate.{key}" for key in EvaluateConfig.model_fields if key != "external"}
    external = stages["external"]
    assert external["foreach"] == "${evaluate.external}" and "${item.path}" in external["do"]["deps"]
