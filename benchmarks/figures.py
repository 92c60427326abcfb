"""The paper's figures from finished runs.

    python benchmarks/figures.py tsne RUN_DIR [--max-points 1500]
    python benchmarks/figures.py path-lengths RUN_DIR
    python benchmarks/figures.py drift RUN_DIR [RUN_DIR ...] [--name NAME]

``tsne`` (Fig. 3): a 2-D t-SNE (scikit-learn) of the test set's backbone
features beside the same queries after the DNA head's aggregation layers
(the classifier's input), coloured by class. ``path-lengths`` (Fig. 5): the
histogram of DPLP path lengths over the run's last Feature Bank. ``drift``:
per epoch, the fraction of each node's ``dna.k`` nearest neighbours kept from
one Feature Bank to the next and the mean cosine of a node's old and new
feature (``metrics.jsonl``'s ``knn_kept``, ``bank_cos_prev``), one line per
run: how stale the bank DNA reads is. All write PNGs into
``benchmarks/figures/`` and print their path.
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


def drift(run_dirs: list[Path], name: str, out_dir: Path = FIGURES) -> Path:
    import json

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for run in run_dirs:
        recs = [json.loads(x) for x in (run / "metrics.jsonl").open()]
        recs = [r for r in recs if r.get("knn_kept") is not None]
        if not recs:
            raise SystemExit(f"{run}: metrics.jsonl has no 'knn_kept' (a run "
                             "from before bank drift was recorded?)")
        epochs = [r["epoch"] for r in recs]
        label = "/".join(run.parts[-3:])
        axes[0].plot(epochs, [r["knn_kept"] for r in recs], marker=".", label=label)
        axes[1].plot(epochs, [r["bank_cos_prev"] for r in recs], marker=".",
                     label=label)
    axes[0].set(xlabel="epoch", ylabel="kNN kept from the previous bank",
                ylim=(0, 1))
    axes[1].set(xlabel="epoch", ylabel="cos(old, new feature), mean")
    axes[0].legend(fontsize=7)
    fig.suptitle("Feature Bank drift between refreshes")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"drift_{name}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


class _Quiet:
    """A logger stand-in without progress bars."""

    @staticmethod
    def progress(iterable, **_):
        return iterable


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("figure", choices=["tsne", "path-lengths", "drift"])
    p.add_argument("run_dirs", type=Path, nargs="+")
    p.add_argument("--max-points", type=int, default=1500)
    p.add_argument("--name", default="runs", help="drift: the PNG's name")
    args = p.parse_args()
    if args.figure == "drift":
        out = drift(args.run_dirs, args.name)
    elif len(args.run_dirs) > 1:
        raise SystemExit(f"'{args.figure}' takes one run folder.")
    elif args.figure == "tsne":
        out = tsne(args.run_dirs[0], args.max_points)
    else:
        out = lengths(args.run_dirs[0])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
