"""DVC stage `train` (see dvc.yaml): `pipeline.stage_main` runs `pipeline.run_train`; the logic is in src/brainmri."""

from brainmri.core.portable import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: the same kernels, so the same model bytes, on every x86-64 CPU

from brainmri.pipeline import run_train, stage_main  # noqa: E402

if __name__ == "__main__":
    stage_main("train", run_train)
