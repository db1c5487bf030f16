"""Near-distribution inputs for the out-of-distribution check: what a user may send instead of a brain MRI.

``brainmri.ood.non_mri_images`` holds pictures that are plainly not MRI
(photos, noise, gradients, screenshots). The inputs that matter more are
other medical images, close to a brain MRI slice in layout and grey levels:
a head CT, an X-ray, an MRI of another body part. None can be downloaded
here and none may be copied into the repository, so this module builds them
in two ways:

- **generated** (``near_mri_images``; the evaluate stage reports them, they
  depend only on the seed): the demo phantoms' anatomy painted with CT
  attenuation instead of MRI contrast (bone brightest, air black, grey and
  white matter 15 HU apart) and shown in a brain window and a bone window;
  scikit-image's Shepp-Logan head phantom (a CT phantom, bundled in its
  wheel); and axial abdomen slices with a T1-like MRI contrast.
- **packaged** (``packaged_medical_images``): real images that pip packages
  ship inside their wheels, read where the package is installed (pydicom's
  test files: two head CT slices, a thoracic CT, an abdominal MRI, a 64x64 MR
  slice of an unstated body part, a nuclear-medicine bone scan, ultrasound frames;
  pydicom-data's, the larger test files pydicom keeps in a wheel of their own:
  a chest and a lower-leg radiograph, a shoulder MRI, an abdominal CT, a brain
  CT-perfusion map, two more ultrasound frames; nibabel's
  example EPI brain volume, which is brain MRI of a sequence unlike the
  training ones and must *not* be refused). They need the ``dev`` extra
  (``pydicom``, ``pydicom-data``, ``nibabel``); without it the list is shorter
  or empty and the caller says so. ``benchmarks/ood_near.py`` measures the check on both sets.

Each image comes as ``(kind, name, grey uint8 image)``; ``ACCEPTED_KINDS``
lists the kinds that are brain MRI, whose refusal is a false refusal.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..core.imaging import int16_to_uint8
from .phantom import TUMOUR_LABELS, Contrast, random_anatomy, render_slice

ACCEPTED_KINDS = frozenset({"brain_mri_epi"})
"""Kinds that are brain MRI: the check should let them through."""

PHANTOMS_PER_WINDOW = 4
BODY_MRI_COUNT = 4
NEAR_SIZE = 256

CT_HU = {"white": 25.0, "grey": 40.0, "csf": 5.0, "skull": 1000.0, "lesion": 60.0, "core": 10.0, "oedema": 15.0}
"""Typical attenuation (Hounsfield units) of the phantom's tissues on a contrast-enhanced head CT."""

CT_WINDOWS = {"brain": (40.0, 80.0), "bone": (500.0, 2000.0)}
"""Display windows (level, width) in HU, the two a head CT is read and exported in."""


def window_hu(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map Hounsfield units to 8-bit grey: ``level - width/2`` and below is black, ``level + width/2`` and above
    white."""
    scaled = (np.asarray(hu, dtype=np.float64) - (level - width / 2)) / width
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def _ct_contrast(level: float, width: float, noise_hu: float) -> Contrast:
    """A phantom ``Contrast`` that renders windowed CT: intensities are the HU of ``CT_HU`` through the window,
    no gain jitter, gamma, coil bias field; the noise is CT quantum noise in the window's units."""
    low = level - width / 2
    value = {tissue: float(np.clip((hu - low) / width, 0.0, 1.0)) for tissue, hu in CT_HU.items()}
    return Contrast(**value, gain=1.0, gamma=1.0, bias=0.0, noise=noise_hu / width)


def ct_head_phantoms(
    rng: np.random.Generator, per_window: int = PHANTOMS_PER_WINDOW
) -> list[tuple[str, str, np.ndarray]]:
    """Head-CT look-alikes: phantom patients (tumour classes in turn) in a brain window and a bone window."""
    samples = []
    for window, (level, width) in CT_WINDOWS.items():
        contrast = _ct_contrast(level, width, noise_hu=4.0)
        for k in range(per_window):
            label = TUMOUR_LABELS[k % len(TUMOUR_LABELS)] if k % 4 else "no_tumor"
            anatomy = replace(random_anatomy(rng, label), contrast=contrast)
            pixels = render_slice(rng, label, NEAR_SIZE, anatomy, float(rng.uniform(-0.6, 0.6))).image
            samples.append(
                (f"ct_head_like_{window}_window", f"ct_phantom_{window}:{k}", np.rint(pixels * 255).astype(np.uint8))
            )
    return samples


def shepp_logan() -> list[tuple[str, str, np.ndarray]]:
    """scikit-image's Shepp-Logan head phantom (400x400, bundled in the wheel): the classic CT test slice."""
    from skimage.data import shepp_logan_phantom

    pixels = shepp_logan_phantom()
    return [("ct_shepp_logan", "skimage:shepp_logan_phantom", np.rint(pixels / pixels.max() * 255).astype(np.uint8))]


def _body_mri_like(rng: np.random.Generator) -> np.ndarray:
    """An axial abdomen with a T1-like MRI look: bright subcutaneous fat, grey muscle and liver, dark-rimmed
    vertebra, kidneys, a flow void in the aorta, a smooth coil bias and Rician noise."""
    s = NEAR_SIZE
    image = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(image)
    top, bottom = s * rng.uniform(0.18, 0.26), s * rng.uniform(0.8, 0.88)
    draw.ellipse((s * 0.04, top, s * 0.96, bottom), fill=int(rng.integers(191, 242)))  # subcutaneous fat
    draw.ellipse((s * 0.08, top + 10, s * 0.92, bottom - 10), fill=int(rng.integers(76, 102)))  # muscle wall
    draw.ellipse((s * 0.12, top + 18, s * 0.88, bottom - 18), fill=int(rng.integers(115, 153)))  # visceral fat, bowel
    draw.ellipse((s * 0.1, top + 20, s * 0.5, s * 0.72), fill=int(rng.integers(89, 128)))  # liver
    for x0 in (s * 0.26, s * 0.64):
        draw.ellipse((x0, s * 0.55, x0 + s * 0.12, s * 0.72), fill=int(rng.integers(140, 178)))  # kidneys
    draw.ellipse((s * 0.43, s * 0.58, s * 0.57, s * 0.72), fill=20)  # vertebral cortex
    draw.ellipse((s * 0.45, s * 0.6, s * 0.55, s * 0.7), fill=int(rng.integers(102, 140)))  # marrow
    draw.ellipse((s * 0.47, s * 0.5, s * 0.53, s * 0.56), fill=13)  # aorta flow void
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float64) / 255
    yy, xx = np.mgrid[:s, :s] / s
    bias = np.exp(
        rng.uniform(0.1, 0.3) * np.cos(np.pi * (xx - rng.uniform(0, 1))) * np.cos(np.pi * (yy - rng.uniform(0, 1)))
    )
    sigma = rng.uniform(0.01, 0.03)
    noisy = np.hypot(pixels * bias + rng.normal(0, sigma, (s, s)), rng.normal(0, sigma, (s, s)))
    return np.rint(np.clip(noisy, 0, 1) * 255).astype(np.uint8)


def near_mri_images(seed: int) -> list[tuple[str, str, np.ndarray]]:
    """The generated near-distribution set: head-CT phantoms in two windows, Shepp-Logan, abdomen MRI look-alikes.

    Depends only on ``seed`` (and the installed scikit-image), so the
    evaluate stage's numbers on it are reproducible.
    """
    rng = np.random.default_rng([seed, 13])
    body = [("mri_body_like", f"abdomen_mri_like:{k}", _body_mri_like(rng)) for k in range(BODY_MRI_COUNT)]
    return ct_head_phantoms(rng) + shepp_logan() + body


PYDICOM_FILES: tuple[tuple[str, str, str], ...] = (
    # kind, test file (pydicom's wheel, else pydicom-data's), display: a CT window name, or "auto" (percentile,
    # as for any 16-bit input)
    ("ct_head", "693_J2KI.dcm", "brain"),
    ("ct_head", "693_J2KI.dcm", "bone"),
    ("ct_head", "J2K_pixelrep_mismatch.dcm", "brain"),
    ("ct_head", "J2K_pixelrep_mismatch.dcm", "bone"),
    ("ct_body", "CT_small.dcm", "soft_tissue"),
    ("mri_body", "examples_overlay.dcm", "auto"),
    ("mri_other", "MR_small.dcm", "auto"),
    ("nuclear_medicine", "JPEG2000.dcm", "auto"),
    ("ultrasound", "examples_palette.dcm", "auto"),
    ("ultrasound", "examples_rgb_color.dcm", "auto"),
    ("ultrasound", "examples_ybr_color.dcm", "auto"),
    # pydicom-data (MIT; the files' provenance is pydicom's test-file list)
    ("xray", "RG1_UNCR.dcm", "auto"),  # chest radiograph (CR, MONOCHROME1)
    ("xray", "RG3_UNCR.dcm", "auto"),  # lower-leg radiograph (CR, MONOCHROME1)
    ("mri_body", "MR2_UNCR.dcm", "auto"),  # shoulder, spin echo
    ("ct_body", "explicit_VR-UN.dcm", "soft_tissue"),  # abdomen (pancreas series)
    ("ct_perfusion_brain", "eCT_Supplemental.dcm", "auto"),  # a derived blood-flow map of a brain CT perfusion
    ("ultrasound", "US1_UNCR.dcm", "auto"),
    ("ultrasound", "color-pl.dcm", "auto"),  # transoesophageal echocardiogram
)
"""Real images in pydicom's wheel (its ``data/test_files``; provenance in the README.txt beside them) and in
pydicom-data's. Left out of pydicom-data: other encodings of the same images (``*_J2K*``, ``*_UNCI``), the
head CT ``693_*`` (pydicom's ``693_J2KI`` above), the abdominal MRI ``MR-SIEMENS-*`` (``examples_overlay``
above), ``emri_small`` (64x64 crops inside a head, not a slice a user would send) and test patterns."""

SOFT_TISSUE_WINDOW = (40.0, 400.0)

EPI_SLICES = range(6, 20, 2)
"""Axial slices of nibabel's ``example4d.nii.gz`` (128x96x24 EPI, first volume) that hold brain, not only skull base."""


def _dicom_grey(path: Path, display: str) -> np.ndarray:
    """A DICOM file's first frame as 8-bit grey: CT in HU through a named window, anything else as the pipeline
    decodes a 16-bit image (percentile window) or an RGB one (luminance)."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # test files with deliberately odd headers warn on read
        dataset = pydicom.dcmread(path)
        pixels = np.asarray(dataset.pixel_array)
    if int(getattr(dataset, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if pixels.ndim == 3:  # RGB (pydicom converts YCbCr to RGB)
        return np.asarray(Image.fromarray(pixels.astype(np.uint8)).convert("L"))
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":  # low values white: invert, as any viewer shows it
        pixels = pixels.max() - pixels
    if display == "auto":
        return int16_to_uint8(pixels)
    hu = pixels * float(getattr(dataset, "RescaleSlope", 1.0)) + float(getattr(dataset, "RescaleIntercept", 0.0))
    level, width = SOFT_TISSUE_WINDOW if display == "soft_tissue" else CT_WINDOWS[display]
    return window_hu(hu, level, width)


def _epi_slices(path: Path) -> list[tuple[str, str, np.ndarray]]:
    """Axial slices of an EPI brain volume, radiological orientation (anterior up), percentile-windowed."""
    import nibabel

    volume = np.asanyarray(nibabel.load(path).dataobj)[..., 0]
    return [("brain_mri_epi", f"nibabel:{path.name}:z{z}", int16_to_uint8(volume[:, :, z].T[::-1])) for z in EPI_SLICES]


def packaged_medical_images() -> list[tuple[str, str, np.ndarray]]:
    """Real CT, MRI, radiographs, nuclear-medicine and ultrasound images shipped inside the pydicom,
    pydicom-data and nibabel wheels.

    Empty when the packages are not installed (they are ``dev`` extras).
    A file that a newer release no longer ships, or whose package is not
    installed, is skipped, not an error; nothing is downloaded.
    """
    samples: list[tuple[str, str, np.ndarray]] = []
    try:
        from pydicom.data import get_testdata_file
    except ImportError:
        get_testdata_file = None
    if get_testdata_file is not None:
        for kind, name, display in PYDICOM_FILES:
            path = get_testdata_file(name, download=False)  # pydicom's own files, then pydicom-data's
            if path is not None:
                samples.append((kind, f"pydicom:{name}:{display}", _dicom_grey(Path(path), display)))
    try:
        import nibabel
    except ImportError:
        return samples
    epi = Path(nibabel.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    return samples + (_epi_slices(epi) if epi.exists() else [])
