r"""The refresh (Alg. 2, lines 2-4): from the current model, the Feature
Bank, the density-aware graph over it, the Label Bank (the head's
predictions on that graph), the pseudo labels and their weights, with the
statistics of each step. :func:`refresh` returns everything it built and
measured; nothing is kept elsewhere."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import Data

from dag_pyg.config import Config, replays
from dag_pyg.distributed import DistContext, broadcast_data
from dag_pyg.graph import bank_drift, build_density_graph
from dag_pyg.graph.layout import copy_record
from dag_pyg.nn import DNAHead
from dag_pyg.propagation import (
    PseudoLabels,
    admit_pseudo_labels,
    has_target_weights,
    path_lengths,
    pseudo_labels,
    target_weights,
)
from dag_pyg.sampler import knn_subgraph
from dag_pyg.train.features import extract_bank
from dag_pyg.train.premise import admission_threshold, auto_decisions, premise_check
from dag_pyg.train.setup import Run
from dag_pyg.train.sharded import sharded_graph, sharded_labels


@dataclass
class Banks:
    """What training reads: refreshed at the end of every epoch (and within
    it with ``graph.refresh_per_epoch`` > 1)."""
    features: Tensor          # Feature Bank [N, d]
    prior: Tensor             # Label Bank: the model's predictions [N]
    targets: Tensor           # training target per node [N] (-1: none)
    weights: Tensor | None = None  # weight of each target [N] (None: all 1)
    # Whether the head reads its neighbours (method steered may turn them off).
    neighbours: bool = True

    def state_dict(self) -> dict[str, Tensor | bool | None]:
        """The checkpoint's ``banks`` entry (the tensors themselves)."""
        return {"features": self.features, "prior": self.prior,
                "targets": self.targets, "weights": self.weights,
                "neighbours": self.neighbours}

    @classmethod
    def from_state_dict(cls, state: dict) -> Banks:
        """The banks of a checkpoint's ``banks`` entry (older checkpoints
        hold no weights and no neighbour flag)."""
        return cls(features=state["features"], prior=state["prior"],
                   targets=state["targets"], weights=state.get("weights"),
                   neighbours=state.get("neighbours", True))

    @classmethod
    def to_receive(cls, features: Tensor, weighted: bool,
                   neighbours: bool) -> Banks:
        """Banks of the right shapes, to be overwritten by rank 0's
        (:meth:`broadcast_`), on a Feature Bank every rank holds."""
        n = features.size(0)
        return cls(features=features, prior=torch.empty(n, dtype=torch.long),
                   targets=torch.empty(n, dtype=torch.long),
                   weights=torch.empty(n) if weighted else None,
                   neighbours=neighbours)

    def broadcast_(self, dist: DistContext) -> Banks:
        """Rank 0's Label Bank, targets and weights on every rank, in place;
        returns ``self``. The Feature Bank is not sent: every rank holds the
        same one already (all-gathered, or written alike by every rank)."""
        dist.broadcast_(self.prior)
        dist.broadcast_(self.targets)
        if self.weights is not None:
            dist.broadcast_(self.weights)
        return self


@dataclass
class Refreshed:
    """Output of :func:`refresh`."""
    banks: Banks
    graph: Data | None        # None where training reads no bank
    stats: dict[str, float]   # times, sizes, pseudo-label statistics
    path_lengths: Tensor | None = None  # DPLP path length per node (rank 0)


def needs_banks(cfg: Config, uses_graph_head: bool) -> bool:
    """Whether training reads the banks (the DNA head or pseudo labels); a
    plain baseline skips the refresh unless ``log.bank_stats`` asks."""
    return (uses_graph_head or cfg.pseudo_label.source != "none"
            or cfg.log.bank_stats)


def frozen(cfg: Config, lr: float) -> bool:
    """Whether the banks stay as they are for an epoch trained at rate
    ``lr`` (``graph.freeze_lr``: below that fraction of ``optim.lr``)."""
    return lr < cfg.graph.freeze_lr * cfg.optim.lr


def writes_bank(cfg: Config, pretrain: bool) -> bool:
    """Whether the training steps write the Feature Bank (``graph.bank:
    online``, main epochs), so that the next refresh builds on it instead of
    extracting one."""
    return cfg.graph.bank == "online" and not pretrain


def build_graph(feats: Tensor, cfg: Config, device: torch.device) -> Data:
    """The density-aware graph of a Feature Bank, built on ``device`` (the
    kNN search is the costly part) and kept on the CPU, where the sampler
    and DPLP read it."""
    g = cfg.graph
    graph = build_density_graph(feats.to(device), g.k, backend=g.backend,
                                density=g.density,
                                density_threshold=g.density_threshold,
                                ivf_nlist=g.ivf_nlist, ivf_nprobe=g.ivf_nprobe,
                                ivf_recall=g.ivf_recall)
    out = graph.cpu()
    copy_record(graph, out)  # DPLP then skips its layout checks
    return out


@torch.no_grad()
def label_bank_logits(head: DNAHead, feats: Tensor, graph: Data, k_sub: int,
                      device: torch.device) -> Tensor:
    """The head over the whole training graph (every node's ``k_sub``
    nearest neighbours): the Label Bank's logits, on the CPU."""
    head.eval()
    x = feats.to(device)
    if head.hops == 0:
        return head(x).cpu()
    sub = knn_subgraph(graph, k_sub)
    return head(x, sub.edge_index.to(device), graph.density.to(device)).cpu()


def label_stats(targets: Tensor, prior: Tensor, covered: Tensor, truth: Tensor,
                unl: Tensor, lengths: Tensor, sigma: float) -> dict[str, float]:
    """Path lengths, and the accuracy of the pseudo labels and of the
    model's predictions on the unlabelled nodes (all, and those DPLP or the
    diffusion covered)."""
    rec = {"dplp_sigma": sigma,
           "path_len_mean": float(lengths.mean()),
           "path_len_q10": float(torch.quantile(lengths, 0.1)),
           "path_len_q50": float(torch.quantile(lengths, 0.5)),
           "path_len_q90": float(torch.quantile(lengths, 0.9)),
           "path_len_max": float(lengths.max())}
    n_unl = max(int(unl.sum()), 1)
    has = unl & (targets >= 0)
    rec["pl_acc_all"] = float((targets[has] == truth[has]).float().mean()) \
        if bool(has.any()) else math.nan
    rec["model_acc"] = float((prior[unl] == truth[unl]).float().mean()) \
        if bool(unl.any()) else math.nan
    rec["pl_coverage"] = float(covered.sum()) / n_unl
    if bool(covered.any()):
        rec["pl_acc"] = float((targets[covered] == truth[covered]).float().mean())
        rec["model_acc_on_covered"] = float(
            (prior[covered] == truth[covered]).float().mean())
    else:
        rec["pl_acc"] = rec["model_acc_on_covered"] = math.nan
    return rec


@torch.no_grad()
def self_label_bank_logits(head: DNAHead, feats: Tensor,
                           device: torch.device) -> Tensor:
    """The Label Bank's logits with the head's neighbour term off."""
    head.eval()
    return head.forward_self(feats.to(device)).cpu()


def _label_bank(run: Run, feats: Tensor, graph: Data, neighbours: bool
                ) -> tuple[Tensor, Tensor]:
    """The Label Bank's logits and labels (labelled nodes keep theirs)."""
    head, data = run.model.eval_head, run.data
    logits = (label_bank_logits(head, feats, graph, run.cfg.dna.k, run.device)
              if neighbours or head.hops == 0
              else self_label_bank_logits(head, feats, run.device))
    prior = logits.argmax(1)
    mask = data.labelled_mask
    prior[mask] = data.true_y[mask]
    return logits, prior


def _checked(run: Run, feats: Tensor, graph: Data, prior: Tensor,
             out: PseudoLabels | None) -> tuple[PseudoLabels, dict[str, float]]:
    """DPLP's labels over the Label Bank ``prior`` (``out`` where the run
    trains on them; :obj:`None`: computed here) and its premise check."""
    cfg, data = run.cfg, run.data
    lp = out
    if lp is None or cfg.pseudo_label.source != "dplp":
        lp = pseudo_labels(graph, data.true_y, data.labelled_mask, prior,
                           source="dplp", sigma=cfg.dplp.sigma,
                           mode=cfg.dplp.mode, num_classes=data.num_classes)
    return lp, premise_check(run.model.eval_head, feats, knn_subgraph(graph, cfg.dna.k),
                             prior, lp.targets, lp.covered, data.true_y,
                             data.labelled_mask, data.check_mask, run.device)


def graph_and_labels(run: Run, feats: Tensor, neighbours: bool | None = None,
                     epoch: int = -1) -> Refreshed:
    """Graph, Label Bank, pseudo labels, their weights and statistics of a
    Feature Bank. With ``method: steered`` the premise check steers them
    (:func:`steer`); ``neighbours`` is its earlier choice for the head's
    neighbour term (:obj:`None`: not made yet); ``epoch``: the last epoch
    trained to its end (what a replay reads)."""
    cfg, data = run.cfg, run.data
    if neighbours is None and replays(cfg):
        neighbours = cfg.steer.replay_neighbours
    rec: dict[str, float] = {}
    t = time.perf_counter()
    graph = build_graph(feats, cfg, run.device)
    rec["time_graph"] = time.perf_counter() - t

    t = time.perf_counter()
    mask, truth = data.labelled_mask, data.true_y
    logits, prior = _label_bank(run, feats, graph, neighbours is not False)
    rec["time_label_bank"] = time.perf_counter() - t

    t = time.perf_counter()
    pl = cfg.pseudo_label
    out = pseudo_labels(graph, truth, mask, prior, source=pl.source,
                        sigma=cfg.dplp.sigma, mode=cfg.dplp.mode,
                        num_classes=data.num_classes, alpha=pl.alpha)
    rec["time_dplp"] = time.perf_counter() - t

    lp = None
    if data.check_mask is not None:
        t = time.perf_counter()
        lp, check = _checked(run, feats, graph, prior, out)
        rec.update(check)
        rec["time_check"] = time.perf_counter() - t

    unl = ~mask
    if cfg.method == "steered":
        out, targets, logits, prior, neighbours = steer(
            run, feats, graph, logits, prior, out if lp is None else lp, rec,
            neighbours, epoch)
    else:
        targets = out.targets
        if pl.threshold > 0 or pl.admit != "all":
            targets = admit_pseudo_labels(targets, logits, mask, pl.threshold,
                                          pl.admit)
    lengths = path_lengths(out.parents).float()
    # Covered: propagated by DPLP or the diffusion, and admitted.
    rec.update(label_stats(targets, prior, out.covered & (targets >= 0), truth,
                           unl, lengths, out.sigma))
    rec["pl_admitted"] = float((targets[unl] >= 0).float().mean()) \
        if bool(unl.any()) else math.nan
    weights = target_weights(logits, mask, pl.source, pl.weighting, pl.weight)
    if weights is not None:
        has = unl & (targets >= 0)
        rec["pl_weight_mean"] = float(weights[has].mean()) if has.any() else 0.0
    banks = Banks(features=feats, prior=prior, targets=targets, weights=weights,
                  neighbours=neighbours if neighbours is not None else True)
    return Refreshed(banks, graph, rec, lengths)


def steer(run: Run, feats: Tensor, graph: Data, logits: Tensor, prior: Tensor,
          lp: PseudoLabels, rec: dict[str, float], neighbours: bool | None,
          epoch: int = -1) -> tuple[PseudoLabels, Tensor, Tensor, Tensor, bool]:
    """``method: steered``'s refresh (:func:`~dag_pyg.train.premise.auto_decisions`,
    :func:`~dag_pyg.train.premise.admission_threshold`): the pseudo labels,
    the targets, the Label Bank's logits and labels, and the neighbour
    choice. ``lp``: DPLP's labels over ``prior``. ``rec`` holds the check
    of the Label Bank ``prior``; it gains the decisions (``auto_*``), and
    where the first refresh drops the neighbour term, the check of the
    Label Bank without it (the first check's neighbour gain is kept as
    ``auto_neighbour_gain``). A replay (``steer.replay_*``, no check) takes
    the decisions of the refresh after ``epoch`` from the config instead."""
    cfg, data = run.cfg, run.data
    mask, truth, check = data.labelled_mask, data.true_y, data.check_mask
    conf = torch.softmax(logits.double(), dim=1).amax(1)
    replay = replays(cfg)
    if replay:
        use_dplp, tau = replayed(cfg, epoch)
    else:
        if neighbours is None:
            neighbours = auto_decisions(rec)["neighbours"]
            for key in ("", "_lo", "_hi"):
                rec[f"auto_neighbour_gain{key}"] = rec.get(
                    f"check_neighbour_gain{key}", math.nan)
            if not neighbours and run.model.head.hops > 0:
                logits, prior = _label_bank(run, feats, graph, False)
                conf = torch.softmax(logits.double(), dim=1).amax(1)
                lp, checked = _checked(run, feats, graph, prior, None)
                rec.update(checked)
        use_dplp = auto_decisions(rec)["dplp"]
    out = lp if use_dplp else pseudo_labels(graph, truth, mask, prior,
                                            source="model", sigma=cfg.dplp.sigma)
    if not replay:
        tau = admission_threshold(conf[check], out.targets[check] == truth[check])
    drop = ~mask if tau is None else ~mask & (conf < tau)
    if check is not None:
        # Check nodes never train (see dag_pyg.train.premise): the check then
        # reads a model that has not fitted them, as test images meet it.
        drop |= check
    targets = torch.where(drop, torch.full_like(out.targets, -1), out.targets)
    rec.update(auto_neighbours=float(neighbours), auto_dplp=float(use_dplp),
               auto_threshold=math.nan if tau is None else tau)
    return out, targets, logits, prior, neighbours


def replayed(cfg: Config, epoch: int) -> tuple[bool, float | None]:
    """A replay's decisions for the refresh after ``epoch``: DPLP's labels or
    the model's, and the admission threshold (an absolute Label Bank
    confidence, applied to the replaying run's own Label Bank)."""
    s = cfg.steer
    i = epoch - cfg.optim.pretrain_epochs + 1
    if not 0 <= i < len(s.replay_dplp):
        raise ValueError(f"A replay decides the refreshes after epochs "
                         f"{cfg.optim.pretrain_epochs - 1}.."
                         f"{cfg.optim.pretrain_epochs + len(s.replay_dplp) - 2} "
                         f"(got epoch {epoch}).")
    return s.replay_dplp[i], s.replay_threshold[i]


def broadcast_refresh(run: Run, out: Refreshed | None, feats: Tensor
                      ) -> Refreshed:
    """Rank 0's graph, Label Bank, targets and statistics on every rank
    (``out`` is :obj:`None` elsewhere)."""
    dist, pl = run.dist, run.cfg.pseudo_label
    t = time.perf_counter()
    graph = broadcast_data(dist, None if out is None else out.graph)
    stats = dist.broadcast_object(None if out is None else out.stats)
    if out is None:
        banks = Banks.to_receive(
            feats, has_target_weights(pl.source, pl.weighting, pl.weight),
            neighbours=bool(stats.get("auto_neighbours", 1.0)))
        lengths = None
    else:
        banks, lengths = out.banks, out.path_lengths
    banks.broadcast_(dist)
    stats["time_broadcast"] = time.perf_counter() - t
    return Refreshed(banks, graph, stats, lengths)


def sharded_graph_and_labels(run: Run, feats: Tensor,
                             neighbours: bool | None = None) -> Refreshed:
    """:func:`graph_and_labels` in node shards, one per rank
    (``distributed.graph: sharded``, :mod:`~dag_pyg.train.sharded`): the same
    banks, statistics (times aside) and path lengths on every rank, and the
    ``dna.k``-graph (:func:`~dag_pyg.sampler.knn_subgraph` of the whole
    graph), all training reads of it, in place of the whole graph."""
    out = sharded_labels(run, feats, neighbours)
    mask, truth = run.data.labelled_mask, run.data.true_y
    targets, weights, lp, rec = out.targets, out.weights, out.labels, out.stats
    unl = ~mask
    lengths = path_lengths(lp.parents).float()
    rec.update(label_stats(targets, out.prior, lp.covered & (targets >= 0), truth,
                           unl, lengths, lp.sigma))
    rec["pl_admitted"] = float((targets[unl] >= 0).float().mean()) \
        if bool(unl.any()) else math.nan
    if weights is not None:
        has = unl & (targets >= 0)
        rec["pl_weight_mean"] = float(weights[has].mean()) if has.any() else 0.0
    banks = Banks(features=feats, prior=out.prior, targets=targets, weights=weights,
                  neighbours=neighbours if neighbours is not None else True)
    return Refreshed(banks, out.graph, rec, lengths)


def shared_graph(run: Run, feats: Tensor) -> Data:
    """The graph of a Feature Bank, identical on every rank (with
    ``distributed.graph: sharded`` the part of it training reads, see
    :mod:`~dag_pyg.train.sharded`)."""
    cfg, dist = run.cfg, run.dist
    if dist.enabled and cfg.distributed.graph == "rank0":
        return broadcast_data(dist, dist.on_main(
            lambda: build_graph(feats, cfg, run.device), share=False))
    if dist.enabled and cfg.distributed.graph == "sharded":
        return sharded_graph(dist, feats, cfg, run.device)
    return build_graph(feats, cfg, run.device)


def fresh_bank(run: Run, neighbours: bool) -> tuple[Tensor | None, Data | None]:
    """A Feature Bank the current model extracts and its graph: what the
    queries of a model newer than its kept banks (``graph.freeze_lr``)
    retrieve from. :obj:`None` for both where the head reads no neighbours
    (no graph head, or ``neighbours`` off): queries are then classified on
    their own and the extraction would be wasted."""
    if not (run.model.uses_graph_head and neighbours):
        return None, None
    feats, _ = extract_bank(run)
    return feats, shared_graph(run, feats)


def refresh(run: Run, features: Tensor | None = None,
            neighbours: bool | None = None, epoch: int = -1) -> Refreshed:
    """Feature Bank, graph, Label Bank and pseudo labels from the run's
    current model; with ``features`` (an online bank, identical on every
    rank; it becomes the new bank, not copied) the bank is not re-extracted.
    A run that reads no bank (:func:`needs_banks`) gets the labels alone, no
    graph. ``neighbours``: ``method: steered``'s earlier choice; ``epoch``:
    the last epoch trained to its end (see :func:`graph_and_labels`)."""
    cfg, data, dist = run.cfg, run.data, run.dist
    if not needs_banks(cfg, run.model.uses_graph_head):
        targets = torch.where(data.labelled_mask, data.true_y, -1)
        return Refreshed(Banks(features=torch.empty(0), prior=targets.clone(),
                               targets=targets), None, {})
    rec: dict[str, float] = {}
    t = time.perf_counter()
    if features is None:
        feats, gather_s = extract_bank(run)
        if dist.enabled:
            rec["time_bank_gather"] = gather_s
    else:
        feats = features
    rec["time_bank"] = time.perf_counter() - t
    rec["bank_mb"] = feats.numel() * feats.element_size() / 2**20

    if dist.enabled and cfg.distributed.graph == "rank0":
        out = dist.on_main(lambda: graph_and_labels(run, feats, neighbours, epoch),
                           share=False)
        out = broadcast_refresh(run, out, feats)
    elif dist.enabled and cfg.distributed.graph == "sharded":
        out = sharded_graph_and_labels(run, feats, neighbours)
    else:
        out = graph_and_labels(run, feats, neighbours, epoch)
    rec.update(out.stats)
    out.stats = rec
    return out


def drift_stats(run: Run, old: Tensor | None, new: Banks, graph: Data | None
                ) -> dict[str, float]:
    """Staleness: how far the Feature Bank moved since the bank ``old`` was
    read (``{}`` where there is no previous bank or no graph)."""
    if graph is None or old is None or not old.numel():
        return {}
    return bank_drift(old.to(run.device), new.features, graph, run.cfg.dna.k)
