"""DVC stage `external@<index>` (see dvc.yaml, one per evaluate.external set): hands `pipeline.run_external` and
the set's name to `pipeline.stage_main`; the logic lives in src/brainmri."""

import sys

from brainmri.core.portable import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: the same kernels, so the same predictions, on every x86-64 CPU

from brainmri.evaluation.external import summary_table  # noqa: E402
from brainmri.pipeline import run_external, stage_main  # noqa: E402

if __name__ == "__main__":
    stage_main("external", run_external, *sys.argv[1:], show=summary_table)
