"""Backbone features of data-set rows in eval mode, without augmentation:
the Feature Bank and the test queries."""
from __future__ import annotations

import math
import time

import torch
from torch import Tensor, nn

from dag_pyg.data import ArrayDataset, BatchTransform
from dag_pyg.distributed import DistContext
from dag_pyg.train.logger import RunLogger
from dag_pyg.train.optim import autocast


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


def extract_bank(backbone: nn.Module, transform: BatchTransform,
                 dataset: ArrayDataset, rows: Tensor, device: torch.device,
                 batch_size: int, dist: DistContext,
                 log: RunLogger | None = None,
                 desc: str = "feature bank", amp: str = "none",
                 channels_last: bool = False) -> tuple[Tensor, float]:
    """:func:`extract_features` of all ``rows`` on the CPU, each rank
    extracting its shard; returns the features and the seconds the
    all-gather took."""
    local = extract_features(backbone, transform, dataset, dist.shard(rows),
                             device, batch_size, log, desc, amp, channels_last)
    t = time.perf_counter()
    out = dist.all_gather_rows(local, dist.shard_sizes(rows.numel())).cpu()
    return out, time.perf_counter() - t
