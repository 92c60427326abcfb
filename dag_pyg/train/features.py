"""Backbone features of data-set rows in eval mode, without augmentation:
the Feature Bank and the test queries; and the batch-norm statistics they
are normalised with (``model.precise_bn``)."""
from __future__ import annotations

import math
import time

import torch
from torch import Tensor, nn

from dag_pyg.data import ArrayDataset, BatchTransform
from dag_pyg.train.logger import RunLogger
from dag_pyg.train.optim import autocast
from dag_pyg.train.setup import Run


@torch.no_grad()
def extract_features(backbone: nn.Module, transform: BatchTransform,
                     dataset: ArrayDataset, rows: Tensor, device: torch.device,
                     batch_size: int, log: RunLogger | None = None,
                     desc: str = "features", amp: str = "none",
                     channels_last: bool = False) -> Tensor:
    """Features ``[len(rows), d]`` (float32, on ``device``) of
    ``dataset[rows]``, the backbone under ``amp``'s autocast; leaves the
    backbone in eval mode."""
    backbone.eval()
    out = [torch.empty(0, backbone.feat_dim, device=device)]
    starts = range(0, rows.numel(), batch_size)
    if log is not None:
        starts = log.progress(starts, desc=desc,
                              total=math.ceil(rows.numel() / batch_size))
    for s in starts:
        x = transform(dataset.images[rows[s:s + batch_size]]).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(amp, device):
            out.append(backbone.features(x).float())
    return torch.cat(out)


@torch.no_grad()
def recalibrate_batchnorm(backbone: nn.Module, transform: BatchTransform,
                          dataset: ArrayDataset, rows: Tensor,
                          device: torch.device, batch_size: int,
                          amp: str = "none", channels_last: bool = False) -> int:
    """Replaces the running statistics of ``backbone``'s batch-norm layers
    by the mean of their batch statistics over ``dataset[rows]`` under
    ``transform`` (PreciseBN; Wu & Johnson, 2021), each batch weighted by
    its images. Training normalises augmented, mixed images, so the running
    statistics are theirs while the banks and the evaluation read clean
    ones. The rows are split into ``len(rows) // batch_size`` batches of
    near-equal size (at least ``batch_size`` each where there are that
    many: no small last batch, whose statistics would be noisy, or of one
    image, which ``BatchNorm1d`` refuses in training mode). Only the
    batch-norm layers run in training mode (dropout stays off); the modes
    and momenta are restored. ``amp`` and ``channels_last`` as in
    :func:`extract_features`: the statistics are those of the activations
    they will normalise. Returns the number of layers recalibrated."""
    norms = [m for m in backbone.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or not rows.numel():
        return 0
    modes = [(m, m.training) for m in backbone.modules()]
    momenta = [m.momentum for m in norms]
    backbone.eval()
    for m in norms:
        m.reset_running_stats()
        m.train()
    seen = 0
    try:
        for batch in torch.tensor_split(rows, max(1, rows.numel() // batch_size)):
            seen += batch.numel()
            for m in norms:  # a running mean weighted by images
                m.momentum = batch.numel() / seen
            x = transform(dataset.images[batch]).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            # The class's own method: a compiled ``features`` (model.compile)
            # would be traced again for the other batch-norm mode.
            with autocast(amp, device):
                type(backbone).features(backbone, x)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        for m, training in modes:
            m.training = training
    return len(norms)


def recalibrate_run(run: Run, epoch: int) -> float:
    """:func:`recalibrate_batchnorm` of the run's evaluated backbone (the
    averaged one where ``optim.ema_decay`` > 0) on ``model.precise_bn``
    training images without augmentation, drawn afresh for every ``epoch``
    from a generator of their own (the run's stream stays as it was; every
    process draws the same ones, so their statistics agree). Returns the
    seconds it took (0 when off)."""
    n = run.cfg.model.precise_bn
    if not n:
        return 0.0
    t = time.perf_counter()
    nodes = run.data.nodes
    gen = torch.Generator().manual_seed(run.cfg.seed * 100_003 + epoch)
    rows = nodes[torch.randperm(nodes.numel(), generator=gen)[:n]]
    cfg = run.cfg
    # Under the queries' precision (optim.amp), as evaluation extracts them.
    recalibrate_batchnorm(run.model.eval_backbone, run.data.eval_tf,
                          run.data.train_set, rows, run.device,
                          cfg.eval.batch_size, cfg.optim.amp,
                          cfg.model.channels_last)
    return time.perf_counter() - t


def features_of(run: Run, dataset: ArrayDataset, rows: Tensor, desc: str,
                amp: str) -> Tensor:
    """:func:`extract_features` of ``dataset[rows]`` with the run's backbone
    (the averaged one where ``optim.ema_decay`` > 0), eval transform,
    device, ``eval.batch_size``, progress bars and memory format, under
    ``amp``."""
    cfg = run.cfg
    return extract_features(run.model.eval_backbone, run.data.eval_tf, dataset, rows,
                            run.device, cfg.eval.batch_size, run.log, desc, amp,
                            cfg.model.channels_last)


def extract_bank(run: Run) -> tuple[Tensor, float]:
    """The Feature Bank: :func:`features_of` every training node (under
    ``graph.bank_amp``, else ``optim.amp``) on the CPU, each rank extracting
    its shard; returns the features and the seconds the all-gather took."""
    cfg, dist, rows = run.cfg, run.dist, run.data.nodes
    local = features_of(run, run.data.train_set, dist.shard(rows), "feature bank",
                        cfg.graph.bank_amp or cfg.optim.amp)
    t = time.perf_counter()
    out = dist.all_gather_rows(local, dist.shard_sizes(rows.numel())).cpu()
    return out, time.perf_counter() - t
