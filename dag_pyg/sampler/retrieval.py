r"""Test-time retrieval: sub-graphs of queries that are not graph nodes.

A test query takes its :math:`k_{sub}` most similar Feature Bank rows as hop
1 (the graph's kNN engine, so the same order and tie rule as the graph);
deeper hops follow the global graph's neighbour table like
:class:`~dag_pyg.sampler.KNNHopSampler`. :func:`predict_queries` runs a
:class:`~dag_pyg.nn.DNAHead` on those batches.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch_geometric.data import Data

from dag_pyg.graph import knn_search, neighbour_table
from dag_pyg.sampler.knn_sampler import check_hop_args, graph_degree, hop_expand

if TYPE_CHECKING:
    from dag_pyg.nn import DNAHead


def _query_batch(first: Tensor, first_sim: Tensor, graph: Data, k_sub: int,
                 hops: int, mark: Tensor | None = None) -> Data:
    k = graph_degree(graph)
    table = neighbour_table(graph)[:, :k_sub]
    out = hop_expand(table, first, hops, k=k, seeds=None, dedup=True, mark=mark)
    m = first.size(0)
    n_id, e_id = out.node, out.edge
    sim = graph.sim[e_id.clamp(min=0)]
    if hops > 0:  # hop-1 edges join queries to the bank: not graph edges
        sim[: first.numel()] = first_sim.reshape(-1).to(sim.dtype)
    density = graph.density[n_id.clamp(min=0)].clone()
    density[:m] = math.nan
    return Data(edge_index=torch.stack([out.row, out.col]), n_id=n_id, e_id=e_id,
                sim=sim, density=density, num_nodes=n_id.numel(), batch_size=m,
                num_sampled_nodes=out.num_sampled_nodes,
                num_sampled_edges=out.num_sampled_edges)


def _check_query_args(query_feats: Tensor, bank: Tensor, graph: Data, k_sub: int,
                      hops: int) -> None:
    check_hop_args(k_sub, hops, graph_degree(graph))
    if query_feats.dim() != 2 or bank.dim() != 2 or \
            query_feats.size(1) != bank.size(1):
        raise ValueError(f"query features {tuple(query_feats.shape)} and bank "
                         f"{tuple(bank.shape)} must be 2-D with the same width.")
    if bank.size(0) != int(graph.num_nodes):
        raise ValueError(f"The bank has {bank.size(0)} rows but the graph has "
                         f"{int(graph.num_nodes)} nodes; build the graph from "
                         "this bank.")


def query_subgraph(query_feats: Tensor, bank: Tensor, graph: Data, k_sub: int,
                   hops: int, backend: str | None = None) -> Data:
    r"""The :math:`h`-hop sub-graph of test queries that are not in the graph.

    Each query takes its :math:`k_{sub}` most cosine-similar Feature Bank
    rows as hop 1 (:func:`~dag_pyg.graph.knn_search` with the graph's kNN
    backend, so the same order and tie rule as the graph); deeper hops follow
    the global graph's :math:`k_{sub}`-neighbour table, deduplicated like
    :class:`~dag_pyg.sampler.KNNHopSampler`.

    Args:
        query_feats (torch.Tensor): Query features :math:`[M, d]`.
        bank (torch.Tensor): Feature Bank :math:`[N, d]` the graph was built on.
        graph (torch_geometric.data.Data): The global graph.
        k_sub (int): Neighbours per node.
        hops (int): Number of hops.
        backend (str, optional): kNN engine (default: the graph's).

    Returns:
        A batch like the loader's: queries are nodes ``0..M-1`` with
        ``n_id == -1``; ``edge_index``, ``n_id``, ``e_id`` (``-1`` for the
        query edges), ``sim``, ``density`` (NaN for queries),
        ``batch_size = M``, ``num_sampled_nodes``, ``num_sampled_edges``.
    """
    _check_query_args(query_feats, bank, graph, k_sub, hops)
    first, first_sim = _query_knn(query_feats, bank, graph, k_sub, hops, backend)
    return _query_batch(first, first_sim, graph, k_sub, hops)


def _query_knn(query_feats: Tensor, bank: Tensor, graph: Data, k_sub: int,
               hops: int, backend: str | None) -> tuple[Tensor, Tensor]:
    m = query_feats.size(0)
    if hops == 0 or m == 0:
        empty = torch.empty(m, k_sub, device=bank.device)
        return empty.long(), empty
    engine = backend or graph.get("backend") or "auto"
    if engine in ("faiss_ivf", "faiss_ivf_hnsw"):  # would retrain k-means per batch
        engine = "auto"
    return knn_search(query_feats.detach(), bank.detach(), k_sub, backend=engine)


@torch.no_grad()
def predict_queries(head: DNAHead, query_feats: Tensor, bank: Tensor, graph: Data,
                    k_sub: int, *, hops: int | None = None, batch_size: int = 256,
                    backend: str | None = None) -> Tensor:
    r"""Logits of test queries: :func:`query_subgraph` and ``head`` in batches
    (the retrieval runs once for all queries). Set ``head.eval()`` first.

    Args:
        head (DNAHead): The trained head.
        query_feats (torch.Tensor): Backbone features of the queries
            :math:`[M, d]`.
        bank (torch.Tensor): Feature Bank :math:`[N, d]`.
        graph (torch_geometric.data.Data): The global graph over the bank.
        k_sub (int): Neighbours per node (as in training).
        hops (int, optional): Hops to sample (default: ``head.hops``).
        batch_size (int): Queries per batch.
        backend (str, optional): kNN engine (default: the graph's).

    Returns:
        Logits :math:`[M, C]`.
    """
    hops = head.hops if hops is None else hops
    if query_feats.dim() == 2 and query_feats.size(1) != head.in_channels:
        raise ValueError(f"The head expects features of width {head.in_channels} "
                         f"but the queries have {query_feats.size(1)}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer (got {batch_size!r}).")
    if head.hops == 0:
        return head(query_feats)
    _check_query_args(query_feats, bank, graph, k_sub, hops)
    first, first_sim = _query_knn(query_feats, bank, graph, k_sub, hops, backend)
    mark = torch.full((int(graph.num_nodes),), -1, dtype=torch.long,
                      device=first.device)
    out = []
    for start in range(0, query_feats.size(0), batch_size):
        end = min(start + batch_size, query_feats.size(0))
        batch = _query_batch(first[start:end], first_sim[start:end], graph, k_sub,
                             hops, mark)
        out.append(head.forward_batch(query_feats[start:end], bank, batch,
                                      graph.get("density")))
    if not out:
        return query_feats.new_empty(0, head.num_classes)
    return torch.cat(out, dim=0)
