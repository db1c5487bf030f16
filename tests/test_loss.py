"""The training loss for class labels and tumours of unknown type, checked against hand-computed values."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import brainmri.training.train as train
from brainmri.config import CLASSES, TrainConfig
from brainmri.core.imaging import read_grey_png
from brainmri.core.preprocess import prepare_grey
from brainmri.model.checkpoint import load_checkpoint
from brainmri.model.inference import logits_and_features
from brainmri.training.loss import (
    UNKNOWN_TUMOUR_INDEX,
    GroupDRO,
    TumourAwareLoss,
    any_tumour_nll,
    group_indices,
    hits,
    training_label_indices,
)
from brainmri.training.train import train_model
from conftest import blob_image, write_grey_png

NO_TUMOUR = CLASSES.index("no_tumor")


def test_labels_map_to_classes_and_unknown_type_tumours_to_minus_one():
    labels = training_label_indices(["glioma", "tumor_unknown", "no_tumor"], CLASSES)
    assert labels.tolist() == [CLASSES.index("glioma"), UNKNOWN_TUMOUR_INDEX, NO_TUMOUR]
    with pytest.raises(ValueError, match="'cat'"):
        training_label_indices(["glioma", "cat"], CLASSES)
    with pytest.raises(ValueError, match="no_tumor"):
        training_label_indices(["a", "tumor_unknown"], ["a", "b"])


def test_class_labels_alone_give_torch_cross_entropy_to_the_bit():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 4), torch.randint(0, 4, (16,))
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5])
    for kwargs in ({}, {"weight": weight}, {"label_smoothing": 0.1}, {"weight": weight, "label_smoothing": 0.1}):
        expected = torch.nn.CrossEntropyLoss(**kwargs)(logits, target)
        assert torch.equal(TumourAwareLoss(NO_TUMOUR, **kwargs)(logits, target), expected)


def test_an_unknown_type_tumour_costs_minus_log_p_any_tumour():
    logits = torch.tensor([[1.0, 0.0, 2.0, -1.0], [0.5, 0.5, 0.5, 0.5]])
    target = torch.tensor([UNKNOWN_TUMOUR_INDEX, CLASSES.index("meningioma")])
    p = torch.softmax(logits, dim=1)
    unknown = -math.log(1 - float(p[0, NO_TUMOUR]))
    known = -math.log(float(p[1, CLASSES.index("meningioma")]))  # 0.25 each: log 4
    assert float(any_tumour_nll(logits[:1], NO_TUMOUR)[0]) == pytest.approx(unknown, rel=1e-6)
    assert float(TumourAwareLoss(NO_TUMOUR)(logits, target)) == pytest.approx((unknown + known) / 2, rel=1e-6)
    assert float(TumourAwareLoss(NO_TUMOUR, reduction="sum")(logits, target)) == pytest.approx(unknown + known)
    weight = torch.tensor([1.0, 3.0, 1.0, 1.0])  # meningioma weighs 3, an unknown-type row 1
    weighted = TumourAwareLoss(NO_TUMOUR, weight=weight)(logits, target)
    assert float(weighted) == pytest.approx((unknown + 3 * known) / (1 + 3), rel=1e-6)


def test_the_unknown_type_loss_does_not_prefer_a_tumour_class():
    logits = torch.tensor([[0.3, -1.2, 0.8, 2.0]])
    target = torch.tensor([UNKNOWN_TUMOUR_INDEX])
    tumour_classes = [k for k in range(4) if k != NO_TUMOUR]
    shuffled = logits.clone()
    shuffled[0, tumour_classes] = logits[0, tumour_classes[::-1]]
    loss = TumourAwareLoss(NO_TUMOUR)
    assert float(loss(shuffled, target)) == pytest.approx(float(loss(logits, target)))
    logits.requires_grad_(True)
    loss(logits, target).backward()
    assert logits.grad[0, NO_TUMOUR] > 0  # a step down the gradient lowers P(no tumour)
    assert (logits.grad[0, tumour_classes] < 0).all()  # and raises every tumour class


def test_hits_count_any_tumour_class_as_right_for_an_unknown_type():
    logits = torch.eye(4)[[0, NO_TUMOUR, 3, 1]] * 5
    target = torch.tensor([UNKNOWN_TUMOUR_INDEX, UNKNOWN_TUMOUR_INDEX, 3, 2])
    assert hits(logits, target, NO_TUMOUR).tolist() == [True, False, True, False]
    assert hits(logits, torch.tensor([0, 1, 3, 1]), None).tolist() == [True, False, True, True]


def test_per_row_losses_match_torch_and_the_unknown_type_formula():
    logits = torch.tensor([[1.0, 0.0, 2.0, -1.0], [0.5, 0.5, 0.5, 0.5], [2.0, 1.0, 0.0, 0.0]])
    target = torch.tensor([UNKNOWN_TUMOUR_INDEX, CLASSES.index("meningioma"), 0])
    weight = torch.tensor([2.0, 3.0, 1.0, 1.0])
    rows = TumourAwareLoss(NO_TUMOUR, weight=weight).per_row(logits, target)
    expected_known = torch.nn.functional.cross_entropy(logits[1:], target[1:], weight=weight, reduction="none")
    assert torch.equal(rows[1:], expected_known)
    assert float(rows[0]) == pytest.approx(float(any_tumour_nll(logits[:1], NO_TUMOUR)[0]))


def test_group_dro_weighs_group_means_and_raises_the_worse_group():
    """Two groups with hand-computed mean losses: the weights move by exp(eta * loss), then normalise."""
    logits = torch.tensor([[3.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([0, 0, 1])
    group = torch.tensor([0, 0, 1])  # group 0 fitted well (both rows), group 1 not at all (one row)
    easy = -math.log(math.exp(3) / (math.exp(3) + 3))
    hard = math.log(4)
    dro = GroupDRO(TumourAwareLoss(NO_TUMOUR), num_groups=3, eta=0.5)  # group 2 absent from the batch
    loss = dro(logits, target, group)
    raised = [math.exp(0.5 * easy) / 3, math.exp(0.5 * hard) / 3, 1 / 3]
    q = [value / sum(raised) for value in raised]
    assert dro.q.tolist() == pytest.approx(q, rel=1e-6)
    assert float(loss) == pytest.approx(q[0] * easy + q[1] * hard, rel=1e-6)  # group means, not the row mean
    assert dro.q[1] > dro.q[0] > dro.q[2]  # the absent group counts as loss 0 this step
    for _ in range(20):
        dro(logits, target, group)
    assert float(dro.q[1]) > 0.9  # the unfitted group takes over while it stays unfitted
    assert set(dro.state_dict()) == {"q"}  # the weights travel with the state dict (resume)


def test_group_dro_refuses_no_groups_or_no_step():
    with pytest.raises(ValueError, match="step size"):
        GroupDRO(TumourAwareLoss(NO_TUMOUR), num_groups=2, eta=0.0)


def test_groups_are_source_label_cells_in_sorted_order():
    groups, cells = group_indices(
        ["kaggle", "figshare", "kaggle", "kaggle"], ["glioma", "glioma", "no_tumor", "glioma"]
    )
    assert cells == [("figshare", "glioma"), ("kaggle", "glioma"), ("kaggle", "no_tumor")]
    assert groups.tolist() == [1, 0, 2, 1]


def test_group_dro_training_runs_resumes_and_reports_its_weights(tmp_path, monkeypatch):
    """Two sources, one tiny: training with group DRO reports the final cell weights; the switch is recorded."""
    rng = np.random.default_rng(2)
    rows = []
    for split, count in (("train", 10), ("val", 3)):
        for source, labels in (("big", ("glioma", "no_tumor")), ("small", ("no_tumor",))):
            for label in labels:
                for index in range(count if source == "big" else 3):
                    pixels = blob_image(rng, 48) if label != "no_tumor" else np.full((48, 48), 40, np.uint8)
                    path = write_grey_png(tmp_path / f"{split}_{source}_{label}_{index}.png", pixels)
                    rows.append({"path": str(path), "label": label, "split": split, "source": source})
    table = pd.DataFrame(rows).assign(image_id=lambda t: [f"i{n}" for n in range(len(t))])
    cfg = TrainConfig(image_size=32, epochs=2, batch_size=8, num_threads=1, cache_dir=tmp_path / "cache", group_dro=0.1)
    summary = train_model(
        table, cfg, seed=1, out_dir=tmp_path / "model", live_dir=tmp_path / "live", data_version="v", classes=CLASSES
    )
    weights = summary["group_dro_weights"]
    assert set(weights) == {"big/glioma", "big/no_tumor", "small/no_tumor"}
    assert sum(weights.values()) == pytest.approx(1, abs=1e-3)
    _, meta = load_checkpoint(tmp_path / "model" / "model.pt")
    assert meta.params["train"]["group_dro"] == 0.1
    last = torch.load(tmp_path / "model" / "last.pt", weights_only=False)
    assert last["extra"]["criterion"]["q"].tolist() == pytest.approx(list(weights.values()), abs=1e-4)
    real_val_pass, calls = train._val_pass, []

    def crash_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_val_pass(*args, **kwargs)

    monkeypatch.setattr(train, "_val_pass", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_model(table, cfg, seed=1, out_dir=tmp_path / "c", live_dir=tmp_path / "lc", data_version="v")
    monkeypatch.setattr(train, "_val_pass", real_val_pass)
    resumed = train_model(
        table,
        cfg.model_copy(update={"resume": True}),
        seed=1,
        out_dir=tmp_path / "c",
        live_dir=tmp_path / "lc",
        data_version="v",
    )
    assert resumed["group_dro_weights"] == weights  # the weights came back from last.pt, not from 1/3 each
    again = torch.load(tmp_path / "c" / "last.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(again[key], last["state_dict"][key]) for key in again)
    with pytest.raises(ValueError, match="source column"):
        train_model(
            table.drop(columns="source"),
            cfg,
            seed=1,
            out_dir=tmp_path / "m2",
            live_dir=tmp_path / "l2",
            data_version="v",
            classes=CLASSES,
        )


def test_training_learns_from_unknown_type_tumours(tmp_path):
    """Tumours of unknown type in train and val: training runs and scores them as tumours, not as a class."""
    rng = np.random.default_rng(5)
    rows = []
    for split, count in (("train", 12), ("val", 4)):
        for label in (*CLASSES, "tumor_unknown"):
            for index in range(count):
                pixels = blob_image(rng, 48) if label != "no_tumor" else np.full((48, 48), 40, np.uint8)
                path = write_grey_png(tmp_path / f"{split}_{label}_{index}.png", pixels)
                rows.append({"image_id": path.stem, "path": str(path), "label": label, "split": split})
    table = pd.DataFrame(rows)
    cfg = TrainConfig(image_size=32, epochs=2, batch_size=8, num_threads=1, cache_dir=tmp_path / "cache")
    summary = train_model(
        table, cfg, seed=1, out_dir=tmp_path / "model", live_dir=tmp_path / "live", data_version="v", classes=CLASSES
    )
    assert summary["train_images"] == 60 and summary["val_images"] == 20
    assert math.isfinite(summary["best_val_loss"])
    model, meta = load_checkpoint(tmp_path / "model" / "model.pt")
    assert meta.classes == list(CLASSES)  # no fifth class: an unknown type is a set of classes
    val = table[table["split"] == "val"]
    images = [prepare_grey(read_grey_png(path), 32, meta.preprocess) for path in val["path"]]
    logits, _ = logits_and_features(model, images, 32)
    p_tumour = 1 - torch.softmax(torch.from_numpy(logits), dim=1)[:, NO_TUMOUR].numpy()
    labels = val["label"].to_numpy()
    assert p_tumour[labels == "tumor_unknown"].mean() > p_tumour[labels == "no_tumor"].mean() + 0.2


def test_group_dro_refuses_several_processes():
    """Under torchrun each rank would move its own weights: one clear error instead of silently diverging ranks."""
    rows = pd.DataFrame({"source": ["a", "b"], "label": ["glioma", "no_tumor"]})
    assert train._dro_groups(rows, SimpleNamespace(world_size=1))[1] == [("a", "glioma"), ("b", "no_tumor")]
    with pytest.raises(ValueError, match="one process"):
        train._dro_groups(rows, SimpleNamespace(world_size=2))
