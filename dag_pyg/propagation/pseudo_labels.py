r"""Pseudo labels for training from a graph and the Label Bank: DPLP, label
diffusion, the model's own predictions, or none; the threshold
:math:`\sigma` in its quantile form; which pseudo labels are admitted; and
the per-sample weight of each pseudo label."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch_geometric.data import Data

from dag_pyg.propagation.diffusion import label_diffusion
from dag_pyg.propagation.dplp import (
    density_ascending_parents,
    dplp,
    parent_step_distances,
)

SOURCES = ("dplp", "diffusion", "model", "none")
WEIGHTINGS = ("none", "certainty")
ADMISSIONS = ("all", "agree")


class PseudoLabels(NamedTuple):
    r"""Output of :func:`pseudo_labels`.

    Attributes:
        targets (torch.Tensor): Training target of every node ``[N]``: the
            label where labelled, the pseudo label elsewhere, ``-1`` for none.
        covered (torch.Tensor): Unlabelled nodes whose target DPLP or the
            diffusion propagated from a labelled node ``[N]`` (all
            :obj:`False` for the other sources).
        parents (torch.Tensor): Density-ascending parents ``[N]`` under
            ``sigma`` (the paths DPLP follows).
        sigma (float): The resolved path threshold.
    """
    targets: Tensor
    covered: Tensor
    parents: Tensor
    sigma: float


def check_sigma(sigma: float | str) -> float | str:
    r"""Validates :math:`\sigma`: a distance :math:`\geq 0` (``inf`` for no
    limit) or ``"qX"``, the :math:`X`-quantile (:math:`0 \leq X \leq 1`) of
    the graph's parent-step distances (:func:`resolve_sigma`)."""
    if isinstance(sigma, str):
        try:
            q = float(sigma[1:]) if sigma.startswith("q") else math.nan
        except ValueError:
            q = math.nan
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"sigma must be a distance (a number, or inf) or a "
                             f"quantile 'q0.5' of the parent-step distances (got "
                             f"'{sigma}').")
        return sigma
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or \
            not sigma >= 0:
        raise ValueError(f"sigma must be >= 0 (got {sigma!r}).")
    return float(sigma)


def resolve_sigma(sigma: float | str, graph: Data) -> float:
    r"""The distance :math:`\sigma` stands for on ``graph``: itself, or for
    ``"qX"`` the :math:`X`-quantile of the finite parent-step distances
    (:func:`~dag_pyg.propagation.parent_step_distances`; ``inf`` when no
    node has a denser neighbour)."""
    sigma = check_sigma(sigma)
    if not isinstance(sigma, str):
        return sigma
    return sigma_of_steps(sigma, parent_step_distances(graph))


def sigma_of_steps(sigma: float | str, steps: Tensor) -> float:
    r"""The distance :math:`\sigma` stands for given every node's
    parent-step distance ``steps [N]`` (``inf`` for none; e.g. all-gathered
    from the shards of a sharded refresh): as :func:`resolve_sigma`."""
    sigma = check_sigma(sigma)
    if not isinstance(sigma, str):
        return sigma
    steps = steps[torch.isfinite(steps)]
    if steps.numel() == 0:
        return math.inf
    return float(torch.quantile(steps.double(), float(sigma[1:])))


def pseudo_labels(graph: Data, y: Tensor, labelled_mask: Tensor, prior: Tensor,
                  source: str = "dplp", sigma: float | str = math.inf,
                  mode: str = "LU", num_classes: int | None = None,
                  parents: Tensor | None = None,
                  alpha: float = 0.99) -> PseudoLabels:
    r"""Training targets of every graph node.

    Args:
        graph (torch_geometric.data.Data): The density-aware graph.
        y (torch.Tensor): Labels ``[N]``; read where ``labelled_mask`` only.
        labelled_mask (torch.Tensor): Labelled nodes ``[N]``.
        prior (torch.Tensor): The Label Bank (the model's predictions) ``[N]``.
        source (str): ``"dplp"`` (:func:`~dag_pyg.propagation.dplp` with
            ``prior`` where no path reaches a label), ``"diffusion"``
            (:func:`~dag_pyg.propagation.label_diffusion`'s arg-max, with
            ``prior`` where no labelled node reaches), ``"model"``
            (``prior`` itself) or ``"none"`` (labelled nodes only; ``-1``
            elsewhere).
        sigma (float or str): Path threshold, see :func:`check_sigma`.
        mode (str): DPLP's ``"L"`` or ``"LU"``.
        num_classes (int, optional): Number of classes.
        parents (torch.Tensor, optional): The graph's density-ascending
            parents under ``sigma`` ``[N]``, computed elsewhere (a sharded
            refresh gathers them); ``sigma`` must then be the distance they
            were cut at, and ``graph`` needs only ``density``.
        alpha (float): The diffusion's :math:`\alpha` (``source="diffusion"``).
    """
    if source not in SOURCES:
        raise ValueError(f"Unknown pseudo-label source '{source}'. Choose one of "
                         f"{list(SOURCES)}.")
    if parents is not None and isinstance(sigma, str):
        raise ValueError(f"pseudo_labels: with parents given, sigma must be the "
                         f"distance they were cut at, not '{sigma}' (resolve it "
                         "with sigma_of_steps).")
    if parents is not None and parents.shape != labelled_mask.shape:
        raise ValueError(f"parents must have shape {tuple(labelled_mask.shape)} "
                         f"(one per node; got {tuple(parents.shape)}).")
    sigma = resolve_sigma(sigma, graph)
    unl = ~labelled_mask
    if source == "dplp":
        y_known = torch.where(labelled_mask, y, torch.zeros_like(y))
        res = dplp(graph, y_known, labelled_mask, prior, sigma=sigma, mode=mode,
                   num_classes=num_classes, parents=parents)
        return PseudoLabels(res.labels.clone(), (res.phase > 0) & unl,
                            res.parents, sigma)
    if parents is None:
        parents = density_ascending_parents(graph, sigma)
    if source == "diffusion":
        scores = label_diffusion(graph, y, labelled_mask, num_classes,
                                 alpha=alpha).to(prior.device)
        reached = scores.amax(1) > 0
        targets = torch.where(reached, scores.argmax(1).to(prior.dtype), prior)
        targets[labelled_mask] = y[labelled_mask]
        return PseudoLabels(targets, reached & unl, parents, sigma)
    targets = prior.clone() if source == "model" else \
        torch.where(labelled_mask, y, -1)
    return PseudoLabels(targets, torch.zeros_like(unl), parents, sigma)


def admit_pseudo_labels(targets: Tensor, logits: Tensor, labelled_mask: Tensor,
                        threshold: float = 0.0, admit: str = "all") -> Tensor:
    r"""The targets with the pseudo labels that are not admitted set to
    ``-1`` (no target; labelled nodes always keep theirs).

    An unlabelled node keeps its pseudo label where the Label Bank's
    confidence :math:`\max_c \mathrm{softmax}(\text{logits}_i)_c` is at least
    ``threshold`` (FixMatch's admission, Sohn et al., 2020) and, with
    ``admit="agree"``, where it equals the Label Bank's prediction
    :math:`\arg\max_c \text{logits}_{ic}` (a DPLP label the model
    contradicts is left out).

    Args:
        targets (torch.Tensor): Targets ``[N]`` (``-1``: none), e.g.
            :attr:`PseudoLabels.targets`.
        logits (torch.Tensor): The Label Bank's logits ``[N, C]``.
        labelled_mask (torch.Tensor): Labelled nodes ``[N]``.
        threshold (float): Confidence in :math:`[0, 1)`; ``0`` admits all.
        admit (str): ``"all"`` or ``"agree"``.
    """
    if admit not in ADMISSIONS:
        raise ValueError(f"Unknown admission '{admit}'. Choose one of "
                         f"{list(ADMISSIONS)}.")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1) (got {threshold!r}).")
    if logits.dim() != 2 or logits.size(0) != targets.numel():
        raise ValueError(f"logits must be [N={targets.numel()}, C] (got "
                         f"{tuple(logits.shape)}).")
    admitted = torch.softmax(logits.double(), dim=1).amax(1) >= threshold
    if admit == "agree":
        admitted &= targets == logits.argmax(1)
    return torch.where(labelled_mask | admitted, targets,
                       torch.full_like(targets, -1))


def has_target_weights(source: str, weighting: str = "none",
                       weight: float = 1.0) -> bool:
    """Whether pseudo labels carry per-sample weights other than one."""
    return source != "none" and (weighting != "none" or weight != 1.0)


def target_weights(logits: Tensor, labelled_mask: Tensor, source: str = "dplp",
                   weighting: str = "none", weight: float = 1.0
                   ) -> Tensor | None:
    r"""Weight of each node's target: one for labelled nodes, ``weight``
    times (with ``weighting="certainty"``)
    :math:`1 - H(\mathbf{p}_i) / \log C` of the Label Bank's prediction
    :math:`\mathbf{p}_i = \mathrm{softmax}(\text{logits}_i)` for the others
    (Iscen et al., 2019), so uncertain pseudo labels count less. :obj:`None`
    where every weight is one (:func:`has_target_weights`)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"Unknown weighting '{weighting}'. Choose one of "
                         f"{list(WEIGHTINGS)}.")
    if not has_target_weights(source, weighting, weight):
        return None
    w = torch.full(labelled_mask.shape, float(weight), dtype=torch.float64)
    if weighting == "certainty":
        logp = torch.log_softmax(logits.double(), dim=1)
        entropy = -(logp.exp() * logp).sum(1)
        w = w * (1.0 - entropy / math.log(logits.size(1))).clamp(0.0, 1.0)
    w[labelled_mask] = 1.0
    return w.float()
