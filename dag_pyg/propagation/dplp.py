r"""Density-ascending paths and the DPLP label propagation (Sec. 4.3, Alg. 1).

Everything here is written as whole-tensor passes. The parent of every node is
a masked arg-max over its edges: a scatter over any edge list, row reductions
over an ``[N, k]`` table, and, for the rows of :func:`build_density_graph`
(sorted by similarity), a scan for the first denser neighbour that stops after
a few columns for most rows. The path queries (path lengths, the densest
labelled node on a path, the densest labelled node whose path passes through a
node) are answered by pointer jumping, in
:math:`\lceil \log_2 (\text{longest path}) \rceil + 1` rounds.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import scatter

from dag_pyg.graph.layout import knn_rows

MODES = ("L", "LU")

# Phase codes of :class:`DPLPResult`.
PHASE_PRIOR = -1
PHASE_LABELLED = 0
PHASE_LP_L = 1
PHASE_LP_LU = 2


class DPLPResult(NamedTuple):
    r"""Output of :func:`dplp`.

    Attributes:
        labels (torch.Tensor): Pseudo labels ``[N]`` (ground truth on labelled
            nodes, propagated labels, or the prior entry).
        source (torch.Tensor): The labelled node whose label was used ``[N]``;
            the node itself when labelled, ``-1`` where the prior was kept.
        phase (torch.Tensor): ``0`` labelled, ``1`` LP-L, ``2`` LP-LU, ``-1``
            prior kept ``[N]``.
        parents (torch.Tensor): Density-ascending parents ``[N]`` (``-1`` for
            roots), see :func:`density_ascending_parents`.
    """
    labels: Tensor
    source: Tensor
    phase: Tensor
    parents: Tensor


# --------------------------------------------------------------------------- #
# Input checks
# --------------------------------------------------------------------------- #
def _num_nodes(graph: Data) -> int:
    if getattr(graph, "density", None) is None:
        raise ValueError("The graph has no 'density' attribute; build it with "
                         "dag_pyg.graph.build_density_graph.")
    n = graph.num_nodes
    if n is None:
        n = graph.density.numel()
    return int(n)


def _check_graph(graph: Data) -> tuple[Tensor, Tensor, Tensor, int]:
    n = _num_nodes(graph)
    edge_index, sim, density = graph.edge_index, getattr(graph, "sim", None), \
        graph.density
    if edge_index is None or edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError("graph.edge_index must have shape [2, num_edges] (got "
                         f"{None if edge_index is None else tuple(edge_index.shape)}).")
    if sim is None:
        raise ValueError("The graph has no 'sim' attribute (cosine similarity per "
                         "edge); build it with dag_pyg.graph.build_density_graph.")
    if sim.dim() != 1 or sim.numel() != edge_index.size(1):
        raise ValueError(f"graph.sim must have shape [num_edges={edge_index.size(1)}]"
                         f" (got {tuple(sim.shape)}).")
    if density.dim() != 1 or density.numel() != n:
        raise ValueError(f"graph.density must have shape [num_nodes={n}] (got "
                         f"{tuple(density.shape)}).")
    return edge_index, sim, density, n


def _check_range(index: Tensor, n: int) -> None:
    # Negative indices would silently wrap around in the gathers below.
    if index.numel() > 0:
        lo, hi = torch.aminmax(index)
        if int(lo) < 0 or int(hi) >= n:
            raise ValueError(
                f"graph.edge_index holds node indices outside [0, {n}).")


def _check_sigma(sigma: float) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise ValueError(f"sigma must be a non-negative number (got {sigma!r}).")
    sigma = float(sigma)
    if math.isnan(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a non-negative number (got {sigma}); use "
                         "float('inf') for no distance limit.")
    return sigma


# --------------------------------------------------------------------------- #
# Parents
# --------------------------------------------------------------------------- #
def _dense_rows(edge_index: Tensor, n: int) -> int | None:
    """Returns ``k`` if the edges are ``k`` per centre, grouped by centre in
    node order (the layout of :func:`build_density_graph`), else ``None``."""
    e = edge_index.size(1)
    if n == 0 or e == 0 or e % n != 0:
        return None
    k = e // n
    # Row u of the [N, k] view must hold u only: its min and max are u.
    lo, hi = torch.aminmax(edge_index[1].view(n, k), dim=1)
    ar = torch.arange(n, device=edge_index.device)
    return k if torch.equal(lo, ar) and torch.equal(hi, ar) else None


def _rows_descending(sim: Tensor, rows: int = 4096) -> bool:
    """Whether every row of the ``[N, k]`` similarity table is non-increasing."""
    if sim.size(1) < 2:
        return True
    # On the CPU in blocks of rows that stay in cache: one pass over the
    # whole table allocates an [N, k - 1] difference and runs 3x slower at
    # N = 1M. On a GPU each block would wait for the device: one pass.
    blocks = (sim,) if sim.is_cuda else sim.split(rows)
    return all(bool(torch.diff(block, dim=1).amax() <= 0)  # False on NaN
               for block in blocks)


def _table_nearest_denser(nbr: Tensor, sim: Tensor, density: Tensor,
                          dens_u: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise arg-max of ``sim`` over denser neighbours, ties to the smaller
    index; ``[M, k]`` rows in (``density``: of all nodes; ``dens_u``: of the
    rows' centres), parent (``-1``) and its similarity out."""
    dens_nbr = density.index_select(0, nbr.reshape(-1)).view_as(nbr)
    valid = dens_nbr > dens_u.view(-1, 1)
    s = torch.where(valid, sim, -math.inf)
    best = s.amax(dim=1)
    tie = valid & (s == best.view(-1, 1))
    sentinel = torch.iinfo(nbr.dtype).max
    parent = torch.where(tie, nbr, sentinel).amin(dim=1)
    # Parents are int64 whatever the table's integer type.
    parent = torch.where(parent == sentinel, -1, parent).long()
    return parent, best


def _first_denser_sorted(nbr: Tensor, sim: Tensor, density: Tensor,
                         own: Tensor | None = None) -> tuple[Tensor, Tensor]:
    # In rows sorted by descending similarity the parent is the first denser
    # entry (up to equal similarities, fixed below). Most nodes find it within
    # the first few columns, so scan column blocks of growing width and keep
    # searching only the rows that have not found one yet. ``own``: the
    # density of each row's centre (default: row u is node u).
    own = density if own is None else own
    n, k = nbr.shape
    device = nbr.device
    if k == 0:
        return (torch.full((n,), -1, dtype=torch.long, device=device),
                torch.full((n,), -math.inf, dtype=sim.dtype, device=device))
    nbr_flat, sim_flat = nbr.reshape(-1), sim.reshape(-1)
    # The first denser column of every row (k: none). The first block runs
    # column by column over all rows: 1-D passes vectorise, where a row
    # reduction over a few columns (any, argmax) does not.
    head = min(k, 4)
    dens = density.index_select(0, nbr[:, :head].reshape(-1)).view(n, head)
    col = torch.full((n,), k, dtype=torch.long, device=device)
    for j in reversed(range(head)):
        col = torch.where(dens[:, j] > own, j, col)
    rows = (col == k).nonzero().view(-1)
    start, width = head, 4 * head
    while rows.numel() > 0 and start < k:
        stop = min(k, start + width)
        w = stop - start
        # Flat positions of the block (index_select is much cheaper than
        # 2-D advanced indexing).
        pos = (rows * k + start).view(-1, 1) + torch.arange(w, device=device)
        cand = nbr_flat.index_select(0, pos.view(-1))
        denser = (density.index_select(0, cand).view(-1, w)
                  > own.index_select(0, rows).view(-1, 1))
        hit = denser.any(dim=1)
        # argmax returns the first maximal entry: the first denser column.
        first = denser.to(torch.uint8).argmax(dim=1)
        found = hit.nonzero().view(-1)
        col.index_copy_(0, rows.index_select(0, found),
                        start + first.index_select(0, found))
        rows = rows.index_select(0, (~hit).nonzero().view(-1))
        start, width = stop, width * 4
    has = col < k
    pos = torch.arange(n, device=device) * k + col.clamp_max(k - 1)
    parent = torch.where(has, nbr_flat.index_select(0, pos).long(), -1)
    s_at = sim_flat.index_select(0, pos)
    best = torch.where(has, s_at, -math.inf)
    # A later entry with the same similarity may be denser with a smaller
    # index: redo those (rare) rows exactly.
    s_next = sim_flat.index_select(0, (pos + 1).clamp_max(n * k - 1))
    redo = (has & (col < k - 1) & (s_next == s_at)).nonzero().view(-1)
    if redo.numel() > 0:
        sub = nbr.index_select(0, redo)
        sub_parent, sub_best = _table_nearest_denser(
            sub, sim.index_select(0, redo), density, own.index_select(0, redo))
        parent.index_copy_(0, redo, sub_parent)
        best.index_copy_(0, redo, sub_best)
    return parent, best


def _nearest_denser(graph: Data) -> tuple[Tensor, Tensor]:
    """The nearest strictly denser neighbour of every node (``-1`` if none) and
    its cosine similarity (``-inf`` if none)."""
    edge_index, sim, density, n = _check_graph(graph)
    nbr, centre = edge_index[0], edge_index[1]
    k = knn_rows(edge_index, sim, n)
    if k is not None:  # build_density_graph's own, unchanged: no checks
        return _first_denser_sorted(nbr.view(n, k), sim.view(n, k), density)
    k = _dense_rows(edge_index, n)
    if k is not None:  # row 1 is arange(n).repeat_interleave(k), valid
        _check_range(nbr, n)
        nbr2, sim2 = nbr.view(n, k), sim.view(n, k)
        if _rows_descending(sim2):
            # Layout of build_density_graph: no full pass over the edges.
            return _first_denser_sorted(nbr2, sim2, density)
        # [N, k] table: row reductions instead of scatters.
        return _table_nearest_denser(nbr2, sim2, density, density)
    # Any edge list: scatter arg-max over the edges grouped by centre.
    _check_range(edge_index, n)
    nbr, centre = nbr.long(), centre.long()  # the scatters' index type
    valid = density[nbr] > density[centre]
    s = torch.where(valid, sim, -math.inf)
    best = scatter(s, centre, dim=0, dim_size=n, reduce="max")
    # Nodes without incoming edges come back as 0 from `scatter`.
    deg = torch.zeros(n, dtype=torch.long, device=sim.device)
    deg.scatter_add_(0, centre, torch.ones_like(centre))
    best = best.masked_fill(deg == 0, -math.inf)
    tie = valid & (s == best[centre])
    parent = torch.full((n,), n, dtype=torch.long, device=nbr.device)
    parent.scatter_reduce_(0, centre, torch.where(tie, nbr, n), reduce="amin",
                           include_self=True)
    has = parent < n
    parent = torch.where(has, parent, -1)
    best = best.masked_fill(~has, -math.inf)
    return parent, best


def nearest_denser_rows(nbr: Tensor, sim: Tensor, density: Tensor,
                        start: int = 0) -> tuple[Tensor, Tensor]:
    r"""The nearest strictly denser neighbour of the centres ``start`` to
    ``start + M - 1`` from their own rows of a kNN graph: one rank's part of
    :func:`density_ascending_parents` (before ``sigma``) in a sharded
    refresh, equal to those rows of the whole graph's, since a node's parent
    reads only its row and the densities.

    Args:
        nbr (torch.Tensor): The centres' neighbour table ``[M, k]`` (global
            ids, each row by descending similarity as
            :func:`~dag_pyg.graph.build_density_graph` orders it; other
            orders take a slower path to the same answer).
        sim (torch.Tensor): Their similarities ``[M, k]``.
        density (torch.Tensor): Densities of all ``N`` nodes ``[N]``.
        start (int): Global id of the first centre.

    Returns:
        ``(parent [M], sim [M])``: the parent (``-1`` for none; ties to the
        smaller index) and its similarity (``-inf`` for none), from which
        :func:`step_distances` gives the distance ``sigma`` is compared with.
    """
    if nbr.dim() != 2 or sim.shape != nbr.shape:
        raise ValueError(f"nbr and sim must be [M, k] tables of one shape (got "
                         f"{tuple(nbr.shape)} and {tuple(sim.shape)}).")
    n, m = density.numel(), nbr.size(0)
    if density.dim() != 1 or not 0 <= start <= n - m:
        raise ValueError(f"density must hold all N nodes ([N]) and the centres "
                         f"start..start+M-1 ({start}..{start + m - 1}) lie in "
                         f"[0, N={n}).")
    _check_range(nbr, n)
    if m == 0:
        return nbr.new_empty(0, dtype=torch.long), sim.new_empty(0)
    own = density.narrow(0, start, m)
    if _rows_descending(sim):
        return _first_denser_sorted(nbr, sim, density, own)
    return _table_nearest_denser(nbr, sim, density, own)


def step_distances(sim: Tensor) -> Tensor:
    r"""Distances :math:`\sqrt{2 - 2 s}` of unit vectors of cosine similarity
    ``sim`` in float64 (``inf`` for ``-inf``: no parent), as
    :func:`parent_step_distances` gives them."""
    return _sim_to_dist(sim)


def _sim_to_dist(sim: Tensor) -> Tensor:
    # Euclidean distance of L2-normalised vectors, in float64 so that the
    # comparison with sigma is reproducible by a plain-Python reference.
    s = sim.to(torch.float64)
    d = (2.0 - 2.0 * s).clamp_min(0.0).sqrt()
    return d.masked_fill(torch.isinf(s), math.inf)


def parent_step_distances(graph: Data) -> Tensor:
    r"""Distance from every node to its nearest strictly denser neighbour.

    .. math::
        \delta_u = \min_{v \in \mathcal{N}_k(u),\ \rho_v > \rho_u}
        \lVert \tilde{\mathbf{f}}_u - \tilde{\mathbf{f}}_v \rVert_2
        = \min_v \sqrt{2 - 2 \cos(\mathbf{f}_u, \mathbf{f}_v)}

    Useful to pick :obj:`sigma` as a quantile of the finite entries.

    Args:
        graph (torch_geometric.data.Data): Graph with ``edge_index`` (row 0
            neighbour, row 1 centre), ``sim`` and ``density``.

    Returns:
        ``float64`` tensor ``[N]``, ``inf`` where no neighbour is denser.
    """
    _, best = _nearest_denser(graph)
    return _sim_to_dist(best)


def density_ascending_parents(graph: Data, sigma: float = float("inf")) -> Tensor:
    r"""The density-ascending parent of every node (Sec. 4.3).

    .. math::
        p(u) = \operatorname*{arg\,min}_{v \in \mathcal{N}_k(u),\
        \rho_v > \rho_u} \lVert \tilde{\mathbf{f}}_u - \tilde{\mathbf{f}}_v
        \rVert_2

    Ties go to the smaller index. :math:`u` is a root (``-1``) if no
    neighbour is strictly denser or the distance exceeds :obj:`sigma`.

    Args:
        graph (torch_geometric.data.Data): Graph with ``edge_index`` (row 0
            neighbour :math:`v`, row 1 centre :math:`u`), ``sim`` (cosine
            similarity per edge) and ``density``. Any number of edges per
            centre is accepted; the ``[N, k]`` layout of
            :func:`~dag_pyg.graph.build_density_graph` takes a faster path
            (and its own graphs, unchanged, skip the checks of that layout:
            :mod:`dag_pyg.graph.layout`).
        sigma (float): Largest allowed parent distance. (default: ``inf``)

    Returns:
        ``LongTensor [N]``.
    """
    sigma = _check_sigma(sigma)
    parent, best = _nearest_denser(graph)
    if sigma != math.inf:
        parent = parent.masked_fill(_sim_to_dist(best) > sigma, -1)
    return parent


# --------------------------------------------------------------------------- #
# Pointer jumping
# --------------------------------------------------------------------------- #
def _check_parents(parents: Tensor) -> int:
    if parents.dim() != 1 or parents.dtype not in (torch.int32, torch.int64):
        raise ValueError("parents must be a 1-D integer tensor (got "
                         f"{parents.dtype}, shape {tuple(parents.shape)}).")
    n = parents.numel()
    if n and (int(parents.min()) < -1 or int(parents.max()) >= n):
        raise ValueError(f"parents must hold -1 or node indices in [0, {n}).")
    return n


def _max_rounds(n: int) -> int:
    # After r doubling rounds a pointer has jumped 2^r steps; a forest on n
    # nodes has paths of at most n nodes, so more rounds mean a cycle.
    return max(1, n).bit_length() + 1


def _cycle_error() -> ValueError:
    return ValueError("parents contain a cycle; density-ascending parents "
                      "never do (density strictly rises along a path).")


def path_lengths(parents: Tensor) -> Tensor:
    r"""Number of nodes on every density-ascending path (the paper's Fig. 5).

    .. math::
        |P(u)| = 1 + |P(p(u))|, \qquad |P(r)| = 1 \text{ for a root } r

    Computed by pointer jumping in :math:`O(\log \max_u |P(u)|)` rounds.

    Args:
        parents (torch.Tensor): Parent of every node ``[N]``, ``-1`` for roots.

    Returns:
        ``LongTensor [N]``.
    """
    n = _check_parents(parents)
    ptr = parents.long().clone()
    length = torch.ones(n, dtype=torch.long, device=parents.device)
    # Only nodes whose pointer has not reached past a root take part in a
    # round; after round r those are the nodes with paths over 2^r nodes.
    idx = (ptr >= 0).nonzero().view(-1)
    for _ in range(_max_rounds(n)):
        if idx.numel() == 0:
            return length
        p = ptr.index_select(0, idx)
        # length[u] counts nodes from u up to (not including) ptr[u]; all
        # reads happen before the writes, as a synchronous round needs.
        length.index_copy_(0, idx, length.index_select(0, idx)
                           + length.index_select(0, p))
        nxt = ptr.index_select(0, p)
        ptr.index_copy_(0, idx, nxt)
        idx = idx.index_select(0, (nxt >= 0).nonzero().view(-1))
    raise _cycle_error()


def _path_min_queries(parents: Tensor, key: Tensor, sentinel: int,
                      down: bool, up: bool) -> tuple[Tensor | None, Tensor | None]:
    r"""Two min-queries over the parent forest by pointer jumping.

    ``down[u] = min key over P(u)`` (u's own path, u included) and
    ``up[u] = min key over {i : u in P(i)}`` (u's subtree, u included).

    Invariant after round r, with ``a_r(u)`` the :math:`2^r`-th ancestor:
    ``down[u]`` covers the first :math:`2^r` nodes of ``P(u)`` and ``up[w]``
    covers the nodes :math:`x` with ``w = a_d(x)`` for some :math:`d < 2^r`.
    Doubling: ``down[u] <- min(down[u], down[a_r(u)])`` and
    ``up[w] <- min(up[w], min_{x : a_r(x) = w} up[x])``.
    """
    n = parents.numel()
    ptr = parents.long().clone()
    dmin = key.clone() if down else None
    umin = key.clone() if up else None
    idx = (ptr >= 0).nonzero().view(-1)  # nodes still jumping
    for _ in range(_max_rounds(n)):
        if idx.numel() == 0:
            return dmin, umin
        p = ptr.index_select(0, idx)
        # Gather every old value before writing (synchronous rounds).
        if up:
            src = umin.index_select(0, idx)
        if down:
            dmin.index_copy_(0, idx, torch.minimum(dmin.index_select(0, idx),
                                                   dmin.index_select(0, p)))
        if up:
            # Children push their values to their 2^r-th ancestor.
            umin.scatter_reduce_(0, p, src, reduce="amin", include_self=True)
        nxt = ptr.index_select(0, p)
        ptr.index_copy_(0, idx, nxt)
        idx = idx.index_select(0, (nxt >= 0).nonzero().view(-1))
    raise _cycle_error()


# --------------------------------------------------------------------------- #
# DPLP
# --------------------------------------------------------------------------- #
def density_order(density: Tensor) -> tuple[Tensor, Tensor]:
    r"""The total order "denser first" used to rank labelled nodes.

    Node :math:`i` precedes :math:`j` iff :math:`\rho_i > \rho_j`, or
    :math:`\rho_i = \rho_j` and :math:`i < j`.

    Returns:
        ``(order, rank)``: ``order[r]`` is the node at position ``r`` and
        ``rank[order[r]] = r``.
    """
    order = torch.sort(density, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return order, rank


def _check_labels(y: Tensor, labelled_mask: Tensor, prior: Tensor | None, n: int,
                  num_classes: int | None) -> None:
    if not isinstance(labelled_mask, Tensor) or labelled_mask.dtype != torch.bool:
        dtype = getattr(labelled_mask, "dtype", type(labelled_mask).__name__)
        raise ValueError(f"labelled_mask must be a torch.bool tensor (got {dtype});"
                         " convert an index list with a mask, e.g. "
                         "mask = torch.zeros(N, dtype=torch.bool); mask[idx] = True.")
    if labelled_mask.shape != (n,):
        raise ValueError(f"labelled_mask must have shape [num_nodes={n}] (got "
                         f"{tuple(labelled_mask.shape)}).")
    for name, t in (("y", y), ("prior", prior)):
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.is_floating_point() or t.is_complex() \
                or t.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor of class indices "
                             f"[num_nodes={n}] (got "
                             f"{getattr(t, 'dtype', type(t).__name__)}).")
        if t.shape != (n,):
            raise ValueError(f"{name} must have shape [num_nodes={n}] (got "
                             f"{tuple(t.shape)}).")
    if num_classes is not None and (not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer (got "
                         f"{num_classes!r}).")
    if bool(labelled_mask.any()):
        yl = y[labelled_mask]
        if int(yl.min()) < 0:
            raise ValueError("y holds negative labels on labelled nodes (e.g. node "
                             f"{int(labelled_mask.nonzero()[yl < 0][0])}); every "
                             "labelled node needs a class index >= 0.")
        if num_classes is not None and int(yl.max()) >= num_classes:
            raise ValueError(f"y holds labels >= num_classes={num_classes} on "
                             "labelled nodes.")


def dplp(graph: Data, y: Tensor, labelled_mask: Tensor, prior: Tensor | None = None,
         sigma: float = float("inf"), mode: str = "LU", *,
         num_classes: int | None = None,
         parents: Tensor | None = None) -> DPLPResult:
    r"""Density-ascending path based label propagation (Alg. 1).

    With :math:`P(u) = (u, p(u), p(p(u)), \dots)` the density-ascending path
    and :math:`\mathcal{L}` the labelled nodes, an unlabelled node :math:`u`
    gets

    .. math::
        \hat{y}_u =
        \begin{cases}
        y_{i^\ast}, & i^\ast = \operatorname{densest}\{i \in \mathcal{L} :
            u \in P(i)\} \quad \text{(phase 1, LP-L)} \\
        y_{j^\ast}, & j^\ast = \operatorname{densest}(\mathcal{L} \cap P(u))
            \quad \text{(phase 2, LP-LU, if phase 1 found none)} \\
        \text{prior}_u, & \text{otherwise}
        \end{cases}

    where "densest" orders by density, ties by the smaller index (this is
    Alg. 1 visiting the labelled nodes in that order and labelling only
    still-unassigned nodes). Labelled nodes keep their ground truth.

    Args:
        graph (torch_geometric.data.Data): Graph with ``edge_index``, ``sim``
            and ``density`` (see :func:`density_ascending_parents`).
        y (torch.Tensor): Class indices ``[N]``; only read on labelled nodes.
        labelled_mask (torch.Tensor): ``torch.bool`` mask ``[N]``.
        prior (torch.Tensor, optional): Label Bank entries ``[N]`` kept where
            no label reaches a node; ``-1`` when :obj:`None`.
        sigma (float): Largest parent distance. (default: ``inf``)
        mode (str): ``"LU"`` runs both phases, ``"L"`` phase 1 only.
        num_classes (int, optional): If given, labels must be below it.
        parents (torch.Tensor, optional): Precomputed parents for this graph
            and :obj:`sigma` (skips :func:`density_ascending_parents`).

    Returns:
        :class:`DPLPResult` ``(labels, source, phase, parents)``.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode '{mode}'. Choose one of {list(MODES)}.")
    sigma = _check_sigma(sigma)
    n = _num_nodes(graph)
    _check_labels(y, labelled_mask, prior, n, num_classes)
    if parents is None:
        parents = density_ascending_parents(graph, sigma)
    elif _check_parents(parents) != n:
        raise ValueError(f"parents must have shape [num_nodes={n}] (got "
                         f"{tuple(parents.shape)}).")
    device = y.device
    minus1 = torch.full((n,), -1, dtype=torch.long, device=device)
    base = prior.clone() if prior is not None else minus1.to(y.dtype)

    if not bool(labelled_mask.any()):
        warnings.warn("dplp: no labelled node, the prior is returned unchanged.",
                      stacklevel=2)
        return DPLPResult(base, minus1, minus1.clone(), parents)

    # Rank only the labelled nodes in the order of `density_order`: the stable
    # sort keeps ascending node ids among equal densities.
    lab = labelled_mask.nonzero().view(-1)
    num_lab = lab.numel()
    order = lab[torch.sort(graph.density[lab], descending=True, stable=True).indices]
    key = torch.full((n,), num_lab, dtype=torch.long, device=device)
    key[order] = torch.arange(num_lab, device=device)  # num_lab: "none"
    down, up = _path_min_queries(parents, key, num_lab, down=mode == "LU", up=True)

    unl = ~labelled_mask
    p1 = unl & (up < num_lab)
    src = torch.where(p1, up, num_lab)
    phase = torch.where(p1, PHASE_LP_L, PHASE_PRIOR)
    if down is not None:
        p2 = unl & ~p1 & (down < num_lab)
        src = torch.where(p2, down, src)
        phase = torch.where(p2, PHASE_LP_LU, phase)
    got = src < num_lab
    source = torch.where(got, order[src.clamp_max(num_lab - 1)], -1)
    labels = torch.where(got, y[source.clamp_min(0)].to(base.dtype), base)
    labels = torch.where(labelled_mask, y.to(base.dtype), labels)
    source = torch.where(labelled_mask, torch.arange(n, device=device), source)
    phase = torch.where(labelled_mask, PHASE_LABELLED, phase)
    return DPLPResult(labels, source, phase.long(), parents)
