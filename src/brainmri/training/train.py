"""The training loop: one code path for CPU and CUDA, deterministic on CPU given the seed.

Per epoch: a seeded shuffle of the cached train images, seeded per-batch
augmentation, a per-step LR schedule, then a val pass (which a ``plateau``
schedule also reads). With ``freeze_epochs`` the first epochs train the head
only (two-phase fine-tuning, ``set_trainable``). The checkpoint with the
lowest val loss is ``model.pt``; ``last.pt`` also carries optimiser, scheduler
and RNG state so ``resume`` continues exactly where a run stopped. Metrics go
to dvclive, one step per epoch.
"""

from __future__ import annotations

import contextlib
import math
import os
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

from brainmri.config import CHECKPOINT_NAME, CLASSES, AugmentConfig, InputConfig, TrainConfig
from brainmri.core.portable import environment_fingerprint
from brainmri.model.architectures import Classifier, build_model
from brainmri.model.checkpoint import read_checkpoint, save_checkpoint
from brainmri.training.cache import (
    BatchAugment,
    batch_seed,
    cached_images,
    epoch_batches,
    sequential_batches,
    source_balanced_weights,
    steps_per_epoch,
)
from brainmri.training.device import Runtime, runtime, select_device
from brainmri.training.distributed import Dist, distributed
from brainmri.training.loss import (
    GroupDRO,
    TumourAwareLoss,
    group_indices,
    hits,
    no_tumour_index,
    training_label_indices,
)
from brainmri.training.mixstyle import attach_mixstyle

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
    training_label_indices(pd.concat([train["label"], val["label"]]), classes)  # fails early on an unknown label
    return train, val


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: Classifier, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Trunk at ``lr * finetune_lr_factor``, head at ``lr``; weight decay on conv/linear weights only.

    Decaying BN scales and biases only fights the normalisation. A lower
    trunk LR keeps pretrained features from being wrecked while the fresh
    head's gradients are still large. Every parameter gets a group, frozen or
    not: a frozen one has no gradient, so the optimiser skips it until
    ``set_trainable`` unfreezes it, and one optimiser serves both phases.
    """
    head = {id(p) for p in model.head.parameters()}
    groups = []
    for in_head, lr in ((False, cfg.lr * cfg.finetune_lr_factor), (True, cfg.lr)):
        params = [p for p in model.parameters() if (id(p) in head) == in_head]
        groups.append({"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay, "lr": lr})
        groups.append({"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr": lr})
    groups = [group for group in groups if group["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=SGD_MOMENTUM, nesterov=True)
    optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax}
    return optimizers[cfg.optimizer](groups, lr=cfg.lr)


def set_trainable(model: Classifier, cfg: TrainConfig, epoch: int) -> None:
    """Two-phase fine-tuning: head only before ``freeze_epochs``, then also the last ``unfreeze_blocks`` blocks
    (0: all).

    Training a fresh head on frozen pretrained features first means the
    trunk, once unfrozen, gets gradients from a sensible head instead of a
    random one. Only parameters freeze: BatchNorm statistics keep adapting to
    MRI in train mode, which is what a frozen ImageNet trunk needs most.
    """
    if epoch < cfg.freeze_epochs:
        trainable = []
    elif cfg.unfreeze_blocks == 0:
        trainable = model.blocks
    else:
        trainable = model.blocks[-cfg.unfreeze_blocks :]
    for block in model.blocks:
        block.requires_grad_(False)
    for block in trainable:
        block.requires_grad_(True)
    model.head.requires_grad_(True)


ONE_CYCLE_START = 1 / 25
"""One-cycle starts at lr/25 (fast.ai and torch's ``OneCycleLR`` default) and anneals to ~0."""


def lr_factor(kind: str, step: int, warmup: int, total: int, step_size: int = 1, gamma: float = 0.1) -> float:
    """The schedule's multiple of ``lr`` at ``step`` (0-based) of ``total``, peaking at 1 after ``warmup`` steps.

    one-cycle: cosine rise from 1/25 to 1, then cosine fall to 0 (the LR
    shape of Smith's one-cycle policy, without momentum cycling); the fast
    choice for short runs. cosine: linear warm-up from 0, then cosine decay
    to 0. step: linear warm-up, times ``gamma`` every ``step_size`` steps
    (torch's ``StepLR``). plateau: linear warm-up, then 1; ``LRFactor``
    multiplies in the reductions. Written as a plain function so tiny runs
    (a handful of steps, where torch's ``OneCycleLR`` divides by zero) work too.
    """
    if step < warmup:
        if kind == "onecycle":
            return ONE_CYCLE_START + (1 - ONE_CYCLE_START) * (1 - math.cos(math.pi * step / warmup)) / 2
        warm = (step + 1) / (warmup + 1)
    else:
        warm = 1.0
    if kind == "step":
        return warm * gamma ** (step // step_size)
    if kind == "plateau":
        return warm
    if step < warmup:
        return warm
    return (1 + math.cos(math.pi * min(step - warmup, total - warmup) / max(1, total - warmup))) / 2


PLATEAU_THRESHOLD = 1e-4
"""A val loss must be this fraction lower to count as better (torch's ``ReduceLROnPlateau`` default)."""


class LRFactor:
    """``lr_factor`` for one run, times the plateau reductions so far.

    A callable object rather than a lambda because ``LambdaLR`` saves such an
    object's attributes in its state dict: the plateau's best loss and count
    survive a resume with no extra bookkeeping.
    """

    def __init__(self, cfg: TrainConfig, epoch_steps: int):
        total = cfg.epochs * epoch_steps
        self.kind = cfg.scheduler
        self.warmup = min(round(cfg.warmup_epochs * epoch_steps), total - 1)
        self.total = total
        self.step_size = max(1, round(cfg.lr_step_epochs * epoch_steps))
        self.gamma = cfg.lr_gamma
        self.plateau_patience = cfg.plateau_patience
        self.reduction = 1.0
        self.best_val_loss = math.inf
        self.bad_epochs = 0

    def __call__(self, step: int) -> float:
        return self.reduction * lr_factor(self.kind, step, self.warmup, self.total, self.step_size, self.gamma)

    def observe(self, val_loss: float) -> bool:
        """plateau: after more than ``plateau_patience`` epochs without a lower val loss, reduce; True when it did."""
        if self.kind != "plateau":
            return False
        if val_loss < self.best_val_loss * (1 - PLATEAU_THRESHOLD):
            self.best_val_loss, self.bad_epochs = val_loss, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs <= self.plateau_patience:
            return False
        self.reduction *= self.gamma
        self.bad_epochs = 0
        return True


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, epoch_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LRFactor`` schedule over ``cfg.epochs`` epochs of ``epoch_steps`` steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRFactor(cfg, epoch_steps))


def end_epoch_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, val_loss: float) -> None:
    """Give the schedule the epoch's val loss; a plateau reduction applies from the next step on."""
    factor: LRFactor = scheduler.lr_lambdas[0]  # one object serves every group
    if factor.observe(val_loss):
        for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base * factor(scheduler.last_epoch)


def _class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency ("balanced") weights; a class absent from train gets weight 0 rather than infinity."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def _sampling_weights(train_rows: pd.DataFrame, cfg: TrainConfig) -> np.ndarray | None:
    """Per-image draw probabilities of ``train.sampling`` (None: a plain shuffle)."""
    if cfg.sampling == "shuffle":
        return None
    if "source" not in train_rows.columns:
        raise ValueError("train.sampling: source_balanced needs a source column in the split table")
    return source_balanced_weights(train_rows["label"], train_rows["source"])


@torch.inference_mode()
def predict_logits(model: nn.Module, images: np.ndarray, rt: Runtime, batch_size: int = 128) -> torch.Tensor:
    """Float32 CPU logits ``[N, classes]`` for uint8 ``[N, 1, S, S]`` images (e.g. from ``cached_images``).

    Validation during training: the cache's already-resized images, on the training device, under its autocast.
    ``brainmri.model.inference.logits_and_features`` is the other way in, for any decoded image at any size, with
    the block features the OOD check needs.
    """
    model.eval()
    chunks = []
    for rows in sequential_batches(len(images), batch_size):
        with rt.autocast():
            chunks.append(model(rt.to_device(torch.from_numpy(np.array(images[rows])))).float().cpu())
    return torch.cat(chunks)


def _train_epoch(
    net: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    augment: BatchAugment,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    rt: Runtime,
    cfg: TrainConfig,
    seed: int,
    epoch: int,
    ranks: Dist,
    weights: np.ndarray | None,
    groups: np.ndarray | None,
) -> tuple[float, float, float, int]:
    """One pass over a seeded shuffle; returns (mean loss, accuracy on augmented batches, last step's LR, images).

    ``groups`` (each image's group index) is given when ``criterion`` is a ``GroupDRO``, which needs them.

    ``net`` is the model, or its DDP wrapper; each rank trains on its shard
    of every batch, and the returned numbers are over all ranks.
    """
    net.train()
    loss_sum, correct, seen, lr = 0.0, 0, 0, 0.0
    batches = epoch_batches(len(images), cfg.batch_size, seed, epoch, weights)
    progress = tqdm(
        batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False, disable=not ranks.is_main
    )
    for step, rows in enumerate(progress):
        rows = ranks.shard(np.sort(rows))  # ascending reads from the memory map; order within a batch does not matter
        x = augment(rt.to_device(torch.from_numpy(images[rows])), batch_seed(seed, epoch, step, ranks.rank))
        y = torch.from_numpy(labels[rows]).to(rt.device, non_blocking=True)
        with rt.autocast():
            logits = net(x)
        if groups is None:
            loss = criterion(logits.float(), y)
        else:
            loss = criterion(logits.float(), y, torch.from_numpy(groups[rows]).to(rt.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr = optimizer.param_groups[-1]["lr"]  # the rate this step used (the head's: lr times the schedule)
        scheduler.step()
        loss_sum += loss.item() * len(y)
        correct += int(hits(logits, y, criterion.no_tumour).sum())
        seen += len(y)
    loss_sum, correct, seen = ranks.all_sum([loss_sum, correct, seen])
    return loss_sum / seen, correct / seen, lr, int(seen)


def _val_pass(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    rt: Runtime,
    batch_size: int,
    ranks: Dist,
    no_tumour: int | None,
) -> tuple[float, float]:
    """Plain (unweighted, unsmoothed) cross-entropy and accuracy: the selection criterion ignores loss knobs.

    Unknown-type tumours (label -1) count by P(any tumour) and are right when called any tumour class.

    Each rank scores every ``world_size``-th image; the sums are shared, so
    every rank gets the same numbers (and takes the same decisions).
    """
    logits = predict_logits(model, images[ranks.rank :: ranks.world_size], rt, batch_size)
    target = torch.from_numpy(labels[ranks.rank :: ranks.world_size])
    loss_sum = TumourAwareLoss(no_tumour, reduction="sum")(logits, target).item()
    correct = hits(logits, target, no_tumour).sum().item()
    loss_sum, correct, count = ranks.all_sum([loss_sum, correct, len(target)])
    return loss_sum / count, correct / count


class _State:
    """What changes from epoch to epoch and must survive a resume."""

    def __init__(self) -> None:
        self.epoch = 0  # epochs completed
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.best_val_accuracy = 0.0
        self.epochs_since_best = 0

    def end_epoch(self, val_loss: float, val_accuracy: float) -> bool:
        """Count the epoch; True when it has the lowest val loss so far."""
        self.epoch += 1
        if val_loss >= self.best_val_loss:
            self.epochs_since_best += 1
            return False
        self.best_val_loss, self.best_epoch, self.best_val_accuracy = val_loss, self.epoch, val_accuracy
        self.epochs_since_best = 0
        return True

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
    ``val/loss``, ``val/acc``, ``lr`` per epoch). Under ``torchrun`` every
    process runs this with its shard of each batch (``brainmri.training.distributed``);
    rank 0 alone writes.
    """
    started = time.perf_counter()
    classes = list(classes)
    out_dir, live_dir = Path(out_dir), Path(live_dir)
    train_rows, val_rows = _split_rows(table, classes)
    train_images = cached_images(
        train_rows, cfg.image_size, cfg.cache_dir, cfg.num_workers, desc="cache train", spec=cfg.input
    )
    val_images = cached_images(
        val_rows, cfg.image_size, cfg.cache_dir, cfg.num_workers, desc="cache val", spec=cfg.input
    )
    train_labels = training_label_indices(train_rows["label"], classes)
    val_labels = training_label_indices(val_rows["label"], classes)
    no_tumour = no_tumour_index(classes)
    cache_seconds = time.perf_counter() - started

    with (
        distributed(select_device(cfg.device)) as ranks,
        runtime(ranks.device, _cpu_threads(cfg, ranks), cpu_bf16=cfg.cpu_bf16) as rt,
    ):
        device = ranks.device
        _seed_everything(seed)
        model = build_model(cfg.model, len(classes), cfg.pretrained).to(device, memory_format=torch.channels_last)
        if cfg.mixstyle:
            attach_mixstyle(model.blocks, cfg.mixstyle, seed)
        optimizer = make_optimizer(model, cfg)
        scheduler = make_scheduler(optimizer, cfg, steps_per_epoch(len(train_rows), cfg.batch_size))
        class_rows = train_labels[train_labels >= 0]  # unknown-type tumours (-1) have no class to weigh
        weights = _class_weights(class_rows, len(classes)).to(device) if cfg.class_weights else None
        criterion = TumourAwareLoss(no_tumour, weight=weights, label_smoothing=cfg.label_smoothing)
        groups, cells = None, []
        if cfg.group_dro:
            groups, cells = _dro_groups(train_rows, ranks)
            criterion = GroupDRO(criterion, len(cells), cfg.group_dro).to(device)
        augment = BatchAugment(cfg.augment, cfg.image_size)
        sampling_weights = _sampling_weights(train_rows, cfg)
        state = _State()
        train_images_seen, train_seconds = 0, 0.0  # throughput of this run (all ranks): kept out of checkpoints
        last_path, best_path = out_dir / "last.pt", out_dir / CHECKPOINT_NAME
        resuming = cfg.resume and last_path.exists()
        meta = dict(
            model_name=cfg.model,
            classes=classes,
            image_size=cfg.image_size,
            params={"seed": seed, "train": recorded_params(cfg)},
            data_version=data_version,
            preprocess=cfg.input,
        )
        if resuming:
            _restore(last_path, meta, model, optimizer, scheduler, state, criterion)

        live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=resuming) if ranks.is_main else None
        with live if live is not None else contextlib.nullcontext():
            while state.epoch < cfg.epochs and not _stop_early(state, cfg):
                set_trainable(model, cfg, state.epoch)
                tick = time.perf_counter()
                train_loss, train_accuracy, lr, seen = _train_epoch(
                    ranks.wrap(model),
                    train_images,
                    train_labels,
                    augment,
                    criterion,
                    optimizer,
                    scheduler,
                    rt,
                    cfg,
                    seed,
                    state.epoch,
                    ranks,
                    sampling_weights,
                    groups,
                )
                train_seconds += time.perf_counter() - tick
                train_images_seen += seen
                ranks.sync_buffers(model)
                val_loss, val_accuracy = _val_pass(
                    model, val_images, val_labels, rt, 2 * cfg.batch_size, ranks, no_tumour
                )
                improved = state.end_epoch(val_loss, val_accuracy)
                end_epoch_schedule(scheduler, val_loss)
                epoch_metrics = {
                    "train/loss": train_loss,
                    "train/acc": train_accuracy,
                    "val/loss": val_loss,
                    "val/acc": val_accuracy,
                    "lr": lr,
                }
                if live is None:  # not rank 0: rank 0 logs and saves the same numbers and weights
                    continue
                for name, value in epoch_metrics.items():
                    live.log_metric(name, value)
                tqdm.write(
                    f"epoch {state.epoch}/{cfg.epochs}: train loss {train_loss:.4f} acc {train_accuracy:.3f} "
                    f"| val loss {val_loss:.4f} acc {val_accuracy:.3f} | lr {lr:.2e}" + (" *" if improved else "")
                )
                if improved:
                    save_checkpoint(best_path, model, **meta, extra={"epoch": state.epoch, **epoch_metrics})
                save_checkpoint(
                    last_path,
                    model,
                    **meta,
                    extra={
                        "epoch": state.epoch,
                        **epoch_metrics,
                        **_resume_state(optimizer, scheduler, state, criterion),
                    },
                )
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
                "train_images_per_s": round(train_images_seen / max(train_seconds, 1e-9), 1),
                "cache_seconds": round(cache_seconds, 2),
                "wall_seconds": round(time.perf_counter() - started, 2),
            }
            if cells:  # where group DRO's weights ended: which (source, label) cells it leant towards
                final = zip(cells, criterion.q.tolist(), strict=True)
                summary["group_dro_weights"] = {f"{source}/{label}": round(q, 4) for (source, label), q in final}
            summary["environment"] = environment_fingerprint(
                str(device), torch.get_num_threads() if device.type == "cpu" else 0
            )
            if live is not None:
                for name in (
                    "best_epoch",
                    "best_val_loss",
                ):  # no timings: DVC metrics should change only with the model
                    live.summary[name] = summary[name]
                live.summary["kernels"] = summary["environment"][
                    "kernels"
                ]  # the same on every machine where the pin holds
    return summary


OPT_IN_SWITCHES = {
    "cpu_bf16": TrainConfig().cpu_bf16,
    "sampling": TrainConfig().sampling,
    "mixstyle": TrainConfig().mixstyle,
    "group_dro": TrainConfig().group_dro,
    "input": TrainConfig().input.model_dump(mode="json"),
    "augment": {
        key: getattr(AugmentConfig(), key) for key in ("gamma", "bias_field", "downsample_min", "jpeg_quality_min")
    },
}
"""The issue-12 switches (``train.cpu_bf16``, ``train.sampling``, ``train.mixstyle``, ``train.group_dro``,
``train.input``, scanner augmentations). At their off defaults they are left out of the params a checkpoint
records, so a default run writes the same checkpoint bytes as before they existed."""


def recorded_params(cfg: TrainConfig) -> dict:
    """The train params a checkpoint records: all but ``resume``, without the opt-in switches that are off."""
    params = cfg.model_dump(mode="json", exclude={"resume"})
    for key in ("cpu_bf16", "sampling", "mixstyle", "group_dro", "input"):
        if params[key] == OPT_IN_SWITCHES[key]:
            del params[key]
    for key, off in OPT_IN_SWITCHES["augment"].items():
        if params["augment"][key] == off:
            del params["augment"][key]
    return params


def _cpu_threads(cfg: TrainConfig, ranks: Dist) -> int:
    """``num_threads``, or the cores shared out among the processes: CPU ranks that each took every core would
    thrash."""
    return cfg.num_threads or max(1, (os.cpu_count() or 1) // ranks.world_size)


def _stop_early(state: _State, cfg: TrainConfig) -> bool:
    return cfg.patience > 0 and state.epochs_since_best >= cfg.patience


def _resume_state(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, state: _State, criterion: nn.Module
) -> dict:
    """Everything beyond the weights that a resumed run needs to continue bit-for-bit (the CPU RNG drives dropout;
    group DRO's weights, when on, steer the loss)."""
    resume = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": state.as_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    if isinstance(criterion, GroupDRO):
        resume["criterion"] = criterion.state_dict()
    return resume


def _dro_groups(train_rows: pd.DataFrame, ranks: Dist) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Each train row's (source, label) cell for group DRO, and the cells; a clear error where it cannot run."""
    if "source" not in train_rows.columns:
        raise ValueError("train.group_dro needs a source column in the split table")
    if ranks.world_size > 1:
        raise ValueError("train.group_dro runs in one process only (its weights would differ by rank); set it to 0")
    return group_indices(train_rows["source"].tolist(), train_rows["label"].tolist())


def _restore(
    path: Path,
    meta: dict,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: _State,
    criterion: nn.Module,
) -> None:
    """Load ``last.pt`` into the fresh objects; refuse one from other params, data or classes (it would not be a
    resume)."""
    payload = read_checkpoint(path)
    recorded = {**payload, "preprocess": InputConfig.model_validate(payload.get("preprocess", {}))}
    for key, value in meta.items():
        if recorded[key] != value:
            raise ValueError(f"{path} has a different {key} than this run; delete it or set train.resume: false")
    model.load_state_dict(payload["state_dict"])
    extra = payload["extra"]
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    vars(state).update(extra["state"])
    torch.set_rng_state(extra["torch_rng"])
    if "criterion" in extra:
        criterion.load_state_dict(extra["criterion"])
