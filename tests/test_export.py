"""TorchScript and ONNX exports give PyTorch's probabilities, carry their metadata, and the CLI writes them."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from typer.testing import CliRunner

from brainmri.cli import app
from brainmri.core.hashing import file_digest
from brainmri.core.preprocess import to_model_input
from brainmri.model.checkpoint import load_checkpoint
from brainmri.model.inference import logits_and_features
from brainmri.model.temperature import Temperature, softmax
from brainmri.serving.export import TOLERANCE
from conftest import CLASSES, untrained_checkpoint

SIZE = 32
TEMPERATURE = 0.5
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit.*deprecated:FutureWarning")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export through the CLI, shared by the tests (the ONNX exporter takes seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("export")
    checkpoint = untrained_checkpoint(folder / "model.pt", SIZE, data_version="v1")
    Temperature(TEMPERATURE, file_digest(checkpoint)).save(folder / "temperature.json")
    result = CliRunner().invoke(
        app,
        [
            "export",
            "--model",
            str(checkpoint),
            "--temperature",
            str(folder / "temperature.json"),
            "--out-dir",
            str(folder / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    yield checkpoint, folder / "out"
    torch.set_num_threads(threads)


def images(n: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (40 + 5 * k, 48), dtype=np.uint8) for k in range(n)]


def test_both_exports_give_the_pytorch_probabilities_at_the_fitted_temperature(exported):
    checkpoint, out = exported
    model, meta = load_checkpoint(checkpoint)
    logits, _ = logits_and_features(model, images(), meta.image_size)
    expected = softmax(logits, TEMPERATURE)
    assert np.abs(expected - softmax(logits)).max() > 100 * TOLERANCE, (
        "the temperature must visibly change these probabilities"
    )
    batch = to_model_input(images(), meta.image_size)
    scripted = torch.jit.load(str(out / "model.ts"))
    with torch.inference_mode():
        from_torchscript = scripted(batch).numpy()
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    from_onnx = session.run(["probabilities"], {"image": batch.numpy()})[0]
    assert from_onnx.shape == expected.shape == (6, 4), "the batch dimension is dynamic"
    assert np.abs(from_torchscript - expected).max() <= TOLERANCE
    assert np.abs(from_onnx - expected).max() <= TOLERANCE
    single = session.run(["probabilities"], {"image": batch[:1].numpy()})[0]
    assert np.abs(single - expected[:1]).max() <= TOLERANCE


def test_exports_carry_classes_and_input_contract(exported):
    _, out = exported
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == CLASSES and meta["image_size"] == SIZE and meta["data_version"] == "v1"
    assert meta["temperature"] == TEMPERATURE
    props = {p.key: json.loads(p.value) for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert props["classes"] == CLASSES and props["image_size"] == SIZE
    extra = {"meta.json": ""}
    torch.jit.load(str(out / "model.ts"), _extra_files=extra)
    assert json.loads(extra["meta.json"])["classes"] == CLASSES
