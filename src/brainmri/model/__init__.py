"""What a trained classifier is: architectures, checkpoints, batched inference, temperature, OOD check, Grad-CAM."""
