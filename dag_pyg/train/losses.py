r"""The training objective (the paper's Eq. 2).

.. math::
    \mathcal{L} = \frac{1}{\sum_{i,c} \tilde{y}_{ic}} \sum_i
    \mathrm{CE}(\tilde{\mathbf{y}}_i, \mathbf{p}_i)
    + \beta\, \mathcal{L}_{e} + \alpha\, \mathcal{L}_{p}, \qquad
    \mathcal{L}_{e} = -\frac{1}{B} \sum_i \sum_c p_{ic} \log p_{ic}, \qquad
    \mathcal{L}_{p} = \sum_c \pi_c \log \frac{\pi_c}{\bar{p}_c}

with mixed (mixup) soft targets :math:`\tilde{\mathbf{y}}` (all-zero rows
before mixing for unlabelled samples without a target), the batch's
mean prediction :math:`\bar{\mathbf{p}}` and a uniform prior :math:`\pi`
(the class-balance term keeps pseudo-labelling from collapsing onto a few
classes, as in Tanaka et al., 2018).

Under DistributedDataParallel each rank holds a slice of the batch;
:func:`dag_loss` with a :class:`~dag_pyg.distributed.DistContext` returns a
per-rank loss whose average over ranks (what DDP's gradient averaging
differentiates) is Eq. 2 of the whole batch: the normalisers are global sums
and the batch-mean prediction is summed over ranks.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from dag_pyg.distributed.context import DistContext


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    r"""Cross-entropy against soft targets ``[B, C]`` whose rows may sum to
    less than one, normalised by the total target mass.

    A row :math:`w_a \lambda \mathbf{y}_a + w_b (1 - \lambda) \mathbf{y}_b`
    (mixup of two one-hot targets with weights :math:`w \in [0, 1]`, zero
    for samples without a target) gives exactly
    :math:`\lambda w_a \mathrm{CE}_a + (1 - \lambda) w_b \mathrm{CE}_b`.
    """
    mass = target.sum()
    if float(mass) == 0.0:
        return logits.sum() * 0.0
    return -(target * torch.log_softmax(logits, dim=-1)).sum() / mass


def entropy_loss(logits: Tensor) -> Tensor:
    """Mean prediction entropy (minimising it sharpens predictions)."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


def balance_loss(logits: Tensor) -> Tensor:
    r"""KL divergence from the uniform prior to the batch-mean prediction."""
    mean_p = torch.softmax(logits, dim=-1).mean(0)
    c = logits.size(-1)
    return (math.log(1.0 / c) - torch.log(mean_p.clamp_min(1e-12))).mean()


def _dag_terms_distributed(logits: Tensor, target: Tensor,
                           ctx: DistContext) -> dict[str, Tensor]:
    world = ctx.world_size
    totals = ctx.all_reduce_sum(torch.stack([
        target.sum().detach(), torch.tensor(float(logits.size(0)),
                                            device=logits.device)]))
    mass, n = totals[0], totals[1]
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    # Each rank's share, scaled by the world size: the mean over ranks is the
    # whole batch's value.
    ce = (-(target * logp).sum() * world / mass if float(mass) > 0
          else logits.sum() * 0.0)
    ent = -(p * logp).sum() * world / n
    mean_p = ctx.all_reduce_sum_grad(p.sum(0)) / n
    c = logits.size(-1)
    bal = (math.log(1.0 / c) - torch.log(mean_p.clamp_min(1e-12))).mean()
    return {"loss_ce": ce, "loss_entropy": ent, "loss_balance": bal}


def dag_loss(logits: Tensor, target: Tensor, entropy_weight: float,
             balance_weight: float,
             ctx: DistContext | None = None) -> dict[str, Tensor]:
    """All terms of Eq. 2; ``"loss"`` is their weighted sum. With a
    multi-process ``ctx``, ``logits``/``target`` are this rank's slice and
    the terms are this rank's share (see the module docstring)."""
    if ctx is not None and ctx.enabled:
        out = _dag_terms_distributed(logits, target, ctx)
    else:
        out = {"loss_ce": soft_cross_entropy(logits, target),
               "loss_entropy": entropy_loss(logits),
               "loss_balance": balance_loss(logits)}
    out["loss"] = (out["loss_ce"] + entropy_weight * out["loss_entropy"]
                   + balance_weight * out["loss_balance"])
    return out
