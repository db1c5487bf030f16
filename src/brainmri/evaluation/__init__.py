"""The evaluate and external stages: metrics, figures, the model card."""
