"""Issue 12, taking source shortcuts away from the input: the head crop, per-image intensity normalisation and
scanner augmentations; one preprocessing for train, evaluate, predict and export, recorded in the checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainmri.config import AugmentConfig, InputConfig, TrainConfig
from brainmri.core.preprocess import (
    input_box,
    normalise_input,
    percentile_stretch,
    prepare_grey,
    resize_grey,
    to_model_input,
    uint8_batch_to_float,
)
from brainmri.evaluation.evaluate import _regions, load_resized
from brainmri.model.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from brainmri.serving.export import _meta
from brainmri.serving.predict import decoded_batches, predict_paths
from brainmri.training.cache import (
    BatchAugment,
    FloatJPEG,
    RandomBiasField,
    RandomDownUp,
    RandomGamma,
    cache_key,
    cached_images,
    epoch_batches,
    source_balanced_weights,
)
from brainmri.training.train import recorded_params, train_model
from conftest import CLASSES, untrained_checkpoint, write_grey_png

HEAD = InputConfig(crop="head")
BOTH = InputConfig(crop="head", intensity="percentile")
HEAD_ROWS, HEAD_COLUMNS = (70, 190), (60, 160)  # the phantom's head: an ellipse filling this box


def phantom(seed: int = 0, size: int = 240, gain: float = 1.0) -> np.ndarray:
    """A head (textured ellipse with a dark ventricle) off-centre on a wide black border, and burnt-in
    bright text in the top-right corner, apart from the head."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    (top, bottom), (left, right) = HEAD_ROWS, HEAD_COLUMNS
    cy, cx, ry, rx = (top + bottom - 1) / 2, (left + right - 1) / 2, (bottom - top) / 2, (right - left) / 2
    image = np.zeros((size, size))
    head = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    image[head] = rng.normal(110, 15, int(head.sum())) * gain
    image[((yy - cy) / 18) ** 2 + ((xx - cx) / 12) ** 2 <= 1] = 25 * gain
    for k in range(4):  # four "letters"
        image[10:24, 170 + 14 * k : 180 + 14 * k] = 255
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def test_head_crop_keeps_the_head_and_drops_the_border_and_the_corner_text():
    image = phantom()
    top, left, side = input_box(image, HEAD)
    (head_top, head_bottom), (head_left, head_right) = HEAD_ROWS, HEAD_COLUMNS
    assert (
        top <= head_top and left <= head_left and top + side >= head_bottom and left + side >= head_right
    )  # whole head
    assert side <= 1.1 * (head_bottom - head_top)  # tight: no wide border left
    assert top > 24 or left + side <= 170  # the text block (rows 10-24, columns from 170) lies outside
    view = normalise_input(image, HEAD)
    assert view.shape == (side, side) and view.max() < 255  # square (aspect kept); no text pixel in it
    assert abs(view.shape[0] / 2 - (head_top + head_bottom) / 2 + top) <= 2  # the head is centred


def test_percentile_normalisation_maps_the_heads_percentiles_to_black_and_white():
    values = np.arange(50, 150, dtype=np.uint8)  # 100 values: percentiles are known
    low, high = np.percentile(values, [1, 99])
    stretched = percentile_stretch(np.array([[low, high, 0, 255]]).round().astype(np.uint8), values)
    assert stretched.tolist() == [
        [0, 255, 0, 255]
    ]  # the 1st and 99th percentiles go to black and white, beyond is clipped
    mid = percentile_stretch(np.array([[100]], np.uint8), values)[0, 0]
    assert abs(int(mid) - round((100 - low) * 255 / (high - low))) <= 1
    # a darker export of the same head comes out the same: the per-source brightness is gone
    bright = normalise_input(phantom(), InputConfig(intensity="percentile"))
    dark = normalise_input(phantom(gain=0.6), InputConfig(intensity="percentile"))
    assert (
        np.abs(bright.astype(int) - dark.astype(int)).mean()
        < 3
        < np.abs(phantom().astype(int) - phantom(gain=0.6).astype(int)).mean()
    )


def test_defaults_leave_images_untouched_and_the_cache_key_unchanged(tmp_path):
    image = phantom()
    assert normalise_input(image) is image and np.array_equal(prepare_grey(image, 64), resize_grey(image, 64))
    flat = np.full((40, 40), 7, np.uint8)  # no head to find: left as it is
    assert normalise_input(flat, BOTH) is flat
    table = pd.DataFrame({"path": ["a.png", "b.png"], "sha256": ["x", "y"]})
    before = hashlib.sha256(
        json.dumps({"image_size": 32, "rows": [["a.png", "x"], ["b.png", "y"]]}).encode()
    ).hexdigest()
    assert cache_key(table, 32) == cache_key(table, 32, InputConfig()) == before  # caches built earlier stay valid
    assert len({cache_key(table, 32), cache_key(table, 32, HEAD), cache_key(table, 32, BOTH)}) == 3


def test_train_cache_evaluate_and_predict_feed_the_model_the_same_tensor(tmp_path):
    path = write_grey_png(tmp_path / "scan.png", phantom(seed=3))
    table = pd.DataFrame({"path": [str(path)]})
    for spec in (InputConfig(), BOTH):
        cached = uint8_batch_to_float(
            torch.from_numpy(np.array(cached_images(table, 48, tmp_path / "cache", spec=spec)))
        )
        evaluated = to_model_input(load_resized([path], 48, spec), 48)
        ((_, decoded),) = decoded_batches([path], 8, [])  # predict's reading of the file
        predicted = to_model_input([normalise_input(image, spec) for image in decoded], 48)
        assert torch.equal(cached, evaluated) and torch.equal(cached, predicted)
    assert not torch.equal(cached, to_model_input([phantom(seed=3)], 48))  # the switches did change the input


def _checkpoint(path: Path, spec: InputConfig) -> Path:
    return untrained_checkpoint(path, data_version="v1", preprocess=spec)


def test_checkpoint_records_the_settings_and_predict_applies_them(tmp_path, one_torch_thread):
    images = tmp_path / "images"
    for seed in range(3):
        write_grey_png(images / f"{seed}.png", phantom(seed))
    plain, cropped = _checkpoint(tmp_path / "plain.pt", InputConfig()), _checkpoint(tmp_path / "head.pt", BOTH)
    assert "preprocess" not in read_checkpoint(plain)  # the default leaves the bytes of before: absent means none
    assert load_checkpoint(plain)[1].preprocess == InputConfig()
    assert read_checkpoint(cropped)["preprocess"] == {"crop": "head", "intensity": "percentile"}
    assert load_checkpoint(cropped)[1].preprocess == BOTH
    tables = {}
    for name, checkpoint in (("plain", plain), ("head", cropped)):
        predict_paths([images], checkpoint, tmp_path / f"{name}.csv")
        tables[name] = pd.read_csv(tmp_path / f"{name}.csv")
    probabilities = [f"p_{c}" for c in CLASSES]
    assert (tables["plain"]["file"] == tables["head"]["file"]).all()  # same weights, same files ...
    assert (
        np.abs(tables["plain"][probabilities].to_numpy() - tables["head"][probabilities].to_numpy()).max() > 1e-4
    )  # ... other input
    payload = torch.load(cropped, weights_only=True)
    payload["preprocess"] = {"crop": "skull"}
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: 'preprocess\.crop'"):
        load_checkpoint(tmp_path / "bad.pt")


def test_export_metadata_says_the_crop_runs_outside_the_graph(tmp_path):
    checkpoint = _checkpoint(tmp_path / "head.pt", HEAD)
    _, meta = load_checkpoint(checkpoint)
    recorded = _meta(meta, checkpoint, 1.0)["preprocess"]
    assert recorded["crop"] == "head" and recorded["intensity"] == "none" and "outside the graph" in recorded["applied"]


def test_tumour_regions_follow_the_crop(tmp_path):
    image = phantom()
    path = write_grey_png(tmp_path / "scan.png", image)
    # a YOLO box around the ventricle, the centre of the head's bounding box
    (top, bottom), (left, right) = HEAD_ROWS, HEAD_COLUMNS
    box = f"{(left + right) / 2 / 240} {(top + bottom) / 2 / 240} {30 / 240} {30 / 240}"
    rows = pd.DataFrame({"path": [str(path)], "box": [box]})
    whole, cropped = _regions(rows, 48)[0], _regions(rows, 48, HEAD)[0]
    assert cropped.sum() > 2 * whole.sum()  # the crop zooms in on the head, and the region with it
    centre = np.argwhere(cropped).mean(axis=0)
    assert np.abs(centre - 23.5).max() <= 2  # and it stays on the head's centre, as the image does


def test_default_training_records_no_new_params_and_a_cropped_run_records_its_settings(tmp_path, one_torch_thread):
    default = recorded_params(TrainConfig())
    assert "input" not in default and not {"gamma", "bias_field", "downsample_min", "jpeg_quality_min"} & set(
        default["augment"]
    )
    switched = recorded_params(TrainConfig(input=HEAD, augment=AugmentConfig(gamma=0.3)))
    assert switched["input"] == {"crop": "head", "intensity": "none"} and switched["augment"]["gamma"] == 0.3
    rows = []
    for k, split in enumerate(["train"] * 8 + ["val"] * 4):
        label = CLASSES[k % 2]
        path = write_grey_png(tmp_path / f"{k}.png", phantom(seed=k, gain=0.5 if label == "glioma" else 1.0))
        rows.append({"path": str(path), "label": label, "split": split})
    cfg = TrainConfig(
        image_size=32, epochs=1, batch_size=4, num_threads=1, pretrained=False, input=BOTH, cache_dir=tmp_path / "cache"
    )
    train_model(
        pd.DataFrame(rows),
        cfg,
        seed=1,
        out_dir=tmp_path / "model",
        live_dir=tmp_path / "live",
        data_version="v1",
        classes=CLASSES,
    )
    payload = read_checkpoint(tmp_path / "model" / "model.pt")
    assert payload["preprocess"] == {"crop": "head", "intensity": "percentile"}
    assert payload["params"]["train"]["input"] == payload["preprocess"]


def test_scanner_augmentations_are_off_by_default_and_seeded():
    default = BatchAugment(AugmentConfig(), 32).transform.transforms
    assert [type(step).__name__ for step in default] == [
        "RandomHorizontalFlip",
        "RandomResizedCrop",
        "RandomRotation",
        "ColorJitter",
    ]
    plain = AugmentConfig(hflip=False, rotation_degrees=0, scale_min=1, brightness=0, contrast=0)
    batch = torch.from_numpy(np.stack([resize_grey(phantom(seed), 32) for seed in range(4)])).unsqueeze(1).float() / 255
    switches = {
        "gamma": (0.5, RandomGamma),
        "bias_field": (0.5, RandomBiasField),
        "downsample_min": (0.3, RandomDownUp),
        "jpeg_quality_min": (10, FloatJPEG),
    }
    for name, (value, kind) in switches.items():
        augment = BatchAugment(plain.model_copy(update={name: value}), 32)
        assert [type(step) for step in augment.transform.transforms] == [kind]
        a, b, c = augment(batch, seed=1), augment(batch, seed=1), augment(batch, seed=2)
        assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, batch), name
        assert a.shape == batch.shape and a.dtype == batch.dtype and 0 <= a.min() and a.max() <= 1, name
    lowered = BatchAugment(plain.model_copy(update={"downsample_min": 0.25}), 32)(batch, seed=1)
    assert lowered.diff(dim=-1).abs().mean() < batch.diff(dim=-1).abs().mean()  # lower resolution: smoother


def test_source_balanced_weights_make_classes_and_sources_within_a_class_equally_likely():
    labels = ["glioma"] * 6 + ["glioma"] * 2 + ["no_tumor"] * 4
    sources = ["figshare"] * 6 + ["kaggle"] * 2 + ["kaggle"] * 4
    weights = source_balanced_weights(labels, sources)
    assert weights.sum() == pytest.approx(1.0)
    # glioma 1/2 split over two sources (1/4 each: 6 and 2 images), no_tumor 1/2 over one source of 4 images
    assert weights.tolist() == pytest.approx([1 / 24] * 6 + [1 / 8] * 2 + [1 / 8] * 4)


def test_weighted_epochs_draw_the_same_number_of_batches_seeded_and_follow_the_weights():
    weights = np.array([0.7, 0.1, 0.1, 0.1])
    plain = epoch_batches(4, 2, seed=3, epoch=0)
    drawn = epoch_batches(4, 2, seed=3, epoch=0, weights=weights)
    assert len(drawn) == len(plain) == 2 and all(len(batch) == 2 for batch in drawn)
    assert [b.tolist() for b in drawn] == [b.tolist() for b in epoch_batches(4, 2, seed=3, epoch=0, weights=weights)]
    many = np.concatenate(epoch_batches(10_000, 100, seed=3, epoch=1, weights=np.full(10_000, 1e-4)))
    assert len(np.unique(many)) < 10_000  # with replacement: some images twice, some not at all
    draws = np.concatenate([np.concatenate(epoch_batches(4, 2, seed=0, epoch=e, weights=weights)) for e in range(500)])
    counts = np.bincount(draws, minlength=4)
    assert counts[0] / counts.sum() == pytest.approx(0.7, abs=0.03)


def test_source_balanced_training_runs_is_recorded_and_needs_a_source_column(tmp_path, one_torch_thread):
    assert "sampling" not in recorded_params(TrainConfig())  # default checkpoints keep their bytes
    rows = []
    for k, split in enumerate(["train"] * 8 + ["val"] * 4):
        label = CLASSES[k % 2]
        path = write_grey_png(tmp_path / f"{k}.png", phantom(seed=k, gain=0.5 if label == "glioma" else 1.0))
        rows.append({"path": str(path), "label": label, "split": split, "source": "a" if k < 6 else "b"})
    cfg = TrainConfig(
        image_size=32,
        epochs=1,
        batch_size=4,
        num_threads=1,
        pretrained=False,
        sampling="source_balanced",
        cache_dir=tmp_path / "cache",
    )
    table = pd.DataFrame(rows)
    train_model(
        table, cfg, seed=1, out_dir=tmp_path / "model", live_dir=tmp_path / "live", data_version="v1", classes=CLASSES
    )
    assert read_checkpoint(tmp_path / "model" / "model.pt")["params"]["train"]["sampling"] == "source_balanced"
    with pytest.raises(ValueError, match="source column"):
        train_model(
            table.drop(columns="source"),
            cfg,
            seed=1,
            out_dir=tmp_path / "m2",
            live_dir=tmp_path / "l2",
            data_version="v1",
            classes=CLASSES,
        )
