"""The global density-aware kNN graph over a Feature Bank."""
from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Data

from dag_pyg.graph.density import check_density, compute_density
from dag_pyg.graph.knn import (
    HNSW_EF_CONSTRUCTION,
    HNSW_EF_SEARCH,
    HNSW_M,
    IVF_RECALL,
    check_rows,
    knn_search,
    normalize_rows,
    resolve_backend,
)
from dag_pyg.graph.layout import mark_knn_rows


def build_density_graph(x: Tensor, k: int = 64, *, backend: str = "auto",
                        density: str = "mean_sim",
                        density_threshold: float = 0.5,
                        chunk_size: int | None = None,
                        ivf_nlist: int | None = None, ivf_nprobe: int = 16,
                        ivf_recall: float | None = IVF_RECALL,
                        hnsw_m: int = HNSW_M,
                        hnsw_ef_construction: int = HNSW_EF_CONSTRUCTION,
                        hnsw_ef_search: int = HNSW_EF_SEARCH,
                        allow_zero_rows: bool = False,
                        rows: tuple[int, int] | None = None) -> Data:
    r"""Builds the density-aware kNN graph of Sec. 4.1.

    Every node :math:`u` is joined to its :math:`k` most cosine-similar nodes
    :math:`\mathcal{N}_k(u)` by edges :math:`v \to u` (PyG's
    ``source_to_target`` flow), and gets a density :math:`\rho_u` (Eq. 3).

    Args:
        x (torch.Tensor): Node features ``[N, d]``, kept as given; they are
            L2-normalised internally.
        k (int): Neighbours per node (the paper uses 64).
        backend (str): kNN engine: ``"auto"`` (fastest for ``x.device``),
            ``"exact"`` (blocked matmul + top-k), ``"faiss"`` (``IndexFlatIP``),
            ``"faiss_ivf"``, ``"faiss_ivf_hnsw"`` or ``"faiss_hnsw"``
            (approximate, for large ``N``) or ``"torch_cluster"``.
        density (str): ``"mean_sim"`` (Eq. 3) or ``"count"``.
        density_threshold (float): Similarity threshold of the ``count``
            density.
        chunk_size (int, optional): Rows per block of the ``exact`` backend.
        ivf_nlist (int, optional): IVF cells (default about
            :math:`4\sqrt{N}` for ``faiss_ivf``, :math:`N / 1024` for
            ``faiss_ivf_hnsw``).
        ivf_nprobe (int): IVF cells scanned per query (where ``faiss_ivf``'s
            tuning to ``ivf_recall`` starts; ``faiss_ivf_hnsw``'s starts at
            one cell).
        ivf_recall (float, optional): the IVF backends' and ``faiss_hnsw``'s
            recall target of exact neighbours
            (:func:`~dag_pyg.graph.knn_search`); :obj:`None`: ``ivf_nprobe``
            or ``hnsw_ef_search`` as given.
        hnsw_m (int): ``faiss_hnsw`` links per node.
        hnsw_ef_construction (int): ``faiss_hnsw`` build beam.
        hnsw_ef_search (int): ``faiss_hnsw`` search beam (where the tuning to
            ``ivf_recall`` starts).
        allow_zero_rows (bool): Accept all-zero rows (similarity 0 to every
            node). Off by default: in a Feature Bank they signal a bug.
        rows ((int, int), optional): Build only the rows of the centres
            ``rows[0]`` to ``rows[1] - 1`` (one rank's shard of a sharded
            refresh), searched against all nodes: the same edges,
            similarities and densities as those rows of the whole graph, bit
            for bit (see :func:`~dag_pyg.graph.knn_search`). The result then
            has ``edge_index [2, M*k]`` (global node ids) and ``sim [M*k]``
            for those ``M`` centres, their ``density [M]``, ``num_nodes``
            (all ``N``) and ``rows``; it is a part, not a graph to pass to
            DPLP or a sampler. (default: :obj:`None`: the whole graph)

    Returns:
        :class:`torch_geometric.data.Data` with ``edge_index [2, N*k]``
        (row 0 the neighbour :math:`v`, row 1 the centre :math:`u`; grouped
        by centre, each group by descending similarity, ties by the smaller
        index; no self loops), ``sim [N*k]``, ``density [N]``, ``num_nodes``,
        ``k``, ``backend`` (the engine that ran) and ``density_kind``;
        with ``faiss_ivf`` or ``faiss_ivf_hnsw`` also ``ivf_nlist``,
        ``ivf_nprobe`` and the
        measured ``ivf_recall``; with ``faiss_hnsw`` ``hnsw_m``,
        ``hnsw_ef_construction``, ``hnsw_ef_search`` and the measured
        ``hnsw_recall``.
    """
    check_density(density)
    xn = normalize_rows(x, allow_zero=allow_zero_rows)
    n = xn.size(0)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer (got {k!r}).")
    if k >= n:
        raise ValueError(f"k={k} must be smaller than the number of nodes ({n}): "
                         f"each node needs k other nodes. Use k <= {n - 1}.")
    engine = resolve_backend(backend, xn.device, n)
    start, end = (0, n) if rows is None else check_rows(rows, n)
    stats: dict = {}
    nbr, sim = knn_search(xn, None, k, backend=engine, chunk_size=chunk_size,
                          normalized=True, ivf_nlist=ivf_nlist,
                          ivf_nprobe=ivf_nprobe, ivf_recall=ivf_recall,
                          hnsw_m=hnsw_m, hnsw_ef_construction=hnsw_ef_construction,
                          hnsw_ef_search=hnsw_ef_search, stats=stats, rows=rows)
    centre = torch.arange(start, end, device=xn.device).repeat_interleave(k)
    edge_index = torch.stack([nbr.reshape(-1), centre], dim=0)
    part = {} if rows is None else {"rows": (start, end)}
    sim_flat = sim.reshape(-1)
    if rows is None:  # a shard's rows are not a whole graph's layout
        mark_knn_rows(edge_index, sim_flat, k, n)
    return Data(edge_index=edge_index, sim=sim_flat,
                density=compute_density(sim, density, density_threshold),
                num_nodes=n, k=k, backend=engine, density_kind=density,
                **part, **stats)


def neighbour_table(graph: Data) -> Tensor:
    """The ``[N, k]`` neighbour table of a graph from :func:`build_density_graph`
    (row ``u`` lists u's neighbours by descending similarity)."""
    return graph.edge_index[0].view(graph.num_nodes, -1)
