"""The training loop: one code path for CPU and CUDA, deterministic on CPU given the seed.

Per epoch: a seeded shuffle of the cached train images, seeded per-batch
augmentation, a per-step LR schedule, then a val pass. The checkpoint with the
lowest val loss is ``model.pt``; ``last.pt`` also carries optimiser, scheduler
and RNG state so ``resume`` continues exactly where a run stopped. Metrics go
to dvclive, one step per epoch.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from dvclive import Live
from torch import nn
from tqdm import tqdm

from brainmri.checkpoint import read_checkpoint, save_checkpoint
from brainmri.config import CLASSES, TrainConfig
from brainmri.data import BatchAugment, batch_seed, cached_images, epoch_batches, label_indices, sequential_batches
from brainmri.device import Runtime, runtime, select_device
from brainmri.models import build_model

SGD_MOMENTUM = 0.9


def _split_rows(table: pd.DataFrame, classes: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and val rows in table order; test rows are dropped here, before anything reads them."""
    missing = {"path", "label", "split"} - set(table.columns)
    if missing:
        raise ValueError(f"split table lacks column(s) {sorted(missing)}")
    train = table[table["split"] == "train"].reset_index(drop=True)
    val = table[table["split"] == "val"].reset_index(drop=True)
    if train.empty or val.empty:
        raise ValueError(f"need train and val rows, got {len(train)} train and {len(val)} val")
    label_indices(pd.concat([train["label"], val["label"]]), classes)  # fails early on an unknown label
    return train, val


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only: decaying BN scales and biases only fights the normalisation."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=SGD_MOMENTUM, nesterov=True)
    optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax}
    return optimizers[cfg.optimizer](groups, lr=cfg.lr)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule peaking at ``cfg.lr`` after ``warmup_epochs``.

    one-cycle: cosine rise from lr/25 and cosine fall to ~0 (with momentum
    cycling), the fast choice for short runs; cosine: linear warm-up from 0,
    then cosine decay to 0.
    """
    total = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=max(warmup, 1) / total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency ("balanced") weights; a class absent from train gets weight 0 rather than infinity."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


@torch.inference_mode()
def predict_logits(model: nn.Module, images: np.ndarray, rt: Runtime, batch_size: int = 128) -> torch.Tensor:
    """Float32 CPU logits ``[N, classes]`` for uint8 ``[N, 1, S, S]`` images (e.g. from ``cached_images``)."""
    model.eval()
    chunks = []
    for rows in sequential_batches(len(images), batch_size):
        with rt.autocast():
            chunks.append(model(rt.to_device(torch.from_numpy(np.asarray(images[rows])))).float().cpu())
    return torch.cat(chunks)


def _val_pass(model: nn.Module, images: np.ndarray, labels: np.ndarray, rt: Runtime, batch_size: int) -> tuple[float, float]:
    """Plain (unweighted, unsmoothed) cross-entropy and accuracy: the selection criterion ignores loss knobs."""
    logits = predict_logits(model, images, rt, batch_size)
    target = torch.from_numpy(labels)
    loss = nn.functional.cross_entropy(logits, target).item()
    accuracy = (logits.argmax(1) == target).float().mean().item()
    return loss, accuracy


class _State:
    """What changes from epoch to epoch and must survive a resume."""

    def __init__(self) -> None:
        self.epoch = 0  # epochs completed
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.best_val_accuracy = 0.0
        self.epochs_since_best = 0
        self.train_images = 0
        self.train_seconds = 0.0

    def as_dict(self) -> dict:
        return dict(vars(self))


def train_model(
    table: pd.DataFrame,
    cfg: TrainConfig,
    *,
    seed: int,
    out_dir: Path,
    live_dir: Path,
    data_version: str,
    classes: Sequence[str] = CLASSES,
) -> dict:
    """Train on the ``train`` rows, select on ``val`` (test rows are never read); return a summary.

    Writes ``out_dir/model.pt`` (lowest val loss), ``out_dir/last.pt`` and
    dvclive logs in ``live_dir`` (``train/loss``, ``train/acc``,
    ``val/loss``, ``val/acc``, ``lr`` per epoch).
    """
    started = time.perf_counter()
    classes = list(classes)
    out_dir, live_dir = Path(out_dir), Path(live_dir)
    train_rows, val_rows = _split_rows(table, classes)
    train_images = cached_images(train_rows, cfg.image_size, cfg.cache_dir, cfg.num_workers, desc="cache train")
    val_images = cached_images(val_rows, cfg.image_size, cfg.cache_dir, cfg.num_workers, desc="cache val")
    train_labels = label_indices(train_rows["label"], classes)
    val_labels = label_indices(val_rows["label"], classes)
    cache_seconds = time.perf_counter() - started

    device = select_device(cfg.device)
    with runtime(device) as rt:
        _seed_everything(seed)
        model = build_model(cfg.model, len(classes), cfg.pretrained).to(device, memory_format=torch.channels_last)
        optimizer = make_optimizer(model, cfg)
        steps_per_epoch = len(epoch_batches(len(train_rows), cfg.batch_size, seed, 0))
        scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
        weights = _class_weights(train_labels, len(classes)).to(device) if cfg.class_weights else None
        criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
        augment = BatchAugment(cfg.augment, cfg.image_size)
        state = _State()
        last_path, best_path = out_dir / "last.pt", out_dir / "model.pt"
        resuming = cfg.resume and last_path.exists()
        meta = dict(
            model_name=cfg.model,
            classes=classes,
            image_size=cfg.image_size,
            params={"seed": seed, "train": cfg.model_dump(mode="json", exclude={"resume"})},
            data_version=data_version,
        )
        if resuming:
            _restore(last_path, meta, model, optimizer, scheduler, state)

        with Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=resuming) as live:
            while state.epoch < cfg.epochs and not _stop_early(state, cfg):
                epoch = state.epoch
                tick = time.perf_counter()
                model.train()
                loss_sum, correct, seen = 0.0, 0, 0
                batches = epoch_batches(len(train_rows), cfg.batch_size, seed, epoch)
                for step, rows in enumerate(tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)):
                    rows = np.sort(rows)  # ascending reads from the memory map; batch order does not matter
                    x = rt.to_device(augment(torch.from_numpy(train_images[rows]), batch_seed(seed, epoch, step)))
                    y = torch.from_numpy(train_labels[rows]).to(device, non_blocking=True)
                    with rt.autocast():
                        logits = model(x)
                    loss = criterion(logits.float(), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    loss_sum += loss.item() * len(y)
                    correct += int((logits.argmax(1) == y).sum())
                    seen += len(y)
                state.train_seconds += time.perf_counter() - tick
                state.train_images += seen
                lr = optimizer.param_groups[0]["lr"]
                val_loss, val_accuracy = _val_pass(model, val_images, val_labels, rt, 2 * cfg.batch_size)
                state.epoch += 1
                improved = val_loss < state.best_val_loss
                if improved:
                    state.best_val_loss, state.best_epoch, state.best_val_accuracy = val_loss, state.epoch, val_accuracy
                    state.epochs_since_best = 0
                else:
                    state.epochs_since_best += 1
                epoch_metrics = {"train/loss": loss_sum / seen, "train/acc": correct / seen, "val/loss": val_loss, "val/acc": val_accuracy, "lr": lr}
                for name, value in epoch_metrics.items():
                    live.log_metric(name, value)
                if improved:
                    save_checkpoint(best_path, model, **meta, extra={"epoch": state.epoch, **epoch_metrics})
                save_checkpoint(last_path, model, **meta, extra={"epoch": state.epoch, **epoch_metrics, **_resume_state(optimizer, scheduler, state)})
                live.next_step()
            summary = {
                "device": str(device),
                "epochs_run": state.epoch,
                "stopped_early": state.epoch < cfg.epochs,
                "best_epoch": state.best_epoch,
                "best_val_loss": round(state.best_val_loss, 5),
                "val_accuracy": round(state.best_val_accuracy, 5),
                "train_images": len(train_rows),
                "val_images": len(val_rows),
                "train_images_per_s": round(state.train_images / max(state.train_seconds, 1e-9), 1),
                "cache_seconds": round(cache_seconds, 2),
                "wall_seconds": round(time.perf_counter() - started, 2),
            }
            for name in ("best_epoch", "best_val_loss", "train_images_per_s"):
                live.summary[name] = summary[name]
    return summary


def _stop_early(state: _State, cfg: TrainConfig) -> bool:
    return cfg.patience > 0 and state.epochs_since_best >= cfg.patience


def _resume_state(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, state: _State) -> dict:
    """Everything beyond the weights that a resumed run needs to continue bit-for-bit (the CPU RNG drives dropout)."""
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": state.as_dict(),
        "torch_rng": torch.get_rng_state(),
    }


def _restore(path: Path, meta: dict, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, state: _State) -> None:
    """Load ``last.pt`` into the fresh objects; refuse one from other params, data or classes (it would not be a resume)."""
    payload = read_checkpoint(path)
    for key, value in meta.items():
        if payload[key] != value:
            raise ValueError(f"{path} has a different {key} than this run; delete it or set train.resume: false")
    model.load_state_dict(payload["state_dict"])
    extra = payload["extra"]
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    vars(state).update(extra["state"])
    torch.set_rng_state(extra["torch_rng"])
