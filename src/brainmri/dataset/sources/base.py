"""What a source reader produces, and the small records used to plan the work.

Reading an archive happens in two steps so that the expensive part can run in
parallel without shipping image bytes between processes:

1. *planning* (cheap, metadata only, one process): every member of an archive
   becomes exactly one of a ``MemberTask`` (an image to decode), a ``Skipped``
   (a non-image member such as a directory or a README, counted, never
   silently dropped) or a ``Rejected`` (a refused member, with a reason);
2. *loading* (expensive, any process): a ``MemberTask`` becomes a
   ``SourceImage`` or a ``Rejected``.

Reasons are one line, ``"<category>: <detail>"``; reports count rejects by the
category, so keep categories short and fixed (``"corrupt image"``,
``"unknown folder"``, ...), and put the specifics in the detail.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

Box = tuple[float, float, float, float]
"""A YOLO box: centre x, centre y, width, height, all normalised to the image size."""


@dataclass(frozen=True)
class SourceImage:
    """One decoded image with its provenance; ``pixels`` is 8-bit grey at the source's resolution."""

    source: str
    original_path: str  # "<archive file name>/<member path>"
    label: str
    pixels: np.ndarray  # uint8 HxW grey
    patient_id: str | None
    mask: np.ndarray | None  # bool HxW, True inside the tumour
    box: Box | None  # YOLO normalised cx, cy, w, h


@dataclass(frozen=True)
class Rejected:
    """An input that could not become an image, and why (``"<category>: <detail>"``, one line)."""

    source: str
    original_path: str
    reason: str


@dataclass(frozen=True)
class Skipped:
    """A member that is not an image and is not meant to be one; counted in the merge report by ``kind``."""

    source: str
    original_path: str
    kind: Literal["directory", "annotation", "other"]


@dataclass(frozen=True)
class MemberTask:
    """An archive member planned for decoding; small and picklable so worker processes can take it.

    ``index`` is the member's position in the archive's central directory (its
    name may not survive a round trip through an encoding). ``label`` and
    ``box`` are filled by formats that know them before decoding (folder names,
    ``.txt`` files beside the image); ``.mat`` files carry their own.
    """

    source: str
    archive: Path
    index: int
    original_path: str
    label: str | None = None
    box: Box | None = None
