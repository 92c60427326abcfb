"""The optimiser and its learning-rate schedule."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from dag_pyg.config import OptimConfig

SCHEDULES = ("step", "cosine", "constant")


def lr_factor(epoch: int, o: OptimConfig) -> float:
    """Learning-rate factor of an epoch: pre-training runs at the base rate;
    the schedule counts main epochs."""
    e = epoch - o.pretrain_epochs
    if e < 0 or o.schedule == "constant":
        return 1.0
    if o.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * e / o.epochs))
    return o.gamma ** sum(e >= m for m in o.milestones)


def build_optimizer(params: Iterable[nn.Parameter], o: OptimConfig
                    ) -> tuple[torch.optim.Optimizer,
                               torch.optim.lr_scheduler.LambdaLR]:
    """SGD (Nesterov where asked and momentum > 0) and its per-epoch
    schedule (:func:`lr_factor`)."""
    optimizer = torch.optim.SGD(list(params), lr=o.lr, momentum=o.momentum,
                                nesterov=o.nesterov and o.momentum > 0,
                                weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: lr_factor(epoch, o))
    return optimizer, scheduler
