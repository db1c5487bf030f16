"""CPU kernels pinned to one code path, so that training gives the same bytes on every x86-64 CPU.

Why the same seed gives another model on another CPU: PyTorch's vectorised
kernels (ATen) are chosen by the instructions the CPU has (AVX2, AVX-512),
oneDNN's convolutions likewise (AVX2, AVX-512, AMX), and MKL's GEMM by
vendor and ISA. Each path adds in another order, so results differ in the
last bits, and a few hundred optimiser steps amplify those bits into
another model. The thread count splits reductions too, so it is fixed by
the params (``train.num_threads``), not taken from the machine.

``pin_cpu_kernels`` sets, before torch is first imported (the libraries read
these variables once, when they load), the environment that sends every
x86-64 CPU with AVX2 and FMA (Intel since Haswell, 2013; AMD since Zen, 2017)
down the same AVX2 path: ATen's AVX2 kernels, oneDNN capped at AVX2, MKL
in conditional-numerical-reproducibility mode on its COMPATIBLE branch,
numpy's OpenBLAS on its Haswell kernels, and numpy's own universal functions
on their AVX2 (``X86_V3``) loops.

numpy picks a ufunc's loop by CPU too, and the loops differ in the last bit:
float32 ``exp``, ``log``, ``sin``, ``cos`` and float64 ``tanh`` give other
bytes on its baseline (``X86_V2``) loops than on its AVX2 ones, and its
AVX-512 (``X86_V4``) loops are other code again. The demo phantoms are
rendered with them, so unpinned, an AVX2-only AMD EPYC wrote other demo
archives than the AVX-512 Intel Xeon that made the lock (seen 2026-12-07:
``build/raw`` differed, and so did every stage after it).

MKL's branch is COMPATIBLE (SSE2 without approximation instructions), not
AVX2: MKL honours its ISA branches (AVX2, AVX512) on Intel CPUs only, and on
any other CPU silently runs its AUTO branch instead, so ``MKL_CBWR=AVX2``
gave an AMD machine's model on AMD and another on Intel (seen: the demo
lock made on an AMD EPYC was not reproduced on an Intel Xeon). COMPATIBLE
is the one fixed branch MKL runs on both. It has no STRICT mode, so the
result depends on the thread count: the params fix it. The cost in speed is measured by
``benchmarks/bench_cross_cpu.py`` and stated in the README. A CPU without
AVX2 falls back to slower generic kernels and gives other bytes; the
fingerprint (``environment_fingerprint``) then shows it. GPUs are not
covered: cuDNN and bf16 autocast differ by GPU model by design.

``BRAINMRI_NATIVE_CPU=1`` opts out (each CPU's fastest kernels; results then
belong to that CPU).

Every stage script calls it first (numpy matters to fetch, merge, dedup and
split too), so this module must import neither numpy nor torch.
"""

from __future__ import annotations

import os
import sys

PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
    "OPENBLAS_CORETYPE": "Haswell",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
}
"""The variables, and the values every machine gets (documented in the README)."""

OPT_OUT = "BRAINMRI_NATIVE_CPU"


def pin_cpu_kernels() -> bool:
    """Set ``PINNED_ENV`` for this process and its children unless opted out; True when pinned.

    Refuses to run after numpy or torch was imported, since the pin would then
    be silently ignored for this process.
    """
    if os.environ.get(OPT_OUT) == "1":
        return False
    loaded = sorted({"numpy", "torch"} & set(sys.modules))
    if loaded:
        raise RuntimeError(
            f"pin_cpu_kernels() must run before numpy and torch are imported ({', '.join(loaded)} already is:"
            " they read these variables on load)"
        )
    os.environ.update(PINNED_ENV)
    return True


def is_pinned() -> bool:
    """Whether this process runs with every pinned variable at its pinned value."""
    return all(os.environ.get(name) == value for name, value in PINNED_ENV.items())


KERNEL_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
)
"""The CPU flags that decide which kernels the libraries would pick unpinned."""


def cpu_info() -> tuple[str, list[str]]:
    """The CPU's model name and its ``KERNEL_FLAGS`` (from /proc/cpuinfo; elsewhere the platform's name, no flags)."""
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return model, [flag for flag in KERNEL_FLAGS if flag in flags]


def _library_versions(torch_config: str) -> dict[str, str]:
    """MKL and oneDNN versions as torch reports them in ``torch.__config__.show()``."""
    found = {}
    for line in torch_config.splitlines():
        if "Math Kernel Library Version" in line:
            found["mkl"] = line.split("Version", 1)[1].split("Product")[0].strip(" -")
        elif "MKL-DNN" in line or "oneDNN" in line:
            found["onednn"] = next((word for word in line.split() if word.startswith("v")), "?").lstrip("v")
    return found


def numpy_simd_level() -> str:
    """The highest x86 level whose loops numpy's ufuncs run in this process (``X86_V3`` where pinned on AVX2)."""
    from numpy._core._multiarray_umath import __cpu_features__ as features

    return next((level for level in ("X86_V4", "X86_V3", "X86_V2") if features.get(level)), "baseline")


def environment_fingerprint(device: str, threads: int) -> dict:
    """Where a training result came from, in two parts.

    ``kernels``: what decides the bytes (device, threads, torch version, the
    kernel paths in use). It is the same on every machine where the pin
    holds, so it goes into the committed train metrics: a ``dvc metrics
    diff`` that shows it changed tells a machine change from a code change.
    ``machine``: the CPU model and flags, core count, library versions. It
    differs between machines even when the results do not, so it goes into
    an uncommitted file beside the model (``build/provenance/train.json``).
    """
    import platform

    import numpy
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    numpy_loops = numpy_simd_level()
    kernels = {
        "device": device,
        "threads": threads,
        "torch": str(torch.__version__),  # a plain str: TorchVersion does not unpickle with weights_only
        "aten_capability": capability,
        "numpy_simd": numpy_loops,
        **{name.lower(): os.environ.get(name, "unset") for name in PINNED_ENV},
        "portable": device == "cpu" and is_pinned() and capability == "AVX2" and numpy_loops == "X86_V3",
    }
    model, flags = cpu_info()
    machine = {
        "cpu": model,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        **_library_versions(torch.__config__.show()),
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device.startswith("cuda"):
        machine["gpu"] = torch.cuda.get_device_name()
    return {"kernels": kernels, "machine": machine}
