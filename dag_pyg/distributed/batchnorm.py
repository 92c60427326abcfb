r"""Batch normalisation whose batch statistics span all ranks, on any device.

:class:`torch.nn.SyncBatchNorm` does this for GPUs only; on CPU (``gloo``) it
refuses the input. Without it, N ranks normalise with the statistics of
1/N of the batch and a multi-process run no longer equals the
single-process one. :func:`convert_sync_batchnorm` uses
:class:`torch.nn.SyncBatchNorm` on CUDA and :class:`DistributedBatchNorm`
elsewhere.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from dag_pyg.distributed.context import DistContext


class DistributedBatchNorm(_BatchNorm):
    r"""Batch normalisation over the union of the ranks' batches.

    .. math::
        \mu = \frac{1}{n} \sum_{r} \sum_{i \in B_r} \mathbf{x}_i, \qquad
        \sigma^2 = \frac{1}{n} \sum_{r} \sum_{i \in B_r}
        (\mathbf{x}_i - \mu)^2, \qquad
        \mathbf{y}_i = \gamma \frac{\mathbf{x}_i - \mu}{\sqrt{\sigma^2 +
        \epsilon}} + \beta

    with :math:`n = \sum_r |B_r|`, per channel (dimension 1), merged from
    each rank's count, mean and variance (one differentiable all-gather per
    direction), so gradients reach every rank's samples as in one process;
    running statistics use the unbiased variance, as
    :class:`torch.nn.BatchNorm2d` does. In eval mode, or in a single
    process, it is plain batch normalisation.

    Args:
        num_features (int): Channels.
        ctx (DistContext): The ranks to synchronise over.
        eps, momentum, affine, track_running_stats: As for
            :class:`torch.nn.BatchNorm1d`.

    Shapes:
        - **input:** :math:`(B, C)` or :math:`(B, C, *)`
        - **output:** same as input
    """

    def __init__(self, num_features: int, ctx: DistContext, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.ctx = ctx

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not (self.training and self.ctx.enabled):
            return super().forward(input)
        dims = [0] + list(range(2, input.dim()))
        shape = [1, -1] + [1] * (input.dim() - 2)
        c = input.size(1)
        # One collective per direction: every rank's (count, mean, variance),
        # merged by the parallel-variance formula (exact and stable).
        count = input.new_full((1,), input.numel() / c)
        mean_r = input.mean(dims)
        var_r = input.var(dims, unbiased=False)
        stats = self.ctx.all_gather_rows_grad(
            torch.cat([count, mean_r, var_r]).unsqueeze(0),
            sizes=[1] * self.ctx.world_size)
        counts, means, vars_ = stats[:, :1], stats[:, 1:c + 1], stats[:, c + 1:]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        var = (counts * (vars_ + (means - mean).pow(2))).sum(0) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * unbiased.detach())
        out = (input - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(module: nn.Module, ctx: DistContext,
                           device: torch.device) -> nn.Module:
    """Replaces every batch-norm layer of ``module`` by one that synchronises
    over the ranks (state-dict keys unchanged); a no-op in one process."""
    if not ctx.enabled:
        return module
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module, ctx)


def _convert(module: nn.Module, ctx: DistContext) -> nn.Module:
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, DistributedBatchNorm):
        out = DistributedBatchNorm(module.num_features, ctx, module.eps,
                                   module.momentum, module.affine,
                                   module.track_running_stats)
        state = module.state_dict()
        out.load_state_dict(state)
        if state:
            out.to(next(iter(state.values())).device)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert(child, ctx))
    return out


__all__ = ["DistributedBatchNorm", "convert_sync_batchnorm"]
