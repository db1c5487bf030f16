"""The generalisation ablation (issue 12): which training changes make the classifier learn tumours, not sources.

Run from a project root whose pipeline was run up to the split stage on real data
(``fetch.source_set: mirror``), so that ``build/split/split.csv`` exists:

    python benchmarks/generalisation_ablation.py --config input_crop_percentile -S num_threads=1 \\
        --out metrics/generalisation_ablation.json

Each configuration (``CONFIGS``: a named set of ``train`` overrides on top of params.yaml and ``-S``) trains
on the pipeline's patient-level split and is scored on

- its internal test split: accuracy, macro-F1, accuracy per source;
- the independent TCGA-LGG post-contrast slices (``--external``, no split holds them): tumour-slice
  sensitivity and tumour-free-slice specificity (a tumour is called when the arg-max is not ``no_tumor``,
  as the external stage counts it), and ROC-AUC of P(any tumour) = 1 - P(no_tumor), which does not
  depend on where the decision threshold sits; and the same on the half of its patients that
  the ``tcga_half`` configurations do not train on (``tcga_half_*``, for every configuration).

With ``--split`` another split table is used (e.g. one made without ``split.unknown_tumours``). Where the split
holds Br35H ``yes`` images (tumours of unknown type), every configuration but ``no_unknown_tumours`` trains on
them, and all score them on test.
With ``--holdout SOURCE`` the split is the pipeline's leave-one-source-out split instead
(``brainmri.dataset.split.split_column``: every group touching SOURCE is the test set), and the test numbers are
the held-out source's. Results are keyed ``<config>``, ``<config>@holdout=<source>`` and/or ``@seed=<n>``
(``--seed``); a rerun of one key keeps the others. Each result records the CPU it trained on and the split
file's hash (``data_version``, as the pipeline names it), so rows of different splits are told apart. The test
split is only scored, never used to choose: choose on TCGA and held-out sources.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from brainmri.config import CLASSES, PatientSubset, TrainConfig, load_config
from brainmri.core.portable import cpu_info

SCANNER_AUGMENT = {
    "augment.gamma": 0.4,
    "augment.bias_field": 0.4,
    "augment.downsample_min": 0.5,
    "augment.jpeg_quality_min": 40,
    "augment.contrast": 0.4,
    "augment.brightness": 0.3,
}
TCGA_TRAIN = "tcga_train_half"
"""The extra-training switch of a configuration: add the TCGA slices of every other patient (sorted ids, even
positions) to train, as ``glioma`` / ``no_tumor`` of a source ``tcga``; TCGA is then scored on the other half
only (``tcga_half_*``), which every configuration also reports, so the rows compare."""

TCGA_TRAIN_HALF = PatientSubset(every=2, keep=0)

HEALED_TRAIN = "figshare_contralateral"
"""The extra-training switch: add, as ``no_tumor`` of a source ``figshare_healed``, every train figshare slice
whose tumour box ``brainmri.synthetic.contralateral.heal`` could replace by the other hemisphere's tissue."""
HEALED_SHAM_TRAIN = "figshare_contralateral_sham"
"""As ``HEALED_TRAIN``, plus a ``sham`` copy of the same slices (tumour kept, a clear region pasted the same way) with
its own label, source ``figshare_sham``: the seam then occurs in both classes."""

NO_UNKNOWN_TRAIN = "drop_unknown_type_tumours"
"""The switch that takes the split's tumours of unknown type (Br35H ``yes``, in a split made with
``split.unknown_tumours``, the default since 2026-12-03) out of train and val: every other configuration trains
on them as "some tumour" (``brainmri.training.loss``), as the pipeline does. All score them on test
(``test_unknown_tumour_sensitivity``)."""

HEAD_INPUT = {"input.crop": "head", "input.intensity": "percentile"}

CONFIGS: dict[str, dict] = {
    "baseline": {},
    "input_crop_percentile": HEAD_INPUT,
    "input_scanner_augment": {**HEAD_INPUT, **SCANNER_AUGMENT},
    "tcga_half": {"extra": TCGA_TRAIN},
    "source_balanced": {"sampling": "source_balanced"},
    "lite0_128": {
        "model": "efficientnet_lite0",
        "image_size": 128,
        "epochs": 6,
        "lr": 1e-3,
        "label_smoothing": 0.1,
        "cpu_bf16": True,
    },
    "tcga_half_balanced": {"extra": TCGA_TRAIN, "sampling": "source_balanced"},
    "healed": {"extra": HEALED_TRAIN},
    "healed_sham": {"extra": HEALED_SHAM_TRAIN},
    "small_cnn_192": {"image_size": 192},
    "lite0_192": {
        "model": "efficientnet_lite0",
        "image_size": 192,
        "epochs": 8,
        "lr": 1e-3,
        "label_smoothing": 0.1,
        "cpu_bf16": True,
    },
    "mixstyle": {"mixstyle": 0.5},
    "no_unknown_tumours": {"extra": NO_UNKNOWN_TRAIN},
    "lite0_192_long": {
        "model": "efficientnet_lite0",
        "image_size": 192,
        "epochs": 12,
        "lr": 1e-3,
        "label_smoothing": 0.1,
        "cpu_bf16": True,
    },
    "group_dro": {"group_dro": 0.01},
}
"""Every configuration tried, in the order tried (the README says how many there were)."""


def trained_on() -> str:
    """The CPU a row was trained on, in words: native kernels differ by CPU, so rows are compared per CPU."""
    model, flags = cpu_info()
    return f"{model}, {os.cpu_count()} cores ({', '.join(flags) or 'no AVX2'})"


def apply_overrides(base: TrainConfig, overrides: dict) -> TrainConfig:
    """``base`` with dotted-key overrides (``augment.gamma``) applied, validated as a TrainConfig."""
    params = base.model_dump(mode="json")
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = params
        for parent in parents:
            node = node[parent]
        if last not in node:
            raise SystemExit(f"unknown train param {key!r}")
        node[last] = value
    return TrainConfig(**params)


class External:
    """The TCGA slices: grey images, tumour or not, patient of each, and the half no configuration trains on."""

    def __init__(self, path: Path):
        with zipfile.ZipFile(path) as archive:
            slices = next(name for name in archive.namelist() if name.endswith("slices.csv"))
            table = pd.read_csv(io.BytesIO(archive.read(slices)), dtype=str)
            patient_of = dict(zip(table["file"], table["patient"], strict=True))
            self.names, images, tumour = [], [], []
            for name in sorted(archive.namelist()):
                folder = PurePosixPath(name).parent.name
                if name.lower().endswith(".jpg") and folder in ("tumour", "no_tumour"):
                    self.names.append(name)
                    images.append(np.asarray(Image.open(io.BytesIO(archive.read(name))).convert("L")))
                    tumour.append(folder == "tumour")
        self.images, self.tumour = images, np.array(tumour)
        self.patients = np.array([patient_of[PurePosixPath(name).name] for name in self.names])
        # the pipeline's TCGA training source (`tcga_lgg_half`, source set `mirror_tcga`) keeps the same half
        self.train_patients = sorted(TCGA_TRAIN_HALF.select(self.patients))
        self.held_out = ~np.isin(self.patients, self.train_patients)

    def training_rows(self, folder: Path) -> pd.DataFrame:
        """The train half written as PNGs under ``folder``, as split-table rows of source ``tcga``."""
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for k in np.flatnonzero(~self.held_out):
            path = folder / (PurePosixPath(self.names[k]).stem + ".png")
            if not path.exists():
                Image.fromarray(self.images[k]).save(path)
            rows.append(
                {
                    "path": str(path),
                    "label": "glioma" if self.tumour[k] else "no_tumor",
                    "source": "tcga",
                    "split": "train",
                }
            )
        return pd.DataFrame(rows)


def contralateral_rows(table: pd.DataFrame, folder: Path, seed: int, with_sham: bool) -> pd.DataFrame:
    """Healed (and sham) copies of the train split's boxed figshare slices, written as PNGs under ``folder``."""
    import zlib

    from brainmri.core.imaging import read_grey_png
    from brainmri.synthetic.contralateral import heal, sham

    folder.mkdir(parents=True, exist_ok=True)
    train = table[(table["split"] == "train") & (table["source"] == "figshare_jpg") & (table["box"] != "")]
    rows, reasons = [], {}
    for row in train.itertuples():
        pixels = read_grey_png(row.path)
        box = tuple(float(value) for value in row.box.split())
        healed = heal(pixels, box)
        reasons[healed.reason.split(" (")[0]] = reasons.get(healed.reason.split(" (")[0], 0) + 1
        if healed.image is None:
            continue
        made = [(healed.image, "no_tumor", "figshare_healed", "healed")]
        if with_sham:
            rng = np.random.default_rng([seed, zlib.crc32(row.image_id.encode())])
            shammed = sham(pixels, box, rng)
            if shammed.image is not None:
                made.append((shammed.image, row.label, "figshare_sham", "sham"))
        for image, label, source, kind in made:
            path = folder / f"{row.image_id}-{kind}.png"
            Image.fromarray(image).save(path)
            rows.append({"path": str(path), "label": label, "source": source, "split": "train"})
    print("contralateral:", reasons, f"{len(rows)} images added", flush=True)
    return pd.DataFrame(rows)


def probabilities(model_path: Path, images: list[np.ndarray]) -> np.ndarray:
    """Softmax probabilities of the checkpoint on raw grey images, prepared as training prepared its own."""
    import torch

    from brainmri.core.preprocess import prepare_grey
    from brainmri.model.checkpoint import load_checkpoint
    from brainmri.model.inference import logits_and_features

    model, meta = load_checkpoint(model_path)
    prepared = [prepare_grey(image, meta.image_size, meta.preprocess) for image in images]
    logits, _ = logits_and_features(model, prepared, meta.image_size)
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def detection(prefix: str, actual: np.ndarray, proba: np.ndarray) -> dict:
    """Tumour-slice sensitivity, tumour-free-slice specificity and ROC-AUC of P(any tumour), and the share of
    tumour slices called ``glioma`` (TCGA's tumours are all lower-grade gliomas: the right type)."""
    no_tumour = CLASSES.index("no_tumor")
    says = proba.argmax(axis=1) != no_tumour
    return {
        f"{prefix}_tumour_sensitivity": round(float(says[actual].mean()), 4),
        f"{prefix}_glioma_recall": round(float((proba.argmax(axis=1) == CLASSES.index("glioma"))[actual].mean()), 4),
        f"{prefix}_no_tumour_specificity": round(float((~says[~actual]).mean()), 4),
        f"{prefix}_auc": round(float(roc_auc_score(actual, 1.0 - proba[:, no_tumour])), 4),
    }


def counterfactual(model_path: Path, table: pd.DataFrame) -> dict:
    """How often the model calls a tumour slice of an unseen patient tumour-free once its tumour is gone.

    The val and test slices (patients training never saw) with a box that ``heal`` can mirror are scored as
    they are and healed. A model that reads the tumour calls most healed slices ``no_tumor``; one that reads
    the look of the source keeps calling them tumours. Val is included for numbers: it chose the epoch, but
    nothing here is fitted on it.
    """
    from brainmri.core.imaging import read_grey_png
    from brainmri.synthetic.contralateral import heal

    no_tumour = CLASSES.index("no_tumor")
    classed = table["label"].isin(CLASSES)  # the figshare slices; Br35H yes boxes (unknown-type split) are not used
    unseen = table[
        table["split"].isin(["val", "test"]) & (table["box"] != "") & (table["label"] != "no_tumor") & classed
    ]
    originals, healed = [], []
    for row in unseen.itertuples():
        pixels = read_grey_png(row.path)
        made = heal(pixels, tuple(float(value) for value in row.box.split()))
        if made.image is not None:
            originals.append(pixels)
            healed.append(made.image)
    if not healed:
        return {"healed_images": 0}
    as_is = probabilities(model_path, originals).argmax(axis=1) == no_tumour
    after = probabilities(model_path, healed).argmax(axis=1) == no_tumour
    return {
        "healed_images": len(healed),
        "healed_no_tumour_before": round(float(as_is.mean()), 4),
        "healed_no_tumour_after": round(float(after.mean()), 4),
    }


def score(model_path: Path, table: pd.DataFrame, external: External | None) -> dict:
    """The model's numbers on the test split (accuracy with a 95% bootstrap interval over dedup/patient groups,
    whose slices are not independent), the healed slices and TCGA."""
    from brainmri.core.imaging import read_grey_png
    from brainmri.evaluation.metrics import bootstrap_ci

    no_tumour = CLASSES.index("no_tumor")
    everything = table[table["split"] == "test"]
    unknown_type = everything[~everything["label"].isin(CLASSES)]
    test = everything[everything["label"].isin(CLASSES)].reset_index(drop=True)
    proba = probabilities(model_path, [read_grey_png(p) for p in test["path"]])
    truth = test["label"].map(CLASSES.index).to_numpy()
    predicted = proba.argmax(axis=1)
    present = sorted(set(truth.tolist()))
    tumour, called = truth != no_tumour, predicted != no_tumour
    interval = bootstrap_ci(truth, predicted, len(CLASSES), 1000, 0, labels=present, groups=test["group"].to_numpy())[
        "accuracy_ci95"
    ]
    result = {
        "test_images": int(len(test)),
        "test_accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "test_accuracy_ci95": [round(value, 4) for value in interval],
        "test_macro_f1": round(float(f1_score(truth, predicted, labels=present, average="macro")), 4),
        "test_accuracy_by_source": {
            source: round(float((predicted[rows] == truth[rows]).mean()), 4)
            for source, rows in test.groupby("source").indices.items()
        },
        "test_tumour_sensitivity": round(float(called[tumour].mean()), 4) if tumour.any() else None,
        "test_no_tumour_specificity": round(float((~called[~tumour]).mean()), 4) if (~tumour).any() else None,
    }
    if len(unknown_type):
        proba_unknown = probabilities(model_path, [read_grey_png(p) for p in unknown_type["path"]])
        result["test_unknown_tumours"] = int(len(unknown_type))
        result["test_unknown_tumour_sensitivity"] = round(float((proba_unknown.argmax(axis=1) != no_tumour).mean()), 4)
    result.update(counterfactual(model_path, table))
    if external is not None:
        proba = probabilities(model_path, external.images)
        result.update(detection("tcga", external.tumour, proba))
        half = external.held_out
        result.update(detection("tcga_half", external.tumour[half], proba[half]))
    return result


def split_table(root: Path, split_csv: Path, holdout: str | None, seed: int) -> pd.DataFrame:
    table = pd.read_csv(root / split_csv, dtype=str, keep_default_na=False)
    if holdout is None:
        return table
    from brainmri.config import SplitConfig
    from brainmri.dataset.split import split_column

    if holdout not in set(table["source"]):
        raise SystemExit(f"--holdout {holdout!r}: no such source in build/split/split.csv")
    cfg = load_config(root / "params.yaml").split.model_copy(update={"holdout_source": holdout})
    assert isinstance(cfg, SplitConfig)
    return table.assign(split=split_column(table, cfg, seed))


DEFAULT_SPLIT = Path("build/split/split.csv")


def without_unknown_type_training(table: pd.DataFrame) -> pd.DataFrame:
    """The table without train and val rows of no class (unknown-type tumours): test keeps them, to be scored."""
    return table[table["label"].isin(CLASSES) | (table["split"] == "test")]


COLUMNS = [
    "test_accuracy",
    "test_macro_f1",
    "test_tumour_sensitivity",
    "test_no_tumour_specificity",
    "tcga_tumour_sensitivity",
    "tcga_no_tumour_specificity",
    "tcga_auc",
    "tcga_glioma_recall",
    "test_unknown_tumour_sensitivity",
    "tcga_half_tumour_sensitivity",
    "tcga_half_no_tumour_specificity",
    "tcga_half_auc",
    "healed_no_tumour_after",
    "train_minutes",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--external", type=Path, default=Path("../shared/datasets/tcga-lgg-post-contrast.zip"))
    parser.add_argument("--config", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument(
        "--split",
        type=Path,
        default=DEFAULT_SPLIT,
        help="split table under --root; another one adds @split=<its folder> to the keys",
    )
    parser.add_argument("--holdout", default=None, help="a source to leave out (the test set is then its images)")
    parser.add_argument("--seed", type=int, default=None, help="train with this seed, not params.yaml's (same split)")
    parser.add_argument(
        "-S", dest="overrides", action="append", default=[], help="train param override, e.g. -S epochs=4"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--score-only", action="store_true", help="rescore the models build/generalisation already holds"
    )
    args = parser.parse_args()

    from brainmri.pipeline import data_version
    from brainmri.training.train import train_model

    cfg = load_config(args.root / "params.yaml")
    common = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.overrides)}
    external = External(args.external) if args.external.exists() else None
    table = split_table(args.root, args.split, args.holdout, cfg.seed)
    document = json.loads(args.out.read_text()) if args.out and args.out.exists() else {"configs": {}, "results": {}}
    for name in args.config:
        overrides = {**common, **CONFIGS[name]}
        extra = overrides.pop("extra", None)
        train_cfg = apply_overrides(cfg.train, overrides)
        key = (
            name
            + (f"@split={args.split.parent.name}" if args.split != DEFAULT_SPLIT else "")
            + (f"@holdout={args.holdout}" if args.holdout else "")
            + (f"@seed={args.seed}" if args.seed else "")
        )
        work = args.root / "build/generalisation" / key.replace("@", "-").replace("=", "-")
        training = without_unknown_type_training(table) if extra == NO_UNKNOWN_TRAIN else table
        if extra == TCGA_TRAIN:
            if external is None:
                raise SystemExit(f"{name} trains on half of TCGA: {args.external} is missing")
            training = pd.concat([training, external.training_rows(args.root / "build/generalisation/tcga_train_half")])
        elif extra in (HEALED_TRAIN, HEALED_SHAM_TRAIN):
            made = contralateral_rows(table, work / "contralateral", cfg.seed, with_sham=extra == HEALED_SHAM_TRAIN)
            training = pd.concat([training, made])
        started = time.perf_counter()
        if not args.score_only:
            seed = cfg.seed if args.seed is None else args.seed
            train_model(training, train_cfg, seed=seed, out_dir=work, live_dir=work / "live", data_version=key)
        previous = document["results"].get(key, {})
        minutes = previous.get("train_minutes") if args.score_only else round((time.perf_counter() - started) / 60, 1)
        document["configs"][name] = {**common, **CONFIGS[name]}
        document["results"][key] = {
            "train_images": int((training["split"] == "train").sum()),
            **score(work / "model.pt", table, external),
            "train_minutes": minutes,
            "cpu": previous.get("cpu") if args.score_only else trained_on(),
            "data_version": data_version(args.root / args.split),
        }
        print(key, json.dumps(document["results"][key]), flush=True)
        if args.out:
            document["train"] = cfg.train.model_dump(mode="json")
            args.out.write_text(json.dumps(document, indent=2) + "\n")
    print("| configuration | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for key, row in document["results"].items():
        print(f"| {key} | " + " | ".join("" if row.get(c) is None else str(row[c]) for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
