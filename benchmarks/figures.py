"""The paper's figures from finished runs.

    python benchmarks/figures.py tsne RUN_DIR [--max-points 1500]
    python benchmarks/figures.py path-lengths RUN_DIR

``tsne`` (Fig. 3): a 2-D t-SNE (scikit-learn) of the test set's backbone
features beside the same queries after the DNA head's aggregation layers
(the classifier's input), coloured by class. ``path-lengths`` (Fig. 5): the
histogram of DPLP path lengths over the run's last Feature Bank. Both write
PNGs into ``benchmarks/figures/`` and print their path.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dag_pyg.nn.dna_head import query_subgraph  # noqa: E402
from dag_pyg.propagation import density_ascending_parents, path_lengths  # noqa: E402
from dag_pyg.train.loop import Trainer, load_run  # noqa: E402
from dag_pyg.train.plots import plot_path_lengths  # noqa: E402

FIGURES = ROOT / "benchmarks" / "figures"


def _trainer(run_dir: Path) -> tuple[Trainer, dict]:
    trainer, state = load_run(run_dir, progress=False)
    trainer.backbone.eval()
    trainer.head.eval()
    return trainer, state


@torch.no_grad()
def aggregated(trainer: Trainer, queries: torch.Tensor, bank: torch.Tensor,
               graph) -> torch.Tensor:
    """The head's aggregation layers applied to test queries (classifier input)."""
    head = trainer.head
    batch = query_subgraph(queries, bank, graph, trainer.cfg.dna.k, head.hops)
    x = torch.cat([queries, bank[batch.n_id[batch.batch_size:]]])
    edge_index, density = batch.edge_index, batch.density
    for i, conv in enumerate(head.convs):
        x = conv(x, edge_index) if head.aggregator == "gat" else \
            conv(x, edge_index, density=density)
        if i < len(head.convs) - 1 and head.act is not None:
            x = head.act(x)
    return x[: batch.batch_size]


def tsne(run_dir: Path, max_points: int) -> Path:
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    trainer, state = _trainer(run_dir)
    if not trainer.uses_graph_head:
        raise SystemExit(f"'{run_dir}' trained no DNA head: nothing to compare.")
    bank = state["banks"]["features"]
    graph = trainer.build_graph(bank)
    test = trainer.test_set
    rows = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
    rows = rows[:max_points]
    with torch.no_grad():
        q = trainer.extract(test, rows, _Quiet(), "test")
    after = aggregated(trainer, q, bank, graph)
    y = test.targets[rows].numpy()
    fig = Figure(figsize=(11, 5))
    for i, (name, feats) in enumerate([("backbone features", q),
                                       ("after DNA aggregation", after)]):
        emb = TSNE(n_components=2, init="pca", random_state=0,
                   perplexity=30).fit_transform(feats.numpy())
        ax = fig.add_subplot(1, 2, i + 1)
        ax.scatter(emb[:, 0], emb[:, 1], c=y, cmap="tab10", s=4)
        ax.set_title(f"{name} ({len(y)} test samples)")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"t-SNE of test features: {trainer.cfg.name}")
    FIGURES.mkdir(parents=True, exist_ok=True)
    out = FIGURES / f"tsne_{trainer.cfg.name}.png"
    fig.savefig(out, dpi=110)
    return out


def lengths(run_dir: Path) -> Path:
    trainer, state = _trainer(run_dir)
    graph = trainer.build_graph(state["banks"]["features"])
    sigma = trainer._resolve_sigma(graph)
    ell = path_lengths(density_ascending_parents(graph, sigma))
    FIGURES.mkdir(parents=True, exist_ok=True)
    out = FIGURES / f"path_lengths_{trainer.cfg.name}.png"
    plot_path_lengths(ell, out, title=f"{trainer.cfg.name}: DPLP path lengths "
                      f"(mean {float(ell.float().mean()):.1f}, "
                      f"median {int(np.median(ell.numpy()))})")
    return out


class _Quiet:
    """A logger stand-in without progress bars."""

    @staticmethod
    def progress(iterable, **_):
        return iterable


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("figure", choices=["tsne", "path-lengths"])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--max-points", type=int, default=1500)
    args = p.parse_args()
    out = tsne(args.run_dir, args.max_points) if args.figure == "tsne" else \
        lengths(args.run_dir)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
