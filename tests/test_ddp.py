"""The torchrun/DDP path on CPU: two gloo processes train as one model, and only rank 0 writes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import brainmri.training.train as train
from brainmri.config import TrainConfig
from brainmri.training.distributed import Dist

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, tmp: str) -> None:
    """What torchrun would start: the environment it sets, then the ordinary training entry point."""
    from test_train import CLASSES, make_table  # spawned: a fresh interpreter, with the tests folder on sys.path

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE)
    )
    tmp_path = Path(tmp)
    table = make_table(tmp_path / f"images{rank}", {"train": 8, "val": 3})  # same seed: the same images on both ranks
    cfg = TrainConfig(
        image_size=24,
        epochs=2,
        batch_size=4,
        num_threads=1,
        device="cpu",
        cache_dir=tmp_path / f"cache{rank}",
        freeze_epochs=1,
    )
    models, wrappers = [], []
    real_set_trainable, real_train_epoch = train.set_trainable, train._train_epoch
    train.set_trainable = lambda model, *args: models.append(model) or real_set_trainable(model, *args)
    train._train_epoch = lambda net, *args: wrappers.append(type(net).__name__) or real_train_epoch(net, *args)
    summary = train.train_model(
        table,
        cfg,
        seed=3,
        out_dir=tmp_path / f"model{rank}",
        live_dir=tmp_path / f"live{rank}",
        data_version="v1",
        classes=CLASSES,
    )
    torch.save(
        {"state": models[-1].state_dict(), "summary": summary, "wrappers": wrappers}, tmp_path / f"rank{rank}.pt"
    )


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_weights_and_rank_zero_writes(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    first, second = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE))
    assert first["wrappers"] == second["wrappers"] == ["DistributedDataParallel"] * 2
    assert first["state"].keys() == second["state"].keys()
    assert all(torch.equal(first["state"][key], second["state"][key]) for key in first["state"])
    assert first["summary"]["best_val_loss"] == second["summary"]["best_val_loss"]
    assert first["summary"]["epochs_run"] == 2 and first["summary"]["train_images"] == 16
    assert (tmp_path / "model0" / "last.pt").exists() and (tmp_path / "live0" / "metrics.json").exists()
    assert not (tmp_path / "model1").exists() and not (tmp_path / "live1").exists()


def test_shards_of_a_batch_cover_it_once_and_need_a_row_per_rank():
    rows = np.arange(10)
    shards = [Dist(rank, 3).shard(rows) for rank in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == rows.tolist()
    assert np.array_equal(Dist().shard(rows), rows)
    with pytest.raises(ValueError, match="raise batch_size"):
        Dist(0, 4).shard(np.arange(3))
