"""bf16 on CPU (issue 12): used only where it can pay (native kernels, a core with bf16 instructions), fp32 with
one line saying why elsewhere; the default path never autocasts on CPU."""

from __future__ import annotations

import torch

from brainmri.training import device
from brainmri.training.device import cpu_has_bf16, runtime

ZEN4 = ["avx2", "avx512f", "avx512_bf16", "avx512_vnni"]
SAPPHIRE_RAPIDS = ["avx2", "avx512f", "amx_bf16", "amx_tile"]
AVX2_ONLY = ["avx", "avx2", "fma"]
SKYLAKE_AVX512 = ["avx2", "avx512f", "avx512bw"]


def test_bf16_instructions_are_read_from_the_cpu_flags():
    assert cpu_has_bf16(ZEN4) and cpu_has_bf16(SAPPHIRE_RAPIDS)
    assert not cpu_has_bf16(AVX2_ONLY) and not cpu_has_bf16(SKYLAKE_AVX512) and not cpu_has_bf16([])


def _autocast_dtype(rt) -> torch.dtype:
    with rt.autocast():
        return torch.nn.Linear(4, 2)(torch.ones(1, 4)).dtype


def test_cpu_bf16_falls_back_to_fp32_with_one_line_where_it_cannot_help(monkeypatch, capsys):
    monkeypatch.setattr(device, "is_pinned", lambda: False)
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    with runtime(torch.device("cpu"), 1, cpu_bf16=True) as rt:
        assert not rt.cpu_bf16 and _autocast_dtype(rt) == torch.float32
    assert (
        capsys.readouterr().err.strip()
        == "train.cpu_bf16: training in fp32: this CPU has no AVX512-BF16 or AMX instructions"
    )
    monkeypatch.setattr(device, "is_pinned", lambda: True)
    with runtime(torch.device("cpu"), 1, cpu_bf16=True) as rt:
        assert not rt.cpu_bf16
    assert "pinned" in capsys.readouterr().err


def test_cpu_bf16_autocasts_where_usable_and_the_default_never_does(monkeypatch, capsys):
    monkeypatch.setattr(device, "is_pinned", lambda: False)
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    with runtime(torch.device("cpu"), 1, cpu_bf16=True) as rt:
        assert rt.cpu_bf16 and _autocast_dtype(rt) == torch.bfloat16
    with runtime(torch.device("cpu"), 1) as rt:
        assert not rt.cpu_bf16 and _autocast_dtype(rt) == torch.float32
    assert capsys.readouterr().err == ""
