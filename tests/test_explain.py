"""Grad-CAM finds a planted blob, localisation scores count hits and mass, regions come from masks and boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from brainmri.model.architectures import build_model
from brainmri.model.explain import (
    gradcam,
    gradcam_images,
    localisation,
    overlay,
    region_mask,
    save_overlay,
    summarise_localisation,
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
    scores = [localisation(cam, disc) for cam, disc, label in zip(cams, discs, test_y) if label == 1]
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
    assert localisation(cam, region) == pytest.approx({"hit": True, "mass": 1 / 1.5, "area": 1 / 16})
    cam[3, 3] = 2.0
    assert localisation(cam, region)["hit"] is False
    assert localisation(np.zeros((4, 4)), region) == {"hit": False, "mass": 0.0, "area": 1 / 16}
    rows = [
        {"label": "glioma", "hit": True, "mass": 0.5, "area": 0.1},
        {"label": "glioma", "hit": False, "mass": 0.1, "area": 0.1},
    ]
    summary = summarise_localisation(rows, ["glioma", "no_tumor"])
    assert summary == {
        "glioma": {"n": 2, "pointing_game": 0.5, "mass_in_region": 0.3, "chance": 0.1},
        "all": {"n": 2, "pointing_game": 0.5, "mass_in_region": 0.3, "chance": 0.1},
    }


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
