"""The paper's figures from finished runs.

    python -m benchmarks.analysis.figures tsne RUN_DIR [--max-points 1500]
    python -m benchmarks.analysis.figures path-lengths RUN_DIR
    python -m benchmarks.analysis.figures drift RUN_DIR [RUN_DIR ...] [--name NAME]
    python -m benchmarks.analysis.figures gap RUN_DIR [RUN_DIR ...] [--name NAME]
    python -m benchmarks.analysis.figures schedule GRID [GRID ...] [--name NAME]
    # RUN_DIR e.g. benchmarks/runs/digits_table1/dag/seed0; GRID e.g. cifar10_cpu_e24

``tsne`` (Fig. 3): a 2-D t-SNE (scikit-learn) of the test set's backbone
features beside the same queries after the DNA head's aggregation layers
(the classifier's input), coloured by class. ``path-lengths`` (Fig. 5): the
histogram of DPLP path lengths over the run's last Feature Bank. ``drift``:
per epoch, the fraction of each node's ``dna.k`` nearest neighbours kept from
one Feature Bank to the next and the mean cosine of a node's old and new
feature (``metrics.jsonl``'s ``knn_kept``, ``bank_cos_prev``), one line per
run: how stale the bank DNA reads is. ``gap``: per epoch, the mean cosine
between a seed's live training feature and its bank row (``live_bank_cos``).
``schedule``: the ``labels_only`` and
``dag`` rows of grids that differ in ``optim.epochs`` (their result JSONs),
test error and the seed-paired difference against the number of main
epochs, on the whole test set where ``eval_full_test.py`` measured it. All
write PNGs into ``benchmarks/analysis/figures/`` and print their path.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import EXPERIMENT_RESULTS, FIGURES
from dag_pyg.propagation import density_ascending_parents, path_lengths, resolve_sigma
from dag_pyg.sampler import query_subgraph
from dag_pyg.train import LoadedRun, load_run
from dag_pyg.train.features import extract_features
from dag_pyg.train.plots import plot_path_lengths

RESULTS = EXPERIMENT_RESULTS


def load(run_dir: Path) -> LoadedRun:
    """A finished run with the backbone and head it evaluates with (the
    averaged ones where it averaged its weights) in eval mode."""
    run = load_run(run_dir, progress=False)
    run.model.eval_backbone.eval()
    run.model.eval_head.eval()
    return run


@torch.no_grad()
def aggregated(run: LoadedRun, queries: torch.Tensor, bank: torch.Tensor,
               graph) -> torch.Tensor:
    """The classifier's input for test queries: the head's aggregation layers
    over the queries' retrieved sub-graph (:meth:`DNAHead.embed`)."""
    head = run.model.eval_head
    batch = query_subgraph(queries, bank, graph, run.cfg.dna.k, head.hops)
    return head.forward_batch(queries, bank, batch, graph.density, embed=True)


def tsne(run_dir: Path, max_points: int) -> Path:
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    run = load(run_dir)
    if not run.model.uses_graph_head:
        raise SystemExit(f"'{run_dir}' trained no DNA head: nothing to compare.")
    bank = run.state["banks"]["features"].to(run.device)
    graph = run.build_graph(bank).to(run.device)
    test = run.data.test_set
    rows = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
    rows = rows[:max_points]
    q = extract_features(run.model.eval_backbone, run.data.eval_tf, test, rows,
                         run.device, run.cfg.eval.batch_size, desc="test")
    after = aggregated(run, q, bank, graph)
    q, after = q.cpu(), after.cpu()
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
    fig.suptitle(f"t-SNE of test features: {run.cfg.name}")
    FIGURES.mkdir(parents=True, exist_ok=True)
    out = FIGURES / f"tsne_{run.cfg.name}.png"
    fig.savefig(out, dpi=110)
    return out


def lengths(run_dir: Path) -> Path:
    run = load(run_dir)
    if not run.state["banks"]["features"].numel():
        raise SystemExit(f"'{run_dir}' keeps no Feature Bank (trained without DNA "
                         "and DPLP): no DPLP paths.")
    graph = run.build_graph(run.state["banks"]["features"])
    sigma = resolve_sigma(run.cfg.dplp.sigma, graph)
    ell = path_lengths(density_ascending_parents(graph, sigma))
    FIGURES.mkdir(parents=True, exist_ok=True)
    out = FIGURES / f"path_lengths_{run.cfg.name}.png"
    plot_path_lengths(ell, out, title=f"{run.cfg.name}: DPLP path lengths "
                      f"(mean {float(ell.float().mean()):.1f}, "
                      f"median {int(np.median(ell.numpy()))})")
    return out


def _save(fig, out: Path) -> Path:
    """Writes a finished figure as PNG and closes it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
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
    return _save(fig, out_dir / f"drift_{name}.png")


def gap(run_dirs: list[Path], name: str, out_dir: Path = FIGURES) -> Path:
    """The live-vs-bank gap per main epoch: the mean cosine between a seed's
    live feature (train mode, augmented; mixed with input mixup) and its
    Feature Bank row (``live_bank_cos``)."""
    import json

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for run in run_dirs:
        recs = [json.loads(x) for x in (run / "metrics.jsonl").open()]
        recs = [r for r in recs if r.get("live_bank_cos") is not None]
        if not recs:
            raise SystemExit(f"{run}: metrics.jsonl has no 'live_bank_cos' (a "
                             "run that reads no bank, or from before it was "
                             "recorded)")
        ax.plot([r["epoch"] for r in recs], [r["live_bank_cos"] for r in recs],
                marker=".", label="/".join(run.parts[-3:]))
    ax.set(xlabel="epoch", ylabel="cos(live feature, bank row), mean")
    ax.legend(fontsize=7)
    ax.set_title("Live vs bank features")
    return _save(fig, out_dir / f"gap_{name}.png")


def schedule_points(grids: list[str], results: Path = RESULTS
                    ) -> tuple[dict[str, dict[int, dict[int, float]]], int | None]:
    """``{row: {epochs: {seed: test error}}}`` for the ``labels_only`` and
    ``dag`` rows of ``grids`` (the rows every schedule grid has), on the
    whole test set (``full_test``, its size returned beside) when every
    record has it, else on the run's own test set (size ``None``)."""
    import json

    recs = [json.loads(p.read_text()) for g in grids
            for row in ("labels_only", "dag")
            for p in sorted((results / g).glob(f"{row}__seed*.json"))]
    if not recs:
        raise SystemExit(f"no labels_only/dag results in {', '.join(grids)}")
    full = all("full_test" in r for r in recs)
    out: dict[str, dict[int, dict[int, float]]] = {}
    for r in recs:
        epochs = r["summary"]["config"]["optim"]["epochs"]
        err = r["full_test"]["test_error"] if full else r["summary"]["test_error_last"]
        out.setdefault(r["row"], {}).setdefault(epochs, {})[r["seed"]] = err
    return out, (recs[0]["full_test"]["num_test"] if full else None)


def schedule(grids: list[str], name: str, out_dir: Path = FIGURES,
             results: Path = RESULTS) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts, n_test = schedule_points(grids, results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for row, by_epochs in pts.items():
        xs = sorted(by_epochs)
        mean = [np.mean(list(by_epochs[x].values())) for x in xs]
        std = [np.std(list(by_epochs[x].values()), ddof=1)
               if len(by_epochs[x]) > 1 else 0.0 for x in xs]
        axes[0].errorbar(xs, mean, yerr=std, marker="o", capsize=3, label=row)
    base, dag = pts.get("labels_only", {}), pts.get("dag", {})
    xs = sorted(set(base) & set(dag))
    diffs = [[dag[x][s] - base[x][s] for s in dag[x] if s in base[x]] for x in xs]
    for x, d in zip(xs, diffs, strict=True):
        axes[1].scatter([x] * len(d), d, color="grey", s=12)
    axes[1].errorbar(xs, [np.mean(d) for d in diffs],
                     yerr=[np.std(d, ddof=1) if len(d) > 1 else 0.0 for d in diffs],
                     marker="o", capsize=3, color="C1", label="mean ± std over seeds")
    axes[1].axhline(0.0, color="black", lw=0.8)
    where = f"all {n_test:,} test images" if n_test else "the runs' test set"
    axes[0].set(xlabel="main epochs", ylabel=f"test error % ({where})")
    axes[1].set(xlabel="main epochs",
                ylabel="DAG − labels only, paired by seed (points)")
    axes[0].legend()
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Schedule length: {', '.join(grids)}")
    return _save(fig, out_dir / f"schedule_{name}.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("figure", choices=["tsne", "path-lengths", "drift", "gap",
                                      "schedule"])
    p.add_argument("run_dirs", type=Path, nargs="+",
                   help="run folders (schedule: grid names)")
    p.add_argument("--max-points", type=int, default=1500)
    p.add_argument("--name", default="runs",
                   help="drift, gap, schedule: the PNG's name")
    args = p.parse_args()
    if args.figure == "schedule":
        out = schedule([str(g) for g in args.run_dirs], args.name)
    elif args.figure == "drift":
        out = drift(args.run_dirs, args.name)
    elif args.figure == "gap":
        out = gap(args.run_dirs, args.name)
    elif len(args.run_dirs) > 1:
        raise SystemExit(f"'{args.figure}' takes one run folder.")
    elif args.figure == "tsne":
        out = tsne(args.run_dirs[0], args.max_points)
    else:
        out = lengths(args.run_dirs[0])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
