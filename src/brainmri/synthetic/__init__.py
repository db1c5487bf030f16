"""Synthetic data: brain-slice phantoms written in the real sources' archive formats, and non-MRI pictures.

``phantom`` renders slices, ``cohort`` draws pairwise-distinct patients,
``matfile`` writes figshare's MATLAB v7.3 files and ``archives`` assembles the
four demo zips with their planted faults and ``demo_truth.json``; ``non_mri``
and ``near_ood`` make the pictures the out-of-distribution check is measured
on; ``contralateral`` heals a tumour slice for the tumour-removal test. Import
the module you need: a stage imports only what it uses (its DVC dependencies).
"""
