"""DVC stage `split` (see dvc.yaml): a thin call of `brainmri split`; the logic lives in src/brainmri."""

import sys

from brainmri.core.portable import pin_cpu_kernels

pin_cpu_kernels()  # before numpy/torch load: numpy's OpenBLAS on one kernel set: the same bytes on every CPU

from brainmri.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["split", *sys.argv[1:]], prog_name="brainmri")
