"""Node densities of a kNN graph (the paper's Eq. 3 and its count variant)."""
from __future__ import annotations

from torch import Tensor

DENSITIES = ("mean_sim", "count")


def compute_density(sim: Tensor, kind: str = "mean_sim",
                    threshold: float = 0.5) -> Tensor:
    r"""Density of every node from its neighbour similarities.

    .. math::
        \rho_u^{\text{mean\_sim}} = \frac{1}{k} \sum_{v \in \mathcal{N}_k(u)}
        \cos(\mathbf{x}_u, \mathbf{x}_v), \qquad
        \rho_u^{\text{count}} = \big|\{v \in \mathcal{N}_k(u) :
        \cos(\mathbf{x}_u, \mathbf{x}_v) > \tau\}\big|

    Args:
        sim (torch.Tensor): Similarities of each node's k neighbours ``[N, k]``.
        kind (str): ``"mean_sim"`` (Eq. 3) or ``"count"``.
        threshold (float): :math:`\tau` of the ``count`` density.
    """
    if kind == "mean_sim":
        return sim.mean(dim=1)
    if kind == "count":
        return (sim > threshold).sum(dim=1).to(sim.dtype)
    raise ValueError(f"Unknown density '{kind}'. Choose one of {list(DENSITIES)}.")
