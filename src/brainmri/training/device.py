"""Device choice and the per-device runtime switches, in one place.

The training and inference code is the same on every device; only the
switches differ: on CUDA, bf16 autocast, cudnn autotuning and pinned host
memory; on CPU, ``train.num_threads`` threads (default: every core),
deterministic algorithms, and bf16 autocast only when asked for
(``train.cpu_bf16``) and the core has bf16 instructions. Both use
channels_last, which is what oneDNN and cuDNN convolutions are fastest with.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from ..core.portable import cpu_info, is_pinned
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
    cpu_bf16: bool = False

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA (no loss scaling needed); on CPU only with ``cpu_bf16``, since without bf16
        instructions it is slower than fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.is_cuda or self.cpu_bf16)

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """Host uint8 batch → device float in [0, 1], channels_last (the uint8 copy is 4× smaller to transfer)."""
        if self.is_cuda:
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return uint8_batch_to_float(batch).contiguous(memory_format=torch.channels_last)


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU has native bf16 arithmetic (AVX512-BF16 or AMX) among its flags (default: this CPU's).

    oneDNN emulates bf16 on other AVX-512 cores and AVX2 cores, more slowly than fp32; where the flags cannot be
    read (systems without /proc/cpuinfo), the answer is no.
    """
    flags = set(cpu_info()[1] if flags is None else flags)
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def cpu_bf16_usable() -> tuple[bool, str]:
    """(usable, why not): bf16 autocast on CPU needs native oneDNN kernels and a core with bf16 instructions."""
    if is_pinned():
        return False, "the CPU kernels are pinned for reproducibility (set BRAINMRI_NATIVE_CPU=1 to use bf16)"
    if not torch.backends.mkldnn.is_available():
        return False, "this torch build has no oneDNN"
    if not cpu_has_bf16():
        return False, "this CPU has no AVX512-BF16 or AMX instructions"
    return True, ""


@contextlib.contextmanager
def runtime(
    device: torch.device, threads: int = 0, deterministic: bool = True, cpu_bf16: bool = False
) -> Iterator[Runtime]:
    """Set the process-wide torch switches for ``device`` and restore them afterwards.

    ``threads`` (CPU only; 0: every core): on a machine shared with other
    jobs, fewer threads than cores is faster, since OpenMP threads that wait
    for a descheduled sibling stall every operation.

    Restoring matters because tests and the evaluate stage share the process.
    Determinism is asked for on CPU only: on CUDA it would cost the cuDNN
    autotuner and needs cuBLAS workspace settings, for results that differ
    by float rounding only.

    ``cpu_bf16`` asks for bf16 autocast on CPU; where it cannot help (see
    ``cpu_bf16_usable``) training stays fp32 and one line says why.
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
            if cpu_bf16:
                cpu_bf16, why_not = cpu_bf16_usable()
                if not cpu_bf16:
                    print(f"train.cpu_bf16: training in fp32: {why_not}", file=sys.stderr)
        else:
            torch.backends.cudnn.benchmark = True
        yield Runtime(device, cpu_bf16=cpu_bf16 and device.type == "cpu")
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.backends.cudnn.benchmark = saved[2]
        torch.backends.mkldnn.enabled = saved[3]
