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

from dag_pyg.config import Config
from dag_pyg.distributed import DistContext, broadcast_data
from dag_pyg.graph import bank_drift, build_density_graph
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
from dag_pyg.train.logger import RunLogger
from dag_pyg.train.premise import admission_threshold, auto_decisions, premise_check
from dag_pyg.train.setup import Model, TrainData


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
    return build_density_graph(feats.to(device), g.k, backend=g.backend,
                               density=g.density,
                               density_threshold=g.density_threshold,
                               ivf_nlist=g.ivf_nlist,
                               ivf_nprobe=g.ivf_nprobe,
                               ivf_recall=g.ivf_recall).cpu()


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
    model's predictions on the unlabelled nodes (all, and DPLP-covered)."""
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


def _label_bank(head: DNAHead, feats: Tensor, graph: Data, data: TrainData,
                k_sub: int, device: torch.device, neighbours: bool
                ) -> tuple[Tensor, Tensor]:
    """The Label Bank's logits and labels (labelled nodes keep theirs)."""
    logits = (label_bank_logits(head, feats, graph, k_sub, device)
              if neighbours or head.hops == 0
              else self_label_bank_logits(head, feats, device))
    prior = logits.argmax(1)
    mask = data.labelled_mask
    prior[mask] = data.true_y[mask]
    return logits, prior


def _checked(cfg: Config, head: DNAHead, feats: Tensor, graph: Data,
             data: TrainData, prior: Tensor, out: PseudoLabels | None,
             device: torch.device) -> tuple[PseudoLabels, dict[str, float]]:
    """DPLP's labels over the Label Bank ``prior`` (``out`` where the run
    trains on them; :obj:`None`: computed here) and its premise check."""
    lp = out
    if lp is None or cfg.pseudo_label.source != "dplp":
        lp = pseudo_labels(graph, data.true_y, data.labelled_mask, prior,
                           source="dplp", sigma=cfg.dplp.sigma,
                           mode=cfg.dplp.mode, num_classes=data.num_classes)
    return lp, premise_check(head, feats, knn_subgraph(graph, cfg.dna.k), prior,
                             lp.targets, lp.covered, data.true_y,
                             data.labelled_mask, data.check_mask, device)


def graph_and_labels(cfg: Config, head: DNAHead, feats: Tensor, data: TrainData,
                     device: torch.device, neighbours: bool | None = None
                     ) -> Refreshed:
    """Graph, Label Bank, pseudo labels, their weights and statistics of a
    Feature Bank. With ``method: steered`` the premise check steers them
    (:func:`steer`); ``neighbours`` is its earlier choice for the head's
    neighbour term (:obj:`None`: not made yet)."""
    rec: dict[str, float] = {}
    t = time.perf_counter()
    graph = build_graph(feats, cfg, device)
    rec["time_graph"] = time.perf_counter() - t

    t = time.perf_counter()
    mask, truth = data.labelled_mask, data.true_y
    logits, prior = _label_bank(head, feats, graph, data, cfg.dna.k, device,
                                neighbours is not False)
    rec["time_label_bank"] = time.perf_counter() - t

    t = time.perf_counter()
    pl = cfg.pseudo_label
    out = pseudo_labels(graph, truth, mask, prior, source=pl.source,
                        sigma=cfg.dplp.sigma, mode=cfg.dplp.mode,
                        num_classes=data.num_classes)
    rec["time_dplp"] = time.perf_counter() - t

    lp = None
    if data.check_mask is not None:
        t = time.perf_counter()
        lp, check = _checked(cfg, head, feats, graph, data, prior, out, device)
        rec.update(check)
        rec["time_check"] = time.perf_counter() - t

    unl = ~mask
    if cfg.method == "steered":
        out, targets, logits, prior, neighbours = steer(
            cfg, head, feats, graph, data, device, logits, prior, lp, rec,
            neighbours)
    else:
        targets = out.targets
        if pl.threshold > 0 or pl.admit != "all":
            targets = admit_pseudo_labels(targets, logits, mask, pl.threshold,
                                          pl.admit)
    lengths = path_lengths(out.parents).float()
    # Covered: propagated by DPLP and admitted.
    rec.update(label_stats(targets, prior, out.covered & (targets >= 0), truth,
                           unl, lengths, out.sigma))
    rec["pl_admitted"] = float((targets[unl] >= 0).float().mean()) \
        if bool(unl.any()) else math.nan
    weights = target_weights(logits, mask, pl.source, pl.weighting, pl.weight)
    if weights is not None:
        has = unl & (targets >= 0)
        rec["pl_weight_mean"] = float(weights[has].mean()) if has.any() else 0.0
    return Refreshed(Banks(feats, prior, targets, weights,
                           neighbours if neighbours is not None else True),
                     graph, rec, lengths)


def steer(cfg: Config, head: DNAHead, feats: Tensor, graph: Data,
          data: TrainData, device: torch.device, logits: Tensor, prior: Tensor,
          lp: PseudoLabels, rec: dict[str, float], neighbours: bool | None
          ) -> tuple[PseudoLabels, Tensor, Tensor, Tensor, bool]:
    """``method: steered``'s refresh (:func:`~dag_pyg.train.premise.auto_decisions`,
    :func:`~dag_pyg.train.premise.admission_threshold`): the pseudo labels,
    the targets, the Label Bank's logits and labels, and the neighbour
    choice. ``rec`` holds the check of the Label Bank ``prior``; it gains
    the decisions (``auto_*``), and where the first refresh drops the
    neighbour term, the check of the Label Bank without it (the first
    check's neighbour gain is kept as ``auto_neighbour_gain``)."""
    mask, truth = data.labelled_mask, data.true_y
    if neighbours is None:
        neighbours = auto_decisions(rec)["neighbours"]
        for key in ("", "_lo", "_hi"):
            rec[f"auto_neighbour_gain{key}"] = rec.get(f"check_neighbour_gain{key}",
                                                       math.nan)
        if not neighbours and head.hops > 0:
            logits, prior = _label_bank(head, feats, graph, data, cfg.dna.k,
                                        device, False)
            lp, check = _checked(cfg, head, feats, graph, data, prior, None,
                                 device)
            rec.update(check)
    use_dplp = auto_decisions(rec)["dplp"]
    out = lp if use_dplp else pseudo_labels(graph, truth, mask, prior,
                                            source="model", sigma=cfg.dplp.sigma)
    check = data.check_mask
    conf = torch.softmax(logits.double(), dim=1).amax(1)
    tau = admission_threshold(conf[check], out.targets[check] == truth[check])
    # Check nodes never train (see dag_pyg.train.premise): the check then
    # reads a model that has not fitted them, as test images meet it.
    drop = (~mask if tau is None else ~mask & (conf < tau)) | check
    targets = torch.where(drop, torch.full_like(out.targets, -1), out.targets)
    rec.update(auto_neighbours=float(neighbours), auto_dplp=float(use_dplp),
               auto_threshold=math.nan if tau is None else tau)
    return out, targets, logits, prior, neighbours


def broadcast_refresh(dist: DistContext, out: Refreshed | None, feats: Tensor,
                      weighted: bool) -> Refreshed:
    """Rank 0's graph, Label Bank, targets and statistics on every rank
    (``out`` is :obj:`None` elsewhere)."""
    t = time.perf_counter()
    graph = broadcast_data(dist, None if out is None else out.graph)
    stats = dist.broadcast_object(None if out is None else out.stats)
    if out is None:
        n = feats.size(0)
        banks = Banks(feats, torch.empty(n, dtype=torch.long),
                      torch.empty(n, dtype=torch.long),
                      torch.empty(n) if weighted else None,
                      bool(stats.get("auto_neighbours", 1.0)))
        lengths = None
    else:
        banks, lengths = out.banks, out.path_lengths
    dist.broadcast_(banks.prior)
    dist.broadcast_(banks.targets)
    if banks.weights is not None:
        dist.broadcast_(banks.weights)
    stats["time_broadcast"] = time.perf_counter() - t
    return Refreshed(banks, graph, stats, lengths)


def shared_graph(feats: Tensor, cfg: Config, device: torch.device,
                 dist: DistContext) -> Data:
    """The graph of a Feature Bank, identical on every rank."""
    if dist.enabled and cfg.distributed.graph == "rank0":
        return broadcast_data(dist, dist.on_main(
            lambda: build_graph(feats, cfg, device), share=False))
    return build_graph(feats, cfg, device)


def refresh(cfg: Config, model: Model, data: TrainData, device: torch.device,
            dist: DistContext, log: RunLogger,
            features: Tensor | None = None,
            neighbours: bool | None = None) -> Refreshed:
    """Feature Bank, graph, Label Bank and pseudo labels from the current
    model; with ``features`` (an online bank, identical on every rank; it
    becomes the new bank, not copied) the bank is not re-extracted. A run
    that reads no bank (:func:`needs_banks`) gets the labels alone, no
    graph. ``neighbours``: ``method: steered``'s earlier choice (see
    :func:`graph_and_labels`)."""
    if not needs_banks(cfg, model.uses_graph_head):
        targets = torch.where(data.labelled_mask, data.true_y, -1)
        return Refreshed(Banks(torch.empty(0), targets.clone(), targets), None, {})
    rec: dict[str, float] = {}
    t = time.perf_counter()
    if features is None:
        feats, gather_s = extract_bank(model.backbone, data.eval_tf,
                                       data.train_set, data.nodes, device,
                                       cfg.eval.batch_size, dist, log,
                                       "feature bank",
                                       cfg.graph.bank_amp or cfg.optim.amp,
                                       cfg.model.channels_last)
        if dist.enabled:
            rec["time_bank_gather"] = gather_s
    else:
        feats = features
    rec["time_bank"] = time.perf_counter() - t
    rec["bank_mb"] = feats.numel() * feats.element_size() / 2**20

    if dist.enabled and cfg.distributed.graph == "rank0":
        pl = cfg.pseudo_label
        out = dist.on_main(lambda: graph_and_labels(cfg, model.head, feats, data,
                                                    device, neighbours),
                           share=False)
        out = broadcast_refresh(dist, out, feats, has_target_weights(
            pl.source, pl.weighting, pl.weight))
    else:
        out = graph_and_labels(cfg, model.head, feats, data, device, neighbours)
    rec.update(out.stats)
    out.stats = rec
    return out


def drift_stats(old: Banks | None, new: Banks, graph: Data | None, k: int,
                device: torch.device) -> dict[str, float]:
    """Staleness: how far the Feature Bank moved since ``old`` was read
    (``{}`` where there is no previous bank or no graph)."""
    if graph is None or old is None or not old.features.numel():
        return {}
    return bank_drift(old.features.to(device), new.features, graph, k)
