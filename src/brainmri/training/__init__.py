"""The train stage: tensor cache, device switches, the training loop, multi-GPU."""
