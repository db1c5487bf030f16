"""DVC stage `fetch` (see dvc.yaml): a thin call of `brainmri fetch`; the logic lives in src/brainmri."""

import sys

from brainmri.core.portable import pin_cpu_kernels

pin_cpu_kernels()  # before numpy/torch load: the same environment in every stage

from brainmri.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["fetch", *sys.argv[1:]], prog_name="brainmri")
