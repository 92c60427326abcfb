"""How much of what DNA aggregates comes from the right class, on a finished
run's last Feature Bank, against the model's own accuracy.

    python -m benchmarks.analysis.neighbour_purity RUN_DIR [RUN_DIR ...] [--k 8 32]
    # e.g. benchmarks/runs/cifar10_cpu_table1/dag/seed0

DNA replaces a node's feature :math:`x_u` by :math:`x_u + \\sum_v a_{uv} x_v`
over its ``k`` nearest Feature-Bank neighbours, with the parameter-free
attention :math:`a_{uv} = \\mathrm{softmax}_v(\\cos(x_u, x_v) + \\rho_v)`
(Eqs. 4-7). That helps when the neighbours are of the node's class more
often than the model is right. For every unlabelled node of the bank this
reports, against the Label Bank's (the model's) accuracy on the same nodes:

- ``purity``: the fraction of the ``k`` neighbours of the node's class;
- ``alpha_purity``: the attention mass :math:`\\sum_v a_{uv} [y_v = y_u]`
  of the run's first aggregation layer (DNA's; without density for
  ``dna_no_density``; learned for ``gat``), and ``alpha_max``, the largest
  weight (``1/k`` if uniform);
- ``vote_acc``: how often the neighbours' majority class is the node's;
- ``target_acc``: how often the run's last training targets (DPLP's or
  the Label Bank's) are right, over the nodes that have one;
- ``diffusion_acc``: how often LP-DeepSSL's label diffusion (Iscen et al.,
  2019; :func:`dag_pyg.propagation.label_diffusion`, what
  ``pseudo_label.source: diffusion`` trains on) from the labelled nodes
  alone, over the run's graph, is right: what the graph itself holds for
  the targets.

Uses the training labels of the unlabelled nodes (ground truth the run never
saw): a diagnosis, not a way to choose settings. Prints a table and writes
``benchmarks/analysis/results/neighbour_purity.json``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor
from torch_geometric.utils import scatter, softmax

from benchmarks.common import ANALYSIS_RESULTS, print_table, write_json
from dag_pyg import build_density_graph
from dag_pyg.nn import DNAHead
from dag_pyg.propagation import label_diffusion
from dag_pyg.sampler import knn_subgraph
from dag_pyg.train import load_run


def neighbour_purity(graph, y: Tensor, num_classes: int,
                     alpha: Tensor | None = None) -> dict[str, Tensor]:
    """Per centre node of ``graph`` (edges ``v -> u`` with ``sim`` and
    ``density``): ``purity``, ``alpha_purity``, ``alpha_max`` (the largest
    attention weight: ``1/k`` when uniform) and ``vote`` (1 where the
    neighbours' majority class, ties to the smaller class, is ``y_u``).
    ``alpha`` (per edge) replaces DNA's attention, e.g. a trained GAT's."""
    src, dst = graph.edge_index
    n = graph.num_nodes
    same = (y[src] == y[dst]).double()
    if alpha is None:
        alpha = softmax(graph.sim.double() + graph.density.double()[src], dst,
                        num_nodes=n)
    alpha = alpha.double().view(-1)
    counts = scatter(torch.nn.functional.one_hot(y[src], num_classes).double(),
                     dst, dim=0, dim_size=n, reduce="sum")
    return {"purity": scatter(same, dst, dim=0, dim_size=n, reduce="mean"),
            "alpha_purity": scatter(alpha * same, dst, dim=0, dim_size=n,
                                    reduce="sum"),
            "alpha_max": scatter(alpha, dst, dim=0, dim_size=n, reduce="max"),
            "vote": (counts.argmax(1) == y).double()}


def first_layer_attention(head: DNAHead, feats: Tensor, graph) -> Tensor | None:
    """The attention of the head's first aggregation layer over ``graph``'s
    edges (DNA's Eqs. 4-7, the same without density, or a trained GAT's: every
    layer takes the densities and ignores them if its attention does not read
    them); ``None`` for a head without aggregation layers."""
    if not len(head.convs):
        return None
    conv = head.eval().convs[0]
    with torch.no_grad():
        _, (ei, alpha) = conv(feats, graph.edge_index, density=graph.density,
                              return_attention_weights=True)
    if not torch.equal(ei, graph.edge_index):
        raise RuntimeError(f"{type(conv).__name__} returned another edge order")
    return alpha


def diagnose(run_dir: Path, ks: list[int] | None = None) -> list[dict]:
    run = load_run(run_dir, progress=False)
    state, cfg = run.state, run.cfg
    feats, prior = state["banks"]["features"], state["banks"]["prior"]
    if not feats.numel():
        raise SystemExit(f"'{run_dir}' keeps no Feature Bank (trained without DNA "
                         "and DPLP): nothing to diagnose.")
    truth, unl = run.data.true_y, ~run.data.labelled_mask
    ks = ks or [cfg.dna.k]
    if max(ks) > cfg.graph.k:
        raise SystemExit(f"--k {max(ks)} exceeds the run's graph.k={cfg.graph.k}: "
                         "the densities are those of its graph; use k <= graph.k.")
    # The run's own graph: its densities enter the attention.
    graph = build_density_graph(feats, cfg.graph.k, backend=cfg.graph.backend,
                                density=cfg.graph.density)
    labelled, targets = run.data.labelled_mask, state["banks"]["targets"]
    diffused = label_diffusion(graph, truth, labelled, run.data.num_classes).argmax(1)
    has_target = unl & (targets >= 0)
    extra = {"target_acc": float((targets == truth)[has_target].double().mean()),
             "diffusion_acc": float((diffused == truth)[unl].double().mean())}
    rows = []
    for k in ks:
        sub = knn_subgraph(graph, k)
        stats = neighbour_purity(sub, truth, run.data.num_classes,
                                 first_layer_attention(run.model.eval_head, feats, sub))
        rows.append({"run": "/".join(run_dir.parts[-3:]), "epoch": state["epoch"],
                     "attention": cfg.dna.aggregator, "k": k,
                     "model_acc": float((prior[unl] == truth[unl]).double().mean()),
                     **{key: float(v[unl].mean()) for key, v in stats.items()}})
        rows[-1]["vote_acc"] = rows[-1].pop("vote")
        rows[-1].update(extra)
        rows[-1]["alpha_purity_minus_model"] = (rows[-1]["alpha_purity"]
                                                - rows[-1]["model_acc"])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--k", type=int, nargs="+",
                   help="neighbours per node (default: each run's dna.k)")
    p.add_argument("--name", default="neighbour_purity")
    args = p.parse_args()
    rows = [r for run in args.runs for r in diagnose(run, args.k)]
    print_table(rows, ["run", "epoch", "attention", "k", "model_acc", "purity",
                       "alpha_purity", "alpha_max", "vote_acc",
                       "alpha_purity_minus_model", "target_acc", "diffusion_acc"])
    write_json(args.name, {"args": {**vars(args), "runs": [str(r) for r in args.runs]},
                           "rows": rows}, ANALYSIS_RESULTS)


if __name__ == "__main__":
    main()
