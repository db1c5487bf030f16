"""Grad-CAM finds a planted blob; Grad-CAM++ and input gradients match hand-computed maps; localisation scores count
hits (strict and with the 15-pixel tolerance) and mass; regions come from masks and boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from brainmri.model.architectures import build_model
from brainmri.model.explain import (
    channel_weights,
    gradcam,
    gradcam_images,
    localisation,
    overlay,
    region_mask,
    saliency,
    save_overlay,
    summarise_localisation,
    tolerance_in_map,
)

SIZE = 48


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blob_images(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Textured backgrounds; every odd image has a bright disc at a random place. Returns batch, labels, discs."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images, labels, discs = [], [], []
    for i in range(n):
        background = np.kron(rng.normal(90, 25, (SIZE // 8, SIZE // 8)), np.ones((8, 8))) + rng.normal(
            0, 8, (SIZE, SIZE)
        )
        cy, cx = rng.uniform(8, SIZE - 8, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 5**2
        label = i % 2
        images.append(np.clip(background + 120 * disc * label, 0, 255))
        labels.append(label)
        discs.append(disc)
    batch = torch.from_numpy(np.stack(images)).float().unsqueeze(1) / 255
    return batch, np.array(labels), np.stack(discs)


class TinyNet(nn.Module):
    """Two conv layers, global max pooling, a linear head: trains to find a blob in under a second."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.features(x).amax(dim=(2, 3)))


def test_gradcam_points_at_the_planted_blob():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x, y, _ = blob_images(rng, 128)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(30):
        rows = torch.from_numpy(rng.choice(len(x), 32, replace=False))
        loss = nn.functional.cross_entropy(model(x[rows]), torch.from_numpy(y)[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    test_x, test_y, discs = blob_images(np.random.default_rng(1), 40)
    cams, proba = gradcam(model, test_x, targets=[1] * len(test_x), layer=model.features)
    assert (proba.argmax(axis=1) == test_y).mean() >= 0.9, "the tiny model did not learn the blob"
    assert cams.shape == (40, SIZE, SIZE) and cams.min() >= 0 and cams.max() <= 1
    scores = [localisation(cam, disc) for cam, disc, label in zip(cams, discs, test_y, strict=True) if label == 1]
    hits = np.mean([s["hit"] for s in scores])
    mass = np.mean([s["mass"] for s in scores])
    chance = np.mean([s["area"] for s in scores])
    assert hits >= 0.9, f"Grad-CAM peak inside the blob for only {hits:.0%} of images"
    assert mass > 10 * chance, f"saliency mass in the blob {mass:.2f} vs area {chance:.3f}"
    assert all(p.grad is None for p in model.parameters()), "Grad-CAM must leave no gradients behind"


def test_gradcam_on_the_real_model_defaults_to_its_cam_layer_and_the_predicted_class():
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=4, pretrained=False).eval()
    images = [np.random.default_rng(k).integers(0, 256, (40 + 9 * k, 50), dtype=np.uint8) for k in range(3)]
    cams, proba = gradcam_images(model, images, 32, batch_size=2)
    assert cams.shape == (3, 32, 32) and proba.shape == (3, 4)
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert ((cams >= 0) & (cams <= 1)).all()
    again, _ = gradcam_images(model, images, 32, targets=proba.argmax(axis=1).tolist())
    assert np.allclose(cams, again, atol=1e-6), "default target must be the predicted class, independent of batching"


def test_region_from_box_and_mask(tmp_path):
    box = region_mask(10, box="0.5 0.5 0.4 0.2")
    assert box.sum() == 4 * 2 and box[5, 5] and not box[0, 0]
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[10:30, 60:90] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    region = region_mask(10, mask_path=str(tmp_path / "mask.png"))
    assert region[1:3, 6:9].all() and region.sum() == 6
    assert region_mask(10) is None
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "empty.png")
    assert region_mask(10, mask_path=str(tmp_path / "empty.png")) is None


def test_localisation_counts_peak_and_mass():
    region = np.zeros((4, 4), dtype=bool)
    region[0, 0] = True
    cam = np.zeros((4, 4))
    cam[0, 0], cam[3, 3] = 1.0, 0.5
    assert localisation(cam, region) == pytest.approx(
        {"hit": True, "hit_tolerant": True, "mass": 1 / 1.5, "area": 1 / 16}
    )
    cam[3, 3] = 2.0
    assert localisation(cam, region)["hit"] is False
    assert localisation(np.zeros((4, 4)), region) == {"hit": False, "hit_tolerant": False, "mass": 0.0, "area": 1 / 16}
    rows = [
        {"label": "glioma", "hit": True, "hit_tolerant": True, "mass": 0.5, "area": 0.1},
        {"label": "glioma", "hit": False, "hit_tolerant": True, "mass": 0.1, "area": 0.1},
    ]
    summary = summarise_localisation(rows, ["glioma", "no_tumor"])
    expected = {"n": 2, "pointing_game": 0.5, "pointing_game_15px": 1.0, "mass_in_region": 0.3, "chance": 0.1}
    assert summary == {"glioma": expected, "all": expected}


def test_pointing_game_tolerance_is_the_distance_from_the_peak_to_the_region():
    """Zhang et al.: a hit if the peak lies within 15 px of the region. A 3x3 region at rows/columns 10-12; peaks 14
    and 16 px to the right of its edge, and one 9 px right and 12 px down (distance 15, on the limit)."""
    region = np.zeros((40, 40), dtype=bool)
    region[10:13, 10:13] = True
    for (row, column), hit in (((11, 26), True), ((11, 28), False), ((24, 21), True), ((11, 11), True)):
        cam = np.zeros((40, 40))
        cam[row, column] = 1.0
        result = localisation(cam, region, tolerance=15)
        assert result["hit_tolerant"] is hit, (row, column)
        assert result["hit"] is ((row, column) == (11, 11))
    assert tolerance_in_map(512, 96) == pytest.approx(15 * 96 / 512)  # figshare's 512 px slices seen at 96 px: 2.8 px


class MeanPoolNet(nn.Module):
    """``features``: two 1x1 convolutions that copy the image (weight 1, no bias); the score of class k is
    ``sum_c head[k, c] * mean(A_c)``, so every activation pixel gets the gradient ``head[k, c] / (H * W)``."""

    def __init__(self, head: list[list[float]]):
        super().__init__()
        self.features = nn.Conv2d(1, 2, 1, bias=False)
        nn.init.ones_(self.features.weight)
        self.head = nn.Linear(2, len(head), bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor(head))

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_gradcam_plus_plus_keeps_positive_evidence_that_gradcam_cancels():
    """Class 0 reads channel 0 with weight +1 and channel 1 (the same image) with -1: Grad-CAM's weights 1/HW and
    -1/HW cancel to an empty map; Grad-CAM++ weights only positive gradients, so its map is the image itself."""
    image = torch.arange(1.0, 17.0).view(1, 1, 4, 4) / 16
    model = MeanPoolNet([[1.0, -1.0], [0.0, 1.0]])
    cam, _ = saliency(model, image, targets=[0], method="gradcam", layer=model.features)
    assert np.allclose(cam, 0.0)
    cam_pp, _ = saliency(model, image, targets=[0], method="gradcam_pp", layer=model.features)
    assert np.allclose(cam_pp[0], image[0, 0].numpy() / image.max().item(), atol=1e-6)


def test_gradcam_plus_plus_weights_by_hand():
    """One channel A = [[1, 2], [3, 4]] (sum 10), gradient 0.5 everywhere: alpha = 0.25 / (2 * 0.25 + 10 * 0.125) = 1/7
    per pixel, weight = 4 pixels * 1/7 * 0.5 = 2/7. Grad-CAM's weight is the mean gradient, 0.5."""
    activation = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    gradient = torch.full_like(activation, 0.5)
    assert channel_weights(activation, gradient, "gradcam_pp").item() == pytest.approx(2 / 7)
    assert channel_weights(activation, gradient, "gradcam").item() == pytest.approx(0.5)
    assert channel_weights(activation, torch.zeros_like(activation), "gradcam_pp").item() == 0.0  # no 0/0


def test_input_gradient_of_a_linear_score_is_its_weights():
    """score = sum(W * x): the gradient is W whatever x is, and the map is |W| / max |W|."""
    weights = torch.tensor([[0.0, -4.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(weights)
    maps, proba = saliency(model, torch.rand(3, 1, 2, 2), targets=[0, 0, 0], method="input_gradient", layer=model[0])
    assert maps.shape == (3, 2, 2) and proba.shape == (3, 2)
    assert np.allclose(maps, np.array([[0.0, 1.0], [0.25, 0.5]]))
    with pytest.raises(ValueError, match="unknown saliency method 'lime'"):
        saliency(model, torch.rand(1, 1, 2, 2), method="lime", layer=model[0])


def test_overlay_keeps_aspect_and_outlines_the_region(tmp_path):
    image = np.full((300, 600), 100, dtype=np.uint8)
    cam = np.zeros((32, 32))
    region = np.zeros((32, 32), dtype=bool)
    region[8:24, 8:24] = True
    picture = overlay(image, cam, region)
    assert picture.shape == (128, 2 * 256 + 4, 3)  # shrunk to a 256 px long side, grey beside heat map
    assert (picture == 255).all(axis=2).any(), "the region outline is drawn in white"
    save_overlay(tmp_path / "a" / "x.png", image, cam, region)
    save_overlay(tmp_path / "b.png", image, cam, region)
    assert (tmp_path / "a" / "x.png").read_bytes() == (tmp_path / "b.png").read_bytes()
