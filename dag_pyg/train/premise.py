r"""The premise check: whether DAG's modules can help on this data, read at
every refresh on labels the model never trained on.

DAG's modules help only where a node's graph neighbours are more often of
its class than the model is right. ``data.num_check`` labels are held out
of training (:func:`~dag_pyg.data.hold_out`): their samples stay graph
nodes, unlabelled to training (they get Label Bank entries and DPLP labels
like every unlabelled node), and only this check reads their labels. On
these check nodes :math:`C`, with labels :math:`y_u`, a refresh measures

- **Label Bank accuracy** ``check_lb_acc``:
  :math:`\frac{1}{|C|}\sum_{u \in C} [\hat{y}_u = y_u]`, :math:`\hat{y}` the
  Label Bank (the head's prediction over the graph): what pseudo-labelling
  teaches.
- **Neighbour vote** ``check_vote_acc``: :math:`\arg\max_c \sum_{v \in
  \mathcal{N}_{k_{sub}}(u)} s_{uv} [\hat{y}_v = c]` (the :math:`k_{sub}`
  graph neighbours' Label Bank labels weighted by their similarity), and
  ``check_vote_gain`` = vote accuracy - Label Bank accuracy: the premise of
  neighbour aggregation, readable for any head.
- **Neighbour term** ``check_neighbour_gain`` (graph heads): Label Bank
  accuracy minus ``check_self_acc``, the same head with its neighbour term
  off (:math:`\mathbf{\Theta} \mathbf{x}_u + \mathbf{b}` for one layer).
- **DPLP** ``check_dplp_gain``: on the check nodes DPLP's paths cover
  (``check_dplp_n`` of them), DPLP's label accuracy ``check_dplp_acc`` minus
  the Label Bank's ``check_lb_acc_covered`` on the same nodes. DPLP runs here
  whatever ``pseudo_label.source`` the run trains on.
- **Attention purity** ``check_attention_purity`` (DNA heads): over the
  first layer's edges :math:`v \to u` with :math:`u \in C` and :math:`v`'s
  label known (trained on, or another check node),
  :math:`\sum \alpha_{uv} [y_u = y_v] / \sum \alpha_{uv}`
  (``check_attention_edges`` such edges; NaN where there are none).

Every accuracy comes with a 95 % Wilson interval (``_lo``/``_hi``), every
gain with a 95 % interval for a paired difference of proportions
(:func:`paired_gain`). The same check nodes are read at every refresh, so
refreshes are not independent samples: pooling them would not narrow the
interval, and none is pooled; a run's ``summary.json`` gives the mean of
each value over its refreshes beside the last refresh's interval
(``check``).

Under ``method: dag`` nothing in training reads the check's labels, and
the check nodes train on their pseudo labels like every unlabelled node:
the check estimates what pseudo-labelling teaches the unlabelled nodes.
Under ``method: steered`` (and in ``method: auto``'s steered arm) their
labels steer training (the admission threshold is read off them), so later
refreshes' checks are not independent of earlier choices; and the check
nodes get no training target at all, so that a model's accuracy on them is
what it would be on unseen images: a model fitted to its own graph-made
pseudo labels on a node would score on that node the graph's accuracy, not
its own, and ``method: auto``'s choice would lean towards DAG.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch_geometric.data import Data

from dag_pyg.nn import DensityAwareConv, DNAHead

Z95 = 1.959963984540054
# Share of each class's labels held out where data.num_check is not given.
CHECK_SHARE = 0.2


def default_check_count(labelled_targets: Tensor) -> int:
    """``CHECK_SHARE`` of each class's labels, at least one and leaving at
    least one to train on, over all classes (the smallest class decides)."""
    counts = torch.bincount(labelled_targets)
    counts = counts[counts > 0]
    per_class = int(counts.min()) if counts.numel() else 0
    if per_class < 2:
        raise ValueError(f"The premise check holds labels out, but the split has "
                         f"{per_class} label(s) in its smallest class; it needs "
                         "at least 2 (raise data.num_labelled).")
    return counts.numel() * min(per_class - 1, max(1, round(CHECK_SHARE * per_class)))


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    r"""Wilson score interval of a proportion ``correct / n`` (NaN for
    ``n = 0``): :math:`\frac{p + z^2/2n \pm z \sqrt{p(1-p)/n + z^2/4n^2}}
    {1 + z^2/n}`."""
    if n == 0:
        return math.nan, math.nan
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_gain(a_right: Tensor, b_right: Tensor, z: float = Z95
                ) -> tuple[float, float, float]:
    r"""Accuracy of ``a`` minus accuracy of ``b`` on the same nodes, with
    Agresti and Min's (2005) Wald interval for a paired difference of
    proportions: half a node added to each of the four cells of the
    right/wrong table (:math:`\tilde n = n + 2`), so that a difference seen
    on few nodes never has a zero-width interval. With :math:`b` nodes only
    ``a`` gets right and :math:`c` only ``b``: :math:`d = (b - c)/n`,
    :math:`\tilde{d} = (\tilde b - \tilde c)/\tilde n`, :math:`\mathrm{se}
    = \sqrt{\tilde b + \tilde c - (\tilde b - \tilde c)^2/\tilde n}/\tilde
    n`. Returns ``(d, lo, hi)`` (NaN for no nodes)."""
    n = a_right.numel()
    if n == 0:
        return math.nan, math.nan, math.nan
    b = int((a_right & ~b_right).sum())
    c = int((~a_right & b_right).sum())
    bt, ct, nt = b + 0.5, c + 0.5, n + 2.0
    dt = (bt - ct) / nt
    se = math.sqrt(max(bt + ct - (bt - ct) ** 2 / nt, 0.0)) / nt
    return (b - c) / n, max(-1.0, dt - z * se), min(1.0, dt + z * se)


def neighbour_vote(prior: Tensor, sub: Data, num_classes: int) -> Tensor:
    """Every node's similarity-weighted vote of its sub-graph neighbours'
    Label Bank labels ``[N]`` (a node without neighbours keeps its own)."""
    src, dst = sub.edge_index
    n = prior.numel()
    votes = torch.zeros(n, num_classes, dtype=torch.float64)
    w = sub.sim.double() if "sim" in sub else torch.ones(src.numel(),
                                                         dtype=torch.float64)
    votes.index_put_((dst, prior[src]), w, accumulate=True)
    out = votes.argmax(1)
    lonely = votes.abs().sum(1) == 0
    return torch.where(lonely, prior, out)


def _add_acc(rec: dict[str, float], key: str, right: Tensor) -> None:
    n = right.numel()
    rec[key] = float(right.float().mean()) if n else math.nan
    rec[f"{key}_lo"], rec[f"{key}_hi"] = wilson(int(right.sum()), n)


def _add_gain(rec: dict[str, float], key: str, a: Tensor, b: Tensor) -> None:
    rec[key], rec[f"{key}_lo"], rec[f"{key}_hi"] = paired_gain(a, b)


@torch.no_grad()
def attention_purity(head: DNAHead, feats: Tensor, sub: Data, truth: Tensor,
                     known: Tensor, check: Tensor, device: torch.device
                     ) -> tuple[float, int]:
    """The first DNA layer's attention mass on same-class neighbours, over
    edges into check nodes from nodes of known label (see the module
    docstring); ``(purity, edges)``."""
    conv = head.convs[0] if len(head.convs) else None
    if not isinstance(conv, DensityAwareConv):
        return math.nan, 0
    src, dst = sub.edge_index
    keep = check[dst] & known[src]
    if not bool(keep.any()):
        return math.nan, 0
    # The layer's attention over the kept targets' whole neighbourhoods (the
    # softmax needs them all), then the kept edges' share.
    whole = check[dst]
    ei = sub.edge_index[:, whole].to(device)
    _, (_, alpha) = conv(feats.to(device), ei, sub.density.to(device),
                         return_attention_weights=True)
    alpha = alpha.view(-1).cpu()[keep[whole]]
    same = (truth[src[keep]] == truth[dst[keep]]).to(alpha.dtype)
    return float((alpha * same).sum() / alpha.sum()), int(keep.sum())


@torch.no_grad()
def premise_check(head: DNAHead, feats: Tensor, sub: Data, prior: Tensor,
                  dplp_labels: Tensor, covered: Tensor, truth: Tensor,
                  labelled: Tensor, check: Tensor, device: torch.device
                  ) -> dict[str, float]:
    r"""The premise check's record (keys ``check_*``; see the module
    docstring).

    Args:
        head (DNAHead): The head that built the Label Bank.
        feats (torch.Tensor): The Feature Bank ``[N, d]``.
        sub (torch_geometric.data.Data): The graph restricted to ``k_sub``
            neighbours (:func:`~dag_pyg.sampler.knn_subgraph`).
        prior (torch.Tensor): The Label Bank ``[N]`` (the model's
            predictions; labels on labelled nodes).
        dplp_labels (torch.Tensor): DPLP's labels ``[N]``.
        covered (torch.Tensor): Nodes whose label DPLP propagated ``[N]``.
        truth (torch.Tensor): Labels ``[N]``, read on ``labelled`` and
            ``check`` nodes only.
        labelled (torch.Tensor): Labels trained on ``[N]``.
        check (torch.Tensor): Check nodes ``[N]``.
        device (torch.device): Where the head runs.
    """
    rec: dict[str, float] = {"check_n": float(check.sum())}
    y = truth[check]
    lb_right = prior[check] == y
    _add_acc(rec, "check_lb_acc", lb_right)

    vote = neighbour_vote(prior, sub, head.num_classes)
    vote_right = vote[check] == y
    _add_acc(rec, "check_vote_acc", vote_right)
    _add_gain(rec, "check_vote_gain", vote_right, lb_right)

    if head.hops > 0:
        head.eval()
        x = feats[check].to(device)
        own = head.forward_self(x).argmax(1).cpu()
        self_right = own == y
        _add_acc(rec, "check_self_acc", self_right)
        _add_gain(rec, "check_neighbour_gain", lb_right, self_right)
        purity, edges = attention_purity(head, feats, sub, truth,
                                         labelled | check, check, device)
        rec["check_attention_purity"], rec["check_attention_edges"] = purity, edges

    cov = covered[check]
    rec["check_dplp_n"] = float(cov.sum())
    dplp_right = dplp_labels[check][cov] == y[cov]
    _add_acc(rec, "check_dplp_acc", dplp_right)
    _add_acc(rec, "check_lb_acc_covered", lb_right[cov])
    _add_gain(rec, "check_dplp_gain", dplp_right, lb_right[cov])
    return rec


def admission_threshold(confidence: Tensor, right: Tensor) -> float | None:
    r"""``method: steered``'s admission: the lowest Label Bank confidence
    :math:`\tau` at which the check nodes of confidence :math:`\geq \tau`
    are right more often than wrong, by the lower end of their 95 % Wilson
    interval (a pseudo label that is more likely wrong than right is worse
    than none: it teaches more wrong targets than right ones). :obj:`None`
    where no such :math:`\tau` exists (no pseudo label is admitted)."""
    if confidence.numel() == 0:
        return None
    conf, order = confidence.sort(descending=True)
    hits = right[order].long().cumsum(0).tolist()
    best = None
    for i, hit in enumerate(hits):
        # Only where the next node's confidence differs: a threshold
        # admits every node of equal confidence.
        if i + 1 < len(hits) and conf[i + 1] == conf[i]:
            continue
        if wilson(hit, i + 1)[0] >= 0.5:
            best = i
    return None if best is None else float(conf[best])


def auto_decisions(rec: dict[str, float]) -> dict[str, bool]:
    """``method: steered``'s per-refresh choices from the check's record:

    - ``dplp``: train on DPLP's labels where its paths reach, unless the
      check finds them worse than the Label Bank's on the nodes they cover
      (the interval of ``check_dplp_gain`` below 0); else the model's.
    - ``neighbours``: the head reads its neighbours unless the check finds
      the neighbour term worse than none (the interval of
      ``check_neighbour_gain`` below 0). Read at the first refresh, on a
      head pre-trained without neighbours (afterwards a head trained with,
      or without, them would favour its own way), and kept.

    Both keep the paper's module where the check cannot tell (an interval
    that holds 0, or nothing to read).
    """
    dplp_hi = rec.get("check_dplp_gain_hi", math.nan)
    neighbour_hi = rec.get("check_neighbour_gain_hi", math.nan)
    return {"dplp": not dplp_hi < 0, "neighbours": not neighbour_hi < 0}


def check_summary(records: list[dict]) -> dict[str, dict[str, float]]:
    """The check over a run's records: per value (``check_*``, ``auto_*``),
    its mean over the records that hold it (NaN and null left out) and the
    last one's value with its interval (see the module docstring on why
    refreshes are not pooled)."""
    out = {}
    keys = sorted({k for r in records for k in r
                   if k.startswith(("check_", "auto_"))
                   and not k.endswith(("_lo", "_hi"))})
    for key in keys:
        seen = [r for r in records if isinstance(r.get(key), int | float)
                and not math.isnan(r[key])]
        if not seen:
            continue
        last = seen[-1]
        out[key] = {"mean": sum(r[key] for r in seen) / len(seen),
                    "refreshes": len(seen), "last": last[key],
                    **{f"last{s}": last[f"{key}{s}"] for s in ("_lo", "_hi")
                       if f"{key}{s}" in last}}
    return out
