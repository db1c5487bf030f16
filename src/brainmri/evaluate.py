"""Evaluate stage: metrics on val and test, per source, and the plot data DVC renders.

Writes ``metrics/metrics.json`` (DVC metrics), plot data under
``metrics/evaluate/`` (declared as DVC plots in ``dvc.yaml``) and PNG figures
plus per-image predictions under ``evaluate.out_dir`` for people and the README.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from .checkpoint import load_checkpoint
from .config import EvaluateConfig
from .inference import predict_proba, read_grey_png
from .metrics import bootstrap_ci, classification_metrics, reliability_table, tumour_detection

PLOT_SPLIT = "test"


def _split_metrics(rows: pd.DataFrame, y: np.ndarray, proba: np.ndarray, classes: list[str], cfg: EvaluateConfig, seed: int) -> dict:
    predicted = proba.argmax(axis=1)
    result = classification_metrics(y, proba, classes)
    result.update(bootstrap_ci(y, predicted, len(classes), cfg.bootstrap, seed))
    if "no_tumor" in classes:
        result["tumour_detection"] = tumour_detection(y, predicted, classes.index("no_tumor"))
    result["per_source"] = {
        source: {
            "n": int(members.sum()),
            "accuracy": float((predicted[members] == y[members]).mean()),
            "macro_f1": float(skm.f1_score(y[members], predicted[members], labels=list(range(len(classes))), average="macro", zero_division=0)),
        }
        for source in sorted(rows["source"].unique())
        for members in [rows["source"].to_numpy() == source]
    }
    return result


def _write_plot_data(plots_dir: Path, y: np.ndarray, proba: np.ndarray, classes: list[str]) -> None:
    """Confusion rows, one ROC and one PR curve file per class, and the reliability table (DVC plots)."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    predicted = proba.argmax(axis=1)
    confusion = [{"actual": classes[a], "predicted": classes[p]} for a, p in zip(y, predicted)]
    (plots_dir / "confusion.json").write_text(json.dumps(confusion, indent=0) + "\n")
    for k, name in enumerate(classes):
        positives = y == k
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = skm.roc_curve(positives, proba[:, k])
        pd.DataFrame({"fpr": fpr.round(5), "tpr": tpr.round(5)}).to_csv(plots_dir / f"roc_{name}.csv", index=False)
        precision, recall, _ = skm.precision_recall_curve(positives, proba[:, k])
        pd.DataFrame({"recall": recall.round(5), "precision": precision.round(5)}).to_csv(plots_dir / f"pr_{name}.csv", index=False)
    pd.DataFrame(reliability_table(y, proba)).to_csv(plots_dir / "reliability.csv", index=False)


def evaluate_model(table: pd.DataFrame, checkpoint_path: Path, cfg: EvaluateConfig, *, seed: int, metrics_dir: Path) -> dict:
    """Evaluate a checkpoint on the val and test rows of a split table; write metrics, plot data and figures."""
    from .figures import save_figures

    model, meta = load_checkpoint(checkpoint_path)
    classes = list(meta.classes)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    results, predictions = {}, []
    for split in ("val", "test"):
        rows = table[table["split"] == split].reset_index(drop=True)
        proba = predict_proba(model, [read_grey_png(path) for path in rows["path"]], meta.image_size)
        y = rows["label"].map(classes.index).to_numpy()
        results[split] = _split_metrics(rows, y, proba, classes, cfg, seed)
        predictions.append(
            rows[["image_id", "source", "label"]]
            .assign(split=split, predicted=[classes[k] for k in proba.argmax(axis=1)])
            .join(pd.DataFrame(proba.round(6), columns=[f"p_{c}" for c in classes]))
        )
        if split == PLOT_SPLIT:
            _write_plot_data(metrics_dir / "evaluate", y, proba, classes)
            save_figures(y, proba, classes, metrics_dir / "train", cfg.out_dir)
    payload = {"model": meta.model_name, "data_version": meta.data_version, **results}
    (metrics_dir / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
    pd.concat(predictions, ignore_index=True).to_csv(cfg.out_dir / "predictions.csv", index=False)
    return {split: {"accuracy": round(r["accuracy"], 4), "macro_f1": round(r["macro_f1"], 4)} for split, r in results.items()}
