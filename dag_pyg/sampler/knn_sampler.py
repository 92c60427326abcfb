r"""h-hop sub-graph sampling on a fixed out-degree kNN graph (Sec. 4.2).

Every node of the global graph of :func:`dag_pyg.graph.build_density_graph`
has exactly :math:`k` neighbours stored in similarity order, so the
:math:`k_{sub}` most similar neighbours of any node set are one gather of the
neighbour table slice ``[:, :k_sub]``: no CSC conversion, no per-node sampling
loop, no hash map. :class:`KNNHopSampler` plugs this into PyG's
:class:`~torch_geometric.loader.NodeLoader`; :func:`make_loader` also offers
PyG's own :class:`~torch_geometric.loader.NeighborLoader` on the equivalent
``k_sub``-graph.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch_geometric.typing
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.loader import NeighborLoader, NodeLoader
from torch_geometric.sampler import (
    BaseSampler,
    EdgeSamplerInput,
    NodeSamplerInput,
    SamplerOutput,
)

from dag_pyg.graph import neighbour_table

SAMPLERS = ("knn", "neighbor")
_OFFSET = 1 << 61  # scatter keys far below the -1 of unseen nodes


def has_neighbor_backend() -> bool:
    """Whether PyG's :class:`~torch_geometric.loader.NeighborLoader` can run
    (it needs ``pyg-lib`` or ``torch-sparse`` to import)."""
    return bool(torch_geometric.typing.WITH_PYG_LIB
                or torch_geometric.typing.WITH_TORCH_SPARSE)


def graph_degree(graph: Data) -> int:
    """The out-degree :math:`k` of a fixed-degree graph (one of
    :func:`~dag_pyg.graph.build_density_graph`); a clear error otherwise."""
    n = int(graph.num_nodes)
    if n == 0 or graph.edge_index.size(1) % n != 0:
        raise ValueError("The graph must have the same number of neighbours for "
                         f"every node (got {graph.edge_index.size(1)} edges for "
                         f"{n} nodes); build it with build_density_graph().")
    return graph.edge_index.size(1) // n


def check_hop_args(k_sub: int, hops: int, k: int) -> None:
    """Validates ``k_sub`` and ``hops`` against a graph of out-degree ``k``."""
    if isinstance(k_sub, bool) or not isinstance(k_sub, int):
        raise ValueError(f"k_sub must be an integer (got {k_sub!r}).")
    if k_sub < 1:
        raise ValueError(f"k_sub={k_sub} must be at least 1: every node needs a "
                         "neighbour to aggregate. Use 1 <= k_sub <= k.")
    if k_sub > k:
        raise ValueError(f"k_sub={k_sub} exceeds the graph's k={k} neighbours "
                         f"per node. Lower k_sub to at most {k} or rebuild the "
                         f"graph with k >= {k_sub}.")
    if isinstance(hops, bool) or not isinstance(hops, int):
        raise ValueError(f"hops must be an integer (got {hops!r}).")
    if hops < 0:
        raise ValueError(f"hops={hops} must be >= 0 (0 samples the seeds only). "
                         "Pass the number of DNA layers, e.g. hops=1.")


def check_seeds(seeds: Tensor, num_nodes: int) -> Tensor:
    """Validates seed node ids (a 1-D integer tensor within ``[0, N)``)."""
    if not isinstance(seeds, Tensor):
        seeds = torch.as_tensor(seeds)
    if seeds.dtype == torch.bool:
        raise ValueError("Seeds must be node indices, not a mask; pass "
                         "mask.nonzero().view(-1).")
    if seeds.is_floating_point() or seeds.is_complex():
        raise ValueError(f"Seeds must be integer node indices (got {seeds.dtype}); "
                         "convert them with seeds.long().")
    seeds = seeds.view(-1).long()
    if seeds.numel() > 0:
        lo, hi = torch.aminmax(seeds)
        if int(lo) < 0 or int(hi) >= num_nodes:
            bad = seeds[(seeds < 0) | (seeds >= num_nodes)]
            raise ValueError(f"{bad.numel()} seed ids are out of range for a graph "
                             f"of {num_nodes} nodes (first: {bad[:5].tolist()}); "
                             f"seeds must lie in [0, {num_nodes - 1}].")
    return seeds


def hop_expand(table: Tensor, first: Tensor, hops: int, *, k: int,
               seeds: Tensor | None = None, dedup: bool = True,
               mark: Tensor | None = None) -> SamplerOutput:
    r"""Expands a batch of roots ``hops`` hops through a neighbour table.

    Root :math:`i` is joined to the nodes ``first[i]`` (hop 1); every node
    first reached at hop :math:`l < h` is joined to its row of ``table``
    (hop :math:`l+1`). Edges point from hop :math:`l` to hop :math:`l-1`.

    Args:
        table (torch.Tensor): Neighbour table :math:`[N, k_{sub}]`.
        first (torch.Tensor): Hop-1 neighbours of the roots :math:`[B, k_{sub}]`
            (``table[seeds]`` for graph nodes; the kNN result for queries).
        hops (int): Number of hops :math:`h \geq 0`.
        k (int): Out-degree of the global graph; edge ids are
            :math:`u \cdot k + p` for the :math:`p`-th neighbour of :math:`u`.
        seeds (torch.Tensor, optional): Global ids of the roots, or
            :obj:`None` for roots outside the graph (queries: their ``node``
            entries and the ids of their edges are :obj:`-1`).
        dedup (bool): Keep a node reached twice once (PyG's way) or keep every
            copy (the paper's tree).
        mark (torch.Tensor, optional): Scratch array :math:`[N]` filled with
            :obj:`-1`; it is restored before returning.

    Returns:
        :class:`~torch_geometric.sampler.SamplerOutput` in BFS order, with
        ``batch`` (root of every node) in tree mode.
    """
    device = first.device
    num_roots, k_sub = first.size(0), table.size(1)
    ar_k = torch.arange(k_sub, device=device)
    roots = (seeds if seeds is not None
             else torch.full((num_roots,), -1, dtype=torch.long, device=device))
    nodes, rows, cols, edges = [roots], [], [], []
    num_nodes, num_edges = [num_roots], []
    front_global, front_local = seeds, torch.arange(num_roots, device=device)
    batch = [torch.arange(num_roots, device=device)] if not dedup else None
    total = num_roots
    if dedup and hops > 0:
        if mark is None:
            mark = torch.full((table.size(0),), -1, dtype=torch.long, device=device)
        if seeds is not None:
            mark.scatter_(0, seeds, front_local)
            if not bool((mark.index_select(0, seeds) == front_local).all()):
                mark.index_fill_(0, seeds, -1)
                raise ValueError("Seeds hold duplicates; with dedup=True each "
                                 "seed must appear once. Pass unique seeds or "
                                 "use dedup=False.")
    try:
        for hop in range(1, hops + 1):
            # index_select / scatter rather than advanced indexing: on small
            # index tensors they stay serial and several times faster.
            flat = (first if hop == 1 else
                    table.index_select(0, front_global)).reshape(-1)
            n_e = flat.numel()
            cols.append(front_local.repeat_interleave(k_sub))
            if front_global is None:  # query edges are not in the graph
                edges.append(torch.full((n_e,), -1, dtype=torch.long, device=device))
            else:
                edges.append(torch.add(ar_k, front_global.unsqueeze(1),
                                       alpha=k).view(-1))
            if dedup:
                assert mark is not None
                pos = (mark.index_select(0, flat) < 0).nonzero().view(-1)
                cand = flat.index_select(0, pos)
                # Order-preserving unique without a sort: every unseen node
                # takes the smallest position at which it occurs (amin of keys
                # offset far below the -1 of unseen entries), so the entries
                # holding it are the first occurrences and new nodes come in
                # first-appearance order like PyG's, deterministically.
                key = pos.sub_(_OFFSET)
                mark.scatter_reduce_(0, cand, key, "amin")
                is_first = (mark.index_select(0, cand) == key).nonzero().view(-1)
                new = cand.index_select(0, is_first)
                local = torch.arange(total, total + new.numel(), device=device)
                mark.scatter_(0, new, local)
                rows.append(mark.index_select(0, flat))
            else:
                new = flat
                local = torch.arange(total, total + n_e, device=device)
                rows.append(local)
                assert batch is not None
                batch.append(batch[-1].repeat_interleave(k_sub))
            front_global, front_local = new, local
            nodes.append(new)
            total += new.numel()
            num_nodes.append(new.numel())
            num_edges.append(n_e)
    except BaseException:
        if mark is not None:
            mark.fill_(-1)  # rare path: restore the scratch array wholesale
        raise
    node = torch.cat(nodes) if len(nodes) > 1 else roots
    if dedup and mark is not None and hops > 0:
        # Restore only the touched entries: a batch costs O(batch), not O(N).
        mark.index_fill_(0, node if seeds is not None else node[num_roots:], -1)
    empty = torch.empty(0, dtype=torch.long, device=device)
    return SamplerOutput(
        node=node,
        row=torch.cat(rows) if rows else empty,
        col=torch.cat(cols) if cols else empty,
        edge=torch.cat(edges) if edges else empty,
        batch=torch.cat(batch) if batch is not None else None,
        num_sampled_nodes=num_nodes,
        num_sampled_edges=num_edges,
    )


class KNNHopSampler(BaseSampler):
    r"""Samples the :math:`h`-hop sub-graph of the :math:`k_{sub}` most similar
    neighbours around a batch of seed nodes (the paper's Sec. 4.2).

    For seeds :math:`S` the sub-graph holds the edges

    .. math::
        \mathcal{E}_l = \{(v, u) : u \in \mathcal{V}_{l-1},\,
        v \in \mathcal{N}_{k_{sub}}(u)\}, \qquad
        \mathcal{V}_0 = S,\ \mathcal{V}_l = \{v : (v, u) \in \mathcal{E}_l\}

    for :math:`l = 1, \dots, h`, with :math:`\mathcal{N}_{k_{sub}}(u)` the first
    :math:`k_{sub}` columns of the global graph's neighbour table. As the
    out-degree is fixed, every hop is one gather of that table; the sampler
    is deterministic.

    With :obj:`dedup=True` a node reached twice is kept once (at its first
    hop; PyG's way) and only nodes new at hop :math:`l` are expanded at hop
    :math:`l+1`. With :obj:`dedup=False` every reached copy is its own node
    (the paper's tree of :math:`B(1 + k_{sub} + \dots + k_{sub}^h)` nodes)
    and ``batch`` names the seed of every node. Both give the seeds the same
    :math:`h`-layer outputs.

    The sampler keeps a scratch array of :math:`N` entries that every call
    restores; use one instance per thread (DataLoader worker processes each
    get their own copy).

    Use it through :class:`~torch_geometric.loader.NodeLoader` (or
    :func:`make_loader`). The mini-batches hold ``n_id``, ``e_id`` (ids into
    the global ``edge_index``, :math:`u \cdot k + p`), ``batch_size`` and
    ``num_sampled_nodes`` / ``num_sampled_edges`` in BFS order, ready for
    :func:`torch_geometric.utils.trim_to_layer`.

    Args:
        graph (torch_geometric.data.Data): The global graph of
            :func:`~dag_pyg.graph.build_density_graph`.
        k_sub (int): Neighbours per node, :math:`1 \leq k_{sub} \leq k`.
        hops (int): Number of hops :math:`h \geq 0`.
        dedup (bool, optional): Keep nodes reached twice once.
            (default: :obj:`True`)
    """
    def __init__(self, graph: Data, k_sub: int, hops: int, dedup: bool = True):
        self.k = graph_degree(graph)
        check_hop_args(k_sub, hops, self.k)
        self.num_nodes = int(graph.num_nodes)
        self.k_sub, self.hops, self.dedup = k_sub, hops, dedup
        self.table = neighbour_table(graph)[:, :k_sub].contiguous()
        # Scratch array of global -> local ids, reset after every batch, so a
        # batch costs O(batch) and not O(N).
        self._mark = torch.full((self.num_nodes,), -1, dtype=torch.long,
                                device=self.table.device)

    def sample(self, seeds: Tensor) -> SamplerOutput:
        """Samples the sub-graph of ``seeds`` (global node ids)."""
        seeds = check_seeds(seeds, self.num_nodes).to(self.table.device)
        first = self.table.index_select(0, seeds)
        return hop_expand(self.table, first, self.hops, k=self.k, seeds=seeds,
                          dedup=self.dedup, mark=self._mark)

    def sample_from_nodes(self, index: NodeSamplerInput,
                          **kwargs) -> SamplerOutput:
        out = self.sample(index.node)
        out.metadata = (index.input_id, index.time)
        return out

    def sample_from_edges(self, index: EdgeSamplerInput, neg_sampling=None):
        raise NotImplementedError(
            f"'{self.__class__.__name__}' samples around nodes only; use it "
            "with NodeLoader, not LinkLoader.")

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(k_sub={self.k_sub}, hops={self.hops}, "
                f"dedup={self.dedup})")


def knn_subgraph(graph: Data, k_sub: int) -> Data:
    """The global graph restricted to every node's ``k_sub`` most similar
    neighbours (``edge_index [2, N*k_sub]`` in the same order; ``sim``,
    ``density`` and the other attributes carried over, ``k = k_sub``)."""
    k = graph_degree(graph)
    check_hop_args(k_sub, 0, k)
    n = int(graph.num_nodes)
    out = copy.copy(graph)  # the attributes replaced below are not copied
    out.edge_index = graph.edge_index.view(2, n, k)[:, :, :k_sub].reshape(2, -1)
    for key, value in graph.items():
        if key != "edge_index" and isinstance(value, Tensor) and \
                value.dim() >= 1 and value.size(0) == n * k and n * k != n:
            out[key] = value.view(n, k, *value.shape[1:])[:, :k_sub].reshape(
                n * k_sub, *value.shape[1:])
    out.k = k_sub
    return out


def _fill_hop_counts(out: SamplerOutput, hops: int) -> SamplerOutput:
    # The torch-sparse sampler omits the per-hop counts that trim_to_layer
    # needs. It appends nodes and edges hop by hop with non-decreasing target
    # ids, so the hop-l edges are those whose target is a hop-(l-1) node.
    if out.num_sampled_nodes is not None and out.num_sampled_edges is not None:
        return out
    num_seeds = out.metadata[0].numel()
    nodes, edges = [num_seeds], []
    end, e_begin = num_seeds, 0
    for _ in range(hops):
        e_end = int(torch.searchsorted(out.col, end))
        edges.append(e_end - e_begin)
        new_end = end
        if e_end > e_begin:
            new_end = max(end, int(out.row[e_begin:e_end].max()) + 1)
        nodes.append(new_end - end)
        end, e_begin = new_end, e_end
    out.num_sampled_nodes, out.num_sampled_edges = nodes, edges
    return out


class _GlobalEdgeIds:
    # Maps NeighborLoader's e_id (into the k_sub-graph) to global edge ids,
    # then applies the user's transform. A class, not a closure, so that the
    # loader pickles for worker processes.
    def __init__(self, k: int, k_sub: int, transform=None):
        self.k, self.k_sub, self.transform = k, k_sub, transform

    def __call__(self, data: Data) -> Data:
        if "e_id" in data:
            e = data.e_id
            data.e_id = (e // self.k_sub) * self.k + e % self.k_sub
        return self.transform(data) if self.transform is not None else data


class _HopCounts:
    def __init__(self, hops: int):
        self.hops = hops

    def __call__(self, out: SamplerOutput) -> SamplerOutput:
        return _fill_hop_counts(out, self.hops)


def make_loader(graph: Data, k_sub: int, hops: int, *,
                input_nodes: Tensor | Sequence[int] | None = None,
                batch_size: int = 256, shuffle: bool = False,
                sampler: str = "knn", dedup: bool = True,
                **kwargs) -> NodeLoader:
    r"""A PyG loader of :math:`h`-hop :math:`k_{sub}`-neighbour sub-graphs.

    Both samplers yield the same sub-graphs (same nodes per hop, same edges;
    the order of nodes within a hop may differ) as
    :class:`~torch_geometric.data.Data` batches carrying ``edge_index``,
    ``n_id``, ``e_id`` (global edge ids :math:`u \cdot k + p`), ``density``
    and ``sim`` of the batch, ``batch_size``, ``num_sampled_nodes`` and
    ``num_sampled_edges``.

    Args:
        graph (torch_geometric.data.Data): The global graph of
            :func:`~dag_pyg.graph.build_density_graph`.
        k_sub (int): Neighbours per node, :math:`1 \leq k_{sub} \leq k`.
        hops (int): Number of hops :math:`h \geq 0`.
        input_nodes (torch.Tensor, optional): Seed node ids (default: all).
        batch_size (int): Seeds per batch.
        shuffle (bool): Reshuffle the seeds every epoch.
        sampler (str): ``"knn"`` (:class:`KNNHopSampler` in a
            :class:`~torch_geometric.loader.NodeLoader`) or ``"neighbor"``
            (PyG's :class:`~torch_geometric.loader.NeighborLoader` with
            ``num_neighbors=[k_sub] * hops`` on :func:`knn_subgraph`, which
            needs ``pyg-lib`` or ``torch-sparse``).
        dedup (bool): Keep nodes reached twice once; :obj:`False` (the tree)
            is only available with ``sampler="knn"``.
        **kwargs: Further arguments of the loader (``num_workers``, ...).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler '{sampler}'. Choose one of "
                         f"{list(SAMPLERS)}.")
    k = graph_degree(graph)
    check_hop_args(k_sub, hops, k)
    n = int(graph.num_nodes)
    if input_nodes is not None:
        input_nodes = check_seeds(torch.as_tensor(input_nodes), n)
    if sampler == "knn":
        return NodeLoader(graph, node_sampler=KNNHopSampler(graph, k_sub, hops,
                                                            dedup=dedup),
                          input_nodes=input_nodes, batch_size=batch_size,
                          shuffle=shuffle, **kwargs)
    if not dedup:
        raise ValueError("NeighborLoader cannot build the paper's duplicated "
                         "tree; use sampler='knn' with dedup=False.")
    if not has_neighbor_backend():
        raise ImportError("sampler='neighbor' needs PyG's NeighborLoader backend: "
                          "install torch-sparse or pyg-lib, or use "
                          "sampler='knn'.")
    if hops == 0:
        raise ValueError("NeighborLoader needs hops >= 1; use sampler='knn' for "
                         "hops=0.")
    sub = knn_subgraph(graph, k_sub)
    transform = _GlobalEdgeIds(k, k_sub, kwargs.pop("transform", None))
    return NeighborLoader(sub, num_neighbors=[k_sub] * hops,
                          input_nodes=input_nodes, batch_size=batch_size,
                          shuffle=shuffle, replace=False,
                          subgraph_type="directional", transform=transform,
                          transform_sampler_output=_HopCounts(hops), **kwargs)
