"""Training and inference speed of each model at its default size, and how much the data path costs.

For each model: train images/s of the model alone (forward + backward +
optimiser step on synthetic tensors already in memory), inference images/s,
and the full training loop's images/s (``train_model``: cached uint8 images
from the memory map, augmentation, device transfer) as a fraction of the
model-alone rate. A ratio near 1 means the data path is not the bottleneck.

    python benchmarks/bench_train.py                       # the two default models, every core
    python benchmarks/bench_train.py --models small_cnn --threads 1
    BRAINMRI_NATIVE_CPU=1 python benchmarks/bench_train.py --precision fp32 bf16   # bf16 autocast on CPU

``--precision bf16`` on CPU is ``train.cpu_bf16``: it needs native kernels (``BRAINMRI_NATIVE_CPU=1``) and
a core with AVX512-BF16 or AMX; elsewhere the run says why and measures fp32 again (the table says which ran).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from brainmri.config import CLASSES, MODEL_NAMES, TrainConfig
from brainmri.model.architectures import MODELS, build_model
from brainmri.training.device import runtime, select_device
from brainmri.training.train import make_optimizer, predict_logits, train_model


def _timed(step, repeats: int) -> float:
    """Median seconds per call after two warm-up calls (oneDNN/cuDNN build kernels on first use).

    The median, not the mean: on a shared machine single calls are sometimes
    stalled by other jobs, and one stall would dominate a mean of a few calls.
    """
    for _ in range(2):
        step()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def model_rates(name: str, size: int, batch_size: int, repeats: int, rt) -> tuple[float, float]:
    """(train, inference) images/s of the bare model on random tensors."""
    model = build_model(name, len(CLASSES), pretrained=False).to(rt.device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model, TrainConfig(model=name))
    x = torch.randint(0, 256, (batch_size, 1, size, size), dtype=torch.uint8)
    y = torch.randint(0, len(CLASSES), (batch_size,), device=rt.device)

    def train_step() -> None:
        with rt.autocast():
            loss = torch.nn.functional.cross_entropy(model(rt.to_device(x)).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    train_rate = batch_size / _timed(train_step, repeats)
    images = np.zeros((4 * batch_size, 1, size, size), np.uint8)
    infer_rate = len(images) / _timed(lambda: predict_logits(model, images, rt, 2 * batch_size), max(1, repeats // 2))
    return train_rate, infer_rate


def synthetic_table(folder: Path, count: int, source_size: int = 256) -> pd.DataFrame:
    """Random-texture 8-bit PNGs, like merge output in format and size (content does not matter for speed)."""
    rng = np.random.default_rng(0)
    rows = []
    for index in range(count):
        path = folder / f"img{index}.png"
        Image.fromarray(rng.integers(0, 256, (source_size, source_size), dtype=np.uint8)).save(path)
        split = "val" if index % 8 == 0 else "train"
        rows.append({"image_id": path.stem, "path": str(path), "label": CLASSES[index % len(CLASSES)], "split": split})
    return pd.DataFrame(rows)


def loop_rate(name: str, size: int, batch_size: int, images: int, threads: int, folder: Path, cpu_bf16: bool) -> float:
    """Train images/s of ``train_model`` over two epochs (first-step warm-up included, as in real runs)."""
    cfg = TrainConfig(
        model=name,
        image_size=size,
        batch_size=batch_size,
        epochs=2,
        num_threads=threads,
        cache_dir=folder / "cache",
        cpu_bf16=cpu_bf16,
    )
    table = synthetic_table(folder, images)
    summary = train_model(
        table, cfg, seed=0, out_dir=folder / f"model-{name}", live_dir=folder / f"live-{name}", data_version="bench"
    )
    return summary["train_images_per_s"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small_cnn", "efficientnet_lite0"], choices=MODEL_NAMES)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9, help="timed steps for the bare-model rates")
    parser.add_argument(
        "--images",
        type=int,
        default=1024,
        help="synthetic images for the loop rate (enough steps that the slow first one does not count)",
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: every core)")
    parser.add_argument(
        "--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"], help="bf16: train.cpu_bf16 on CPU"
    )
    args = parser.parse_args(argv)

    device = select_device("auto")
    name_cpu = (
        f"{device.type}, {args.threads or os.cpu_count()} threads"
        if device.type == "cpu"
        else torch.cuda.get_device_name()
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for precision in args.precision:
                size = MODELS[name].image_size
                with runtime(device, args.threads, cpu_bf16=precision == "bf16") as rt:
                    train_rate, infer_rate = model_rates(name, size, args.batch_size, args.repeats, rt)
                    ran = "bf16" if rt.is_cuda or rt.cpu_bf16 else "fp32"
                folder = Path(tmp) / f"{name}-{precision}"
                folder.mkdir()
                loop = loop_rate(name, size, args.batch_size, args.images, args.threads, folder, precision == "bf16")
                rows.append((name, size, ran, train_rate, infer_rate, loop, loop / train_rate))
    print(f"\ndevice: {name_cpu}; batch {args.batch_size}; torch {torch.__version__}\n")
    print(
        "| model | size | precision | train img/s (model) | inference img/s | train img/s (full loop) | loop / model |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, size, ran, train_rate, infer_rate, loop, ratio in rows:
        print(f"| {name} | {size} | {ran} | {train_rate:.1f} | {infer_rate:.1f} | {loop:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
