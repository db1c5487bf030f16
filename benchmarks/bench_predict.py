"""Prediction speed as a user sees it: batch throughput and single-image latency, decode and OOD check included.

For each model: images/s of ``predict_paths`` over a folder of 512x512 PNGs
(the figshare resolution; read, decode, resize, forward, out-of-distribution
score, CSV), and the latency of one image from its file bytes to a verdict
(median and 95th percentile over repeats, after warm-up), with and without a
Grad-CAM map. The target for the default model (``small_cnn``) is a median
single-image latency under 50 ms on a laptop-class CPU.

Weights do not change the speed, so without ``--checkpoint`` a freshly
initialised model is saved to a temporary checkpoint.

    python benchmarks/bench_predict.py                         # small_cnn, every core
    python benchmarks/bench_predict.py --models small_cnn efficientnet_lite0 --threads 1
    python benchmarks/bench_predict.py --checkpoint build/model/model.pt
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from brainmri.config import CLASSES
from brainmri.core.hashing import file_digest
from brainmri.core.imaging import decode_image
from brainmri.core.inputs import INPUT_LIMITS
from brainmri.model.architectures import MODELS, build_model
from brainmri.model.checkpoint import load_checkpoint, save_checkpoint
from brainmri.model.explain import gradcam_images
from brainmri.model.inference import logits_and_features
from brainmri.model.ood import OODCheck, fit_ood
from brainmri.serving.predict import predict_paths

SIDE = 512


def _slice(rng: np.random.Generator) -> np.ndarray:
    """A grey disc with texture and a bright spot: decodes and compresses like an MRI slice, which is all speed
    needs."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    head = ((yy - SIDE / 2) ** 2 + (xx - SIDE / 2) ** 2) < (SIDE * 0.4) ** 2
    texture = np.kron(rng.normal(110, 25, (SIDE // 16, SIDE // 16)), np.ones((16, 16)))
    cy, cx = rng.uniform(SIDE * 0.3, SIDE * 0.7, 2)
    spot = ((yy - cy) ** 2 + (xx - cx) ** 2) < 20**2
    return np.clip(head * texture + 90 * spot + rng.normal(0, 5, (SIDE, SIDE)), 0, 255).astype(np.uint8)


def _checkpoint(name: str, folder: Path) -> Path:
    path = folder / f"{name}.pt"
    model = build_model(name, len(CLASSES), pretrained=False)
    size = MODELS[name].image_size
    save_checkpoint(
        path, model, model_name=name, classes=list(CLASSES), image_size=size, params={}, data_version="benchmark"
    )
    return path


def _ood_file(checkpoint: Path, images: list[np.ndarray], folder: Path) -> Path:
    """An out-of-distribution check with the model's real feature size, fitted on the benchmark images."""
    model, meta = load_checkpoint(checkpoint)
    _, features = logits_and_features(model, images, meta.image_size)
    labels = np.arange(len(images)) % len(meta.classes)
    path = folder / f"{checkpoint.stem}.ood.npz"
    fit_ood(features, labels, features, 0.99, file_digest(checkpoint)).save(path)
    return path


def _latencies(step, repeats: int) -> np.ndarray:
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return np.array(times) * 1000


def measure(checkpoint: Path, folder: Path, images: int, repeats: int, batch_size: int) -> dict:
    rng = np.random.default_rng(0)
    pictures = [_slice(rng) for _ in range(images)]
    image_dir = folder / f"{checkpoint.stem}-images"
    image_dir.mkdir()
    for k, pixels in enumerate(pictures):
        Image.fromarray(pixels).save(image_dir / f"{k:04d}.png")
    ood = _ood_file(checkpoint, pictures, folder)

    predict_paths([image_dir], checkpoint, folder / "warmup.csv", batch_size, ood=ood)
    start = time.perf_counter()
    predict_paths([image_dir], checkpoint, folder / "out.csv", batch_size, ood=ood)
    batch_rate = images / (time.perf_counter() - start)

    model, meta = load_checkpoint(checkpoint)
    check = OODCheck.load(ood)
    data = (image_dir / "0000.png").read_bytes()

    def one_image() -> None:
        pixels = decode_image(data, "bench", INPUT_LIMITS)
        _, features = logits_and_features(model, [pixels], meta.image_size)
        check.rejects(check.score(features))

    def one_gradcam() -> None:
        gradcam_images(model, [decode_image(data, "bench", INPUT_LIMITS)], meta.image_size)

    single = _latencies(one_image, repeats)
    cam = _latencies(one_gradcam, repeats)
    return {
        "model": meta.model_name,
        "size": meta.image_size,
        "batch": batch_rate,
        "median": float(np.median(single)),
        "p95": float(np.percentile(single, 95)),
        "cam": float(np.median(cam)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["small_cnn"], choices=sorted(MODELS))
    parser.add_argument("--checkpoint", type=Path, help="measure this checkpoint instead of fresh models")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: every core)")
    parser.add_argument("--images", type=int, default=128, help="images in the batch-throughput folder")
    parser.add_argument("--repeats", type=int, default=50, help="single-image timings per model")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoints = [args.checkpoint] if args.checkpoint else [_checkpoint(name, folder) for name in args.models]
        for checkpoint in checkpoints:
            rows.append(measure(checkpoint, folder, args.images, args.repeats, args.batch_size))
    print(
        f"\ndevice: cpu, {torch.get_num_threads()} threads; {SIDE}x{SIDE} PNG inputs; batch {args.batch_size}; "
        f"torch {torch.__version__}\n"
    )
    print("| model | size | batch img/s (files → CSV) | single image ms, median | p95 | with Grad-CAM ms, median |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['size']} | {r['batch']:.1f} | {r['median']:.1f} | {r['p95']:.1f} | {r['cam']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
