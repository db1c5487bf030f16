"""Models: the input contract, one train step each, the offline ImageNet weights, Grad-CAM layer, checkpoints."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from sklearn.datasets import load_sample_image

from brainmri.config import MODEL_NAMES
from brainmri.core.preprocess import to_model_input
from brainmri.model.architectures import (
    MODELS,
    ModelError,
    PretrainedWeightsUnavailable,
    build_model,
    efficientnet_lite_backbone,
    efficientnet_lite_imagenet_state,
    gradcam_layer,
)
from brainmri.model.checkpoint import load_checkpoint, save_checkpoint
from brainmri.model.inference import logits_and_features

BUILDING_CLASSES = {"palace", "bell cote", "castle", "monastery", "church", "boathouse", "stupa"}
"""ImageNet classes that fit scikit-learn's ``china.jpg`` (a temple roof among trees)."""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors run fastest on one thread, and the test machine is shared."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _entropy(probabilities: torch.Tensor) -> float:
    return float(-(probabilities * probabilities.clamp_min(1e-12).log()).sum())


@pytest.fixture(scope="module")
def temple_grey() -> np.ndarray:
    """A real photograph shipped with scikit-learn (no network), centre-cropped square and made grey."""
    image = load_sample_image("china.jpg")
    height, width, _ = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = image[top : top + side, left : left + side].astype(np.float64)
    return np.round(square @ [0.299, 0.587, 0.114]).astype(np.uint8)


def test_model_names_match_the_config():
    """Every name builds (the parametrised tests below build each one); an unknown one is a ModelError."""
    assert MODEL_NAMES == tuple(MODELS)
    with pytest.raises(ModelError, match="unknown model"):
        build_model("resnet9000", 4, pretrained=False)


TORCHVISION_MODELS = ("resnet18", "resnet50", "efficientnet_b0", "convnext_tiny", "vgg16")


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_pretrained_torchvision_model_without_network_fails_in_one_clear_line(name, tmp_path, monkeypatch):
    """An empty weights cache and a download that fails as it does offline: never touches the internet."""

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError(f"no network for {url}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(PretrainedWeightsUnavailable) as caught:
        build_model(name, 4, pretrained=True)
    message = str(caught.value)
    assert "\n" not in message and name in message
    assert "efficientnet_lite0" in message and "pretrained: false" in message


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_blocks_and_head_partition_the_parameters(name):
    model = build_model(name, 4, pretrained=False)
    owned = [id(p) for module in [*model.blocks, model.head] for p in module.parameters()]
    assert len(owned) == len(set(owned)) == len(list(model.parameters()))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_one_train_step_on_grey_input(name):
    torch.manual_seed(0)
    model = build_model(name, 4, pretrained=False).to(memory_format=torch.channels_last)
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    logits = model(x)
    assert logits.shape == (4, 4)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(ValueError, match="grey batch"):
        model(torch.rand(2, 3, 32, 32))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradcam_layer_gives_spatial_maps_with_gradients(name):
    model = build_model(name, 4, pretrained=False).eval()
    seen = {}
    handle = gradcam_layer(model).register_forward_hook(lambda _m, _i, out: seen.update(features=out))
    try:
        x = torch.rand(2, 1, 64, 64)
        score = model(x)[:, 1].sum()
        (grad,) = torch.autograd.grad(score, seen["features"])
    finally:
        handle.remove()
    assert seen["features"].ndim == 4 and seen["features"].shape[-1] >= 2
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_trunk_block_gives_pooled_features_for_the_ood_check(name):
    """The OOD check scores each trunk block: the hooks must fire for every block of every architecture,
    including blocks that only group modules the backbone calls one by one (EfficientNet's stem)."""
    model = build_model(name, 4, pretrained=False)
    images = [np.random.default_rng(k).integers(0, 256, (64, 64), dtype=np.uint8) for k in range(3)]
    logits, features = logits_and_features(model, images, 64)
    assert logits.shape == (3, 4) and len(features) == len(model.blocks)
    assert all(f.shape[0] == 3 and f.shape[1] > 0 and np.isfinite(f).all() for f in features)


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_offline_weights_map_onto_every_timm_key(variant):
    source = efficientnet_lite_imagenet_state(variant)
    target = efficientnet_lite_backbone(variant, 1000, pretrained=False).state_dict()
    assert set(source) == set(target)
    assert all(source[key].shape == target[key].shape for key in target)
    efficientnet_lite_backbone(variant, 4, pretrained=True)  # strict load of every weight


@pytest.mark.parametrize("model_name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_pretrained_weights_recognise_a_photograph(temple_grey, model_name):
    """The ImageNet head, fed the grey photo through the model's own input adapter, is confident and right.

    224 px for all three: on this photo Lite1/2 are as confident there as Lite0 (less so at 240/260 px).
    """
    from timm.data import ImageNetInfo

    x = to_model_input([temple_grey], 224)
    torch.manual_seed(0)
    pretrained = build_model(model_name, 1000, pretrained=True).eval()
    random_init = build_model(model_name, 1000, pretrained=False).eval()
    with torch.no_grad():
        p_pretrained = pretrained(x).softmax(1)[0]
        p_random = random_init(x).softmax(1)[0]
    top1 = ImageNetInfo().index_to_description(int(p_pretrained.argmax()))
    assert any(name in top1 for name in BUILDING_CLASSES), top1
    assert p_pretrained.max() > 0.15
    assert _entropy(p_pretrained) < 4.5 < 5.5 < _entropy(p_random)  # uniform over 1000 classes: 6.9


def test_pretrained_head_is_replaced_but_trunk_kept():
    model = build_model("efficientnet_lite0", 4, pretrained=True)
    state = efficientnet_lite_imagenet_state(0)
    assert model.backbone.classifier.out_features == 4
    assert torch.equal(model.backbone.conv_stem.weight, state["conv_stem.weight"])


@pytest.mark.parametrize(
    "name", [name for name in MODEL_NAMES if name != "vgg16"]
)  # vgg16: 0.5 GB to write, same path as resnet
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, name):
    torch.manual_seed(0)
    model = build_model(name, 3, pretrained=False)
    model.train()
    model(torch.rand(8, 1, 32, 32))  # move BN running stats away from their defaults
    model.eval()
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(
        path,
        model,
        model_name=name,
        classes=["a", "b", "c"],
        image_size=32,
        params={"lr": 0.1},
        data_version="sha256:abc",
        extra={"epoch": 3},
    )
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left behind
    loaded, meta = load_checkpoint(path)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training
    assert (meta.model_name, meta.classes, meta.image_size) == (name, ["a", "b", "c"], 32)
    assert (meta.params, meta.data_version, meta.extra) == ({"lr": 0.1}, "sha256:abc", {"epoch": 3})
