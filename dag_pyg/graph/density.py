"""Node densities (the paper's Eq. 3 and its count variant): of a kNN graph
from its ``[N, k]`` similarity table, or of any graph from its edges."""
from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from dag_pyg.graph.knn import normalize_rows

DENSITIES = ("mean_sim", "count")
# Edges per block of the per-edge cosine: each gathered [block, d] float32
# tensor stays near 64 MiB whatever the number of edges.
_EDGE_BUDGET = 16 * 2**20


def check_density(kind: str) -> str:
    """Validates a density kind (one of :data:`DENSITIES`)."""
    if kind not in DENSITIES:
        raise ValueError(f"Unknown density '{kind}'. Choose one of "
                         f"{list(DENSITIES)}.")
    return kind


def compute_density(sim: Tensor, kind: str = "mean_sim",
                    threshold: float = 0.5) -> Tensor:
    r"""Density of every node from its neighbour similarities.

    .. math::
        \rho_u^{\text{mean\_sim}} = \frac{1}{k} \sum_{v \in \mathcal{N}_k(u)}
        \cos(\mathbf{x}_u, \mathbf{x}_v), \qquad
        \rho_u^{\text{count}} = \big|\{v \in \mathcal{N}_k(u) :
        \cos(\mathbf{x}_u, \mathbf{x}_v) > \tau\}\big|

    Args:
        sim (torch.Tensor): Similarities of each node's k neighbours ``[N, k]``.
        kind (str): ``"mean_sim"`` (Eq. 3) or ``"count"``.
        threshold (float): :math:`\tau` of the ``count`` density.
    """
    if check_density(kind) == "mean_sim":
        return sim.mean(dim=1)
    return (sim > threshold).sum(dim=1).to(sim.dtype)


def graph_density(x: Tensor, edge_index: Tensor, kind: str = "mean_sim",
                  threshold: float = 0.5,
                  num_nodes: int | None = None) -> tuple[Tensor, Tensor]:
    r"""Density of every node of an arbitrary graph, measured over its
    in-neighbours (PyG's ``source_to_target`` flow: an edge
    :math:`v \to u` makes :math:`v` a neighbour of :math:`u`).

    .. math::
        s_{v \to u} = \cos(\mathbf{x}_v, \mathbf{x}_u), \qquad
        \rho_u^{\text{mean\_sim}} = \frac{1}{|\mathcal{N}(u)|}
        \sum_{v \in \mathcal{N}(u)} s_{v \to u}, \qquad
        \rho_u^{\text{count}} = \big|\{v \in \mathcal{N}(u) :
        s_{v \to u} > \tau\}\big|

    This is Eq. 3 with the graph's own neighbourhoods in place of the kNN
    sets: on a graph from :func:`~dag_pyg.graph.build_density_graph` it gives
    that graph's ``sim`` and ``density`` (up to float rounding: the kNN
    engines score most pairs inside a matrix product). A node without
    incoming edges gets density :obj:`0`. Duplicate edges count once per
    copy.

    Args:
        x (torch.Tensor): Node features ``[N, d]`` (L2-normalised
            internally). An all-zero row (e.g. PyG's CiteSeer's isolated
            nodes without features) has similarity :obj:`0` to every node,
            as in :class:`~dag_pyg.nn.DensityAwareConv`.
        edge_index (torch.Tensor): Edge indices ``[2, E]``, row 0 the source
            (neighbour), row 1 the target (centre).
        kind (str): ``"mean_sim"`` (Eq. 3) or ``"count"``.
            (default: :obj:`"mean_sim"`)
        threshold (float): :math:`\tau` of the ``count`` density.
            (default: :obj:`0.5`)
        num_nodes (int, optional): Number of densities returned (targets must
            lie below it). (default: :obj:`x.size(0)`)

    Returns:
        ``(density [num_nodes], sim [E])``, in ``x``'s dtype.
    """
    check_density(kind)
    xn = normalize_rows(x, allow_zero=True)
    n = xn.size(0) if num_nodes is None else num_nodes
    _check_edge_index(edge_index, xn.size(0), n)
    src, dst = edge_index[0].long(), edge_index[1].long()

    sim = xn.new_empty(src.numel())
    block = max(1, _EDGE_BUDGET // max(xn.size(1), 1))
    for start in range(0, src.numel(), block):
        s, t = src[start:start + block], dst[start:start + block]
        # Centre first, as the kNN engines score a pair (centre . neighbour).
        sim[start:start + block] = (xn[t] * xn[s]).sum(dim=-1)

    if kind == "mean_sim":
        # scatter's mean leaves nodes without in-edges at 0.
        density = scatter(sim, dst, dim=0, dim_size=n, reduce="mean")
    else:
        density = scatter((sim > threshold).to(sim.dtype), dst, dim=0,
                          dim_size=n, reduce="sum")
    return density, sim


def _check_edge_index(edge_index: Tensor, num_x: int, num_nodes: int) -> None:
    if not isinstance(edge_index, Tensor):
        raise ValueError(f"'edge_index' must be a [2, num_edges] tensor (got "
                         f"{type(edge_index).__name__}).")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        hint = ("; a [num_edges, 2] list of pairs needs edge_index.t()"
                if edge_index.dim() == 2 and edge_index.size(1) == 2 else "")
        raise ValueError(f"'edge_index' must be a [2, num_edges] tensor (got "
                         f"shape {tuple(edge_index.shape)}){hint}.")
    if edge_index.dtype not in (torch.long, torch.int32, torch.int16, torch.int8,
                                torch.uint8):
        raise ValueError(f"'edge_index' must hold integer node indices (got "
                         f"{edge_index.dtype}); convert it with "
                         "edge_index.long().")
    if not isinstance(num_nodes, int) or num_nodes < 0:
        raise ValueError(f"num_nodes must be a non-negative integer (got "
                         f"{num_nodes!r}).")
    if edge_index.numel() == 0:
        return
    if int(edge_index.min()) < 0:
        raise ValueError("'edge_index' holds negative node indices.")
    if int(edge_index.max()) >= num_x:
        raise ValueError(f"'edge_index' refers to node {int(edge_index.max())} "
                         f"but x has {num_x} rows.")
    if int(edge_index[1].max()) >= num_nodes:
        raise ValueError(f"'edge_index' has target node {int(edge_index[1].max())}"
                         f" but num_nodes={num_nodes}.")
