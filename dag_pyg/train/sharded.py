r"""The sharded refresh (``distributed.graph: sharded``): the graph, the
Label Bank and DPLP's parents computed in contiguous node shards, one per
rank, with ``O(N)`` all-gathers instead of rank 0's ``O(N k)`` broadcast.

Rank :math:`r` owns the nodes of :meth:`~dag_pyg.distributed.DistContext.shard`
and, against the all-gathered Feature Bank, builds only their rows of the
:math:`k`-NN graph (:func:`~dag_pyg.graph.build_density_graph` with
``rows``: the same rows as the whole graph's, bit for bit, with the same
engine and threads per process; :func:`~dag_pyg.graph.knn.query_blocks`),
:math:`1/W` of the search plus at most two of the engine's query blocks.
Then, in order:

1. **Densities** (Eq. 3) are per row: the shard's are all-gathered, one
   float per node.
2. **Parents**: a node's nearest denser neighbour reads only its own row
   and its neighbours' densities
   (:func:`~dag_pyg.propagation.nearest_denser_rows`); all-gathered as one
   int per node (with a ``"qX"`` :math:`\sigma` also each node's parent
   similarity, one float, from which every rank takes the same quantile).
   The shard's rows are then cut to their first :math:`k_{sub}` columns.
3. **The training graph**: what training, evaluation and the Label Bank
   read of the graph is each node's first ``dna.k`` (:math:`k_{sub}`)
   neighbours (the DNA head's sub-graphs, test queries' deeper hops, the
   drift statistic, the premise check), so the :math:`[N, k_{sub}]`
   neighbour table and its similarities are all-gathered: the graph every
   rank then holds is :func:`~dag_pyg.sampler.knn_subgraph` of the whole
   graph, :math:`k_{sub} / k` of its size (1/8 at the defaults), and the
   sampler reads its rows unchanged.
4. **The Label Bank** of the shard's nodes is the head on their sampled
   sub-graphs (:class:`~dag_pyg.sampler.KNNHopSampler`): the same logits as
   the head over the whole graph; its labels are all-gathered (one int per
   node), and so are the admitted targets and their weights where the
   configuration has them.
5. **DPLP** follows the paths of the all-gathered parents on every rank
   (``O(N log N)``, the same on all).

Bytes all-gathered per refresh and rank (int32 ids and labels, float32
values; shards padded to the largest; densities, the table and its
similarities, parents, labels):

.. math::
    N \, (4 + 8 k_{sub} + 4 + 4) \; [+\, 4N \text{ for a } q\sigma]
    \; [+\, 4N \text{ admission}] \; [+\, 4N \text{ weights}]

(76 bytes per node at :math:`k_{sub} = 8`) against ``rank0``'s broadcast of
the whole graph (:math:`20 N k + 4N`: ``edge_index`` int64, ``sim`` and
``density`` float32) and its labels (:math:`16N`, :math:`+4N` weights):
1,300 bytes per node at :math:`k = 64`. In graph tensors a rank holds its
shard's rows (:math:`20 N k / W` bytes) until step 2 and the
:math:`k_{sub}`-graph (:math:`20 N k_{sub} + 4N`) from step 3 on, where
``rank0`` puts the whole graph on every rank.
"""
from __future__ import annotations

import math
import time
from typing import NamedTuple

import torch
from torch import Tensor
from torch_geometric.data import Data

from dag_pyg.config import Config
from dag_pyg.distributed import DistContext
from dag_pyg.graph import build_density_graph
from dag_pyg.nn import DNAHead
from dag_pyg.propagation import (
    PseudoLabels,
    admit_pseudo_labels,
    check_sigma,
    nearest_denser_rows,
    pseudo_labels,
    sigma_of_steps,
    step_distances,
    target_weights,
)
from dag_pyg.sampler import KNNHopSampler
from dag_pyg.train.premise import premise_check
from dag_pyg.train.setup import Run

# Seeds per Label Bank batch: bounds the sampled sub-graphs' memory.
LABEL_BANK_SEEDS = 16384
# BLAS (MKL) computes a product of up to 3 rows by another kernel than a
# long one, whose rounding differs: a batch holds at least this many seeds
# (neighbouring nodes run along and are not read).
MIN_SEEDS = 16


class ShardedLabels(NamedTuple):
    """Output of :func:`sharded_labels`, the same on every rank."""
    graph: Data               # the k_sub-graph (gather_subgraph)
    prior: Tensor             # the Label Bank's labels [N]
    targets: Tensor           # training targets [N] (-1: none)
    weights: Tensor | None    # their weights [N] (None: all 1)
    labels: PseudoLabels      # the pseudo labels before admission
    stats: dict[str, float]   # times and the premise check


def _ids(x: Tensor, n: int) -> Tensor:
    """Node ids or labels to send: int32 where ``n`` fits (half the bytes)."""
    return x.int() if n < 2**31 else x.long()


def shard_rows(dist: DistContext, feats: Tensor, cfg: Config,
               device: torch.device) -> Data:
    r"""This rank's rows of the density-aware graph of a Feature Bank.

    Args:
        dist (DistContext): The ranks; this one's shard of the nodes is
            :meth:`~dag_pyg.distributed.DistContext.shard_range`.
        feats (torch.Tensor): The whole Feature Bank :math:`[N, d]`, the same
            on every rank.
        cfg (Config): The run's configuration (``graph.*``).
        device (torch.device): Where the kNN search runs.

    Returns:
        The rows from :func:`~dag_pyg.graph.build_density_graph` with
        ``rows`` (``edge_index``, ``sim``, ``density`` of the shard's
        centres, ``rows``, ``num_nodes`` :math:`N`), on the CPU.
    """
    g = cfg.graph
    return build_density_graph(feats.to(device), g.k, backend=g.backend,
                               density=g.density,
                               density_threshold=g.density_threshold,
                               ivf_nlist=g.ivf_nlist, ivf_nprobe=g.ivf_nprobe,
                               ivf_recall=g.ivf_recall,
                               rows=dist.shard_range(feats.size(0))).cpu()


def gather_parents(dist: DistContext, part: Data, density: Tensor,
                   sigma: float | str) -> tuple[Tensor, float]:
    r"""Every node's density-ascending parent (step 2 of the module
    docstring), all-gathered from the ranks' rows.

    Args:
        dist (DistContext): The ranks.
        part (torch_geometric.data.Data): This rank's rows
            (:func:`shard_rows`).
        density (torch.Tensor): Every node's density :math:`[N]`.
        sigma (float or str): DPLP's :math:`\sigma`: a distance, or
            ``"qX"`` (a quantile of every node's parent step, see
            :func:`~dag_pyg.propagation.check_sigma`).

    Returns:
        ``(parents [N], sigma)``: as
        :func:`~dag_pyg.propagation.density_ascending_parents` gives them
        on the whole graph (``-1`` for roots), and the distance
        :math:`\sigma` resolved to.
    """
    n, k = int(part.num_nodes), int(part.k)
    start, _ = part.rows
    parent, best = nearest_denser_rows(part.edge_index[0].view(-1, k),
                                       part.sim.view(-1, k), density, start)
    sizes = dist.shard_sizes(n)
    sigma = check_sigma(sigma)
    if isinstance(sigma, str):  # a quantile of every node's step
        steps = step_distances(dist.all_gather_rows(best, sizes))
        sigma = sigma_of_steps(sigma, steps)
        parents = dist.all_gather_rows(_ids(parent, n), sizes).long()
        if sigma != math.inf:
            parents = parents.masked_fill(steps > sigma, -1)
        return parents, sigma
    if sigma != math.inf:
        parent = parent.masked_fill(step_distances(best) > sigma, -1)
    return dist.all_gather_rows(_ids(parent, n), sizes).long(), sigma


def narrow_rows(part: Data, k_sub: int) -> Data:
    r"""A rank's rows cut to their first ``k_sub`` neighbours each, in new
    tensors (so that the :math:`k`-wide ones can be freed).

    Args:
        part (torch_geometric.data.Data): Rows from :func:`shard_rows`.
        k_sub (int): Neighbours kept per node, :math:`1 \leq k_{sub} \leq k`.
    """
    n, k = int(part.num_nodes), int(part.k)
    if not 1 <= k_sub <= k:
        raise ValueError(f"k_sub={k_sub} must be in [1, graph.k={k}].")
    attrs = {key: v for key, v in part.items()
             if key not in ("edge_index", "sim", "num_nodes", "k")}
    return Data(edge_index=part.edge_index.view(2, -1, k)[:, :, :k_sub].reshape(2, -1),
                sim=part.sim.view(-1, k)[:, :k_sub].reshape(-1), num_nodes=n,
                k=k_sub, **attrs)


def gather_subgraph(dist: DistContext, part: Data, density: Tensor,
                    k_sub: int) -> Data:
    r"""The whole graph's :math:`k_{sub}`-graph (step 3 of the module
    docstring): the ranks' first ``k_sub`` neighbours per node and their
    similarities, all-gathered.

    Args:
        dist (DistContext): The ranks.
        part (torch_geometric.data.Data): This rank's rows
            (:func:`shard_rows` or :func:`narrow_rows`, at least ``k_sub``
            wide).
        density (torch.Tensor): Every node's density :math:`[N]`.
        k_sub (int): Neighbours per node (``dna.k``).

    Returns:
        :class:`~torch_geometric.data.Data` equal, tensor for tensor, to
        :func:`~dag_pyg.sampler.knn_subgraph` of the whole graph:
        ``edge_index [2, N * k_sub]``, ``sim``, ``density``, ``num_nodes``,
        ``k = k_sub`` and the whole graph's other attributes.
    """
    n, k = int(part.num_nodes), int(part.k)
    if not 1 <= k_sub <= k:
        raise ValueError(f"k_sub={k_sub} must be in [1, graph.k={k}].")
    sizes = dist.shard_sizes(n)
    nbr = part.edge_index[0].view(-1, k)[:, :k_sub]
    table = dist.all_gather_rows(_ids(nbr, n).contiguous(), sizes).long()
    sim = dist.all_gather_rows(part.sim.view(-1, k)[:, :k_sub].contiguous(), sizes)
    centre = torch.arange(n).repeat_interleave(k_sub)
    skip = {"edge_index", "sim", "density", "num_nodes", "k", "rows"}
    attrs = {key: v for key, v in part.items() if key not in skip}
    return Data(edge_index=torch.stack([table.view(-1), centre]),
                sim=sim.view(-1), density=density, num_nodes=n, k=k_sub, **attrs)


def sharded_graph(dist: DistContext, feats: Tensor, cfg: Config,
                  device: torch.device) -> Data:
    r"""The graph training reads of a Feature Bank, built in shards and the
    same on every rank: the :math:`k_{sub}`-graph (``dna.k``) of
    :func:`gather_subgraph`, without the labels (what
    :func:`~dag_pyg.train.refresh.shared_graph` returns with
    ``distributed.graph: sharded``).

    Args:
        dist (DistContext): The ranks.
        feats (torch.Tensor): The whole Feature Bank :math:`[N, d]`.
        cfg (Config): The run's configuration (``graph.*``, ``dna.k``).
        device (torch.device): Where the kNN search runs.
    """
    part = shard_rows(dist, feats, cfg, device)
    density = dist.all_gather_rows(part.density, dist.shard_sizes(feats.size(0)))
    return gather_subgraph(dist, part, density, cfg.dna.k)


@torch.no_grad()
def shard_label_bank_logits(head: DNAHead, feats: Tensor, graph: Data,
                            rows: tuple[int, int], device: torch.device,
                            neighbours: bool = True,
                            batch: int = LABEL_BANK_SEEDS) -> Tensor:
    r"""The Label Bank's logits of a range of nodes (step 4 of the module
    docstring): the head on their sampled sub-graphs, equal bit for bit to
    those rows of :func:`~dag_pyg.train.refresh.label_bank_logits` over the
    whole graph (every layer and kernel works row by row; batches hold at
    least :data:`MIN_SEEDS` nodes).

    Args:
        head (DNAHead): The head (set to eval mode).
        feats (torch.Tensor): The whole Feature Bank :math:`[N, d]`.
        graph (torch_geometric.data.Data): The :math:`k_{sub}`-graph
            (:func:`gather_subgraph`, or
            :func:`~dag_pyg.sampler.knn_subgraph` of a whole graph).
        rows ((int, int)): The nodes ``rows[0]`` to ``rows[1] - 1``.
        device (torch.device): Where the head runs.
        neighbours (bool): The head's neighbour term (``False``: the nodes
            alone, :meth:`~dag_pyg.nn.DNAHead.forward_self`).
            (default: :obj:`True`)
        batch (int): Seeds per sampled batch. (default:
            :data:`LABEL_BANK_SEEDS`)

    Returns:
        Logits :math:`[M, C]` on the CPU.
    """
    start, end = rows
    n = feats.size(0)
    head.eval()
    sampler = (KNNHopSampler(graph, int(graph.k), head.hops)
               if neighbours and head.hops > 0 else None)
    # Filled in place: a list of blocks and their concatenation would hold
    # the [M, C] logits twice.
    out = torch.empty(0, head.num_classes)
    for lo in range(start, end, batch):
        hi = min(lo + batch, end)
        # A window of >= MIN_SEEDS nodes around [lo, hi).
        width = max(hi - lo, min(MIN_SEEDS, n))
        a = max(0, min(lo, n - width))
        b = a + width
        if sampler is None:
            x = feats[a:b].to(device)
            logits = head(x) if head.hops == 0 else head.forward_self(x)
        else:
            s = sampler.sample(torch.arange(a, b))
            edge_index = torch.stack([s.row, s.col]).to(device)
            logits = head(feats[s.node].to(device), edge_index,
                          graph.density[s.node].to(device), batch_size=b - a,
                          num_sampled_nodes_per_hop=s.num_sampled_nodes,
                          num_sampled_edges_per_hop=s.num_sampled_edges)
        if lo == start:
            out = torch.empty(end - start, logits.size(1), dtype=logits.dtype)
        out[lo - start: hi - start] = logits[lo - a: hi - a]
    return out


def sharded_labels(run: Run, feats: Tensor, neighbours: bool | None = None
                   ) -> ShardedLabels:
    r"""The graph and labels of a Feature Bank in shards (the module
    docstring): what :func:`~dag_pyg.train.refresh.sharded_graph_and_labels`
    makes its :class:`~dag_pyg.train.refresh.Refreshed` of, for
    :func:`~dag_pyg.train.refresh.refresh` with ``distributed.graph:
    sharded``.

    Args:
        run (Run): The run (every rank calls this together).
        feats (torch.Tensor): The whole Feature Bank :math:`[N, d]`, the same
            on every rank.
        neighbours (bool, optional): The head's neighbour term (``False``:
            the Label Bank without it). (default: :obj:`None`: on)

    Returns:
        :class:`ShardedLabels`, the same on every rank: the Label Bank,
        targets, weights and pseudo labels of ``rank0``'s refresh, the
        :math:`k_{sub}`-graph in place of the whole graph, and the times
        and premise check. ``method: steered`` and ``auto`` decide on rank 0
        and are refused (as the config check refuses them).
    """
    cfg, data, dist = run.cfg, run.data, run.dist
    if cfg.method in ("steered", "auto"):
        raise ValueError(f"method: {cfg.method} needs distributed.graph: rank0.")
    n = feats.size(0)
    sizes = dist.shard_sizes(n)
    rec: dict[str, float] = {}
    t = time.perf_counter()
    part = shard_rows(dist, feats, cfg, run.device)
    start, end = part.rows
    density = dist.all_gather_rows(part.density, sizes)
    rec["time_graph"] = time.perf_counter() - t

    t = time.perf_counter()
    parents, sigma = gather_parents(dist, part, density, cfg.dplp.sigma)
    rec["time_dplp"] = time.perf_counter() - t

    t = time.perf_counter()
    # From here on a rank holds the k_sub-graph only.
    part = narrow_rows(part, cfg.dna.k)
    graph = gather_subgraph(dist, part, density, cfg.dna.k)
    del part
    rec["time_graph"] += time.perf_counter() - t

    t = time.perf_counter()
    mask, truth = data.labelled_mask, data.true_y
    own = slice(start, end)
    logits = shard_label_bank_logits(run.model.eval_head, feats, graph, (start, end),
                                     run.device, neighbours is not False)
    prior_own = logits.argmax(1)
    prior_own[mask[own]] = truth[own][mask[own]]
    prior = dist.all_gather_rows(_ids(prior_own, n), sizes).long()
    rec["time_label_bank"] = time.perf_counter() - t

    t = time.perf_counter()
    pl = cfg.pseudo_label
    out = pseudo_labels(graph, truth, mask, prior, source=pl.source, sigma=sigma,
                        mode=cfg.dplp.mode, num_classes=data.num_classes,
                        parents=parents)
    rec["time_dplp"] += time.perf_counter() - t

    if data.check_mask is not None:
        t = time.perf_counter()
        lp = out if pl.source == "dplp" else pseudo_labels(
            graph, truth, mask, prior, source="dplp", sigma=sigma,
            mode=cfg.dplp.mode, num_classes=data.num_classes, parents=parents)
        rec.update(premise_check(run.model.eval_head, feats, graph, prior, lp.targets,
                                 lp.covered, truth, mask, data.check_mask,
                                 run.device))
        rec["time_check"] = time.perf_counter() - t

    targets = out.targets
    if pl.threshold > 0 or pl.admit != "all":
        mine = admit_pseudo_labels(targets[own], logits, mask[own], pl.threshold,
                                   pl.admit)
        targets = dist.all_gather_rows(_ids(mine, n), sizes).long()
    weights = target_weights(logits, mask[own], pl.source, pl.weighting, pl.weight)
    if weights is not None:
        weights = dist.all_gather_rows(weights, sizes)
    return ShardedLabels(graph, prior, targets, weights, out, rec)
