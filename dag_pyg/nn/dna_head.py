r"""The DNA head: :math:`h` stacked neighbourhood-aggregation layers over a
sampled sub-graph, followed by the classifier (Sec. 4.2), for training
mini-batches and for test queries."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module, ModuleList
from torch_geometric.data import Data
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.resolver import activation_resolver
from torch_geometric.utils import trim_to_layer

from dag_pyg.nn.conv import DensityAwareConv, GATRootConv

AGGREGATORS = ("dna", "dna_no_density", "gat", "none")


class DNAHead(Module):
    r"""The density-aware neighbourhood aggregation head of the
    `"Density-Aware Graph for Deep Semi-Supervised Visual Recognition"
    <https://arxiv.org/abs/2003.13194>`_ paper: :math:`h` aggregation layers
    (one per hop) and a linear classifier.

    .. math::
        \mathbf{x}^{(l+1)}_u = \sigma\Big(\mathbf{\Theta}_l \big(
        \mathbf{x}^{(l)}_u + \sum_{v \in \mathcal{N}_{k_{sub}}(u)}
        \alpha^{(l)}_{u,v} \mathbf{x}^{(l)}_v \big) + \mathbf{b}_l\Big),
        \qquad \hat{\mathbf{y}}_u = \mathbf{W} \mathbf{x}^{(h)}_u + \mathbf{c}

    (:math:`\sigma` between layers only). Layers run leaves to root on a
    sampled batch (:class:`~dag_pyg.sampler.KNNHopSampler` or
    :func:`~dag_pyg.sampler.make_loader`): with ``trim=True`` and the
    batch's per-hop counts, layer :math:`l` drops the outermost
    :math:`l` hops (:func:`torch_geometric.utils.trim_to_layer`), so it maps
    the nodes up to hop :math:`h-l` into those up to hop :math:`h-l-1`.
    Trimming changes the cost, not the seeds' outputs.

    Args:
        in_channels (int): Width of the backbone feature.
        num_classes (int): Number of classes.
        hops (int, optional): Number of layers :math:`h` (ignored by
            ``aggregator="none"``). (default: :obj:`1`)
        aggregator (str, optional): ``"dna"`` (:class:`DensityAwareConv`),
            ``"dna_no_density"`` (the same without density: "NA w/o
            density"), ``"gat"`` (:class:`~dag_pyg.nn.conv.GATRootConv`,
            PyG's GAT attention with the same root term) or ``"none"``
            (classifier on the seed feature; no graph). (default:
            :obj:`"dna"`)
        hidden_channels (int, optional): Width of the layer outputs
            (default: :obj:`in_channels`).
        act (str, optional): Activation between layers. (default:
            :obj:`"relu"`)
        dropout (float, optional): Dropout on the classifier input.
            (default: :obj:`0.0`)
        trim (bool, optional): Trim the batch layer by layer when its per-hop
            counts are given. (default: :obj:`True`)
        temperature (float, optional): Attention temperature of the
            :class:`DensityAwareConv` layers. (default: :obj:`1.0`)
        learn_temperature (bool, optional): Learn each layer's temperature.
            (default: :obj:`False`)
        learn_beta (bool, optional): Learn a weight :math:`\beta` of each
            layer's neighbour sum. (default: :obj:`False`)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})` with the
          seeds first, edge indices :math:`(2, |\mathcal{E}|)`, node densities
          :math:`(|\mathcal{V}|)` (read at edge sources only)
        - **output:** logits :math:`(B, C)` of the first :math:`B` =
          ``batch_size`` nodes (all nodes if not given)
    """
    def __init__(self, in_channels: int, num_classes: int, hops: int = 1,
                 aggregator: str = "dna", hidden_channels: int | None = None,
                 act: str | None = "relu", dropout: float = 0.0,
                 trim: bool = True, temperature: float = 1.0,
                 learn_temperature: bool = False, learn_beta: bool = False):
        super().__init__()
        if aggregator not in AGGREGATORS:
            raise ValueError(f"Unknown aggregator '{aggregator}'. Choose one of "
                             f"{list(AGGREGATORS)}.")
        if isinstance(hops, bool) or not isinstance(hops, int) or hops < 0:
            raise ValueError(f"hops={hops!r} must be an integer >= 0 (one layer "
                             "per hop).")
        for name, v in (("in_channels", in_channels), ("num_classes", num_classes)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer (got {v!r}).")
        attention = {"temperature": float(temperature),
                     "learn_temperature": learn_temperature,
                     "learn_beta": learn_beta}
        if aggregator == "gat" and (temperature != 1.0 or learn_temperature
                                    or learn_beta):
            raise ValueError("temperature, learn_temperature and learn_beta "
                             "belong to DensityAwareConv: use aggregator 'dna' "
                             "or 'dna_no_density', or leave them at their "
                             "defaults with 'gat'.")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.aggregator = aggregator
        self.hops = 0 if aggregator == "none" else hops
        self.hidden_channels = hidden_channels or in_channels
        self.trim, self.dropout = trim, dropout
        self.act = activation_resolver(act) if act is not None else None
        self.convs = ModuleList()
        width = in_channels
        for _ in range(self.hops):
            if aggregator == "gat":
                conv = GATRootConv(width, self.hidden_channels)
            else:
                conv = DensityAwareConv(width, self.hidden_channels,
                                        use_density=aggregator == "dna",
                                        **attention)
            self.convs.append(conv)
            width = self.hidden_channels
        self.classifier = Linear(width, num_classes, weight_initializer="glorot")

    @property
    def uses_density(self) -> bool:
        return self.aggregator == "dna" and self.hops > 0

    def reset_parameters(self):
        for conv in self.convs:
            conv.reset_parameters()
        self.classifier.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor | None = None,
                density: Tensor | None = None, batch_size: int | None = None,
                num_sampled_nodes_per_hop: list[int] | None = None,
                num_sampled_edges_per_hop: list[int] | None = None) -> Tensor:
        r"""Logits of the head on a (sampled) graph: :meth:`embed`, dropout,
        then the classifier (same arguments as :meth:`embed`)."""
        return self.classify(self.embed(x, edge_index, density, batch_size,
                                        num_sampled_nodes_per_hop,
                                        num_sampled_edges_per_hop))

    def embed_self(self, x: Tensor) -> Tensor:
        r"""The classifier's input with the neighbour term off: every layer
        on the node alone (:math:`\mathbf{\Theta} \mathbf{x}_u +
        \mathbf{b}` for one layer), as in pre-training."""
        if self.hops == 0:
            return self.embed(x)
        empty = torch.empty(2, 0, dtype=torch.long, device=x.device)
        return self.embed(x, empty, x.new_zeros(x.size(0)))

    def forward_self(self, x: Tensor) -> Tensor:
        r"""Logits with the neighbour term off: :meth:`embed_self`, then
        the classifier."""
        return self.classify(self.embed_self(x))

    def classify(self, x: Tensor) -> Tensor:
        r"""Logits of classifier inputs (:meth:`embed`'s output): dropout,
        then the classifier. Manifold mixup mixes between the two."""
        x = F.dropout(x, p=self.dropout, training=self.training)
        return self.classifier(x)

    def embed(self, x: Tensor, edge_index: Tensor | None = None,
              density: Tensor | None = None, batch_size: int | None = None,
              num_sampled_nodes_per_hop: list[int] | None = None,
              num_sampled_edges_per_hop: list[int] | None = None) -> Tensor:
        r"""The classifier's input: the aggregation layers on a (sampled)
        graph (the seed features themselves for a head without layers).

        Args:
            x (torch.Tensor): Node features, seeds first.
            edge_index (torch.Tensor): Edges (row 0 source, row 1 target);
                may be :obj:`None` for ``aggregator="none"``.
            density (torch.Tensor, optional): Node densities (required by
                ``"dna"``).
            batch_size (int, optional): Number of seeds whose logits to return.
            num_sampled_nodes_per_hop (List[int], optional): Nodes per hop in
                BFS order (``batch.num_sampled_nodes``), for trimming.
            num_sampled_edges_per_hop (List[int], optional): Edges per hop
                (``batch.num_sampled_edges``), for trimming.
        """
        if x.dim() != 2 or x.size(-1) != self.in_channels:
            raise ValueError(f"The head expects features of width "
                             f"{self.in_channels} but got shape {tuple(x.shape)}; "
                             "build it with in_channels=backbone.feat_dim.")
        if batch_size is not None and not 0 <= batch_size <= x.size(0):
            raise ValueError(f"batch_size={batch_size} exceeds the {x.size(0)} "
                             "nodes of the batch.")
        counts = (num_sampled_nodes_per_hop, num_sampled_edges_per_hop)
        trim = False
        if self.hops > 0:
            if edge_index is None:
                raise ValueError(f"aggregator='{self.aggregator}' needs the "
                                 "sampled edge_index.")
            if self.uses_density:
                if density is None:
                    raise ValueError("aggregator='dna' needs the node densities "
                                     "(graph.density[batch.n_id]); see "
                                     "assemble_input().")
                if density.size(0) != x.size(0):
                    raise ValueError(f"density has {density.size(0)} entries for "
                                     f"{x.size(0)} nodes.")
            if counts[0] is not None and len(counts[0]) - 1 < self.hops:
                raise ValueError(
                    f"The batch was sampled with {len(counts[0]) - 1} hops but the "
                    f"head has {self.hops} layers; sample with hops >= "
                    f"{self.hops}.")
            trim = self.trim and counts[0] is not None and counts[1] is not None

        for i, conv in enumerate(self.convs):
            if trim:
                x, edge_index, _ = trim_to_layer(i, counts[0], counts[1], x,
                                                 edge_index)
                if density is not None and i > 0:
                    density = density.narrow(0, 0, x.size(0))
            x = conv(x, edge_index, density=density)
            if i < len(self.convs) - 1 and self.act is not None:
                x = self.act(x)
        if batch_size is not None:
            x = x[:batch_size]
        return x

    def forward_batch(self, seed_features: Tensor, bank: Tensor, batch: Data,
                      density: Tensor | None = None, embed: bool = False
                      ) -> Tensor:
        """Logits of a loader batch's seeds: :func:`assemble_input` followed by
        :meth:`forward` (by :meth:`embed` with ``embed=True``: the seeds'
        classifier input)."""
        x, rho = assemble_input(seed_features, bank, batch,
                                density if self.uses_density else None)
        fn = self.embed if embed else self.forward
        return fn(x, batch.edge_index, rho, batch_size=batch.batch_size,
                  num_sampled_nodes_per_hop=batch.get("num_sampled_nodes"),
                  num_sampled_edges_per_hop=batch.get("num_sampled_edges"))

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, {self.num_classes}, "
                f"hops={self.hops}, aggregator='{self.aggregator}')")


def assemble_input(seed_features: Tensor, bank: Tensor, batch: Data,
                   density: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    r"""The head's input for a sampled batch.

    The first ``batch.batch_size`` rows are ``seed_features`` as given (the
    live backbone output: gradients flow back through them); the other nodes
    take their Feature Bank rows ``bank[batch.n_id]``, detached, so the bank
    never receives gradients. Densities are gathered from the global
    ``density`` through ``n_id``; nodes outside the graph (test queries,
    ``n_id == -1``) get NaN, which is never read since such nodes are no
    edge source.

    Args:
        seed_features (torch.Tensor): Backbone features of the seeds
            :math:`[B, d]`, in the order of the batch's seeds.
        bank (torch.Tensor): Feature Bank :math:`[N, d]` of the global graph.
        batch (torch_geometric.data.Data): A batch from the loader or from
            :func:`~dag_pyg.sampler.query_subgraph`.
        density (torch.Tensor, optional): Global node densities :math:`[N]`
            (``graph.density``); if omitted, ``batch.density`` is used when
            present.

    Returns:
        ``(x [|V|, d], density [|V|] or None)``.
    """
    n_id, b = batch.n_id, int(batch.batch_size)
    if seed_features.dim() != 2 or seed_features.size(0) != b:
        raise ValueError(f"seed_features must be [batch_size={b}, d] in the order "
                         f"of the batch's seeds (got {tuple(seed_features.shape)}).")
    if bank.dim() != 2 or bank.size(1) != seed_features.size(1):
        raise ValueError(f"bank rows have width {tuple(bank.shape)[1:]} but the "
                         f"seed features have {seed_features.size(1)}; both must "
                         "come from the same backbone.")
    rest = n_id[b:]
    rows = bank.detach()[rest.to(bank.device)]
    x = torch.cat([seed_features,
                   rows.to(seed_features.device, seed_features.dtype)], dim=0)
    rho = None
    if density is not None:
        inside = n_id >= 0
        rho = density.detach()[n_id.clamp(min=0).to(density.device)]
        rho = rho.to(seed_features.device)
        if not bool(inside.all()):
            rho = rho.masked_fill(~inside.to(rho.device), math.nan)
    elif "density" in batch:
        rho = batch.density.to(seed_features.device)
    return x, rho
