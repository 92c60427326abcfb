from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Parameter
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import zeros
from torch_geometric.typing import Adj, OptPairTensor, OptTensor, Size
from torch_geometric.utils import is_torch_sparse_tensor, softmax
from torch_geometric.utils.sparse import set_sparse_value

from dag_pyg.nn.functional import edge_dot


class DensityAwareConv(MessagePassing):
    r"""The density-aware neighbourhood aggregation (DNA) operator from the
    `"Density-Aware Graph for Deep Semi-Supervised Visual Recognition"
    <https://arxiv.org/abs/2003.13194>`_ paper (Eqs. 4-7).

    .. math::
        \mathbf{x}^{\prime}_i = \mathbf{\Theta} \Big( \mathbf{x}_i +
        \sum_{j \in \mathcal{N}(i)} \alpha_{i,j} \mathbf{x}_j \Big) +
        \mathbf{b}

    where the attention coefficients :math:`\alpha_{i,j}` mix feature
    similarity with the density :math:`\rho_j` of the neighbour:

    .. math::
        \alpha_{i,j} = \frac{\exp\left(\cos(\mathbf{x}_i, \mathbf{x}_j) +
        \rho_j\right)}{\sum_{k \in \mathcal{N}(i)}
        \exp\left(\cos(\mathbf{x}_i, \mathbf{x}_k) + \rho_k\right)}

    With :obj:`use_density=False` the density term is dropped (the paper's
    "NA w/o density"). No self loops are added: the centre node enters
    through the explicit :math:`\mathbf{x}_i` term, so a node without
    neighbours maps to :math:`\mathbf{\Theta}\mathbf{x}_i + \mathbf{b}`.

    Args:
        in_channels (int): Size of each input sample, or :obj:`-1` to derive
            it lazily from the first input.
        out_channels (int): Size of each output sample.
        use_density (bool, optional): If set to :obj:`False`, the attention
            ignores the neighbour density. (default: :obj:`True`)
        bias (bool, optional): If set to :obj:`False`, the layer will not
            learn an additive bias. (default: :obj:`True`)
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:**
          node features :math:`(|\mathcal{V}|, F_{in})` or
          :math:`((|\mathcal{V_s}|, F_{in}), (|\mathcal{V_t}|, F_{in}))`
          if bipartite,
          edge indices :math:`(2, |\mathcal{E}|)` (or a :obj:`torch.sparse`
          transposed adjacency :math:`(|\mathcal{V_t}|, |\mathcal{V_s}|)`),
          source-node densities :math:`(|\mathcal{V_s}|)`
        - **output:** node features :math:`(|\mathcal{V}|, F_{out})` or
          :math:`(|\mathcal{V}_t|, F_{out})` if bipartite.
          If :obj:`return_attention_weights=True`, additionally
          :math:`((2, |\mathcal{E}|), (|\mathcal{E}|))` (or the sparse
          adjacency holding the attention values).
    """
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        use_density: bool = True,
        bias: bool = True,
        **kwargs,
    ):
        kwargs.setdefault('aggr', 'add')
        super().__init__(node_dim=0, **kwargs)

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_density = use_density

        self.lin = Linear(in_channels, out_channels, bias=False,
                          weight_initializer='glorot')
        if bias:
            self.bias = Parameter(torch.empty(out_channels))
        else:
            self.register_parameter('bias', None)

        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        self.lin.reset_parameters()
        zeros(self.bias)

    def forward(
        self,
        x: Tensor | OptPairTensor,
        edge_index: Adj,
        density: OptTensor = None,
        size: Size = None,
        return_attention_weights: bool | None = None,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        r"""Runs the forward pass of the module.

        Args:
            x (torch.Tensor or (torch.Tensor, torch.Tensor)): The input node
                features, or a (source, target) pair for bipartite graphs.
            edge_index (torch.Tensor): The edge indices (row 0 source,
                row 1 target), or a :obj:`torch.sparse` transposed adjacency.
            density (torch.Tensor, optional): Density of every source node.
                Required when :obj:`use_density=True`.
            size ((int, int), optional): The shape of the adjacency matrix.
            return_attention_weights (bool, optional): If set, additionally
                returns :obj:`(edge_index, alpha)` like
                :class:`~torch_geometric.nn.conv.GATConv`.
        """
        if isinstance(x, Tensor):
            x = (x, x)
        x_src, x_dst = x
        if x_dst is None:
            raise ValueError("'DensityAwareConv' needs target features for its "
                             "self term: pass x as (x_src, x_dst).")
        if self.use_density and density is None:
            raise ValueError("'DensityAwareConv(use_density=True)' needs the "
                             "'density' of every source node; pass it, or build "
                             "the layer with use_density=False.")

        # Attention on the raw inputs (Eq. 5 measures similarity of x, not of
        # the projected features).
        xn_src = F.normalize(x_src, p=2., dim=-1)
        xn_dst = F.normalize(x_dst, p=2., dim=-1)
        rho = density if self.use_density else None
        alpha = self.edge_updater(edge_index, xn_src=xn_src, xn_dst=xn_dst,
                                  rho=(rho, None), size=size)

        # Theta(x_i + sum_j alpha x_j) is linear, so project first when it
        # shrinks the features and aggregate first otherwise.
        if self.out_channels <= x_src.size(-1):
            h_src = self.lin(x_src)
            h_dst = h_src if x_dst is x_src else self.lin(x_dst)
            out = h_dst + self.propagate(edge_index, x=(h_src, h_dst),
                                         alpha=alpha, size=size)
        else:
            agg = self.propagate(edge_index, x=(x_src, x_dst), alpha=alpha,
                                 size=size)
            out = self.lin(x_dst + agg)

        if self.bias is not None:
            out = out + self.bias

        if return_attention_weights:
            if is_torch_sparse_tensor(edge_index):
                return out, (set_sparse_value(edge_index, alpha), alpha)
            return out, (edge_index, alpha)
        return out

    def edge_update(self, xn_src: Tensor, xn_dst: Tensor, rho_j: OptTensor,
                    edge_index_i: Tensor, edge_index_j: Tensor, index: Tensor,
                    ptr: OptTensor, dim_size: int | None) -> Tensor:
        # cos(x_i, x_j) is not a sum of per-node terms (unlike GAT's logits):
        # a fused per-edge dot avoids keeping two [E, d] gathers for backward.
        if xn_src.dtype in (torch.float16, torch.bfloat16):
            # Mixed precision: the attention in float32 (the sparse kernel has
            # no half-precision path on the CPU; the softmax wants the range).
            xn_src, xn_dst = xn_src.float(), xn_dst.float()
        alpha = edge_dot(xn_dst, xn_src, edge_index_i, edge_index_j)
        if rho_j is not None:
            alpha = alpha + rho_j.to(alpha.dtype)
        return softmax(alpha, index, ptr, dim_size)

    def message(self, x_j: Tensor, alpha: Tensor) -> Tensor:
        return alpha.unsqueeze(-1) * x_j

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, use_density={self.use_density})')
