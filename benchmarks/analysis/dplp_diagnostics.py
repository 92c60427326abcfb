"""DPLP label quality on a finished run's last Feature Bank, across ``graph.k``,
``dplp.sigma`` and ``dplp.mode``: the question of issue 6 (are DPLP's labels
more accurate than the model's own predictions on the nodes DPLP covers?),
asked on the features the DAG loop really produced.

    python -m benchmarks.analysis.dplp_diagnostics RUN_DIR [RUN_DIR ...]
        [--k 8 16 32 64] [--sigma q0.1 q0.25 q0.5 q0.75 inf] [--modes L LU]
    # e.g. RUN_DIR = benchmarks/runs/cifar10_cpu_table1/dag/seed0

For each setting: coverage of the unlabelled nodes, DPLP's accuracy on the
covered nodes, the Label Bank's (the model's) accuracy on the same nodes, and
the median path length. Accuracies use the training labels of the unlabelled
nodes (ground truth the run never saw): a diagnosis, not a way to choose
settings, which belongs to a validation split. Prints a table and writes
``benchmarks/analysis/results/dplp_diagnostics.json``.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from benchmarks.common import ANALYSIS_RESULTS, print_table, write_json
from dag_pyg import build_density_graph
from dag_pyg.propagation import dplp, path_lengths, resolve_sigma
from dag_pyg.train import load_run


def sigma_value(graph, sigma: str) -> float:
    """``--sigma``'s ``inf`` or ``qX`` (a quantile of the parent steps)."""
    return resolve_sigma(math.inf if sigma == "inf" else sigma, graph)


def diagnose(run_dir: Path, ks: list[int], sigmas: list[str],
             modes: list[str]) -> list[dict]:
    run = load_run(run_dir, progress=False)
    state, banks = run.state, run.state["banks"]
    feats, prior = banks["features"], banks["prior"]
    if not feats.numel():
        raise SystemExit(f"'{run_dir}' keeps no Feature Bank (trained without DNA "
                         "and DPLP): nothing to diagnose.")
    lab, truth = run.data.labelled_mask, run.data.true_y
    unl = ~lab
    y_known = torch.where(lab, truth, torch.zeros_like(truth))
    model_acc = float((prior[unl] == truth[unl]).float().mean())
    rows = []
    for k in ks:
        graph = build_density_graph(feats, k, backend=run.cfg.graph.backend)
        for sigma in sigmas:
            s = sigma_value(graph, sigma)
            for mode in modes:
                res = dplp(graph, y_known, lab, prior, sigma=s, mode=mode,
                           num_classes=run.data.num_classes)
                cov = (res.phase > 0) & unl
                n_cov = int(cov.sum())
                rows.append({
                    "run": "/".join(run_dir.parts[-3:]),
                    "epoch": state["epoch"],
                    "k": k, "sigma": sigma, "mode": mode,
                    "coverage": n_cov / max(int(unl.sum()), 1),
                    "dplp_acc_covered": float((res.labels[cov] == truth[cov]).float()
                                              .mean()) if n_cov else None,
                    "model_acc_covered": float((prior[cov] == truth[cov]).float()
                                               .mean()) if n_cov else None,
                    "model_acc_all": model_acc,
                    "path_len_q50": float(path_lengths(res.parents).float().median()),
                })
    for r in rows:
        if r["dplp_acc_covered"] is not None:
            r["dplp_minus_model"] = r["dplp_acc_covered"] - r["model_acc_covered"]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--k", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--sigma", nargs="+", default=["q0.1", "q0.25", "q0.5", "q0.75",
                                                   "inf"])
    p.add_argument("--modes", nargs="+", default=["L", "LU"])
    p.add_argument("--name", default="dplp_diagnostics")
    args = p.parse_args()
    rows = [r for run in args.runs for r in diagnose(run, args.k, args.sigma,
                                                      args.modes)]
    print_table(rows, ["run", "epoch", "k", "sigma", "mode", "coverage",
                       "dplp_acc_covered", "model_acc_covered", "dplp_minus_model",
                       "path_len_q50"])
    write_json(args.name, {"args": {**vars(args), "runs": [str(r) for r in args.runs]},
                           "rows": rows}, ANALYSIS_RESULTS)


if __name__ == "__main__":
    main()
