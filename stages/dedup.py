"""DVC stage `dedup` (see dvc.yaml): a thin call of `brainmri dedup`; the logic lives in src/brainmri."""

import sys

from brainmri.core.portable import pin_cpu_kernels

# before numpy/torch load: numpy's OpenBLAS on one kernel set: the thumbnail correlations, so the clusters, differ
# by CPU otherwise
pin_cpu_kernels()

from brainmri.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["dedup", *sys.argv[1:]], prog_name="brainmri")
