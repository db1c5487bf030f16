"""Synthetic demo data: brain-slice phantoms written in the real sources' archive formats.

``phantom`` renders slices, ``cohort`` draws pairwise-distinct patients,
``matfile`` writes figshare's MATLAB v7.3 files and ``archives`` assembles the
four demo zips with their planted faults and ``demo_truth.json``.
"""

from brainmri.synthetic.archives import ARCHIVE_NAMES, TRUTH_NAME, write_demo_archives
from brainmri.synthetic.phantom import Anatomy, Slice, random_anatomy, render_slice

__all__ = ["ARCHIVE_NAMES", "TRUTH_NAME", "Anatomy", "Slice", "random_anatomy", "render_slice", "write_demo_archives"]
