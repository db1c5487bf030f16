"""Export a checkpoint for serving without this package: TorchScript and ONNX.

Both files take what the model takes, ``image`` ``[N, 1, S, S]`` float in
[0, 1] (grey, resized to the checkpoint's ``image_size``; see
``brainmri.core.preprocess``), and return ``probabilities`` ``[N, classes]``: the
softmax, at the temperature the evaluate stage fitted when one is given
(``brainmri.model.temperature``), is part of the exported graph
(``inference.ProbabilityModel``), so a consumer cannot forget it and gets
the probabilities ``predict`` reports. The batch dimension is dynamic.

The class names, image size and input contract travel inside each file (the
TorchScript archive's ``extra_files["meta.json"]``, the ONNX model's
``metadata_props``) and beside them as ``model.json``. The checkpoint's crop
and intensity settings (``train.input``) are data-dependent (a head to find,
percentiles to take), so they are not part of the graphs: ``preprocess`` in
the metadata records them, and a consumer applies
``brainmri.core.preprocess.normalise_input`` (or the same steps) before resizing.

ONNX goes through the ``torch.export``-based exporter (``dynamo=True``), the
one PyTorch maintains; TorchScript through ``torch.jit.trace``, which PyTorch
has deprecated but which is what "TorchScript" still means for C++
(libtorch) and older serving stacks. After writing, each file is loaded back
and run on random inputs; an export whose probabilities differ from
PyTorch's by more than ``TOLERANCE`` raises ``ExportMismatch`` instead of
shipping.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..core.hashing import file_digest
from ..errors import UserError
from ..model.checkpoint import CheckpointMeta, load_checkpoint
from ..model.inference import ProbabilityModel
from ..model.temperature import Temperature

TOLERANCE = 1e-4
"""Largest allowed absolute difference in any probability between PyTorch and an export."""

OPSET = 18


class ExportMismatch(UserError, RuntimeError):
    """An exported model does not reproduce the PyTorch probabilities."""


def _meta(meta: CheckpointMeta, checkpoint: Path, temperature: float) -> dict:
    return {
        "model": meta.model_name,
        "classes": list(meta.classes),
        "image_size": meta.image_size,
        "input": f"image: float32 [N, 1, {meta.image_size}, {meta.image_size}], grey in [0, 1]; "
        "see brainmri.core.preprocess",
        "preprocess": {
            **meta.preprocess.model_dump(mode="json"),
            "applied": "outside the graph, before resizing: brainmri.core.preprocess.normalise_input "
            "(none: nothing to do)",
        },
        "output": "probabilities: float32 [N, classes], softmax(logits / temperature), in the order of 'classes'",
        "temperature": temperature,
        "data_version": meta.data_version,
        "checkpoint_sha256": file_digest(checkpoint),
    }


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silence what ``torch.jit`` says on every call: its deprecation, and the tracer's note that the
    adapter's shape check becomes a constant (the exported contract is ``[N, 1, S, S]`` anyway)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        yield


def export_torchscript(model: ProbabilityModel, example: torch.Tensor, path: Path, meta: dict) -> None:
    with _quiet_jit():
        traced = torch.jit.trace(model.eval(), example)
        torch.jit.save(traced, str(path), _extra_files={"meta.json": json.dumps(meta)})


def export_onnx(model: ProbabilityModel, example: torch.Tensor, path: Path, meta: dict) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        model.eval(),
        (example,),
        dynamo=True,
        input_names=["image"],
        output_names=["probabilities"],
        dynamic_shapes=({0: batch},),
        opset_version=OPSET,
        verbose=False,
    )
    proto = program.model_proto
    for key, value in meta.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=json.dumps(value)))
    onnx.save(proto, str(path))


def max_differences(
    model: ProbabilityModel, torchscript: Path, onnx_path: Path, batch: torch.Tensor
) -> dict[str, float]:
    """Largest absolute probability difference of each export against PyTorch on ``batch``."""
    import onnxruntime

    with torch.inference_mode():
        reference = model.eval()(batch).numpy()
        with _quiet_jit():
            scripted = torch.jit.load(str(torchscript))(batch).numpy()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    from_onnx = session.run(["probabilities"], {"image": batch.numpy()})[0]
    return {
        "torchscript": float(np.abs(scripted - reference).max()),
        "onnx": float(np.abs(from_onnx - reference).max()),
    }


def export_checkpoint(checkpoint: Path, out_dir: Path, seed: int = 0, temperature: Path | None = None) -> dict:
    """Write ``model.ts``, ``model.onnx`` and ``model.json`` under ``out_dir``; verify both exports; return paths
    and differences.

    ``temperature``: the evaluate stage's ``temperature.json`` for this
    checkpoint, divided into the logits before the softmax (none: ``T = 1``).
    """
    classifier, meta = load_checkpoint(checkpoint)
    scale = Temperature.load(temperature, file_digest(checkpoint)).value if temperature is not None else 1.0
    model = ProbabilityModel(classifier, scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = _meta(meta, checkpoint, scale)
    generator = torch.Generator().manual_seed(seed)
    size = meta.image_size
    example = torch.rand(2, 1, size, size, generator=generator)
    paths = {"torchscript": out_dir / "model.ts", "onnx": out_dir / "model.onnx", "meta": out_dir / "model.json"}
    export_torchscript(model, example, paths["torchscript"], info)
    export_onnx(model, example, paths["onnx"], info)
    paths["meta"].write_text(json.dumps(info, indent=2) + "\n")
    differences = max_differences(
        model, paths["torchscript"], paths["onnx"], torch.rand(5, 1, size, size, generator=generator)
    )
    bad = {name: diff for name, diff in differences.items() if diff > TOLERANCE}
    if bad:
        raise ExportMismatch(f"exported probabilities differ from PyTorch by {bad} (tolerance {TOLERANCE})")
    return {**{name: str(path) for name, path in paths.items()}, "max_difference": differences}
