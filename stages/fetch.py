"""DVC stage `fetch` (see dvc.yaml): `pipeline.stage_main` runs `pipeline.run_fetch`; the logic is in src/brainmri."""

from brainmri.core.portable import pin_cpu_kernels

pin_cpu_kernels()  # before numpy/torch load: the same environment in every stage

from brainmri.pipeline import run_fetch, stage_main  # noqa: E402

if __name__ == "__main__":
    stage_main("fetch", run_fetch)
