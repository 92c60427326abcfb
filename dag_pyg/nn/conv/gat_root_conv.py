from __future__ import annotations

from torch import Tensor
from torch.nn import Module
from torch_geometric.nn import GATConv
from torch_geometric.typing import Adj, OptTensor, Size


class GATRootConv(Module):
    r"""PyG's :class:`~torch_geometric.nn.conv.GATConv` (one head, no self
    loops) with the explicit root term of
    :class:`~dag_pyg.nn.conv.DensityAwareConv`, sharing its projection
    :math:`\mathbf{\Theta}`:

    .. math::
        \mathbf{x}^{\prime}_i = \mathbf{\Theta} \mathbf{x}_i +
        \sum_{j \in \mathcal{N}(i)} \alpha_{i,j} \mathbf{\Theta} \mathbf{x}_j
        + \mathbf{b}, \qquad
        \alpha_{i,j} = \mathrm{softmax}_j\big(\mathrm{LeakyReLU}(
        \mathbf{a}^{\top} [\mathbf{\Theta}\mathbf{x}_i \,\|\,
        \mathbf{\Theta}\mathbf{x}_j])\big)

    This is the DNA layer with GAT's learned attention in place of cosine
    similarity plus density, so the ``gat`` aggregator of
    :class:`~dag_pyg.nn.DNAHead` differs from ``dna`` in the attention only
    (same parameters plus GAT's two attention vectors). A self loop inside
    the softmax (GAT's default) would instead let the attention shrink the
    node's own term. The call signature is
    :class:`~dag_pyg.nn.conv.DensityAwareConv`'s, so callers treat both
    alike; ``density`` is accepted and ignored (the attention is learned).

    Args:
        in_channels (int): Size of each input sample.
        out_channels (int): Size of each output sample.
        bias (bool, optional): If set to :obj:`False`, the layer will not
            learn an additive bias. (default: :obj:`True`)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})`, edge
          indices :math:`(2, |\mathcal{E}|)`, densities (ignored)
        - **output:** node features :math:`(|\mathcal{V}|, F_{out})`, and
          with ``return_attention_weights`` the pair
          ``(edge_index, alpha [|E|])``
    """
    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.gat = GATConv(in_channels, out_channels, heads=1,
                           add_self_loops=False, bias=bias)

    def reset_parameters(self):
        self.gat.reset_parameters()

    def forward(
        self,
        x: Tensor,
        edge_index: Adj,
        density: OptTensor = None,
        size: Size = None,
        return_attention_weights: bool | None = None,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        if not return_attention_weights:
            return self.gat(x, edge_index, size=size) + self.gat.lin(x)
        out, (edge_index, alpha) = self.gat(x, edge_index, size=size,
                                            return_attention_weights=True)
        return out + self.gat.lin(x), (edge_index, alpha.view(-1))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.out_channels})"
