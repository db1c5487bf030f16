"""DVC stage `split` (see dvc.yaml): `pipeline.stage_main` runs `pipeline.run_split`; the logic is in src/brainmri."""

from brainmri.core.portable import pin_cpu_kernels

pin_cpu_kernels()  # before numpy/torch load: numpy's OpenBLAS on one kernel set: the same bytes on every CPU

from brainmri.pipeline import run_split, stage_main  # noqa: E402

if __name__ == "__main__":
    stage_main("split", run_split)
