"""DVC stage `train` (see dvc.yaml): a thin call of `brainmri train`; the logic lives in src/brainmri."""

import sys

from brainmri.core.portable import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: the same kernels, so the same model bytes, on every x86-64 CPU

from brainmri.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["train", *sys.argv[1:]], prog_name="brainmri")
