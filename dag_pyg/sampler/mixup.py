"""Sampled batches for input mixup: a mixed image's neighbourhoods."""
from __future__ import annotations

import copy

import torch
from torch import Tensor
from torch_geometric.data import Data


def swap_seed_neighbours(batch: Data, perm: Tensor) -> Data:
    r"""The batch with seed :math:`i`'s in-edges replaced by those of seed
    :math:`\pi_i` (``perm[i]``); every other edge and every node as they
    were.

    Input mixup trains on :math:`\lambda x_i + (1 - \lambda) x_{\pi_i}`.
    The head's output on ``batch`` aggregates seed :math:`i`'s
    neighbourhood, on the swapped batch :math:`\pi_i`'s; mixing the two
    outputs with :math:`\lambda`, as the targets are mixed, gives the mixed
    image both components' neighbour terms in its target's proportions (for
    one layer exactly :math:`\mathbf{\Theta}(\mathbf{x}_i + \lambda
    \sum_{v \in \mathcal{N}(i)} \alpha_{iv} \mathbf{x}_v + (1 - \lambda)
    \sum_{v \in \mathcal{N}(\pi_i)} \alpha_{iv} \mathbf{x}_v)`).

    Edges into seeds stay grouped by target in seed order (the dense
    :math:`k`-regular path of :class:`~dag_pyg.nn.DensityAwareConv` still
    applies); per-edge attributes (``e_id``, ``sim``) follow their edges.

    Args:
        batch (torch_geometric.data.Data): A loader batch (seeds first,
            ``batch_size`` of them).
        perm (torch.Tensor): A permutation of the ``batch_size`` seeds.
    """
    b = int(batch.batch_size)
    perm = perm.to(batch.edge_index.device)
    if perm.numel() != b:
        raise ValueError(f"perm has {perm.numel()} entries for a batch of {b} "
                         "seeds.")
    row, col = batch.edge_index
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(b, device=perm.device)
    into_seed = col < b
    new_col = torch.where(into_seed, inv[col.clamp(max=b - 1)], col)
    # Stable: a seed's edges keep their order (most similar first).
    pos = into_seed.nonzero().view(-1)
    order = torch.arange(col.numel(), device=col.device)
    order[pos] = pos[torch.sort(new_col[pos], stable=True).indices]
    out = copy.copy(batch)
    for key in batch.keys():
        value = batch[key]
        # By size, not PyG's guess, which takes a batch with as many nodes
        # as edges for node attributes.
        if key != "edge_index" and isinstance(value, Tensor) and \
                value.dim() >= 1 and value.size(0) == col.numel():
            out[key] = value[order]
    out.edge_index = torch.stack([row[order], new_col[order]])
    return out
