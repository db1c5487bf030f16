"""Turn untrusted image bytes into validated 8-bit grey pixels, and back into PNG.

The convention every later stage relies on: **a normalised image is an 8-bit,
single-channel (mode ``L``) PNG at the source's original resolution.** Nothing
is resized or cropped here; resizing belongs to the model's preprocessing
(``brainmri.core.preprocess``), so the merged set keeps all the information the
sources had and one resize policy is applied in one place.

How each kind of input reaches 8-bit grey:

- 8-bit grey: unchanged.
- RGB (most "grey" JPEGs are stored as RGB with equal channels), palette,
  CMYK, 1-bit: Pillow's ITU-R 601-2 luma conversion; equal channels keep
  their value.
- With transparency (RGBA, LA, palette with a transparent index): composited
  over black, because MRI background is black and the colour hidden under a
  transparent pixel is arbitrary.
- More than 8 bits (16-bit PNG/TIFF, 32-bit integer, MATLAB int16 slices):
  ``int16_to_uint8``, a robust per-image window (clip to the 0.5th and 99.5th
  percentiles, then scale linearly to 0..255), because scanner intensities
  have no fixed range and a few hot pixels would otherwise squash the
  contrast of the whole slice.

Validation turns every way untrusted bytes can fail into ``BadImage`` with a
one-line reason: empty, not an image, truncated or corrupt (``.load()`` is
always called and ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left at its default
``False``, so a truncated file fails instead of being padded with grey), too
small to be useful, or more pixels than allowed (checked from the header
before any pixel is decoded, and Pillow's own decompression-bomb guard is
mapped to the same reason).

``pixel_sha256`` hashes the decoded pixels and their shape, not the file
bytes, so re-encoding an image (JPEG to PNG, different zlib level) does not
change its identity while two images of different shapes never collide.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..config import ImageLimits

PILLOW_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "GIF", "WEBP", "PPM")
"""The only decoders untrusted bytes are shown: the formats the sources use, not Pillow's rarer parsers."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm"})
"""File names taken as images, in archives and folders alike (lower-case; anything else is not an image)."""

LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5
"""The intensity window of ``int16_to_uint8``."""

PNG_COMPRESS_LEVEL = 1
"""zlib level of written PNGs: level 1 encodes about 3x faster than the default 6 for ~15% larger files."""

_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


class BadImage(ValueError):
    """Bytes that cannot become a usable image; ``reason`` is one line, ``"<category>: <detail>"``."""

    def __init__(self, reason: str, name: str = "") -> None:
        reason = " ".join(reason.split())[:240]  # decoder messages can span lines; reasons go in CSV cells
        super().__init__(f"{name}: {reason}" if name else reason)
        self.reason = reason


def check_size(width: int, height: int, limits: ImageLimits) -> None:
    """Refuse absurd sizes before decoding: too many pixels (a bomb) or a side below ``limits.min_side``."""
    if width * height > limits.max_pixels:
        raise BadImage(f"pixel bomb: {width}x{height} pixels > max_pixels {limits.max_pixels}")
    if min(width, height) < limits.min_side:
        raise BadImage(f"too small: {width}x{height} pixels, min_side {limits.min_side}")


def decode_image(data: bytes, name: str, limits: ImageLimits) -> np.ndarray:
    """Decode image bytes to a 2-D uint8 grey array, or raise ``BadImage`` (``name`` only labels the error)."""
    if not data:
        raise BadImage("empty file: 0 bytes", name)
    try:
        with Image.open(io.BytesIO(data), formats=PILLOW_FORMATS) as image:
            check_size(image.width, image.height, limits)
            image.load()
            return to_grey(image)
    except BadImage as error:
        raise BadImage(error.reason, name) from None
    except Image.DecompressionBombError as error:
        raise BadImage(f"pixel bomb: {error}", name) from None
    except UnidentifiedImageError:
        raise BadImage("not an image: no known image format recognised", name) from None
    except Exception as error:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error... on bad bytes
        raise BadImage(f"corrupt image: {error}", name) from None


def to_grey(image: Image.Image) -> np.ndarray:
    """Any decoded Pillow image to 2-D uint8 grey (the rules are in the module docstring)."""
    if image.mode == "L":
        return np.asarray(image)
    if image.mode in _WIDE_MODES:
        return int16_to_uint8(np.asarray(image))
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        grey = np.asarray(rgba.convert("L"), dtype=np.uint16)
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.uint16)
        return ((grey * alpha + 127) // 255).astype(np.uint8)
    return np.asarray(image.convert("L"))


def int16_to_uint8(image: np.ndarray) -> np.ndarray:
    """Window wide-range intensities (int16 MRI, 16-bit PNG) into uint8.

    Values are clipped to the image's 0.5th..99.5th percentiles and scaled
    linearly to 0..255. If that window is empty (a mostly constant slice) the
    full min..max range is used instead; a constant image becomes all zeros.
    """
    values = np.asarray(image, dtype=np.float64)
    low, high = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if high <= low:
        low, high = values.min(), values.max()
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.clip(values, low, high) - low) * (255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)


def pixel_sha256(pixels: np.ndarray) -> str:
    """SHA-256 of ``b"<height>x<width>\\n"`` followed by the C-order uint8 pixel bytes."""
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {pixels.dtype} {pixels.shape}")
    digest = hashlib.sha256(b"%dx%d\n" % pixels.shape)
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def encode_png(pixels: np.ndarray) -> bytes:
    """8-bit grey PNG bytes of a 2-D uint8 array (a bool mask becomes 0/255); Pillow writes no timestamp,
    so equal pixels always give equal bytes."""
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8) * 255
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 or bool image, got {pixels.dtype} {pixels.shape}")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def read_grey_png(path) -> np.ndarray:
    """Read one of the pipeline's own normalised images (8-bit grey PNG, trusted: merge wrote it) as a uint8 array."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)
