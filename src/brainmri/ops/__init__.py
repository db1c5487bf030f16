"""Running and checking the pipeline: the dvc runner, the reproducibility check, the pull-request report."""
