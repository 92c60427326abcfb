"""DPLP (issue 3) against the sequential reference and the usual label
propagation baselines, on the same density-aware kNN graph.

    python -m benchmarks.speed.bench_dplp [--quick]

Datasets: a clustered Feature Bank (N=50k, d=128, k=64, Gaussian classes on
the unit sphere, 1% labelled, stratified) and scikit-learn's digits
(standardised pixels, k=10, 5 labels per class). Methods:

* ``dplp`` (LU and L): time includes the parent computation; the graph build
  is excluded and reported on its own line.
* ``reference``: the plain sequential Alg. 1 of ``tests/dplp_reference.py``.
* ``cg-diffusion``: LP-DeepSSL's diffusion (Iscen et al., 2019): symmetrised
  ``max(sim, 0)**3`` kNN affinity, ``D^-1/2 W D^-1/2``, one scipy CG solve of
  ``(I - 0.99 Wn) z = y_c`` per class, 20 iterations; time includes building
  the sparse matrix from the graph.
* ``diffusion (dag_pyg)``: the same diffusion as dag_pyg's
  ``pseudo_label.source: diffusion`` (:func:`dag_pyg.propagation.label_diffusion`,
  torch, all classes' CG at once, one intra-op thread like scipy's).
* ``pyg-labelprop``: PyG's ``LabelPropagation`` (20 layers, alpha 0.99) on
  the directed kNN graph with gcn-normalised ``max(sim, 0)**3`` weights.
* ``sklearn-spreading``: ``LabelSpreading(kernel="knn", n_neighbors=k)`` on
  the L2-normalised features (it builds its own kNN graph; time includes it).

Accuracy is over unlabelled nodes: ``acc_covered`` among those that got a
propagated label, ``acc_unlabelled`` over all of them (uncovered counted as
wrong). ``coverage`` is the share of unlabelled nodes that got a label (for
the diffusions: a positive score). The timing is repeated with 100 classes
(DPLP vs the CG diffusion). Writes ``benchmarks/speed/results/bench_dplp.json``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import cg
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler
from sklearn.semi_supervised import LabelSpreading
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.nn.models import LabelPropagation

from benchmarks.common import (
    SPEED_RESULTS,
    clustered_features,
    print_table,
    timeit,
    write_json,
)
from dag_pyg.graph import build_density_graph
from dag_pyg.propagation import dplp, label_diffusion
from tests.dplp_reference import reference_dplp

TARGET_TIME_S = 0.25
TARGET_VS_REFERENCE = 50.0
TARGET_VS_CG = 10.0


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #
def stratified_mask(y: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(y.numel(), dtype=torch.bool)
    for c in range(int(y.max()) + 1):
        idx = (y == c).nonzero().view(-1)
        mask[idx[torch.randperm(idx.numel(), generator=gen)[:per_class]]] = True
    return mask


def synthetic(n: int, num_classes: int, noise: float, seed: int):
    # noise=3.0: about two thirds of a node's 64 neighbours share its class,
    # so propagation is far from trivial.
    x, y = clustered_features(n, 128, num_classes, noise, seed=seed)
    per_class = max(1, round(0.01 * n / num_classes))
    return x, y, stratified_mask(y, per_class, seed + 1)


def digits():
    data = load_digits()
    x = torch.from_numpy(StandardScaler().fit_transform(data.data)).float()
    y = torch.from_numpy(data.target).long()
    return x, y, stratified_mask(y, 5, 0)


# --------------------------------------------------------------------------- #
# Methods: each returns (scores or labels, covered mask)
# --------------------------------------------------------------------------- #
def run_dplp(graph, y, mask, mode):
    out = dplp(graph, y, mask, mode=mode)
    return out.labels, out.phase > 0


def run_reference(graph, y, mask, mode):
    labels, _, phase, _ = reference_dplp(graph.edge_index, graph.sim,
                                         graph.density, y, mask, mode=mode)
    return torch.tensor(labels), torch.tensor(phase) > 0


def affinity(graph) -> sp.csr_matrix:
    """LP-DeepSSL's normalised affinity ``D^-1/2 (W + W^T) D^-1/2``."""
    n = graph.num_nodes
    w = graph.sim.clamp_min(0).pow(3).numpy().astype(np.float64)
    u, v = graph.edge_index[1].numpy(), graph.edge_index[0].numpy()
    W = sp.csr_matrix((w, (u, v)), shape=(n, n))
    W = W + W.T
    W = W - sp.diags(W.diagonal())
    s = np.asarray(W.sum(axis=1)).ravel()
    s[s == 0] = 1
    d = sp.diags(1.0 / np.sqrt(s))
    return (d @ W @ d).tocsr()


def run_cg(graph, y, mask, num_classes, alpha=0.99, maxiter=20):
    n = graph.num_nodes
    A = sp.eye(n, format="csr") - alpha * affinity(graph)
    yl, idx = y[mask].numpy(), mask.nonzero().view(-1).numpy()
    Z = np.zeros((n, num_classes))
    for c in range(num_classes):
        cur = idx[yl == c]
        b = np.zeros(n)
        if cur.size:
            b[cur] = 1.0 / cur.size
        Z[:, c], _ = cg(A, b, rtol=1e-6, maxiter=maxiter)
    Z[Z < 0] = 0
    Z = torch.from_numpy(Z)
    return Z.argmax(dim=1), Z.amax(dim=1) > 0


def run_ours(graph, y, mask, num_classes):
    z = label_diffusion(graph, y, mask, num_classes)
    return z.argmax(dim=1), z.amax(dim=1) > 0


def run_pyg(graph, y, mask, num_layers=20, alpha=0.99):
    w = graph.sim.clamp_min(0).pow(3)
    ei, w = gcn_norm(graph.edge_index, w, graph.num_nodes, add_self_loops=False)
    out = LabelPropagation(num_layers, alpha)(y, ei, mask, edge_weight=w)
    return out.argmax(dim=1), out.amax(dim=1) > 0


def run_sklearn(x, y, mask, k):
    xn = torch.nn.functional.normalize(x, dim=1).numpy()
    target = torch.where(mask, y, -1).numpy()
    model = LabelSpreading(kernel="knn", n_neighbors=k, n_jobs=None).fit(xn, target)
    dist = torch.from_numpy(model.label_distributions_)
    covered = torch.isfinite(dist).all(dim=1) & (dist.amax(dim=1) > 0)
    return torch.from_numpy(model.transduction_).long(), covered


# --------------------------------------------------------------------------- #
def single_thread(fn):
    def run():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)
    return run


def once(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def scores(pred, covered, y, mask):
    unl = ~mask
    right = (pred == y) & covered & unl
    n_cov = int((covered & unl).sum())
    return {"acc_covered": float(right.sum()) / max(1, n_cov),
            "acc_unlabelled": float(right.sum()) / int(unl.sum()),
            "coverage": n_cov / int(unl.sum())}


def bench_dataset(name, x, y, mask, k, args, methods):
    n, num_classes = x.size(0), int(y.max()) + 1
    graph, t_build = once(lambda: build_density_graph(x, k=k))
    # The kNN search leaves OpenMP/BLAS worker threads spinning for a while;
    # on a 2-core machine they stall torch's 2-thread parallel regions (dplp
    # measured 10x slower right after a build). Let them go idle first.
    time.sleep(3)
    base = {"dataset": name, "N": n, "k": k, "classes": num_classes}
    rows = [{**base, "method": "graph build (excluded)", "time_s": t_build,
             "note": f"build_density_graph, {graph.backend}"}]

    def add(method, fn, repeat, note="", y=y, mask=mask):
        (pred, covered), t_first = once(fn)
        t = min(t_first, timeit(fn, repeat=repeat - 1, warmup=0)) \
            if repeat > 1 else t_first
        rows.append({**base, "method": method, "time_s": t,
                     **scores(pred, covered, y, mask), "note": note})
        print(f"  {name} {method}: {t:.4g} s", flush=True)

    rep = args.repeat
    for mode in ("LU", "L"):
        add(f"dplp-{mode}", lambda mode=mode: run_dplp(graph, y, mask, mode), rep,
            f"best of {rep}")
    # The same with one intra-op thread: on a shared 2-core machine OpenMP's
    # barrier waits can dominate these memory-bound passes.
    add("dplp-LU 1 thread", single_thread(lambda: run_dplp(graph, y, mask, "LU")),
        rep, f"best of {rep}, torch.set_num_threads(1)")
    if "reference" in methods:
        add("reference-LU", lambda: run_reference(graph, y, mask, "LU"), 1,
            "sequential Python, 1 run")
    add("cg-diffusion", lambda: run_cg(graph, y, mask, num_classes),
        2 if n <= 10_000 or args.quick else 1)
    add("diffusion (dag_pyg)", single_thread(
        lambda: run_ours(graph, y, mask, num_classes)),
        2 if n <= 10_000 or args.quick else 1, "1 thread")
    if "pyg" in methods:
        add("pyg-labelprop", lambda: run_pyg(graph, y, mask), 3)
    if "sklearn" in methods:
        m = args.sklearn_max_n
        if n <= m:
            add("sklearn-spreading", lambda: run_sklearn(x, y, mask, k), 1)
        else:
            # Too slow on all nodes: the first m nodes (nodes are in random
            # order), scored on that subset.
            add("sklearn-spreading", lambda: run_sklearn(x[:m], y[:m], mask[:m], k),
                1, f"subset N={m}, scored on it", y=y[:m], mask=mask[:m])
    return graph, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--noise", type=float, default=3.0)
    p.add_argument("--repeat", type=int, default=15, help="best-of runs of dplp")
    p.add_argument("--sklearn-max-n", type=int, default=50_000,
                   help="run LabelSpreading on at most this many nodes")
    p.add_argument("--quick", action="store_true", help="smoke run (N=3000)")
    args = p.parse_args()
    if args.quick:
        args.n, args.repeat = 3000, 3

    all_methods = ("reference", "pyg", "sklearn")
    rows = []
    x, y, mask = synthetic(args.n, 10, args.noise, seed=0)
    _, r = bench_dataset("clustered", x, y, mask, args.k, args, all_methods)
    rows += r
    x, y, mask = digits()
    _, r = bench_dataset("digits", x, y, mask, 10, args, all_methods)
    rows += r
    x, y, mask = synthetic(args.n, 100, args.noise, seed=1)
    _, r = bench_dataset("clustered-100", x, y, mask, args.k, args, ())
    rows += r

    columns = ["dataset", "N", "k", "classes", "method", "time_s", "acc_covered",
               "acc_unlabelled", "coverage", "note"]
    print()
    print_table(rows, columns)

    def t(dataset, method):
        return next(r["time_s"] for r in rows
                    if r["dataset"] == dataset and r["method"] == method)

    t_dplp = t("clustered", "dplp-LU")
    t_dplp1 = t("clustered", "dplp-LU 1 thread")
    t_ref, t_cg = t("clustered", "reference-LU"), t("clustered", "cg-diffusion")
    lt, ge = "<", ">="
    checks = {
        "dplp_time_s": (t_dplp, lt, TARGET_TIME_S),
        "reference_over_dplp": (t_ref / t_dplp, ge, TARGET_VS_REFERENCE),
        "cg10_over_dplp": (t_cg / t_dplp, ge, TARGET_VS_CG),
        # The reference and scipy's CG run on one core: the like-for-like
        # comparison is with one intra-op thread.
        "dplp_1thread_time_s": (t_dplp1, lt, TARGET_TIME_S),
        "reference_over_dplp_1thread": (t_ref / t_dplp1, ge, TARGET_VS_REFERENCE),
        "cg10_over_dplp_1thread": (t_cg / t_dplp1, ge, TARGET_VS_CG),
        "dplp100_over_dplp10": (t("clustered-100", "dplp-LU 1 thread") / t_dplp1,
                                "~", 1.0),
        "cg100_over_cg10": (t("clustered-100", "cg-diffusion") / t_cg, "~", 10.0),
        # No target: the library's diffusion against its peer (scipy's CG).
        "cg_over_ours": (t_cg / t("clustered", "diffusion (dag_pyg)"), "~", 1.0),
    }
    print(f"\nTargets (clustered, N={args.n}, k={args.k}, "
          f"{torch.get_num_threads()} threads unless noted"
          f"{'; QUICK run, not the targeted size' if args.quick else ''}):")
    for key, (v, op, target) in checks.items():
        ok = {"<": v < target, ">=": v >= target}.get(op)
        status = "" if ok is None else ("PASS" if ok else "MISS")
        print(f"  {key:28s} {v:9.4g}   target {op} {target:<8g} {status}")
    write_json("bench_dplp", {
        "args": vars(args), "rows": rows,
        "targets": {k: {"value": v, "target": f"{op} {tg}",
                        "met": {"<": v < tg, ">=": v >= tg}.get(op)}
                    for k, (v, op, tg) in checks.items()},
        "notes": "time_s: best of `repeat` runs for dplp, best of 3 for PyG, "
                 "single runs otherwise; graph build excluded from every "
                 "method except sklearn (which builds its own kNN graph)."},
               SPEED_RESULTS)


if __name__ == "__main__":
    main()
