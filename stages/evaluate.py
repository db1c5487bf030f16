"""DVC stage `evaluate` (see dvc.yaml): `pipeline.stage_main` runs `pipeline.run_evaluate`; logic in src/brainmri."""

from brainmri.core.portable import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: the metrics come from the model's outputs, so the same kernels as train

from brainmri.pipeline import run_evaluate, stage_main  # noqa: E402

if __name__ == "__main__":
    stage_main("evaluate", run_evaluate)
