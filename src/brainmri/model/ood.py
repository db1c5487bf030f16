"""Out-of-distribution check: is this image like the brain MRI slices the model was trained on?

A classifier gives one of four tumour classes to anything, a cat photo
included. Before trusting a class, ``predict`` asks how far the image lies
from the training images in the model's own feature space, with the feature
ensemble of Lee et al. (2018): at the end of every trunk block
(``brainmri.model.inference.logits_and_features``), the globally average-pooled
activations are compared with the training images' by the Mahalanobis
distance to the nearest class mean (one mean per class, one covariance
shared by all classes). The covariance is a Ledoit-Wolf shrinkage estimate,
because features (up to a few thousand dimensions, several dead after ReLU)
rival the training images of a small set and a plain sample covariance would
be singular.

Why every block and not only the penultimate layer: the last layer has
learnt what tells the four classes apart, and a smooth gradient or a page of
text can land near a class mean there, while early and middle blocks still
describe texture and layout, where such pictures are far from any MRI slice
(README, "The stages", has the measured detection rates). Each block's distance is standardised by its mean
and standard deviation over the **validation** images and the score is the
average over blocks, so no block dominates because of its dimension.

The threshold is a quantile (``evaluate.ood_quantile``) of the scores of the
validation images: training images sit closer to the means they were fitted
to, so a threshold set on them would reject too many new MRI. Expected false
rejections of new MRI are about ``1 - quantile``; the evaluate stage measures
them on the test split and the detection rate on ``brainmri.synthetic.non_mri``'s pictures. No
non-MRI image is used to fit anything.

What the check looks at (``evaluate.ood_view``): ``stretched`` (the default)
gives it each image resized and percentile-stretched (the head's 1st-99th
percentile to 0-255, ``brainmri.core.preprocess.percentile_stretch``), a second
forward pass that only the check sees; the class still comes from the image as
it is. Exposure is not what makes an image a brain MRI, and the check refused
whole under-exposed volumes of real MRI: on the real mirror's model the
stretched view refused 1.1% of the non-blank TCGA slices instead of 4.4%, and 97.6% of
the non-MRI pictures instead of 95.2% (``benchmarks/ood_exposure.py
--stretched``, README). ``as_is`` scores the classifier's own forward pass.

The fitted check is saved as ``<evaluate.out_dir>/ood.npz`` (the evaluate
stage owns it; the train stage's folder is not written by a later stage),
with the SHA-256 of the checkpoint it was fitted for, so ``predict`` can
refuse a check that belongs to another model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from sklearn.covariance import LedoitWolf

from ..config import InputConfig
from ..core.hashing import file_digest
from ..core.preprocess import normalise_input, resize_grey
from ..errors import UserError

NOT_MRI = "not a brain MRI"
"""What ``predict`` writes instead of a class for an image the check rejects."""


VIEWS = ("as_is", "stretched")
"""What the check can be given: the classifier's input as it is, or its percentile-stretched copy."""

_STRETCH = InputConfig(intensity="percentile")


def view_images(images: Sequence[np.ndarray], view: str, image_size: int) -> list[np.ndarray]:
    """The images as a check of ``view`` sees them (grey uint8, already cropped as the checkpoint wants).

    ``stretched`` resizes first, so that the percentiles are taken at the resolution the model sees, the same
    for a 512 px upload and a pipeline image cached at ``image_size``; an image without a head stays as it is.
    """
    if view == "as_is":
        return list(images)
    if view != "stretched":
        raise ValueError(f"unknown out-of-distribution view {view!r}; expected one of {', '.join(VIEWS)}")
    return [normalise_input(resize_grey(image, image_size), _STRETCH) for image in images]


class OODMismatch(UserError, ValueError):
    """The out-of-distribution check was fitted for another checkpoint; its threshold would mean nothing."""


@dataclass(frozen=True)
class LayerGaussian:
    """One block's class means ``[K, D]`` and shared precision matrix ``[D, D]``."""

    means: np.ndarray
    precision: np.ndarray

    @cached_property
    def _whitening(self) -> np.ndarray:
        """``L`` with ``precision = L @ L.T``: after ``x @ L`` the Mahalanobis distance is the Euclidean one,
        which costs ``N*D*D`` once instead of ``N*K*D*D`` for every class mean."""
        return np.linalg.cholesky(self.precision)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance ``[N]`` of each feature row to the nearest class mean."""
        features = np.asarray(features, dtype=np.float64)
        if len(features) == 0:
            return np.zeros(0)
        whitened, centres = features @ self._whitening, self.means @ self._whitening
        squared = ((whitened[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        return np.sqrt(squared.min(axis=1))

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> "LayerGaussian":
        features = np.asarray(features, dtype=np.float64)
        classes = np.unique(labels)
        means = np.stack([features[labels == k].mean(axis=0) for k in classes])
        centred = features - means[np.searchsorted(classes, labels)]
        return cls(means, LedoitWolf(assume_centered=True).fit(centred).get_precision())


@dataclass(frozen=True)
class OODCheck:
    """Per-block Gaussians, the val mean ``loc`` and spread ``scale`` of each block's distance, the threshold, and
    the ``view`` of the images whose features it was fitted on (``view_images``)."""

    layers: tuple[LayerGaussian, ...]
    loc: np.ndarray
    scale: np.ndarray
    threshold: float
    quantile: float
    checkpoint_sha256: str
    view: str = "as_is"

    def score(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """Mean over blocks of the standardised distance ``[N]``; larger is further from the training MRI.

        ``features``: one ``[N, D_block]`` array per block, as ``logits_and_features`` returns them.
        """
        if len(features) != len(self.layers):
            raise ValueError(f"the check has {len(self.layers)} feature blocks, got {len(features)}")
        standardised = [
            (layer.distance(f) - loc) / scale
            for layer, f, loc, scale in zip(self.layers, features, self.loc, self.scale, strict=True)
        ]
        return np.mean(standardised, axis=0)

    def rejects(self, scores: np.ndarray) -> np.ndarray:
        """True where a score is above the threshold: not like the brain MRI the model knows."""
        return np.asarray(scores) > self.threshold

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        blocks = {}
        for k, layer in enumerate(self.layers):
            blocks[f"means_{k}"], blocks[f"precision_{k}"] = layer.means, layer.precision
        np.savez_compressed(
            path,
            **blocks,
            loc=np.asarray(self.loc, dtype=np.float64),
            scale=np.asarray(self.scale, dtype=np.float64),
            threshold=np.float64(self.threshold),
            quantile=np.float64(self.quantile),
            checkpoint_sha256=np.str_(self.checkpoint_sha256),
            view=np.str_(self.view),
        )

    @classmethod
    def load(cls, path: Path) -> "OODCheck":
        with np.load(path, allow_pickle=False) as data:
            loc = data["loc"]  # first: a file with pickled objects is refused here, before anything is missing
            if data["scale"].shape != loc.shape:
                raise ValueError(f"{data['scale'].size} scales for {loc.size} feature blocks")
            view = str(data["view"]) if "view" in data.files else "as_is"  # written before views existed
            if view not in VIEWS:
                raise ValueError(f"unknown view {view!r}")
            layers = tuple(LayerGaussian(data[f"means_{k}"], data[f"precision_{k}"]) for k in range(len(data["loc"])))
            return cls(
                layers=layers,
                loc=data["loc"],
                scale=data["scale"],
                threshold=float(data["threshold"]),
                quantile=float(data["quantile"]),
                checkpoint_sha256=str(data["checkpoint_sha256"]),
                view=view,
            )


def load_ood_check(path: Path, checkpoint: Path) -> OODCheck:
    """Load an out-of-distribution check and make sure it was fitted for ``checkpoint`` (by file hash)."""
    try:
        check = OODCheck.load(path)
    except KeyError as missing:  # e.g. a penultimate-layer-only check from before the per-block one
        raise OODMismatch(
            f"{path} was written by another version of the check (no {missing}); rerun the evaluate stage"
        ) from None
    except Exception as error:
        # numpy raises OSError, ValueError (pickled objects refused), BadZipFile... on other files
        text = " ".join(str(error).split())[:120]
        raise OODMismatch(
            f"{path}: not an out-of-distribution check written by the evaluate stage ({type(error).__name__}: {text})"
        ) from None
    if check.checkpoint_sha256 != file_digest(checkpoint):
        raise OODMismatch(
            f"{path} was fitted for another checkpoint than {checkpoint}; pass the --ood file the evaluate "
            "stage wrote for this model, or --no-ood"
        )
    return check


def fit_ood(
    train_features: Sequence[np.ndarray],
    train_labels: np.ndarray,
    val_features: Sequence[np.ndarray],
    quantile: float,
    checkpoint_sha256: str,
    view: str = "as_is",
) -> OODCheck:
    """Fit each block's class means and shrunk covariance on train features; standardise each block's distance
    by its val mean and spread; threshold at ``quantile`` of the val scores. ``view``: what the features were
    computed on (``view_images``), recorded so that every later score computes its features the same way."""
    labels = np.asarray(train_labels)
    layers = tuple(LayerGaussian.fit(f, labels) for f in train_features)
    val_distances = [layer.distance(f) for layer, f in zip(layers, val_features, strict=True)]
    loc = np.array([d.mean() for d in val_distances])
    spread = np.array([d.std() for d in val_distances])
    scale = np.where(spread > 0, spread, 1.0)  # a block that puts every val image at one distance adds nothing
    partial = OODCheck(layers, loc, scale, np.inf, quantile, checkpoint_sha256, view)
    threshold = float(np.quantile(partial.score(val_features), quantile, method="higher"))
    return OODCheck(layers, loc, scale, threshold, quantile, checkpoint_sha256, view)


def detection_summary(kinds: list[str], rejected: np.ndarray) -> dict:
    """Detection rate overall and per kind of non-MRI image."""
    kinds_array = np.asarray(kinds)
    return {
        "n": int(len(kinds)),
        "detection_rate": round(float(np.mean(rejected)), 4) if len(kinds) else None,
        "per_kind": {
            kind: {
                "n": int((kinds_array == kind).sum()),
                "detection_rate": round(float(rejected[kinds_array == kind].mean()), 4),
            }
            for kind in sorted(set(kinds))
        },
    }
