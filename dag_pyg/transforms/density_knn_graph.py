from __future__ import annotations

from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from dag_pyg.graph.build import build_density_graph
from dag_pyg.graph.density import check_density
from dag_pyg.graph.knn import BACKENDS


class DensityKNNGraph(BaseTransform):
    r"""Replaces the graph by the density-aware kNN graph of the node
    features (Sec. 4.1 of the paper), built by
    :func:`~dag_pyg.graph.build_density_graph`.

    Every node :math:`u` receives an edge :math:`v \to u` from each of its
    :math:`k` most cosine-similar nodes :math:`\mathcal{N}_k(u)` (no self
    loops; PyG's ``source_to_target`` flow, so every target has exactly
    :math:`k` sources). Edges come grouped by centre, each group most similar
    first, ties to the smaller index. Sets :obj:`data.edge_index`
    ``[2, N * k]``, :obj:`data.sim` ``[N * k]`` (the similarity of each edge)
    and :obj:`data.density` ``[N]`` (Eq. 3, measured on this kNN graph).

    .. math::
        \rho_u = \frac{1}{k} \sum_{v \in \mathcal{N}_k(u)}
        \cos(\mathbf{x}_u, \mathbf{x}_v)

    A node whose features are all zero (PyG's CiteSeer has some) has
    similarity :obj:`0` to every node, as in
    :class:`~dag_pyg.nn.DensityAwareConv`. A stale :obj:`edge_attr` or
    :obj:`edge_weight` (features of the old edges) is removed; every other
    attribute (:obj:`y`, masks, ...) is kept.
    The graph spans all nodes of :obj:`data`, which must be a single graph.

    Args:
        k (int, optional): Neighbours per node. (default: :obj:`64`, the
            paper's value)
        backend (str, optional): kNN engine: ``"auto"``, ``"exact"``,
            ``"faiss"``, ``"faiss_ivf"``, ``"faiss_ivf_hnsw"``,
            ``"faiss_hnsw"`` (the three approximate) or
            ``"torch_cluster"``. (default: :obj:`"auto"`)
        density (str, optional): ``"mean_sim"`` (Eq. 3) or ``"count"``.
            (default: :obj:`"mean_sim"`)
        density_threshold (float, optional): Similarity threshold of the
            ``count`` density. (default: :obj:`0.5`)
        attr (str, optional): The node feature attribute the graph is built
            from. (default: :obj:`"x"`)
    """
    def __init__(self, k: int = 64, backend: str = "auto",
                 density: str = "mean_sim", density_threshold: float = 0.5,
                 attr: str = "x") -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer (got {k!r}).")
        if backend not in BACKENDS:
            raise ValueError(f"Unknown kNN backend '{backend}'. Choose one of "
                             f"{list(BACKENDS)}.")
        check_density(density)
        self.k = k
        self.backend = backend
        self.density = density
        self.density_threshold = density_threshold
        self.attr = attr

    def forward(self, data: Data) -> Data:
        x = data[self.attr] if self.attr in data else None
        if x is None:
            raise ValueError(f"'DensityKNNGraph' builds the graph from "
                             f"data.{self.attr}, which this data does not have; "
                             f"pass attr= one of {list(data.keys())}.")
        if data.get("batch") is not None:
            raise ValueError("'DensityKNNGraph' builds one graph over all nodes; "
                             "apply it to each graph before batching.")
        graph = build_density_graph(x, self.k, backend=self.backend,
                                    density=self.density,
                                    density_threshold=self.density_threshold,
                                    allow_zero_rows=True)
        data.edge_index = graph.edge_index
        data.sim = graph.sim
        data.density = graph.density
        for key in ("edge_attr", "edge_weight"):
            if key in data:
                del data[key]
        return data

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(k={self.k}, '
                f'density={self.density})')
