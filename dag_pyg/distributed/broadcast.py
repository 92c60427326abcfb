"""Broadcast of a PyG :class:`~torch_geometric.data.Data` from one rank."""
from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Data

from dag_pyg.distributed.context import DistContext


def broadcast_data(dist: DistContext, data: Data | None, src: int = 0) -> Data:
    """Rank ``src``'s ``data`` on every rank (pass :obj:`None` elsewhere):
    non-tensor attributes and tensor shapes as one small object, then the
    tensors themselves, in a fixed order."""
    meta = None
    if data is not None:
        items = dict(data.items())
        meta = {"attrs": {k: v for k, v in items.items()
                          if not isinstance(v, Tensor)},
                "shapes": {k: (tuple(v.shape), v.dtype) for k, v in items.items()
                           if isinstance(v, Tensor)}}
    meta = dist.broadcast_object(meta, src=src)
    if data is None:
        data = Data(**meta["attrs"])
        for key, (shape, dtype) in meta["shapes"].items():
            data[key] = torch.empty(shape, dtype=dtype)
    for key in sorted(meta["shapes"]):
        dist.broadcast_(data[key], src=src)
    return data
