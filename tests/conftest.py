"""Shared fixtures: the project's params as a mapping, the class list, a tiny checkpoint, and small image helpers."""

from __future__ import annotations

import copy
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from brainmri.config import CLASSES as CONFIG_CLASSES

ROOT = Path(__file__).resolve().parents[1]
CLASSES = list(CONFIG_CLASSES)
"""The four classes in the model's output order, from config: what tests build tables and checkpoints with."""


@pytest.fixture(scope="session")
def project_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture
def one_torch_thread():
    """Two torch threads on a busy two-core machine spin against each other; one is many times faster here."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def params(project_params) -> dict:
    """A private, editable copy of params.yaml."""
    return copy.deepcopy(project_params)


def write_grey_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(path)
    return path


def blob_image(
    rng: np.random.Generator, size: int = 64, centre=None, radius: float = 10, noise: float = 8
) -> np.ndarray:
    """A textured grey image with a bright disc: distinct per seed, similar under small perturbations."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = centre if centre is not None else rng.uniform(size * 0.25, size * 0.75, 2)
    base = rng.normal(100, 30, (size // 8, size // 8))
    base = np.kron(base, np.ones((8, 8)))
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2
    image = base + 120 * disc + rng.normal(0, noise, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    """A zip with the given members (names or hand-made ZipInfo headers, for zip-slip and symlink cases)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:
            archive.writestr(name, data)
    return path


def untrained_checkpoint(
    path: Path,
    image_size: int = 32,
    *,
    params: dict | None = None,
    data_version: str = "test",
    preprocess=None,
) -> Path:
    """An untrained ``small_cnn`` for ``CLASSES``, seeded, saved as the train stage saves one: its predictions are
    arbitrary, but everything around them (loading, preprocessing, OOD, temperature, export) is the real code."""
    import torch

    from brainmri.config import InputConfig
    from brainmri.model.architectures import build_model
    from brainmri.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(
        path,
        build_model("small_cnn", len(CLASSES), pretrained=False),
        model_name="small_cnn",
        classes=CLASSES,
        image_size=image_size,
        params=params or {},
        data_version=data_version,
        preprocess=preprocess or InputConfig(),
    )
    return path


SYMMETRIC_SIDE = 256
SYMMETRIC_AXIS = 128.0
"""The side of ``symmetric_head`` and its midline (between columns 127 and 128)."""


def symmetric_head(size: int = SYMMETRIC_SIDE, radii: tuple[float, float] = (100, 80)) -> np.ndarray:
    """A left-right symmetric 'axial slice': skull ring, grey tissue, two ventricles and smooth texture."""
    rows, columns = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = (rows - size / 2 + 0.5) / radii[0], (columns - SYMMETRIC_AXIS + 0.5) / radii[1]
    radius = np.hypot(dy, dx)
    image = np.where(radius < 1.0, 110.0, 0.0)
    image[(radius > 0.9) & (radius < 1.0)] = 220
    for side in (-1, 1):
        ventricle = np.hypot((rows - size / 2 + 10) / 25, (columns - SYMMETRIC_AXIS + 0.5 - side * 18) / 8) < 1
        image[ventricle] = 40
    texture = 15 * np.cos(rows / 7.0) * np.cos((columns - SYMMETRIC_AXIS + 0.5) / 9.0)  # even in x about the midline
    image = np.where(radius < 0.9, image + texture, image)
    return np.clip(image, 0, 255).astype(np.uint8)


def with_tumour(image: np.ndarray, centre: tuple[int, int], radius: int = 14) -> tuple[np.ndarray, tuple]:
    """The image with a bright disc at ``centre`` (row, column) and its YOLO box ``(cx, cy, w, h)``."""
    rows, columns = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    out = image.copy()
    out[np.hypot(rows - centre[0], columns - centre[1]) <= radius] = 250
    side = 2 * radius / image.shape[1]
    return out, (centre[1] / image.shape[1], centre[0] / image.shape[0], side, side)
