r"""How far a Feature Bank moved between two refreshes.

The DNA head aggregates neighbours' *bank* features, written at the end of the
previous epoch, while the root's feature is live. When the backbone moves a
lot within an epoch the two come from different feature spaces (staleness).
:func:`bank_drift` measures it from consecutive banks :math:`X^{t-1}, X^t`:

.. math::
    \mathrm{cos}_{t} = \frac{1}{N} \sum_u \cos(\mathbf{x}^{t-1}_u,
    \mathbf{x}^{t}_u), \qquad
    \mathrm{kept}_{t} = \frac{1}{N k} \sum_u
    |\mathcal{N}^{t-1}_k(u) \cap \mathcal{N}^{t}_k(u)|
"""
from __future__ import annotations

from torch import Tensor
from torch_geometric.data import Data

from dag_pyg.graph.build import neighbour_table
from dag_pyg.graph.knn import knn_search, normalize_rows


def bank_drift(old: Tensor, new: Tensor, graph: Data, k: int) -> dict[str, float]:
    """Drift of a Feature Bank between two refreshes.

    Args:
        old (torch.Tensor): The previous Feature Bank :math:`[N, d]`.
        new (torch.Tensor): The new Feature Bank :math:`[N, d]`, same node order.
        graph (torch_geometric.data.Data): The new bank's graph from
            :func:`~dag_pyg.graph.build_density_graph` (its first ``k``
            neighbours per node are compared).
        k (int): Neighbours per node compared (e.g. ``dna.k``).

    Returns:
        ``{"bank_cos_prev": mean cosine of each node's old and new feature,
        "knn_kept": fraction of the k nearest neighbours kept}``.
    """
    if old.shape != new.shape:
        raise ValueError(f"Banks of shapes {tuple(old.shape)} and "
                         f"{tuple(new.shape)} cannot be compared.")
    k = min(k, int(graph.k))
    new = new.to(old.device)
    cos = (normalize_rows(old.float()) * normalize_rows(new.float())).sum(1)
    prev, _ = knn_search(old.float(), None, k, backend="exact")
    now = neighbour_table(graph)[:, :k].to(prev.device)
    # Both rows hold k distinct ids: the overlap counts equal pairs (in row
    # blocks, so the [rows, k, k] comparison stays small).
    kept, step = 0, max(1, 2**22 // (k * k))
    for i in range(0, prev.size(0), step):
        kept += int((prev[i:i + step].unsqueeze(2)
                     == now[i:i + step].unsqueeze(1)).any(2).sum())
    return {"bank_cos_prev": float(cos.mean()),
            "knn_kept": kept / float(prev.numel())}
