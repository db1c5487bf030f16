"""Does training give the same weights on another CPU? Emulated here by the CPU-dispatch variables.

Each variant trains the demo configuration (``params.yaml``'s ``train`` on
``build/split/split.csv``; run ``dvc repro split`` first) in a fresh Python
process whose environment makes one library take another code path, as a
different CPU would: ATen's AVX2 instead of AVX-512 kernels, oneDNN capped
at AVX2, MKL restricted to AVX2, another thread count, one core. It prints
the sha256 of the trained weights (``model.pt``'s tensors; the file also
holds the params, whose paths and thread count the variants change) and the
training time. Unpinned variants differ; the pinned ones
(``brainmri.core.portable``) with the same thread count give the same weights.

    python benchmarks/bench_cross_cpu.py --epochs 1
    python benchmarks/bench_cross_cpu.py --only "1 thread"      # the speed cost, least disturbed by other jobs
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from brainmri.core.portable import OPT_OUT, PINNED_ENV

AVX2_ONLY_CPU = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
}
"""What a CPU without AVX-512 (e.g. Zen 2, Haswell-Broadwell Xeon) would run, as far as the libraries let us say so."""

VARIANTS: list[tuple[str, bool, dict[str, str], int, bool]] = [
    # name, pinned, extra environment, threads, on one core only
    ("native", False, {}, 2, False),
    ("native, ATen avx2", False, {"ATEN_CPU_CAPABILITY": "avx2"}, 2, False),
    ("native, oneDNN AVX2", False, {"DNNL_MAX_CPU_ISA": "AVX2"}, 2, False),
    ("native, 1 thread", False, {}, 1, False),
    ("pinned", True, {}, 2, False),
    ("pinned, MKL told AVX2 only", True, {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, 2, False),
    ("pinned, 1 thread", True, {}, 1, False),
    ("pinned, 2 threads on 1 core", True, {}, 2, True),
    ("pinned, MKL AVX2 branch (the pin before 2026-12-03: Intel only)", True, {"MKL_CBWR": "AVX2,STRICT"}, 2, False),
    ("pinned, MKL AUTO branch (what a non-Intel CPU ran when told AVX2)", True, {"MKL_CBWR": "AUTO,STRICT"}, 2, False),
]


def child_environment(pinned: bool, extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any dispatch variable, then the variant's."""
    names = set(PINNED_ENV) | set(AVX2_ONLY_CPU) | {OPT_OUT}
    env = {k: v for k, v in os.environ.items() if k not in names}
    return {**env, **(PINNED_ENV if pinned else {}), **extra}


def weights_sha256(state_dict: dict) -> str:
    """sha256 of every tensor's bytes, in the state dict's order."""
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_once(params: Path, threads: int, epochs: int | None, out: Path, pinned: bool) -> dict:
    """Train in this process (the parent set its environment); return the checkpoint hash and timings.

    A pinned variant that changes a pinned variable (another MKL branch) still trains as pinned (oneDNN's
    convolutions off): it differs from the pin in that variable only."""
    import pandas as pd
    import torch

    from brainmri.core import portable

    if pinned:
        portable.PINNED_ENV.update({name: os.environ[name] for name in portable.PINNED_ENV})

    from brainmri.config import load_config
    from brainmri.model.checkpoint import read_checkpoint
    from brainmri.training.train import train_model

    cfg = load_config(params)
    update = {"num_threads": threads, "out_dir": out / "model", **({"epochs": epochs} if epochs else {})}
    train_cfg = cfg.train.model_copy(update=update)
    table = pd.read_csv(cfg.split.out_dir / "split.csv", keep_default_na=False)
    started = time.perf_counter()
    summary = train_model(
        table, train_cfg, seed=cfg.seed, out_dir=train_cfg.out_dir, live_dir=out / "live", data_version="bench"
    )
    return {
        "sha256": weights_sha256(read_checkpoint(train_cfg.out_dir / "model.pt")["state_dict"]),
        "seconds": round(time.perf_counter() - started, 1),
        "images_per_s": summary["train_images_per_s"],
        "val_accuracy": summary["val_accuracy"],
        "aten": torch.backends.cpu.get_cpu_capability(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs (default: params.yaml's)")
    parser.add_argument("--only", default="", help="run the variants whose name contains this")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)  # threads, in a child process
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pinned", action="store_true", help=argparse.SUPPRESS)  # in a child process
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train_once(args.params, args.child, args.epochs, args.out, args.pinned)))
        return
    print("| variant | threads | ATen | weights sha256 | val acc | train s | images/s |\n|---|---|---|---|---|---|---|")
    for name, pinned, extra, threads, one_core in VARIANTS:
        if args.only not in name:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, __file__, "--params", str(args.params), "--child", str(threads), "--out", tmp]
            cmd += ["--epochs", str(args.epochs)] if args.epochs else []
            cmd += ["--pinned"] if pinned else []
            core = {min(os.sched_getaffinity(0))}
            result = subprocess.run(
                cmd,
                env=child_environment(pinned, extra),
                capture_output=True,
                text=True,
                check=False,
                preexec_fn=functools.partial(os.sched_setaffinity, 0, core) if one_core else None,
            )
        if result.returncode != 0:
            sys.exit(f"{name}: failed\n{result.stderr[-2000:]}")
        r = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"| {name} | {threads} | {r['aten']} | {r['sha256'][:12]} | {r['val_accuracy']:.4f} | "
            f"{r['seconds']} | {r['images_per_s']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
