"""The pinned CPU kernels: set by every stage before numpy or torch loads, and the bytes they buy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from brainmri.core.portable import OPT_OUT, PINNED_ENV, environment_fingerprint, pin_cpu_kernels

ROOT = Path(__file__).resolve().parents[1]

SPY = """
import json, os, runpy, sys
NAMES = {names!r}
class Spy:
    '''Report the pinned variables at the moment numpy or torch is first imported, then stop the stage.'''
    def find_spec(self, name, path=None, target=None):
        if name in ("numpy", "torch"):
            print(json.dumps({{n: os.environ.get(n) for n in NAMES}}), flush=True)
            os._exit(0)
sys.meta_path.insert(0, Spy())
sys.argv = [{stage!r}]
runpy.run_path({stage!r}, run_name="__main__")
"""


def _clean_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PINNED_ENV and k != OPT_OUT}
    return {**env, **extra}


def _last_json_line(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh Python with this environment (pinned variables removed, ``env`` added)."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=_clean_environment(**env),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _env_when_numpy_or_torch_loads(stage: str, **extra: str) -> dict:
    return _last_json_line(SPY.format(names=sorted(PINNED_ENV), stage=f"stages/{stage}.py"), **extra)


@pytest.mark.parametrize("stage", ["fetch", "merge", "dedup", "split", "train", "evaluate"])
def test_stage_pins_the_kernels_before_numpy_or_torch_loads(stage):
    assert _env_when_numpy_or_torch_loads(stage) == PINNED_ENV


def test_native_opt_out_leaves_the_environment_alone():
    assert _env_when_numpy_or_torch_loads("train", **{OPT_OUT: "1"}) == dict.fromkeys(PINNED_ENV)


def test_pinning_after_numpy_or_torch_loaded_is_refused(monkeypatch):
    import torch  # noqa: F401  (loaded, as in any test process)

    for name in PINNED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(OPT_OUT, raising=False)
    with pytest.raises(RuntimeError, match=r"before numpy and torch are imported \(numpy, torch already is"):
        pin_cpu_kernels()
    assert not any(name in os.environ for name in PINNED_ENV)


NUMPY_CHILD = """
import json, numpy
from numpy._core._multiarray_umath import __cpu_features__ as features
from brainmri.core.portable import numpy_simd_level
print(json.dumps({"avx2": features["AVX2"], "loops": numpy_simd_level(), "x86_v4": features["X86_V4"]}))
"""


def test_pinned_numpy_runs_its_avx2_loops_on_every_cpu_with_avx2():
    """numpy's ufunc loops differ in the last bit by CPU level (float32 exp, log, sin, cos), and the demo phantoms
    are rendered with them: pinned, a CPU with AVX-512 runs the AVX2 (X86_V3) loops like one without."""
    seen = _last_json_line(NUMPY_CHILD, **PINNED_ENV)
    assert seen["x86_v4"] is False
    if not seen["avx2"]:
        pytest.skip("this CPU has no AVX2: numpy's baseline loops, not the pinned ones")
    assert seen["loops"] == "X86_V3"


def test_fingerprint_separates_what_decides_the_bytes_from_the_machine():
    fingerprint = environment_fingerprint("cpu", 2)
    kernels, machine = fingerprint["kernels"], fingerprint["machine"]
    assert kernels["threads"] == 2 and kernels["device"] == "cpu"
    assert kernels["numpy_simd"].startswith("X86_") or kernels["numpy_simd"] == "baseline"
    assert kernels["portable"] is False  # this test process was not pinned
    assert "cpu" not in kernels and machine["cpu"]  # the CPU model stays out of the committed part
    json.dumps(fingerprint)  # written as JSON


CHILD = """
import json, sys
from pathlib import Path
import pandas as pd
import torch
from brainmri.model.checkpoint import read_checkpoint
from brainmri.config import TrainConfig
from brainmri.training.train import train_model
sys.path.insert(0, {benchmarks!r})
from bench_cross_cpu import weights_sha256
tmp, threads, name = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
table = pd.read_csv(tmp / "table.csv")
cfg = TrainConfig(image_size=32, epochs=1, batch_size=8, num_threads=threads, cache_dir=tmp / "cache")
out = tmp / name
train_model(table, cfg, seed=3, out_dir=out, live_dir=out / "live", data_version="v1", classes=["disc", "square"])
print(json.dumps({{"sha256": weights_sha256(read_checkpoint(out / "model.pt")["state_dict"]),
                  "aten": torch.backends.cpu.get_cpu_capability()}}))
""".format(benchmarks=str(ROOT / "benchmarks"))


def _train_in_child(tmp: Path, threads: int, name: str, cores: set[int] | None = None, **extra: str) -> dict:
    """Train in a fresh process with the pinned environment (plus ``extra``), on ``cores`` only if given."""
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp), str(threads), name],
        cwd=ROOT,
        preexec_fn=pin,
        env=_clean_environment(**PINNED_ENV, **extra),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_pinned_training_gives_the_same_weights_on_one_core_or_all(tmp_path):
    """Another machine, as far as one can emulate it: the same 2 threads squeezed on one core, with MKL told the
    CPU has no AVX-512. (The thread count itself changes the weights, so ``train.num_threads`` fixes it.) The
    weights are compared, not the files: a checkpoint also records its params, paths included.
    """
    from test_train import make_table

    make_table(tmp_path / "images", {"train": 12, "val": 4}).to_csv(tmp_path / "table.csv", index=False)
    everywhere = _train_in_child(tmp_path, 2, "all-cores")
    squeezed = _train_in_child(
        tmp_path, 2, "one-core", cores={min(os.sched_getaffinity(0))}, MKL_ENABLE_INSTRUCTIONS="AVX2"
    )
    assert everywhere["aten"] == "AVX2", "this CPU cannot run the pinned AVX2 kernels"
    assert everywhere["sha256"] == squeezed["sha256"]


def test_the_mkl_branch_is_one_that_every_vendor_runs():
    """MKL runs a named ISA branch (AVX2, AVX512) on Intel CPUs only and silently runs its AUTO branch on any
    other CPU, so pinning one gave an AMD-made lock that Intel could not reproduce. COMPATIBLE is the one fixed
    branch MKL runs on every vendor's CPU (MKL developer guide, "Specifying code branches")."""
    assert PINNED_ENV["MKL_CBWR"].split(",")[0] == "COMPATIBLE"
