r"""Label diffusion over the kNN graph (Iscen et al., "Label Propagation for
Deep Semi-supervised Learning", CVPR 2019): the pseudo-labeller of
LP-DeepSSL, offered beside DPLP as ``pseudo_label.source: diffusion``.

With the affinity :math:`w_{uv} = \max(0, \cos(\mathbf{x}_u,
\mathbf{x}_v))^{\gamma}` on the graph's edges, made symmetric
(:math:`\mathbf{W} + \mathbf{W}^{\top}`, no self loops) and normalised
(:math:`\hat{\mathbf{W}} = \mathbf{D}^{-1/2} \mathbf{W} \mathbf{D}^{-1/2}`),
each class :math:`c` solves

.. math::
    (\mathbf{I} - \alpha \hat{\mathbf{W}}) \, \mathbf{z}_c = \mathbf{y}_c,

where :math:`\mathbf{y}_c` is :math:`1 / |L_c|` on the labelled nodes of
class :math:`c` and zero elsewhere, by conjugate gradients (the system is
symmetric positive definite for :math:`\alpha < 1`). A node's pseudo label
is :math:`\arg\max_c z_{uc}` over the non-negative part of
:math:`\mathbf{Z}`. A node the solve does not reach keeps a row of zeros:
one in a component without labels, or more hops from every label than the
conjugate-gradient steps taken (each step reaches one hop further).
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import remove_self_loops, to_torch_csr_tensor, to_undirected


def normalized_affinity(graph: Data, gamma: float = 3.0) -> Tensor:
    r""":math:`\hat{\mathbf{W}}` of the graph ``[N, N]``, a float64 sparse
    CSR tensor on the graph's device.

    Args:
        graph (torch_geometric.data.Data): A graph with ``edge_index`` and
            ``sim``, one cosine similarity per edge
            (:func:`~dag_pyg.graph.build_density_graph`).
        gamma (float): Power of the (non-negative part of the) similarities.
    """
    sim = getattr(graph, "sim", None)
    if sim is None or sim.numel() != graph.edge_index.size(1):
        raise ValueError("The graph needs 'sim', one cosine similarity per edge; "
                         "build it with dag_pyg.graph.build_density_graph.")
    n = graph.num_nodes
    w = sim.double().clamp_min(0).pow(gamma)
    edge_index, w = to_undirected(graph.edge_index, w, n, reduce="add")
    edge_index, w = remove_self_loops(edge_index, w)
    # gcn_norm leaves an isolated node's (empty) row at zero.
    edge_index, w = gcn_norm(edge_index, w, n, add_self_loops=False)
    # CSR: its product with a dense block is about 6x COO's on a CPU. The
    # edges are sorted (to_undirected coalesced them). torch warns once per
    # process that sparse invariants go unchecked: not a user's concern.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR|invariant)")
        return to_torch_csr_tensor(edge_index, w, (n, n), is_coalesced=True)


def label_diffusion(graph: Data, y: Tensor, labelled_mask: Tensor,
                    num_classes: int | None = None, alpha: float = 0.99,
                    gamma: float = 3.0, max_iter: int = 20,
                    rtol: float = 1e-6) -> Tensor:
    r"""The diffused class scores :math:`\mathbf{Z}` ``[N, C]`` (float64,
    negative entries set to zero).

    Args:
        graph (torch_geometric.data.Data): A graph with ``edge_index`` and
            ``sim`` (:func:`~dag_pyg.graph.build_density_graph`).
        y (torch.Tensor): Labels ``[N]``; read where ``labelled_mask`` only.
        labelled_mask (torch.Tensor): Labelled nodes ``[N]``.
        num_classes (int, optional): Number of classes (default: the
            largest label plus one).
        alpha (float): :math:`\alpha \in [0, 1)` (LP-DeepSSL's 0.99).
        gamma (float): Power of the similarities (LP-DeepSSL's 3).
        max_iter (int): Conjugate-gradient steps per class (LP-DeepSSL's 20).
        rtol (float): A class stops once its residual's norm is at most
            ``rtol`` times its right-hand side's (SciPy's ``cg`` stops below
            it: the two differ at equality only).
    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1) (got {alpha!r}); at 1 the "
                         "system is singular.")
    if gamma <= 0 or max_iter < 1:
        raise ValueError(f"gamma must be > 0 and max_iter >= 1 (got {gamma!r}, "
                         f"{max_iter!r}).")
    n = graph.num_nodes
    if y.shape != (n,) or labelled_mask.shape != (n,):
        raise ValueError(f"y and labelled_mask must have shape ({n},), one per "
                         f"node (got {tuple(y.shape)}, {tuple(labelled_mask.shape)}).")
    if not bool(labelled_mask.any()):
        raise ValueError("label_diffusion needs at least one labelled node "
                         "(labelled_mask is all False).")
    num_classes = int(y[labelled_mask].max()) + 1 if num_classes is None \
        else num_classes
    w_hat = normalized_affinity(graph, gamma)
    idx = labelled_mask.nonzero().view(-1).to(w_hat.device)
    y = y.to(w_hat.device)
    b = torch.zeros(n, num_classes, dtype=torch.float64, device=w_hat.device)
    b[idx, y[idx]] = 1.0
    b = b / b.sum(0).clamp_min(1.0)

    # Conjugate gradients on all classes at once, each with its own step
    # sizes; a class whose residual is small enough stops moving.
    z = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = (r * r).sum(0)
    stop = (rtol * b.norm(dim=0)) ** 2
    for _ in range(max_iter):
        active = rr > stop
        if not bool(active.any()):
            break
        ap = p - alpha * (w_hat @ p)
        pap = (p * ap).sum(0)
        step = torch.where(active, rr / torch.where(active, pap, 1.0), 0.0)
        z += step * p
        r -= step * ap
        rr_new = (r * r).sum(0)
        p = r + torch.where(active, rr_new / torch.where(active, rr, 1.0), 0.0) * p
        rr = torch.where(active, rr_new, rr)
    return z.clamp_min_(0.0)
