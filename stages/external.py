"""DVC stage `external@<index>` (see dvc.yaml, one per evaluate.external set): a thin call of
`brainmri external <name>`."""

import sys

from brainmri.core.portable import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: the same kernels, so the same predictions, on every x86-64 CPU

from brainmri.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["external", *sys.argv[1:]], prog_name="brainmri")
