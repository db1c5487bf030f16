"""DVC stage `evaluate` (see dvc.yaml): a thin call of `brainmri evaluate`; the logic lives in src/brainmri."""

import sys

from brainmri.core.portable import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: the metrics come from the model's outputs, so the same kernels as train

from brainmri.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["evaluate", *sys.argv[1:]], prog_name="brainmri")
