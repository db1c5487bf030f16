"""The leakage ablation: one model configuration, four ways of splitting the same real archives.

Run from a project root whose pipeline was run up to the split stage on real data
(``fetch.source_set: mirror``), so that ``build/merged``, ``build/dedup`` and ``build/split`` exist:

    python benchmarks/leakage_ablation.py --out metrics/leakage_ablation.json

Splits compared (all stratified by class, seeded by ``seed`` of params.yaml):

- ``a_kaggle_official``: the combined Kaggle set alone, its own ``Training``/``Testing`` folders
  (val: 15% of Training, drawn at random), no dedup: what most published results use;
- ``b_random_no_dedup``: every merged image of the four classes, image-level random 70/15/15;
- ``c_random_after_dedup``: the images dedup kept, image-level random 70/15/15;
- ``d_grouped``: the pipeline's split (dedup + patient groups, carried through dedup clusters,
  + the same-patient linker + same-picture and similar-slice links).

Each split trains the same model (``train`` params, overridable with ``-S key=value``; the default is
the demo's ``small_cnn`` at 96 px) and is scored on its *own* test split, beside two leakage
measures of that test split (share of test images with a near-identical picture in train, 32x32
thumbnail correlation >= 0.95; figshare test images whose patient is in train) and on the
independent TCGA-LGG post-contrast set (``--external``), whose images no split contains:
tumour-slice sensitivity and tumour-free-slice specificity (a tumour is called when the predicted class
is not ``no_tumor``, as the test split and the external stage count it).
"""

from __future__ import annotations

import argparse
import io
import json
import time
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

from brainmri.config import CLASSES, TrainConfig, load_config
from brainmri.dataset.linker import thumbnail_vectors

SPLITS = ("a_kaggle_official", "b_random_no_dedup", "c_random_after_dedup", "d_grouped")


def random_split(table: pd.DataFrame, seed: int, ratios=(0.70, 0.15, 0.15)) -> pd.DataFrame:
    train, rest = train_test_split(table, train_size=ratios[0], stratify=table["label"], random_state=seed)
    val, test = train_test_split(
        rest, train_size=ratios[1] / (ratios[1] + ratios[2]), stratify=rest["label"], random_state=seed
    )
    return pd.concat([train.assign(split="train"), val.assign(split="val"), test.assign(split="test")])


def kaggle_official(merged: pd.DataFrame, seed: int) -> pd.DataFrame:
    kaggle = merged[merged["source"] == "kaggle_combined"]
    testing = kaggle["original_path"].str.contains("/Testing/")
    training = kaggle[~testing]
    train, val = train_test_split(training, test_size=0.15, stratify=training["label"], random_state=seed)
    return pd.concat([train.assign(split="train"), val.assign(split="val"), kaggle[testing].assign(split="test")])


def build_splits(root: Path, seed: int) -> dict[str, pd.DataFrame]:
    merged = pd.read_csv(root / "build/merged/manifest.csv", dtype=str, keep_default_na=False)
    merged = merged[merged["label"].isin(CLASSES)]
    dedup = pd.read_csv(root / "build/dedup/manifest.csv", dtype=str, keep_default_na=False)
    kept = dedup[(dedup["kept"] == "True") & dedup["label"].isin(CLASSES)]
    grouped = pd.read_csv(root / "build/split/split.csv", dtype=str, keep_default_na=False)
    grouped = grouped[grouped["label"].isin(CLASSES)]  # as the other three: no unknown-type tumours
    return {
        "a_kaggle_official": kaggle_official(merged, seed),
        "b_random_no_dedup": random_split(merged, seed),
        "c_random_after_dedup": random_split(kept, seed),
        "d_grouped": grouped,
    }


def figshare_patients(root: Path, table: pd.DataFrame) -> pd.Series:
    """The figshare patient of each row that is, or was clustered with, a figshare image ("" otherwise)."""
    dedup = pd.read_csv(root / "build/dedup/manifest.csv", dtype=str, keep_default_na=False)
    fig = dedup[dedup["source"].str.startswith("figshare") & (dedup["patient_id"] != "")]
    patient_of_cluster = fig.groupby("cluster_id")["patient_id"].first()
    cluster = dedup.set_index("image_id")["cluster_id"]
    return table["image_id"].map(cluster).map(patient_of_cluster).fillna("")


def leakage(root: Path, table: pd.DataFrame) -> dict:
    train, test = table[table["split"] == "train"], table[table["split"] == "test"]
    vectors_train = thumbnail_vectors(train["path"].tolist())
    vectors_test = thumbnail_vectors(test["path"].tolist())
    best = np.concatenate(
        [(vectors_test[s : s + 1024] @ vectors_train.T).max(axis=1) for s in range(0, len(test), 1024)]
    )
    patients = figshare_patients(root, table)
    in_train = set(patients[table["split"] == "train"]) - {""}
    test_patients = patients[table["split"] == "test"]
    return {
        "test_with_near_identical_in_train": round(float((best >= 0.95).mean()), 4),
        "figshare_test_images_with_patient_in_train": int(test_patients.isin(in_train).sum()),
        "figshare_test_images": int((test_patients != "").sum()),
    }


def external_images(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Grey images of the TCGA zip and whether each shows a tumour (folder ``tumour`` vs ``no_tumour``)."""
    images, tumour = [], []
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            folder = PurePosixPath(name).parent.name
            if name.lower().endswith(".jpg") and folder in ("tumour", "no_tumour"):
                images.append(np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("L")))
                tumour.append(folder == "tumour")
    return images, np.array(tumour)


def score(model_path: Path, table: pd.DataFrame, external: tuple[list[np.ndarray], np.ndarray] | None) -> dict:
    from brainmri.core.imaging import read_grey_png
    from brainmri.model.checkpoint import load_checkpoint
    from brainmri.model.inference import logits_and_features

    model, meta = load_checkpoint(model_path)
    test = table[table["split"] == "test"]
    logits, _ = logits_and_features(model, [read_grey_png(p) for p in test["path"]], meta.image_size)
    truth = test["label"].map(CLASSES.index).to_numpy()
    predicted = logits.argmax(axis=1)
    result = {
        "test_images": int(len(test)),
        "test_accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "test_macro_f1": round(float(f1_score(truth, predicted, average="macro")), 4),
    }
    if external is not None:
        images, tumour = external
        logits, _ = logits_and_features(model, images, meta.image_size)
        says_tumour = logits.argmax(axis=1) != CLASSES.index(
            "no_tumor"
        )  # as the external stage and the test split count it
        result["tcga_tumour_sensitivity"] = round(float(says_tumour[tumour].mean()), 4)
        result["tcga_no_tumour_specificity"] = round(float((~says_tumour[~tumour]).mean()), 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--external", type=Path, default=Path("../shared/datasets/tcga-lgg-post-contrast.zip"))
    parser.add_argument("--only", nargs="*", default=list(SPLITS), choices=SPLITS)
    parser.add_argument(
        "-S", dest="overrides", action="append", default=[], help="train param override, e.g. -S epochs=4"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--score-only", action="store_true", help="rescore the models build/ablation already holds")
    args = parser.parse_args()

    from brainmri.training.train import train_model

    cfg = load_config(args.root / "params.yaml")
    overrides = {
        k: type(getattr(cfg.train, k))(v) if not isinstance(getattr(cfg.train, k), bool) else v == "true"
        for k, v in (item.split("=", 1) for item in args.overrides)
    }
    train_cfg = TrainConfig(**{**cfg.train.model_dump(), **overrides})
    external = external_images(args.external) if args.external.exists() else None
    splits = build_splits(args.root, cfg.seed)
    work = args.root / "build/ablation"
    results = json.loads(args.out.read_text())["results"] if args.out and args.out.exists() else {}
    for name in args.only:
        table = splits[name].reset_index(drop=True)
        started = time.perf_counter()
        if not args.score_only:
            train_model(
                table, train_cfg, seed=cfg.seed, out_dir=work / name, live_dir=work / name / "live", data_version=name
            )
        minutes = (
            round((time.perf_counter() - started) / 60, 1)
            if not args.score_only
            else results.get(name, {}).get("train_minutes")
        )
        results[name] = {
            "sizes": {s: int((table["split"] == s).sum()) for s in ("train", "val", "test")},
            **leakage(args.root, table),
            **score(work / name / "model.pt", table, external),
            "train_minutes": minutes,
        }
        print(name, json.dumps(results[name]), flush=True)
        if args.out:
            args.out.write_text(
                json.dumps({"train": train_cfg.model_dump(mode="json"), "results": results}, indent=2) + "\n"
            )
    columns = [
        "test_images",
        "test_with_near_identical_in_train",
        "figshare_test_images_with_patient_in_train",
        "test_accuracy",
        "test_macro_f1",
        "tcga_tumour_sensitivity",
        "tcga_no_tumour_specificity",
        "train_minutes",
    ]
    print("| split | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(str(row.get(c, "")) for c in columns) + " |")


if __name__ == "__main__":
    main()
