from __future__ import annotations

from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from dag_pyg.graph.density import check_density, graph_density


class AddDensity(BaseTransform):
    r"""Adds the density of every node and the cosine similarity of every
    edge, measured on the graph's own edges (the paper's Eq. 3 with a node's
    in-neighbours in place of its kNN set).

    .. math::
        \mathrm{sim}_{v \to u} = \cos(\mathbf{x}_v, \mathbf{x}_u), \qquad
        \rho_u = \frac{1}{|\mathcal{N}(u)|} \sum_{v \in \mathcal{N}(u)}
        \mathrm{sim}_{v \to u}

    (or :math:`|\{v \in \mathcal{N}(u) : \mathrm{sim}_{v \to u} > \tau\}|`
    for :obj:`kind="count"`), where :math:`\mathcal{N}(u)` are the sources of
    the edges that end in :math:`u` (PyG's ``source_to_target`` flow). A node
    without incoming edges gets density :obj:`0`; a node whose features are
    all zero (PyG's CiteSeer has some) has similarity :obj:`0` to every node,
    as in :class:`~dag_pyg.nn.DensityAwareConv`. The result goes to
    :obj:`data.density` ``[num_nodes]`` and :obj:`data.sim` ``[num_edges]``:
    :class:`~dag_pyg.nn.DensityAwareConv` takes :obj:`data.density` as the
    density of each source node, and optionally :obj:`data.sim` as the
    per-edge similarity (which then stands for the cosine of the layer's own
    input, so it fits a first layer fed these features). See
    :func:`~dag_pyg.graph.graph_density`.

    The density is that of the features when the transform runs: put it after
    feature transforms (:class:`~torch_geometric.transforms.NormalizeFeatures`
    leaves cosine similarities unchanged) and after any transform that changes
    :obj:`edge_index`.

    Args:
        kind (str, optional): ``"mean_sim"`` (Eq. 3) or ``"count"``.
            (default: :obj:`"mean_sim"`)
        threshold (float, optional): :math:`\tau` of the ``count`` density.
            (default: :obj:`0.5`)
        attr (str, optional): The node feature attribute the similarities are
            measured on. (default: :obj:`"x"`)
    """
    def __init__(self, kind: str = "mean_sim", threshold: float = 0.5,
                 attr: str = "x") -> None:
        check_density(kind)
        self.kind = kind
        self.threshold = threshold
        self.attr = attr

    def forward(self, data: Data) -> Data:
        x = data[self.attr] if self.attr in data else None
        if x is None:
            raise ValueError(f"'AddDensity' measures similarities on "
                             f"data.{self.attr}, which this data does not have; "
                             f"pass attr= one of {list(data.keys())}.")
        if data.edge_index is None:
            raise ValueError("'AddDensity' needs data.edge_index; build a graph "
                             "first (e.g. with DensityKNNGraph).")
        data.density, data.sim = graph_density(x, data.edge_index, self.kind,
                                               self.threshold,
                                               num_nodes=data.num_nodes)
        return data

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(kind={self.kind})'
