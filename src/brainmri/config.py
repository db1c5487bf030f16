"""Typed, validated configuration read once from ``params.yaml``.

Every stage receives these objects; no other module opens ``params.yaml``.
Validation happens here, at the edge, so that a typo in params fails in one
clear line (``ConfigError``) before any long work starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML, YAMLError

from .errors import UserError

CLASSES: tuple[str, ...] = ("glioma", "meningioma", "no_tumor", "pituitary")
"""The four diagnostic classes, in the order the model's outputs use."""

UNKNOWN_TUMOUR = "tumor_unknown"
"""A tumour whose type the source does not record (Br35H ``yes``): detection only, never a class."""

UNKNOWN_TUMOUR_INDEX = -1
"""Its number wherever the classes are numbered by ``CLASSES``: training targets (``brainmri.training.loss``) and
the OOD check's groups (the evaluate stage fits unknown-type tumours as a group of their own)."""

EXTRA_LABELS: tuple[str, ...] = (UNKNOWN_TUMOUR,)
"""Labels a source may carry that are not one of the four classes."""

SOURCE_FORMATS = ("figshare_mat", "image_folder")
"""The keys of ``brainmri.dataset.sources.FORMATS`` (one reader module each), listed here so params validate
without importing the readers; tests/test_sources.py checks that the two agree."""
SYNTHETIC_KINDS = ("figshare", "kaggle", "sartaj", "br35h")
MODEL_NAMES = (
    "small_cnn",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "resnet18",
    "resnet50",
    "efficientnet_b0",
    "convnext_tiny",
    "vgg16",
)
"""The names of ``brainmri.model.architectures.MODELS`` (the registry: builder, input size, normalisation), listed
here so params validate without importing torch; tests/test_models.py checks that the two agree."""


BUILD_DIR = Path("build")
"""Every output folder named in params must lie inside this folder (relative to the working directory):
stages delete and rewrite their outputs, so an output folder elsewhere could take the repository or the
hand-supplied archives with it."""

SAFE_NAME = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"
"""Names that become one path component (sources, their files, external sets): no separators, no ``..``, no leading
dot."""

MAX_SEED = 2**32 - 1
"""numpy's legacy seeding and ``torch.manual_seed`` on every platform take seeds up to this."""


class ConfigError(UserError, ValueError):
    """A params file that cannot be used; the message is one line meant for a person."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceFile(_Strict):
    """One file of a source: where it may come from and how to check it."""

    name: str = Field(pattern=SAFE_NAME)
    url: str | None = None
    md5: str | None = None
    sha256: str | None = None
    kaggle: str | None = Field(None, description="Kaggle dataset slug, e.g. owner/name")


class PatientSubset(_Strict):
    """A fixed share of a set's patients: the sorted patient ids of its table at positions ``keep``,
    ``keep + every``, ``keep + 2 * every``, ...

    Why: one set can then feed training and external validation without
    sharing a patient, the way anyone can rerun it (TCGA-LGG: ``{every: 2,
    keep: 0}`` as a training source, ``{every: 2, keep: 1}`` as the external
    set).
    """

    every: int = Field(ge=2)
    keep: int = Field(ge=0)

    @model_validator(mode="after")
    def _keep_below_every(self) -> "PatientSubset":
        if self.keep >= self.every:
            raise ValueError(f"patient subset: keep ({self.keep}) must be below every ({self.every})")
        return self

    def select(self, patient_ids: object) -> set[str]:
        """The ids this subset keeps out of all the table's ``patient_ids`` (any iterable, repeats allowed)."""
        return set(sorted(set(patient_ids))[self.keep :: self.every])


class PatientTable(SourceFile):
    """A CSV that gives each image of a source its patient, for sources whose files carry no patient id.

    Fetched like the source's archives (``name`` and checksum), or, with
    ``member``, read from inside the source's own archive ``name`` (TCGA's
    ``slices.csv``). An image matches the row whose ``key`` column equals its
    file name (``TCGA_CS_4941_19960909_2.jpg``) or its file name's stem (the
    figshare JPEG ``2/1234.jpg`` is row ``number == 1234``); ``id`` is the
    patient column. ``label``, when set, is a column checked against the
    image's folder label through ``labels`` (the table's values → class), so
    a table for another numbering fails loudly instead of mislabelling
    patients. ``fold`` names a column of predefined patient folds (the
    original release's cross-validation), offered to the split stage.
    ``subset`` keeps only some of the table's patients: the source's other
    images (and any without a patient) are left out by the merge and counted.
    """

    key: str = "number"
    id: str = "pid"
    label: str | None = None
    labels: dict[str, str] = {}
    fold: str | None = None
    member: str | None = None
    subset: PatientSubset | None = None

    @field_validator("labels", mode="before")
    @classmethod
    def _keys_as_text(cls, value: object) -> object:
        return {str(key): label for key, label in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _label_needs_map(self) -> "PatientTable":
        if self.label is not None and not self.labels:
            raise ValueError(
                f"patient table {self.name}: 'label: {self.label}' needs 'labels' mapping its values to classes"
            )
        bad = sorted(set(self.labels.values()) - set(CLASSES))
        if bad:
            raise ValueError(f"patient table {self.name}: unknown label(s) {bad} (allowed: {', '.join(CLASSES)})")
        return self


class SourceConfig(_Strict):
    """A public (or synthetic) source of labelled images.

    ``labels`` maps what the archive says (a folder name, a ``.mat`` label
    number as a string) to one of ``CLASSES`` or ``EXTRA_LABELS``.
    ``synthetic`` names the demo generator archive that stands in for it.
    ``patients`` is a table of patient ids for sources whose files carry none.
    ``exclude`` lists members to leave out, by the ``original_path`` the
    manifest would give them (``<archive name>/<member>``), each with its
    reason: images that are in a source but are not what it says (head CT
    among its MRI). The merge stage reports them as rejects ``excluded: <reason>``.
    """

    format: str
    files: list[SourceFile]
    labels: dict[str, str]
    synthetic: str | None = None
    licence: str = "unknown"
    description: str = ""
    homepage: str | None = Field(None, description="where a person downloads the files by hand")
    patients: PatientTable | None = None
    exclude: dict[str, str] = Field(default_factory=dict, description="original path -> why it is left out")

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in SOURCE_FORMATS:
            raise ValueError(f"unknown source kind {value!r} (known: {', '.join(SOURCE_FORMATS)})")
        return value

    @field_validator("synthetic")
    @classmethod
    def _known_synthetic(cls, value: str | None) -> str | None:
        if value is not None and value not in SYNTHETIC_KINDS:
            raise ValueError(f"unknown synthetic generator {value!r} (known: {', '.join(SYNTHETIC_KINDS)})")
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _keys_as_text(cls, value: object) -> object:
        """Folder names and .mat label numbers are text, however a YAML writer quoted them (``1``, ``"1"``)."""
        return {str(key): label for key, label in value.items()} if isinstance(value, dict) else value

    @field_validator("labels")
    @classmethod
    def _known_labels(cls, value: dict[str, str]) -> dict[str, str]:
        allowed = set(CLASSES) | set(EXTRA_LABELS)
        bad = sorted(set(value.values()) - allowed)
        if bad:
            raise ValueError(f"unknown label(s) {bad} (allowed: {', '.join(sorted(allowed))})")
        return value

    @field_validator("files")
    @classmethod
    def _some_files(cls, value: list[SourceFile]) -> list[SourceFile]:
        if not value:
            raise ValueError("a source needs at least one file")
        return value

    @model_validator(mode="after")
    def _excluded_from_its_archives(self) -> "SourceConfig":
        names = {f.name for f in self.files}
        for path, reason in self.exclude.items():
            if path.split("/", 1)[0] not in names:
                raise ValueError(
                    f"exclude: {path!r} does not start with one of the source's files ({', '.join(sorted(names))})"
                )
            if not reason.strip():
                raise ValueError(f"exclude: {path!r} needs a reason")
        return self

    @model_validator(mode="after")
    def _member_of_an_archive(self) -> "SourceConfig":
        table = self.patients
        if table is not None and table.member is not None and table.name not in {f.name for f in self.files}:
            raise ValueError(
                f"patients: member {table.member!r} is read from {table.name}, which is not one of the source's files"
            )
        return self


class FetchConfig(_Strict):
    source_set: str = "demo"
    data_dir: Path = Path("data")
    mirrors: list[Path] = []
    out_dir: Path = Path("build/raw")


class SyntheticConfig(_Strict):
    """The embedded demo data: brain-slice phantoms written in the real sources' formats."""

    seed: int = Field(7, ge=0, le=MAX_SEED)
    images_per_class: int = Field(60, ge=4)
    image_size: int = Field(256, ge=64)


class ImageLimits(_Strict):
    """What an untrusted image or archive member may be: the merge stage's and predict's decode guards."""

    min_side: int = Field(32, ge=1, description="smaller images are rejected as unusable")
    max_pixels: int = Field(50_000_000, ge=1, description="larger images are rejected as decompression bombs")
    max_member_bytes: int = Field(200_000_000, ge=1, description="archive members larger than this are rejected")


class MergeConfig(ImageLimits):
    out_dir: Path = Path("build/merged")


class DedupConfig(_Strict):
    """How duplicates are found (``brainmri.dataset.fingerprints``, ``brainmri.dataset.dedup``).

    Two images are duplicates when their pixels are identical, or when the pHashes of their core
    frames are within ``max_hamming`` bits *and* their grey thumbnails correlate at least
    ``min_correlation``. The defaults were chosen by measurement on real images, with
    ``python benchmarks/calibrate_dedup.py --archives``: the setting and thresholds that clear the
    precision and recall goals by the widest margin. A core frame rather than the whole image: the
    shared skull outline of neighbouring slices dominates a whole-image thumbnail, and crops move it.
    A 64-bit hash: it is what the pair index searches fast, and longer hashes did no better. The
    measured numbers are in ``metrics/dedup_calibration.json`` and README ("How the dedup thresholds
    were chosen"); the datasheet quotes them for the thresholds in use.
    """

    out_dir: Path = Path("build/dedup")
    frame_spread: float | None = Field(
        0.7, gt=0, description="fingerprint the core frame, median ± this × IQR; null: the whole image"
    )
    hash_size: int = Field(8, ge=4, description="pHash side; the hash has hash_size**2 bits")
    max_hamming: int = Field(8, ge=0, description="candidate pairs: pHash Hamming distance at most this")
    thumb_size: int = Field(16, ge=8, description="side of the grey thumbnails compared at pixel level")
    min_correlation: float = Field(0.89, ge=-1, le=1, description="candidates are duplicates at or above this")
    conflicts: Literal["drop", "keep_majority"] = "drop"


class SplitConfig(_Strict):
    out_dir: Path = Path("build/split")
    dataset_dir: Path = Path("build/dataset")
    train: float = Field(0.70, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    group_by_patient: bool = True
    group_max_hamming: int = Field(16, ge=0, description="pHash radius of the similar-slice links (wider than dedup's)")
    group_correlation: float | None = Field(
        0.8,
        ge=-1,
        le=1,
        description=(
            "kept images this similar (core-frame thumbnail correlation, within group_max_hamming) stay in one "
            "split; null: off. Measured on the real mirror: 0.8 at radius 16 links no two images of different "
            "labels and keeps groups small (largest 25), 0.7 chains 337 images into one group"
        ),
    )
    linker_correlation: float | None = Field(
        0.92,
        ge=-1,
        le=1,
        description=(
            "same-patient linker for images without a patient id: each joins its nearest neighbour of the same "
            "source and label when their 32x32 thumbnails correlate this much (brainmri.dataset.linker); null: off"
        ),
    )
    same_picture_correlation: float | None = Field(
        0.95,
        ge=-1,
        le=1,
        description="any two kept images whose 32x32 thumbnails correlate this much stay together; null: off",
    )
    folds: int = Field(0, ge=0, description="also assign train+val rows to this many grouped, stratified folds; 0: off")
    table_folds: bool = Field(
        False, description="fold column from the sources' patient tables (figshare: the original 5 patient folds)"
    )
    holdout_source: str | None = Field(
        None, description="leave-one-source-out: every image of this source is the test set, the rest train/val"
    )
    train_only_sources: list[str] = Field(
        default_factory=list,
        description=(
            "sources whose images (and every group touching them) all go to train: a source with few patients "
            "and an external set of its other patients (tcga_lgg_half); the other sources split as without it. "
            "Sources outside the active source set are allowed (nothing of them to split)"
        ),
    )
    unknown_tumours: bool = Field(
        False,
        description=(
            "also split the tumours of unknown type (tumor_unknown, e.g. Br35H yes), so training can learn 'some "
            "tumour' from them (the loss asks P(any tumour) of them) and test can score their detection"
        ),
    )

    @model_validator(mode="after")
    def _ratios_sum_to_one(self) -> "SplitConfig":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split ratios train+val+test must sum to 1, got {total:g}")
        return self


class AugmentConfig(_Strict):
    """Augmentations applied to training batches only (see ``brainmri.training.cache``)."""

    hflip: bool = True
    rotation_degrees: float = Field(10.0, ge=0, le=180)
    scale_min: float = Field(0.85, gt=0, le=1)
    brightness: float = Field(0.2, ge=0, le=1)
    contrast: float = Field(0.2, ge=0, le=1)
    # Off by default: not shown to help on these sets, whose images are reconstructed clinical slices that vary
    # far more in brightness and contrast than in sharpness or noise; and both can wipe out a small lesion,
    # which is the very signal the classes differ by. Worth trying for data from older or low-field scanners.
    blur_sigma: float = Field(
        0.0, ge=0, le=5, description="Gaussian blur, sigma drawn from [0.1, blur_sigma] px; 0: off"
    )
    noise_std: float = Field(0.0, ge=0, le=0.5, description="additive Gaussian noise std on [0, 1] pixels; 0: off")
    # Scanner and sequence differences (issue 12), off by default and not yet measured on real data.
    gamma: float = Field(0.0, ge=0, le=2, description="random gamma, log-uniform in [1/(1+gamma), 1+gamma]; 0: off")
    bias_field: float = Field(
        0.0,
        ge=0,
        le=1,
        description="smooth multiplicative field exp(a * f), |f| <= 1 low-frequency, a up to this; 0: off",
    )
    downsample_min: float = Field(
        1.0,
        ge=0.1,
        le=1,
        description="down-up resampling to a factor drawn from [downsample_min, 1] of the side; 1: off",
    )
    jpeg_quality_min: int = Field(
        100, ge=1, le=100, description="JPEG re-encoding at a quality drawn from [this, 100]; 100: off"
    )


class InputConfig(_Strict):
    """How an image is cut and scaled before resizing (``brainmri.core.preprocess.normalise_input``); recorded in the
    checkpoint, so evaluate, predict, external sets and export apply what training used. Not yet measured on real
    data."""

    crop: Literal["none", "head"] = Field(
        "none", description="head: crop to the head's bounding box, padded to a square"
    )
    intensity: Literal["none", "percentile"] = Field(
        "none", description="percentile: map the 1st-99th percentile of the head's pixels to [0, 255], per image"
    )


CHECKPOINT_NAME = "model.pt"
"""The best checkpoint's file name in the train stage's folder (``train.out_dir``)."""


class TrainConfig(_Strict):
    out_dir: Path = Path("build/model")
    model: str = "small_cnn"
    pretrained: bool = True
    image_size: int = Field(96, ge=16, le=1024, description="model input side; above 1024 no model here fits in memory")
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["adam", "adamw", "adamax", "sgd"] = "adamw"
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    scheduler: Literal["onecycle", "cosine", "step", "plateau"] = Field(
        "onecycle", description="per-step LR schedule; all warm up first (see brainmri.training.train.lr_factor)"
    )
    warmup_epochs: float = Field(
        1.0, ge=0, description="linear warm-up (cosine, step, plateau) or rise (one-cycle) length"
    )
    lr_step_epochs: float = Field(3.0, gt=0, description="step: multiply the LR by lr_gamma every this many epochs")
    lr_gamma: float = Field(0.1, gt=0, lt=1, description="step, plateau: the LR multiple of one reduction")
    plateau_patience: int = Field(
        2, ge=0, description="plateau: epochs without a lower val loss before the LR is reduced (keep below patience)"
    )
    freeze_epochs: int = Field(0, ge=0, description="first train the head only, trunk frozen, for this many epochs")
    unfreeze_blocks: int = Field(
        0, ge=0, description="after the frozen epochs, train the last this-many trunk blocks (and the head); 0: all"
    )
    finetune_lr_factor: float = Field(1.0, gt=0, le=1, description="the trunk's LR is lr times this (the head's is lr)")
    class_weights: bool = Field(False, description="weight the training loss by inverse class frequency")
    sampling: Literal["shuffle", "source_balanced"] = Field(
        "shuffle",
        description="shuffle: each training image once per epoch; source_balanced: draw (with replacement) so every "
        "class is equally likely and, within a class, every source that has it "
        "(brainmri.training.cache.source_balanced_weights)",
    )
    mixstyle: float = Field(
        0.0,
        ge=0,
        le=1,
        description="probability that a training batch's early feature statistics are mixed between its images "
        "(MixStyle, brainmri.training.mixstyle); 0: off",
    )
    group_dro: float = Field(
        0.0,
        ge=0,
        description="step size of group DRO's weights over the train rows' (source, label) cells: the loss leans "
        "towards the cells fitted worst (brainmri.training.loss.GroupDRO); 0: off, plain mean loss",
    )
    patience: int = Field(5, ge=0, description="stop after this many epochs without a lower val loss; 0: never")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_bf16: bool = Field(
        False,
        description="bf16 autocast when training on a CPU with AVX512-BF16 or AMX and native kernels "
        "(BRAINMRI_NATIVE_CPU=1); elsewhere fp32, with a note (brainmri.training.device.cpu_bf16_usable)",
    )
    num_threads: int = Field(
        0,
        ge=0,
        description="CPU threads for training; 0: os.cpu_count(), shared out under torchrun "
        "(lower it on a shared machine)",
    )
    num_workers: int = Field(0, ge=0, description="threads decoding images into the tensor cache; 0: one per core")
    cache_dir: Path = Field(Path("build/cache"), description="decoded-image cache (not a DVC output: survives repro)")
    resume: bool = Field(False, description="continue from out_dir/last.pt when it exists")
    augment: AugmentConfig = AugmentConfig()
    input: InputConfig = InputConfig()

    @property
    def checkpoint(self) -> Path:
        """The best checkpoint the train stage writes: what evaluate, external sets, predict and export read."""
        return self.out_dir / CHECKPOINT_NAME

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if not value:
            raise ValueError("train.model is missing (known: " + ", ".join(MODEL_NAMES) + ")")
        if value not in MODEL_NAMES:
            raise ValueError(f"unknown model {value!r} (known: {', '.join(MODEL_NAMES)})")
        return value

    @model_validator(mode="after")
    def _fine_tunes_after_freezing(self) -> "TrainConfig":
        if self.freeze_epochs >= self.epochs:
            raise ValueError(
                f"freeze_epochs ({self.freeze_epochs}) must be below epochs ({self.epochs}), or the trunk never trains"
            )
        return self


class ExternalPatients(_Strict):
    """Where an external set says which patient each image is of: a CSV table with a file and a patient column.

    ``table`` is looked for inside the set (a zip member or a file in the
    folder, at any depth, e.g. ``slices.csv`` finds ``tcga/slices.csv``),
    then beside it. A row's file names an image by its path inside the set
    or by its last components (a bare file name is enough when unique).
    ``subset`` scores only some of the table's patients (the half a training
    source does not hold); the other images are counted, not scored.
    """

    table: str = "slices.csv"
    file_column: str = "file"
    patient_column: str = "patient"
    subset: PatientSubset | None = None


class ExternalSetConfig(_Strict):
    """A labelled folder or zip evaluated on its own (``evaluate.external``), after removing what train/val already
    hold.

    ``labels`` maps a folder name inside it (the nearest enclosing one counts) to one of ``CLASSES`` or to
    ``tumor_unknown`` (a tumour of unknown type): metrics are computed over the classes present, and every set
    gets tumour detection. ``patients`` (optional) adds per-patient results.
    """

    name: str = Field(pattern=SAFE_NAME)
    path: Path
    labels: dict[str, str]
    patients: ExternalPatients | None = None

    @field_validator("labels")
    @classmethod
    def _known_labels(cls, value: dict[str, str]) -> dict[str, str]:
        allowed = (*CLASSES, *EXTRA_LABELS)
        bad = sorted(set(value.values()) - set(allowed))
        if bad or not value:
            raise ValueError(f"labels must map folder names to {', '.join(allowed)}; got {bad or 'none'}")
        return value


class EvaluateConfig(_Strict):
    out_dir: Path = Path("build/evaluate")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for confidence intervals")
    gradcam_per_class: int = Field(
        2, ge=0, description="test images per class and outcome (correct, wrong) drawn for Grad-CAM overlays"
    )
    ood_quantile: float = Field(
        0.995, gt=0.5, le=1, description="out-of-distribution threshold: this quantile of the val images' scores"
    )
    ood_view: Literal["as_is", "stretched"] = Field(
        "stretched",
        description="what the out-of-distribution check sees: stretched, each image resized and its head's "
        "1st-99th percentile mapped to 0-255 (one more forward pass; exposure stops counting as not MRI); "
        "as_is, the classifier's own input",
    )
    temperature_scaling: bool = Field(
        True, description="fit a softmax temperature on val (by log-likelihood) and report calibrated probabilities"
    )
    external: list[ExternalSetConfig] = Field(
        [], description="extra labelled sets evaluated under their own names, minus near-duplicates of train/val"
    )

    @property
    def ood_file(self) -> Path:
        """The out-of-distribution check the evaluate stage fits: what external sets and predict apply."""
        return self.out_dir / "ood.npz"

    @property
    def temperature_file(self) -> Path:
        """The softmax temperature the evaluate stage fits: what external sets, predict and export apply."""
        return self.out_dir / "temperature.json"

    @field_validator("external")
    @classmethod
    def _unique_names(cls, value: list[ExternalSetConfig]) -> list[ExternalSetConfig]:
        names = [spec.name for spec in value]
        if len(set(names)) != len(names):
            raise ValueError(f"external set names must be unique, got {names}")
        return value


class Config(_Strict):
    """The whole params file. Every section must be present (a missing one is a mistake, not a wish for
    defaults); within a section, keys have defaults."""

    seed: int = Field(42, ge=0, le=MAX_SEED)
    fetch: FetchConfig
    synthetic: SyntheticConfig
    source_sets: dict[str, list[str]]
    sources: dict[str, SourceConfig]
    merge: MergeConfig
    dedup: DedupConfig
    split: SplitConfig
    train: TrainConfig
    evaluate: EvaluateConfig

    @field_validator("sources")
    @classmethod
    def _safe_source_names(cls, value: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        bad = sorted(name for name in value if not re.match(SAFE_NAME, name))
        if bad:
            raise ValueError(
                f"source name(s) {bad} must be plain folder names (letters, digits, _ . -, no leading dot)"
            )
        return value

    @model_validator(mode="after")
    def _outputs_inside_build(self) -> "Config":
        """Output folders lie inside ``BUILD_DIR``, apart from each other and from every input folder."""
        build = (Path.cwd() / BUILD_DIR).resolve()
        outputs = {
            "fetch.out_dir": self.fetch.out_dir,
            "merge.out_dir": self.merge.out_dir,
            "dedup.out_dir": self.dedup.out_dir,
            "split.out_dir": self.split.out_dir,
            "split.dataset_dir": self.split.dataset_dir,
            "train.out_dir": self.train.out_dir,
            "train.cache_dir": self.train.cache_dir,
            "evaluate.out_dir": self.evaluate.out_dir,
        }
        inputs = {
            "fetch.data_dir": self.fetch.data_dir,
            **{f"fetch.mirrors[{k}]": mirror for k, mirror in enumerate(self.fetch.mirrors)},
            **{f"evaluate.external.{spec.name}.path": spec.path for spec in self.evaluate.external},
        }
        seen: dict[Path, str] = {}
        for key, folder in outputs.items():
            where = (Path.cwd() / folder).resolve()
            if build not in where.parents:
                raise ValueError(
                    f"{key} {str(folder)!r} must be a folder inside {BUILD_DIR}/ (stages delete and rewrite it)"
                )
            for other, taken in seen.items():
                if _overlap(where, other):
                    raise ValueError(f"{key} {str(folder)!r} overlaps {taken}; each stage needs a folder of its own")
            for name, given in inputs.items():
                if _overlap(where, (Path.cwd() / given).resolve()):
                    raise ValueError(
                        f"{key} {str(folder)!r} overlaps the input folder {name} {str(given)!r}, which it would delete"
                    )
            seen[where] = key
        return self

    @model_validator(mode="after")
    def _sets_name_sources(self) -> "Config":
        if self.fetch.source_set not in self.source_sets:
            raise ValueError(
                f"fetch.source_set {self.fetch.source_set!r} is not one of source_sets ({', '.join(self.source_sets)})"
            )
        for set_name, names in self.source_sets.items():
            missing = [n for n in names if n not in self.sources]
            if missing:
                raise ValueError(f"source_sets.{set_name} names undeclared source(s) {missing}")
        holdout = self.split.holdout_source
        if holdout is not None and holdout not in self.source_sets[self.fetch.source_set]:
            raise ValueError(f"split.holdout_source {holdout!r} is not in source set {self.fetch.source_set!r}")
        undeclared = [n for n in self.split.train_only_sources if n not in self.sources]
        if undeclared:
            raise ValueError(f"split.train_only_sources names undeclared source(s) {undeclared}")
        if holdout is not None and holdout in self.split.train_only_sources:
            raise ValueError(f"split.holdout_source {holdout!r} cannot also be in split.train_only_sources")
        if self.split.folds == 1:
            raise ValueError("split.folds must be 0 (off) or at least 2")
        if self.split.folds and self.split.table_folds:
            raise ValueError("split.folds and split.table_folds are exclusive: one fold column at a time")
        return self

    def active_sources(self) -> dict[str, SourceConfig]:
        """The sources selected by ``fetch.source_set``, in declaration order of the set."""
        return {name: self.sources[name] for name in self.source_sets[self.fetch.source_set]}


def _overlap(a: Path, b: Path) -> bool:
    """Whether two resolved folders are the same or one holds the other."""
    return a == b or a in b.parents or b in a.parents


def _one_line(error: ValidationError, origin: str) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {error.error_count() - 1} more problem(s))" if error.error_count() > 1 else ""
    return f"{origin}: {where}: {message}{more}"


def parse_config(raw: dict, origin: str = "params") -> Config:
    """Validate a params mapping; raise ``ConfigError`` with one readable line."""
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_one_line(error, origin)) from None


def load_config(path: Path | str = "params.yaml") -> Config:
    """Read and validate ``params.yaml``; relative paths in it stay relative to the working directory."""
    path = Path(path)
    try:
        # YAML 1.2, as DVC reads and rewrites params.yaml (`dvc exp run -S`): `yes`/`no` stay strings.
        raw = YAML(typ="safe", pure=True).load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a params file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (params must be YAML)") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror})") from None
    except YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return parse_config(raw, origin=str(path))
