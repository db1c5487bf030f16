"""MixStyle: training-only mixing of early feature statistics, reproducible, off by default."""

from __future__ import annotations

import torch
from torch import nn

from brainmri.config import TrainConfig
from brainmri.training.mixstyle import MIXED_BLOCKS, MixStyle, attach_mixstyle
from brainmri.training.train import recorded_params


def _features(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scale = torch.tensor([1.0, 3.0, 0.5, 2.0]).view(4, 1, 1, 1)  # four images of very different styles
    shift = torch.tensor([0.0, 5.0, -2.0, 1.0]).view(4, 1, 1, 1)
    return torch.randn(4, 3, 8, 8, generator=generator) * scale + shift


def test_in_training_each_image_gets_a_mix_of_its_own_and_another_images_statistics():
    layer = nn.Identity().train()
    x = _features()
    mixed = MixStyle(p=1.0, seed=5)(layer, (x,), x)
    mean, std = x.mean(dim=(2, 3)), (x.var(dim=(2, 3)) + 1e-6).sqrt()
    new_mean, new_std = mixed.mean(dim=(2, 3)), (mixed.var(dim=(2, 3)) + 1e-6).sqrt()
    assert not torch.allclose(mixed, x)
    for image in range(4):
        # the new statistics lie, channel by channel, on a segment from its own to one other image's
        matches = []
        for other in range(4):
            span = mean[other] - mean[image]
            weight = ((new_mean[image] - mean[image]) / span).where(span.abs() > 1e-3, torch.zeros(()))
            on_segment = torch.allclose(mean[image] + weight * span, new_mean[image], atol=1e-4)
            std_ok = torch.allclose(std[image] + weight * (std[other] - std[image]), new_std[image], atol=1e-3)
            matches.append(on_segment and std_ok and bool(((weight >= -1e-4) & (weight <= 1 + 1e-4)).all()))
        assert any(matches), image
    # the content (each image's normalised pattern) is kept
    normalised = (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True)
    renormalised = (mixed - mixed.mean(dim=(2, 3), keepdim=True)) / mixed.std(dim=(2, 3), keepdim=True)
    assert torch.allclose(normalised, renormalised, atol=1e-3)


def test_it_does_nothing_in_evaluation_or_at_p_zero_and_repeats_for_a_seed():
    x = _features()
    assert MixStyle(p=1.0, seed=5)(nn.Identity().eval(), (x,), x) is None
    assert MixStyle(p=0.0, seed=5)(nn.Identity().train(), (x,), x) is None
    a = MixStyle(p=1.0, seed=5)(nn.Identity().train(), (x,), x)
    b = MixStyle(p=1.0, seed=5)(nn.Identity().train(), (x,), x)
    assert torch.equal(a, b)


def test_attached_to_the_first_blocks_it_changes_training_outputs_only():
    from brainmri.model.architectures import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", 4, pretrained=False)
    x = torch.rand(6, 1, 32, 32)
    model.eval()
    before_eval = model(x)
    handles = attach_mixstyle(model.blocks, p=1.0, seed=3)
    assert len(handles) == MIXED_BLOCKS
    assert torch.equal(model(x), before_eval)  # evaluation: untouched
    model.train()
    torch.manual_seed(1)
    mixed = model(x)
    for handle in handles:
        handle.remove()
    torch.manual_seed(1)
    plain = model(x)
    assert not torch.allclose(mixed, plain)
    assert set(model.state_dict()) == set(build_model("small_cnn", 4, pretrained=False).state_dict())


def test_off_by_default_and_left_out_of_a_default_checkpoints_params():
    assert TrainConfig().mixstyle == 0
    assert "mixstyle" not in recorded_params(TrainConfig())
    assert recorded_params(TrainConfig(mixstyle=0.5))["mixstyle"] == 0.5
