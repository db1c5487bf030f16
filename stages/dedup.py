"""DVC stage `dedup` (see dvc.yaml): `pipeline.stage_main` runs `pipeline.run_dedup`; the logic is in src/brainmri."""

from brainmri.core.portable import pin_cpu_kernels

pin_cpu_kernels()

from brainmri.pipeline import run_dedup, stage_main  # noqa: E402

if __name__ == "__main__":
    stage_main("dedup", run_dedup)
