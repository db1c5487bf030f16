"""Using a trained checkpoint outside the pipeline: predict and export."""
