from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Parameter
from torch_geometric import EdgeIndex
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import zeros
from torch_geometric.typing import Adj, OptPairTensor, OptTensor, Size, SparseTensor
from torch_geometric.utils import is_torch_sparse_tensor, softmax
from torch_geometric.utils.sparse import set_sparse_value

from dag_pyg.nn.functional import CSRLayout, csr_aggregate, csr_layout, edge_cosine

# MessagePassing's hook registries: a module with any of them registered (an
# explainer, a user's hook) runs propagate(), where the hooks fire.
_HOOKS = ("_propagate_forward_pre_hooks", "_propagate_forward_hooks",
          "_message_forward_pre_hooks", "_message_forward_hooks",
          "_aggregate_forward_pre_hooks", "_aggregate_forward_hooks",
          "_message_and_aggregate_forward_pre_hooks",
          "_message_and_aggregate_forward_hooks",
          "_edge_update_forward_pre_hooks", "_edge_update_forward_hooks")


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
    "NA w/o density"); a temperature :math:`\tau` (default 1, the paper)
    divides the logits :math:`\cos(\mathbf{x}_i, \mathbf{x}_j) + \rho_j`:
    :math:`\tau \to 0` attends to the most similar neighbour alone, large
    :math:`\tau` averages the neighbours. With :obj:`learn_beta=True` a
    learned scalar :math:`\beta` (starting at 1, the paper) weighs the
    neighbour sum, :math:`\mathbf{\Theta}(\mathbf{x}_i + \beta \sum_j
    \alpha_{i,j} \mathbf{x}_j) + \mathbf{b}`, so training can turn an impure
    neighbourhood down. No self loops are added: the centre
    node enters through the explicit :math:`\mathbf{x}_i` term, so a node
    without neighbours maps to :math:`\mathbf{\Theta}\mathbf{x}_i +
    \mathbf{b}`.

    Every graph runs as compressed rows by target (CSR): a segment softmax
    over each target's edges and one sparse-dense product, memory linear in
    the number of edges. A :obj:`torch.sparse` CSR adjacency, a
    :class:`torch_sparse.SparseTensor` ``adj_t`` and a sorted
    :class:`~torch_geometric.EdgeIndex` give their rows as they are (no host
    synchronisation); a plain ``edge_index`` is checked for target order in
    one synchronisation (and sorted by target where it is not), and where
    it holds ``k`` edges for each target in order (the layout of
    :func:`~dag_pyg.build_density_graph` and
    :class:`~dag_pyg.KNNHopSampler`) the softmax is a dense ``[N, k]``
    operation. Explain mode, registered message-passing hooks,
    :obj:`torch.compile` and other sparse layouts take PyG's
    :meth:`propagate`, with the same result.

    Args:
        in_channels (int): Size of each input sample, or :obj:`-1` to derive
            it lazily from the first input.
        out_channels (int): Size of each output sample.
        use_density (bool, optional): If set to :obj:`False`, the attention
            ignores the neighbour density. (default: :obj:`True`)
        temperature (float, optional): The attention temperature
            :math:`\tau > 0`. (default: :obj:`1.0`)
        learn_temperature (bool, optional): If set to :obj:`True`,
            :math:`\tau` is learned (as :math:`\log \tau`, starting at
            :obj:`temperature`). (default: :obj:`False`)
        learn_beta (bool, optional): If set to :obj:`True`, a learned scalar
            :math:`\beta` (starting at 1) weighs the neighbour sum.
            (default: :obj:`False`)
        dropout (float, optional): Dropout probability of the normalized
            attention coefficients, as in
            :class:`~torch_geometric.nn.conv.GATConv`. (default: :obj:`0`)
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
          source-node densities :math:`(|\mathcal{V_s}|)`,
          *(optional)* edge similarities :math:`(|\mathcal{E}|)`
        - **output:** node features :math:`(|\mathcal{V}|, F_{out})` or
          :math:`(|\mathcal{V}_t|, F_{out})` if bipartite.
          If :obj:`return_attention_weights=True`, additionally
          :math:`((2, |\mathcal{E}|), (|\mathcal{E}|))`; for a
          :obj:`torch.sparse` adjacency the adjacency holding the attention
          values and the values, for a :class:`torch_sparse.SparseTensor`
          the adjacency holding them (as
          :class:`~torch_geometric.nn.conv.GATConv` returns them).
    """
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        use_density: bool = True,
        temperature: float = 1.0,
        learn_temperature: bool = False,
        learn_beta: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
        **kwargs,
    ):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (got {temperature!r}).")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1) (got {dropout!r}).")
        kwargs.setdefault('aggr', 'add')
        super().__init__(node_dim=0, **kwargs)

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_density = use_density
        self.dropout = dropout
        self.initial_temperature = float(temperature)
        if learn_temperature:
            self.log_temperature = Parameter(torch.empty(()))
        else:
            self.register_parameter('log_temperature', None)
        if learn_beta:
            self.beta = Parameter(torch.empty(()))
        else:
            self.register_parameter('beta', None)

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
        if self.log_temperature is not None:
            with torch.no_grad():
                self.log_temperature.fill_(math.log(self.initial_temperature))
        if self.beta is not None:
            with torch.no_grad():
                self.beta.fill_(1.0)

    @property
    def temperature(self) -> Tensor | float:
        r"""The attention temperature :math:`\tau`."""
        if self.log_temperature is None:
            return self.initial_temperature
        return self.log_temperature.exp()

    def forward(
        self,
        x: Tensor | OptPairTensor,
        edge_index: Adj,
        density: OptTensor = None,
        sim: OptTensor = None,
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
            sim (torch.Tensor, optional): :math:`\cos(\mathbf{x}_i,
                \mathbf{x}_j)` of every edge where the caller has it (e.g.
                ``graph.sim``); it is then not recomputed, and no gradient
                flows through it.
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
        rho = density if self.use_density else None
        csr = self._csr_layout(edge_index, x_dst.size(0), size)
        if csr is None:
            alpha = self.edge_updater(edge_index, x_src=x_src, x_dst=x_dst,
                                      rho=(rho, None), sim=sim, size=size)
        else:
            alpha = self._csr_attention(x_src, x_dst, csr, rho, sim)

        # Theta(x_i + sum_j alpha x_j) is linear: project first or aggregate
        # first, whichever takes fewer multiply-adds (a bipartite batch with
        # few targets aggregates first and projects only the targets).
        c_in, c_out, e = x_src.size(-1), self.out_channels, alpha.numel()
        rows = x_src.size(0) + (0 if x_dst is x_src else x_dst.size(0))
        if rows * c_in * c_out + e * c_out <= e * c_in + x_dst.size(0) * c_in * c_out:
            h_src = self.lin(x_src)
            h_dst = h_src if x_dst is x_src else self.lin(x_dst)
            out = h_dst + self._neighbours(edge_index, h_src, h_dst, alpha, csr,
                                           size)
        else:
            out = self.lin(x_dst + self._neighbours(edge_index, x_src, x_dst,
                                                    alpha, csr, size))
        if csr is not None and csr.perm is not None:
            # Attention in the caller's edge order.
            alpha = torch.empty_like(alpha).scatter_(0, csr.perm, alpha)

        if self.bias is not None:
            out = out + self.bias

        if return_attention_weights:
            if isinstance(edge_index, SparseTensor):  # as GATConv returns it
                return out, edge_index.set_value(alpha, layout='coo')
            if is_torch_sparse_tensor(edge_index):
                return out, (set_sparse_value(edge_index, alpha), alpha)
            return out, (edge_index, alpha)
        return out

    def _csr_layout(self, edge_index: Adj, num_dst: int,
                    size: Size) -> CSRLayout | None:
        if (self.explain or torch.compiler.is_compiling()
                or any(getattr(self, h, None) for h in _HOOKS)
                or (size is not None and size[1] is not None
                    and size[1] != num_dst)):
            return None
        if isinstance(edge_index, EdgeIndex) and edge_index.sort_order is not None:
            (colptr, row), perm = edge_index.get_csc()
            return csr_layout(colptr, row, num_dst, perm=perm)
        if isinstance(edge_index, SparseTensor):
            rowptr, col, _ = edge_index.csr()
            return csr_layout(rowptr, col, num_dst)
        if is_torch_sparse_tensor(edge_index):
            if edge_index.layout != torch.sparse_csr:
                return None  # COO / CSC: rows not compressed by target
            return csr_layout(edge_index.crow_indices(), edge_index.col_indices(),
                              num_dst)
        if isinstance(edge_index, EdgeIndex):
            edge_index = edge_index.as_tensor()
        return csr_layout(None, edge_index, num_dst)

    def _logits(self, cos: Tensor, rho_j: OptTensor) -> Tensor:
        if rho_j is not None:
            cos = cos + rho_j.to(cos.dtype)
        t = self.temperature
        return cos / t if isinstance(t, Tensor) or t != 1.0 else cos

    def _csr_attention(self, x_src: Tensor, x_dst: Tensor, csr: CSRLayout,
                       rho: OptTensor, sim: OptTensor) -> Tensor:
        if sim is None:
            cos = self._cosine(x_src, x_dst, csr.dst, csr.src, csr.rowptr)
        else:
            cos = sim if csr.perm is None else sim.index_select(0, csr.perm)
        rho_j = None if rho is None else rho.index_select(0, csr.src)
        logits = self._logits(cos, rho_j)
        if csr.k is not None:  # k edges per target: a dense softmax
            alpha = logits.view(-1, csr.k).softmax(dim=-1).view(-1)
        else:
            alpha = softmax(logits, ptr=csr.rowptr, num_nodes=csr.rowptr.numel() - 1)
        return F.dropout(alpha, p=self.dropout, training=self.training)

    def _neighbours(self, edge_index: Adj, h_src: Tensor, h_dst: Tensor,
                    alpha: Tensor, csr: CSRLayout | None, size: Size) -> Tensor:
        # beta * sum_j alpha_ij h_j
        if csr is None:
            out = self.propagate(edge_index, x=(h_src, h_dst), alpha=alpha,
                                 size=size)
        else:
            out = csr_aggregate(alpha, csr.rowptr, csr.src, h_src)
        return out if self.beta is None else self.beta * out

    @staticmethod
    def _cosine(x_src: Tensor, x_dst: Tensor, index_dst: Tensor,
                index_src: Tensor, rowptr: OptTensor = None) -> Tensor:
        # cos(x_i, x_j) is not a sum of per-node terms (unlike GAT's logits):
        # a fused per-edge dot avoids keeping two [E, d] gathers for backward.
        if x_src.dtype in (torch.float16, torch.bfloat16):
            # Mixed precision: the attention in float32 (the sparse kernel has
            # no half-precision path on the CPU; the softmax wants the range).
            same = x_dst is x_src
            x_src = x_src.float()
            x_dst = x_src if same else x_dst.float()
        return edge_cosine(x_dst, x_src, index_dst, index_src, rowptr=rowptr)

    def edge_update(self, x_src: Tensor, x_dst: Tensor, rho_j: OptTensor,
                    sim: OptTensor, edge_index_i: Tensor, edge_index_j: Tensor,
                    index: Tensor, ptr: OptTensor,
                    dim_size: int | None) -> Tensor:
        cos = self._cosine(x_src, x_dst, edge_index_i, edge_index_j) \
            if sim is None else sim
        alpha = softmax(self._logits(cos, rho_j), index, ptr, dim_size)
        return F.dropout(alpha, p=self.dropout, training=self.training)

    def message(self, x_j: Tensor, alpha: Tensor) -> Tensor:
        return alpha.unsqueeze(-1) * x_j

    def __repr__(self) -> str:
        extra = ''
        if self.log_temperature is not None:
            extra = ', learn_temperature=True'
        elif self.initial_temperature != 1.0:
            extra = f', temperature={self.initial_temperature:g}'
        if self.beta is not None:
            extra += ', learn_beta=True'
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, use_density={self.use_density}{extra})')
