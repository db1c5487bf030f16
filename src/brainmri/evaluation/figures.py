"""Matplotlib figures (PNG) of the evaluation, for the README, the model card and people without DVC."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from .metrics import reliability_table  # noqa: E402


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(figure)


def confusion_figure(y: np.ndarray, predicted: np.ndarray, classes: list[str], path: Path) -> None:
    """Counts and row-normalised confusion matrices side by side."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for axis, normalize, title in ((axes[0], None, "counts"), (axes[1], "true", "row-normalised (recall)")):
        skm.ConfusionMatrixDisplay.from_predictions(
            y,
            predicted,
            labels=list(range(len(classes))),
            display_labels=classes,
            normalize=normalize,
            values_format=".2f" if normalize else "d",
            ax=axis,
            colorbar=False,
            xticks_rotation=30,
        )
        axis.set_title(f"Confusion matrix, {title}")
    _save(figure, path)


def roc_figure(y: np.ndarray, proba: np.ndarray, classes: list[str], path: Path) -> None:
    """One-vs-rest ROC curve per class."""
    figure, axis = plt.subplots(figsize=(5, 4.5))
    for k, name in enumerate(classes):
        positives = y == k
        if positives.any() and not positives.all():
            skm.RocCurveDisplay.from_predictions(positives, proba[:, k], name=name, ax=axis)
    axis.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    axis.set_title("ROC, one vs rest (test)")
    _save(figure, path)


def reliability_figure(y: np.ndarray, proba: np.ndarray, path: Path) -> None:
    """Accuracy against confidence per bin; the diagonal is perfect calibration.

    Each point is labelled with its image count: a good model puts nearly
    every image in the top bin, and a bin of four images far off the
    diagonal says little.
    """
    table = pd.DataFrame(reliability_table(y, proba))
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    if len(table):
        axis.plot(table["confidence"], table["accuracy"], "o-")
        for row in table.itertuples():
            right = row.confidence > 0.9  # keep the top bin's label inside the axes
            axis.annotate(
                f"n={row.count}",
                (row.confidence, row.accuracy),
                textcoords="offset points",
                xytext=(-4 if right else 4, -10),
                ha="right" if right else "left",
                fontsize=7,
            )
    axis.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="Reliability (test)")
    _save(figure, path)


def training_curves_figure(live_dir: Path, path: Path) -> bool:
    """Loss and accuracy per epoch from the dvclive logs of the train stage; False if there are none."""
    files = sorted((live_dir / "plots" / "metrics").rglob("*.tsv"))
    if not files:
        return False
    panels = sorted({f.stem for f in files if f.stem != "lr"})
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for axis, panel in zip(axes[0], panels, strict=True):
        for file in (f for f in files if f.stem == panel):
            data = pd.read_csv(file, sep="\t")
            axis.plot(data["step"], data[data.columns[-1]], marker=".", label=file.parent.name)
        axis.set(title=panel, xlabel="epoch")
        axis.legend()
    _save(figure, path)
    return True


def ood_figure(scores: dict[str, np.ndarray], threshold: float, path: Path) -> None:
    """Histograms of the out-of-distribution score per group of images, with the rejection threshold."""
    figure, axis = plt.subplots(figsize=(6, 4))
    everything = np.concatenate([np.asarray(v, dtype=float) for v in scores.values()] + [np.array([threshold])])
    low, high = float(everything.min()), float(everything.max())
    bins = np.linspace(low, max(high, low + 1e-6), 40)  # positive width even if every score is equal
    for name, values in scores.items():
        axis.hist(
            values, bins=bins, alpha=0.55, label=f"{name} (n={len(values)})", log=True
        )  # a few dozen non-MRI beside 1,000s of MRI
    axis.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold:.1f}")
    axis.set(
        xlabel="mean standardised Mahalanobis distance over blocks",
        ylabel="images (log scale)",
        title="Out-of-distribution score",
    )
    axis.legend(fontsize=8)
    _save(figure, path)


def gradcam_figure(panels: list[tuple[Path, str]], path: Path, columns: int = 4) -> None:
    """The Grad-CAM overlay PNGs in one grid, each titled (true class, prediction, correct or wrong); none: no file."""
    if not panels:
        path.unlink(missing_ok=True)
        return
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.4 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (png, title) in zip(axes.flat, panels, strict=False):
        axis.imshow(plt.imread(png))
        axis.set_title(title, fontsize=8)
    _save(figure, path)


def save_figures(y: np.ndarray, proba: np.ndarray, classes: list[str], live_dir: Path, out_dir: Path) -> None:
    """The figures of the test split's predictions (and the training curves when dvclive logs exist)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    confusion_figure(y, proba.argmax(axis=1), classes, out_dir / "confusion_matrix.png")
    roc_figure(y, proba, classes, out_dir / "roc.png")
    reliability_figure(y, proba, out_dir / "reliability.png")
    training_curves_figure(live_dir, out_dir / "training_curves.png")
