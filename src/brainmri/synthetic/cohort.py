"""Draw the demo's phantoms so that distinct phantoms are never near-duplicates.

The demo's ground truth says which images are copies of one phantom; the
dedup stage is tested against it. That only works if two *different*
phantoms never look like duplicates by the project's measure (Pearson
correlation of 32x32 grey thumbnails, see ``DedupConfig``). Random heads
rarely come that close, but with hundreds of phantoms a pair occasionally
does, so :class:`Cohort` checks every new phantom against all earlier ones
(and the slices of one patient against each other) and redraws the patient
when any correlation reaches :data:`DISTINCT_BELOW`. The margin to the
dedup's default threshold (0.97) absorbs what resizing and JPEG do to a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from brainmri.synthetic.phantom import Slice, patient_positions, random_anatomy, render_slice

DISTINCT_BELOW = 0.95
"""Thumbnail correlation every pair of distinct phantoms stays below."""

THUMB_SIZE = 32


@dataclass(frozen=True, eq=False)
class Phantom:
    """One rendered slice with its identity: ``id`` is shared by all its copies, ``patient`` by its sibling slices."""

    id: str
    patient: str
    label: str
    image: np.ndarray
    mask: np.ndarray


def thumbnail(image: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm 32x32 thumbnail: the dot product of two is their Pearson correlation."""
    small = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F")
    small = small.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BILINEAR, reducing_gap=None)
    vector = np.asarray(small, dtype=np.float64).ravel()
    vector -= vector.mean()
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


class Cohort:
    """Hands out patients and single slices, pairwise distinct (see the module docstring).

    Ids count up in the order phantoms are accepted (``ph00000``,
    ``pt0000``), so the same ``rng`` gives the same cohort.
    """

    def __init__(self, rng: np.random.Generator, max_tries: int = 50) -> None:
        self._rng = rng
        self._max_tries = max_tries
        self._thumbs = np.zeros((256, THUMB_SIZE * THUMB_SIZE))
        self._count = 0
        self._patients = 0

    def patient(self, label: str, size: int, slices: int) -> list[Phantom]:
        """``slices`` slices of one new patient of class ``label``, rendered at ``size``."""
        if slices < 1:
            raise ValueError(f"a patient needs at least one slice, got {slices}")
        for _ in range(self._max_tries):
            anatomy = random_anatomy(self._rng, label)
            rendered = [render_slice(self._rng, label, size, anatomy, p) for p in patient_positions(self._rng, slices)]
            thumbs = np.stack([thumbnail(s.image) for s in rendered])
            against_others = thumbs @ self._thumbs[: self._count].T
            among_slices = thumbs @ thumbs.T - 2.0 * np.eye(slices)
            if max(against_others.max(initial=-1.0), among_slices.max()) < DISTINCT_BELOW:
                return self._accept(label, rendered, thumbs)
        raise RuntimeError(
            f"no {label} patient distinct from the {self._count} earlier phantoms in {self._max_tries} tries"
        )

    def single(self, label: str, size: int) -> Phantom:
        """One slice of a new patient (sources without patient ids)."""
        return self.patient(label, size, 1)[0]

    def _accept(self, label: str, rendered: list[Slice], thumbs: np.ndarray) -> list[Phantom]:
        while self._count + len(thumbs) > len(self._thumbs):
            self._thumbs = np.concatenate([self._thumbs, np.zeros_like(self._thumbs)])
        self._thumbs[self._count : self._count + len(thumbs)] = thumbs
        patient = f"pt{self._patients:04d}"
        self._patients += 1
        phantoms = [
            Phantom(f"ph{self._count + i:05d}", patient, label, s.image, s.mask) for i, s in enumerate(rendered)
        ]
        self._count += len(thumbs)
        return phantoms
