"""The three models of ``bench_planetoid``, each with the optimiser of its
reference recipe.

- ``GAT``: PyG's ``examples/gat.py`` (Velickovic et al. 2018): 8 heads of 8,
  ELU, one averaged output head; dropout 0.6 on both layers' inputs and on the
  attention; Adam, lr 0.005, weight decay 5e-4.
- ``DNA``: the same widths, dropout and optimiser with ``DensityAwareConv``
  (one 64-wide "head"; the attention dropout is the layer's ``dropout``;
  the first layer's attention reads ``data.sim``, the edge cosines of the
  clean features, as GAT's first layer reads no recomputed similarity);
  ``DNA-T`` the same with a learned attention temperature per layer
  (``learn_temperature=True``, starting at 1, the paper's).
- Ablations that locate DNA's gap to GAT (not run by default):
  ``DNA-mean`` is ``DNA`` with its attention at the uniform mean (no density
  term, temperature 1e6: every weight within 1e-6 of 1/degree), so it tells
  what the cosine-and-density attention adds; ``GAT-1`` is ``GAT`` with one
  64-wide head (DNA's widths), so it tells what GAT's eight heads add;
  ``DNA-beta`` learns the weight of the neighbour sum (``learn_beta``),
  so the self term's share of ``x_i + beta * sum_j alpha_ij x_j`` (one
  half in the paper's layer, beta = 1) is learned.
- ``GCN``: PyG's ``examples/gcn.py`` (Kipf & Welling 2017): 16 hidden, ReLU,
  dropout 0.5 on both layers' inputs; Adam, lr 0.01, weight decay 5e-4 on
  the first layer only (as the paper and the example do).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.nn import GATConv, GCNConv

from dag_pyg import DensityAwareConv

MODELS = ("GAT", "DNA", "DNA-T", "GCN")
ABLATIONS = ("DNA-mean", "DNA-beta", "GAT-1")


class GAT(torch.nn.Module):
    def __init__(self, in_channels: int, out_channels: int, hidden: int = 8,
                 heads: int = 8, dropout: float = 0.6) -> None:
        super().__init__()
        self.dropout = dropout
        self.conv1 = GATConv(in_channels, hidden, heads=heads, dropout=dropout)
        self.conv2 = GATConv(hidden * heads, out_channels, heads=1,
                             concat=False, dropout=dropout)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = F.elu(self.conv1(x, edge_index))
        x = F.dropout(x, p=self.dropout, training=self.training)
        return self.conv2(x, edge_index)


class DNA(torch.nn.Module):
    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64,
                 dropout: float = 0.6, learn_temperature: bool = False,
                 uniform: bool = False, learn_beta: bool = False) -> None:
        super().__init__()
        self.dropout = dropout
        attention = dict(dropout=dropout, learn_temperature=learn_temperature,
                         learn_beta=learn_beta)
        if uniform:  # the mean of the neighbours: logits below 1e-6
            attention.update(use_density=False, temperature=1e6)
        self.conv1 = DensityAwareConv(in_channels, hidden, **attention)
        self.conv2 = DensityAwareConv(hidden, out_channels, **attention)

    def forward(self, x: Tensor, edge_index: Tensor, density: Tensor,
                sim: Tensor | None = None) -> Tensor:
        x = F.dropout(x, p=self.dropout, training=self.training)
        # The first layer's attention reads the features' edge cosines
        # (AddDensity's data.sim, a constant of the graph), not recomputed
        # over the wide raw inputs every call.
        x = F.elu(self.conv1(x, edge_index, density, sim=sim))
        x = F.dropout(x, p=self.dropout, training=self.training)
        return self.conv2(x, edge_index, density)


class GCN(torch.nn.Module):
    def __init__(self, in_channels: int, out_channels: int, hidden: int = 16,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = dropout
        # cached: the normalised adjacency is computed once (the graph is
        # fixed), as in PyG's example.
        self.conv1 = GCNConv(in_channels, hidden, cached=True)
        self.conv2 = GCNConv(hidden, out_channels, cached=True)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = self.conv1(x, edge_index).relu()
        x = F.dropout(x, p=self.dropout, training=self.training)
        return self.conv2(x, edge_index)


def build_model(name: str, in_channels: int,
                num_classes: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model ``name`` (one of :data:`MODELS` or :data:`ABLATIONS`) and
    its optimiser."""
    if name in ("GAT", "GAT-1"):
        model = GAT(in_channels, num_classes, *((64, 1) if name == "GAT-1" else ()))
        return model, torch.optim.Adam(model.parameters(), lr=0.005,
                                       weight_decay=5e-4)
    if name in ("DNA", "DNA-T", "DNA-mean", "DNA-beta"):
        model = DNA(in_channels, num_classes, learn_temperature=name == "DNA-T",
                    uniform=name == "DNA-mean", learn_beta=name == "DNA-beta")
        return model, torch.optim.Adam(model.parameters(), lr=0.005,
                                       weight_decay=5e-4)
    if name == "GCN":
        model = GCN(in_channels, num_classes)
        return model, torch.optim.Adam([
            dict(params=model.conv1.parameters(), weight_decay=5e-4),
            dict(params=model.conv2.parameters(), weight_decay=0.0),
        ], lr=0.01)
    raise ValueError(f"Unknown model '{name}'. Choose one of "
                     f"{list(MODELS + ABLATIONS)}.")


def logits(model: torch.nn.Module, data: Data) -> Tensor:
    """The model's class scores for every node of ``data``."""
    if isinstance(model, DNA):
        return model(data.x, data.edge_index, data.density, data.get("sim"))
    return model(data.x, data.edge_index)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               data: Data) -> float:
    """One full-batch step on the training nodes; returns the loss."""
    model.train()
    optimizer.zero_grad()
    out = logits(model, data)
    loss = F.cross_entropy(out[data.train_mask], data.y[data.train_mask])
    loss.backward()
    optimizer.step()
    return loss.detach().item()


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Data) -> dict[str, float]:
    """Accuracy (%) on the train, val and test masks."""
    model.eval()
    pred = logits(model, data).argmax(dim=-1)
    return {split: 100.0 * float((pred[mask] == data.y[mask]).float().mean())
            for split, mask in (("train", data.train_mask),
                                ("val", data.val_mask),
                                ("test", data.test_mask))}
