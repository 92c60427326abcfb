"""The optimiser, its learning-rate schedule, and mixed precision."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from dag_pyg.config import OptimConfig


def lr_factor(epoch: int, o: OptimConfig) -> float:
    """Learning-rate factor of an epoch: pre-training runs at the base rate;
    the schedule counts main epochs."""
    e = epoch - o.pretrain_epochs
    if e < 0 or o.schedule == "constant":
        return 1.0
    if o.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * e / o.epochs))
    return o.gamma ** sum(e >= m for m in o.milestones)


def build_optimizer(params: Iterable[nn.Parameter] | Iterable[dict],
                    o: OptimConfig) -> tuple[torch.optim.Optimizer,
                                             torch.optim.lr_scheduler.LambdaLR]:
    """SGD (Nesterov where asked and momentum > 0) and its per-epoch
    schedule (:func:`lr_factor`); ``params`` may be parameter groups, whose
    own settings (e.g. ``weight_decay``) win."""
    optimizer = torch.optim.SGD(list(params), lr=o.lr, momentum=o.momentum,
                                nesterov=o.nesterov and o.momentum > 0,
                                weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: lr_factor(epoch, o))
    return optimizer, scheduler


def autocast(amp: str, device: torch.device) -> torch.autocast:
    """The autocast context of ``optim.amp`` (disabled for ``"none"``)."""
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=amp != "none")


def build_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """The gradient scaler fp16 needs (its small range underflows
    gradients); a disabled one, which passes gradients through, otherwise."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


@dataclass(frozen=True)
class Optim:
    """What steps the model: the optimiser, its per-epoch schedule and the
    gradient scaler (their states are checkpointed by
    :class:`~dag_pyg.train.state.TrainState`)."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


def build_optim(params: Iterable[nn.Parameter] | Iterable[dict], o: OptimConfig,
                device: torch.device) -> Optim:
    """:func:`build_optimizer` and :func:`build_scaler` of ``optim``."""
    optimizer, scheduler = build_optimizer(params, o)
    return Optim(optimizer, scheduler, build_scaler(o.amp, device))
