"""Device choice and the per-device runtime switches, in one place.

The training and inference code is the same on every device; only the
switches differ: on CUDA, bf16 autocast, cudnn autotuning and pinned host
memory; on CPU, ``train.num_threads`` threads (default: every core) and
deterministic algorithms. Both use
channels_last, which is what oneDNN and cuDNN convolutions are fastest with.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..core.portable import is_pinned
from ..core.preprocess import uint8_batch_to_float


def select_device(preference: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error, not a silent fallback."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    if preference not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {preference!r} (known: auto, cpu, cuda)")
    return torch.device(preference)


@dataclass(frozen=True)
class Runtime:
    """What the loops need to know about the device they run on."""

    device: torch.device

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA (no loss scaling needed); plain fp32 on CPU, where bf16 is slower on most cores."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.is_cuda)

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """Host uint8 batch → device float in [0, 1], channels_last (the uint8 copy is 4× smaller to transfer)."""
        if self.is_cuda:
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return uint8_batch_to_float(batch).contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def runtime(device: torch.device, threads: int = 0, deterministic: bool = True) -> Iterator[Runtime]:
    """Set the process-wide torch switches for ``device`` and restore them afterwards.

    ``threads`` (CPU only; 0: every core): on a machine shared with other
    jobs, fewer threads than cores is faster, since OpenMP threads that wait
    for a descheduled sibling stall every operation.

    Restoring matters because tests and the evaluate stage share the process.
    Determinism is asked for on CPU only: on CUDA it would cost the cuDNN
    autotuner and needs cuBLAS workspace settings, for results that differ
    by float rounding only.
    """
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.mkldnn.enabled,
    )
    try:
        if device.type == "cpu":
            torch.set_num_threads(threads or os.cpu_count() or 1)
            torch.use_deterministic_algorithms(deterministic)
            torch.backends.mkldnn.enabled = not is_pinned()  # oneDNN's results vary with core count and thread count
        else:
            torch.backends.cudnn.benchmark = True
        yield Runtime(device)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        torch.backends.mkldnn.enabled = saved[3]
