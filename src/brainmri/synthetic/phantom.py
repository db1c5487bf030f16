"""Axial brain-slice phantoms: the images behind the embedded demo data.

Why phantoms: the pipeline must run end to end on a fresh clone with no
network, and its later stages (dedup, split, training) need images that
behave like the real ones: four classes a small CNN can learn at 64-96 px,
patients with several related slices, tumour masks to check saliency against.

Each slice is painted from simple shapes in *frame coordinates* (the image
spans [-1, 1] on both axes), so the same anatomy renders the same picture at
any size. Inside the head a second frame is used, scaled so the brain has
radius 1 ("brain units"); ``v`` grows towards the skull base, which is the
lower part of the image. From outside in: a bright skull/scalp ring, a thin
dark CSF gap, grey-matter cortex with dark sulci and a midline fissure, white
matter, two dark lateral ventricles, and per class

- ``glioma``: an irregular intra-axial mass, an enhancing rim around a dark
  necrotic core, inside a hazy brighter oedema;
- ``meningioma``: a bright homogeneous mass touching the inner skull;
- ``pituitary``: a small bright mass on the midline at the skull base;
- ``no_tumor``: none.

Contrast, gain, gamma, a smooth bias field and Rician noise are random, so no
class can be told from global brightness; only the shapes tell them apart.

An :class:`Anatomy` is one patient: head shape and pose, tissue contrast,
textures and the tumour. :func:`render_slice` draws one slice of it at a
``position`` in [-1, 1] (skull base to vertex); moving the position shrinks
the head and the ventricles, changes the sulcal pattern, the bias field and
the tumour's cross-section, so slices of one patient look related without
being near-duplicates of each other.

Speed: a few dozen vectorised float32 operations on a grid of at most
:data:`MATRIX` pixels, bicubic upsampling of small random grids (PIL), and
the noise at the output size: about 12 ms for a 256x256 and 17 ms for a
512x512 slice on one core.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from brainmri.config import CLASSES

TUMOUR_LABELS: tuple[str, ...] = tuple(label for label in CLASSES if label != "no_tumor")

_SULCI_GRID = 26
"""Cells across the frame of the noise whose zero crossings draw the sulci; sets the gyral width."""

MATRIX = 256
"""Largest side the anatomy is sampled at before interpolation to the output size (see :func:`render_slice`)."""

_FINE_GRID = 96
"""Cells across the frame of the per-slice fine tissue texture."""


@dataclass(frozen=True, eq=False)
class Contrast:
    """Tissue intensities (before gain, bias and noise) of one patient's scan.

    Drawn per patient because one scanner session gives one contrast; the
    ranges overlap between classes on purpose so brightness alone is no cue.
    """

    white: float
    grey: float
    csf: float
    skull: float
    lesion: float
    core: float
    oedema: float
    gain: float
    gamma: float
    bias: float
    noise: float


@dataclass(frozen=True, eq=False)
class Tumour:
    """A tumour in brain units (``centre`` is ``(u, v)``, ``v`` towards the skull base).

    ``shape`` holds ``(amplitude, phase)`` rows: the outline radius is
    ``radius * (1 + sum(a * cos(k * angle + phase)))`` for harmonics k = 2, 3, ...
    ``core`` is the glioma necrotic core as a fraction of the radius (0 otherwise).
    """

    centre: tuple[float, float]
    radius: float
    shape: np.ndarray
    core: float


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Everything fixed for one patient: render several slices of it with :func:`render_slice`.

    ``centre`` and ``radii`` (vertical, horizontal) place the head in frame
    units; ``outline`` is like :attr:`Tumour.shape` for the head contour;
    ``skull`` is the skull ring thickness as a fraction of the head radius;
    ``ventricles`` scales the ventricles and ``atrophy`` widens the sulci
    (both grow with age); ``cortex`` modulates the cortex thickness.
    ``sulci`` and ``bias`` each hold two random grids (sulcal pattern, coil
    sensitivity) that :func:`_blend` cuts at the slice position, because
    both change from one slice level to the next.
    """

    label: str
    centre: tuple[float, float]
    radii: tuple[float, float]
    rotation: float
    outline: np.ndarray
    skull: float
    ventricles: float
    atrophy: float
    sulci: np.ndarray
    cortex: np.ndarray
    bias: np.ndarray
    contrast: Contrast
    tumour: Tumour | None


@dataclass(frozen=True, eq=False)
class Slice:
    """One rendered slice: ``image`` float32 in [0, 1], ``mask`` bool (all False without a tumour)."""

    image: np.ndarray
    mask: np.ndarray
    label: str


def _harmonics(rng: np.random.Generator, count: int, scale: float) -> np.ndarray:
    """``(amplitude, phase)`` rows for harmonics 2..count+1, amplitudes falling off with order."""
    amplitude = rng.uniform(0.3, 1.0, count) * scale / np.arange(1, count + 1)
    return np.stack([amplitude, rng.uniform(0, 2 * np.pi, count)], axis=1).astype(np.float32)


def _polar(du: np.ndarray, dv: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Distance from the origin relative to an outline with harmonics ``shape`` (1 on the outline).

    The harmonics ``cos(k*angle + phase)`` come from the angle's cosine and
    sine by the angle-addition recurrence: no arctan2 or cos over the grid,
    which keeps a 512x512 slice cheap.
    """
    distance = np.sqrt(du * du + dv * dv) + np.float32(1e-12)
    c1, s1 = du / distance, dv / distance
    ck, sk = c1 * c1 - s1 * s1, 2 * c1 * s1
    radius = np.ones_like(distance)
    for amplitude, phase in shape:
        radius += (amplitude * np.cos(phase)) * ck - (amplitude * np.sin(phase)) * sk
        ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
    return distance / radius


def _outline_at(angle: float, shape: np.ndarray) -> float:
    """The outline radius of :func:`_polar` in one direction."""
    orders = np.arange(2, len(shape) + 2)
    return float(1.0 + np.sum(shape[:, 0] * np.cos(orders * angle + shape[:, 1])))


def _random_contrast(rng: np.random.Generator) -> Contrast:
    white = rng.uniform(0.42, 0.62)
    return Contrast(
        white=white,
        grey=white * rng.uniform(0.6, 0.85),
        csf=rng.uniform(0.04, 0.16),
        skull=rng.uniform(0.65, 1.0),
        lesion=white * rng.uniform(1.45, 1.9),
        core=rng.uniform(0.06, 0.2),
        oedema=white * rng.uniform(1.1, 1.3),
        gain=rng.uniform(0.55, 1.0),
        gamma=rng.uniform(0.8, 1.25),
        bias=rng.uniform(0.1, 0.45),
        noise=rng.uniform(0.008, 0.035),
    )


def _random_tumour(
    rng: np.random.Generator, label: str, outline: np.ndarray, inner: float, brain: float
) -> Tumour | None:
    """Place the class's tumour where that tumour type grows (see the module docstring).

    ``inner`` is the inner skull and ``brain`` the brain radius, both in head
    units, so a meningioma can be centred just inside the skull whatever the
    head's outline.
    """
    if label == "glioma":
        radius = rng.uniform(0.18, 0.32)
        distance = rng.uniform(0.1, 0.82 - radius)
        angle = rng.uniform(0, 2 * np.pi)
        centre = (distance * np.cos(angle), distance * np.sin(angle))
        return Tumour(centre, radius, _harmonics(rng, 4, 0.3), core=rng.uniform(0.4, 0.65))
    if label == "meningioma":
        radius = rng.uniform(0.16, 0.3)
        # Anywhere along the convexity except the skull base, where pituitary masses sit.
        angle = np.pi / 2 + rng.uniform(0.8, 2 * np.pi - 0.8)
        wall = _outline_at(angle, outline) * inner / brain
        distance = wall - 0.45 * radius
        return Tumour((distance * np.cos(angle), distance * np.sin(angle)), radius, _harmonics(rng, 3, 0.08), core=0.0)
    if label == "pituitary":
        centre = (rng.normal(0, 0.02), rng.uniform(0.52, 0.66))
        return Tumour(centre, rng.uniform(0.11, 0.16), _harmonics(rng, 3, 0.12), core=0.0)
    return None


def random_anatomy(rng: np.random.Generator, label: str) -> Anatomy:
    """Draw one patient of class ``label`` (one of the project's ``CLASSES``)."""
    if label not in CLASSES:
        raise ValueError(f"unknown phantom label {label!r} (known: {', '.join(CLASSES)})")
    vertical = rng.uniform(0.64, 0.94)
    outline = _harmonics(rng, 4, 0.09)
    skull = rng.uniform(0.05, 0.12)
    inner = 1 - skull
    brain = inner - 0.025
    return Anatomy(
        label=label,
        centre=(rng.uniform(-0.12, 0.12), rng.uniform(-0.12, 0.12)),
        radii=(vertical, vertical * rng.uniform(0.72, 0.95)),
        rotation=rng.uniform(-0.3, 0.3),
        outline=outline,
        skull=skull,
        ventricles=rng.uniform(0.7, 1.5),
        atrophy=rng.uniform(0.15, 0.4),
        sulci=rng.standard_normal((2, _SULCI_GRID, _SULCI_GRID)).astype(np.float32),
        cortex=rng.standard_normal((8, 8)).astype(np.float32),
        bias=rng.standard_normal((2, 3, 3)).astype(np.float32),
        contrast=_random_contrast(rng),
        tumour=_random_tumour(rng, label, outline, inner, brain),
    )


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bicubic upsampling of a small random grid to a smooth ``size`` x ``size`` field."""
    image = Image.fromarray(np.ascontiguousarray(grid, dtype=np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def _blend(pair: np.ndarray, position: float) -> np.ndarray:
    """A 2-D cut at ``position`` through a 3-D random field, from two independent 2-D grids.

    Mixing them with weights ``cos``/``sin`` of an angle proportional to the
    position keeps the variance and changes the pattern smoothly: nearby
    slices share structure, distant ones do not.
    """
    turn = 1.3 * position
    return np.float32(np.cos(turn)) * pair[0] + np.float32(np.sin(turn)) * pair[1]


def _inside(distance: np.ndarray, edge: float | np.ndarray, width: float) -> np.ndarray:
    """Soft indicator of ``distance < edge``, ramping over ``width`` (anti-aliased edges)."""
    return np.clip((edge - distance) / width + 0.5, 0.0, 1.0)


def _mix(image: np.ndarray, value: float | np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Paint ``value`` over ``image`` with opacity ``weight`` (partial volume at soft edges)."""
    return image + (value - image) * weight


def render_slice(
    rng: np.random.Generator,
    label: str,
    size: int,
    anatomy: Anatomy | None = None,
    position: float = 0.0,
) -> Slice:
    """Render one ``size`` x ``size`` slice of ``anatomy`` (a new random patient when None).

    ``position`` in [-1, 1] is the slice level within the patient; ``rng``
    draws what changes from slice to slice (fine texture, noise, small gain
    jitter), so the same anatomy and position still give a new acquisition.

    Like a scanner, the anatomy is sampled on an acquisition matrix of at most
    :data:`MATRIX` pixels and interpolated to ``size``; the noise is added at
    ``size``. This halves the cost of a 512x512 slice and is how many real
    512x512 MRI slices (figshare's among them) were made.
    """
    if anatomy is None:
        anatomy = random_anatomy(rng, label)
    elif anatomy.label != label:
        raise ValueError(f"anatomy is a {anatomy.label!r} patient, not {label!r}")
    position = float(position)  # a numpy float64 here would silently turn every array float64 (slow)
    if not -1.0 <= position <= 1.0:
        raise ValueError(f"slice position must be in [-1, 1], got {position}")
    contrast = anatomy.contrast
    matrix = min(size, MATRIX)
    image, tumour = _paint(rng, anatomy, position, matrix)
    gain = contrast.gain * rng.uniform(0.95, 1.05)
    bias = np.exp(contrast.bias * _upsample(_blend(anatomy.bias, position), matrix))
    image = gain * np.power(np.clip(image, 0.0, None), contrast.gamma) * bias
    if matrix != size:
        image, tumour = _upsample(image, size), _upsample(tumour, size)
    sigma = np.float32(contrast.noise)
    real = image + sigma * rng.standard_normal((size, size), dtype=np.float32)
    imaginary = sigma * rng.standard_normal((size, size), dtype=np.float32)
    image = np.clip(np.sqrt(real * real + imaginary * imaginary), 0.0, 1.0)
    return Slice(image=image, mask=tumour >= 0.5, label=label)


def _paint(rng: np.random.Generator, anatomy: Anatomy, position: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The noiseless tissue image and the soft tumour membership (zeros without a tumour)."""
    contrast = anatomy.contrast
    # Head frame: translate, rotate, scale so the head contour is at rho = 1.
    # The head gets smaller and rounder towards the top (position 1). Linear in position, so
    # two levels either side of the middle do not look alike.
    shrink = 1.0 - 0.15 * (position + 1.0)
    width = anatomy.radii[1] * shrink * (1.0 + 0.08 * position)
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    y = axis[:, None] - np.float32(anatomy.centre[0] + 0.06 * position)
    x = axis[None, :] - np.float32(anatomy.centre[1])
    cos, sin = np.float32(np.cos(anatomy.rotation)), np.float32(np.sin(anatomy.rotation))
    u = (cos * x + sin * y) / np.float32(width)
    v = (cos * y - sin * x) / np.float32(anatomy.radii[0] * shrink)
    rho = _polar(u, v, anatomy.outline)
    pixel = 2.0 / (size * width)  # one pixel in head units

    inner = 1.0 - anatomy.skull
    brain_radius = inner - 0.025
    ub, vb = u / np.float32(brain_radius), v / np.float32(brain_radius)
    q = rho / np.float32(brain_radius)
    brain_pixel = pixel / brain_radius

    fine = _upsample(rng.standard_normal((_FINE_GRID, _FINE_GRID), dtype=np.float32), size)
    sulcal = _upsample(_blend(anatomy.sulci, position), size)
    cortex_depth = 0.8 - 0.06 * position + 0.08 * _upsample(anatomy.cortex, size)

    # Skull ring, CSF, brain (cortex, sulci, fissure, white matter), ventricles.
    image = contrast.skull * (0.88 + 0.06 * fine) * _inside(rho, 1.0, pixel)
    intracranial = _inside(rho, inner, pixel)
    image = _mix(image, contrast.csf, intracranial)
    brain = _inside(q, 1.0, brain_pixel)
    cortex = 1.0 - _inside(q, cortex_depth, 2 * brain_pixel)
    tissue = contrast.white + (contrast.grey - contrast.white) * cortex
    sulci = np.exp(-((sulcal / anatomy.atrophy) ** 2)) * cortex
    fissure = np.exp(-((ub / 0.015) ** 2)) * np.clip((np.abs(vb) - 0.3) / 0.2, 0.0, 1.0)
    tissue = _mix(tissue, contrast.csf, np.maximum(sulci, fissure))
    image = _mix(image, tissue * (1.0 + 0.035 * fine), brain)
    image = _mix(image, contrast.csf, _ventricles(ub, vb, anatomy.ventricles, position, brain_pixel))
    if anatomy.tumour is None:
        return image, np.zeros_like(image)
    return _paint_tumour(image, anatomy, position, ub, vb, fine, brain, intracranial, brain_pixel)


def _ventricles(ub: np.ndarray, vb: np.ndarray, scale: float, position: float, pixel: float) -> np.ndarray:
    """Two lateral ventricles, a tilted ellipse either side of the midline, shrinking towards the top."""
    size = scale * (0.8 - 0.45 * position)
    tilt = 0.35 + 0.25 * position
    weight = np.zeros_like(ub)
    for side in (-1.0, 1.0):
        du, dv = ub - np.float32(side * 0.11 * size), vb + np.float32(0.05)
        c, s = np.float32(np.cos(side * tilt)), np.float32(np.sin(side * tilt))
        across, along = (c * du + s * dv) / np.float32(0.055 * size), (c * dv - s * du) / np.float32(0.27 * size)
        weight = np.maximum(weight, _inside(np.sqrt(across * across + along * along), 1.0, pixel / (0.055 * size)))
    return weight


def _paint_tumour(
    image: np.ndarray,
    anatomy: Anatomy,
    position: float,
    ub: np.ndarray,
    vb: np.ndarray,
    fine: np.ndarray,
    brain: np.ndarray,
    intracranial: np.ndarray,
    pixel: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint the anatomy's tumour at this slice level; returns the image and the soft tumour membership.

    The membership covers the whole lesion (a glioma's core and rim, not its
    oedema) and stops at the inner skull.
    """
    tumour = anatomy.tumour
    contrast = anatomy.contrast
    radius = tumour.radius * (1.0 - 0.45 * position**2)  # the cross-section narrows away from the middle
    du, dv = ub - np.float32(tumour.centre[0]), vb - np.float32(tumour.centre[1])
    rt = _polar(du, dv, tumour.shape) / np.float32(radius)
    width = pixel / radius
    mass = _inside(rt, 1.0, width) * intracranial
    if anatomy.label == "glioma":
        oedema = np.exp(-((np.clip(rt - 1.0, 0.0, None) / 0.55) ** 2)) * (0.75 + 0.25 * fine)
        image = _mix(image, contrast.oedema, np.clip(oedema, 0.0, 1.0) * brain)
        image = _mix(image, contrast.lesion * (1.0 + 0.05 * fine), mass)
        core = _inside(rt, tumour.core * (1.0 + 0.12 * fine), width)
        image = _mix(image, contrast.core * (1.0 + 0.2 * fine), core)
    elif anatomy.label == "meningioma":
        image = _mix(image, contrast.lesion * (1.0 + 0.02 * fine), mass)
    else:
        image = _mix(image, contrast.lesion * (1.0 + 0.06 * fine), mass)
    return image, mass


def patient_positions(rng: np.random.Generator, count: int) -> np.ndarray:
    """Slice levels for a patient with ``count`` slices, spread over most of the volume.

    Up to four slices are far enough apart not to be near-duplicates; the
    demo's :class:`~brainmri.synthetic.cohort.Cohort` still checks.
    """
    if count == 1:
        return np.array([rng.uniform(-0.5, 0.5)])
    span = rng.uniform(0.8, 0.92)
    return np.linspace(-span, span, count) + rng.uniform(-0.05, 0.05, count)
