"""Approximate kNN graphs for large Feature Banks: ``faiss_ivf`` against exact
search (faiss ``IndexFlatIP``), d=128, k=64, CPU.

    python -m benchmarks.speed.bench_knn_ivf [--sizes 50000 100000] [--nprobe 4 16 64]

For each N: the exact graph's time (the peer), then ``build_density_graph``
with ``backend="faiss_ivf"`` at several fixed ``nprobe`` (``ivf_recall=None``)
and with the default, ``nprobe`` tuned to recall 0.99 of a sample's exact
neighbours (``nprobe`` "tuned:<n>", with the sample's recall beside the
whole graph's): time, speed-up over exact,
recall of the exact neighbour lists, mean |density error|, and the index's
memory (IVFFlat keeps every vector: N*d*4 bytes, plus the centroids and ids).
Prints a table and writes ``benchmarks/speed/results/bench_knn_ivf.json``.
"""
from __future__ import annotations

import argparse
import time

from benchmarks.common import (
    SPEED_RESULTS,
    clustered_features,
    print_table,
    write_json,
)
from dag_pyg import build_density_graph
from dag_pyg.graph import neighbour_recall
from dag_pyg.graph.knn import default_nlist


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[50_000, 100_000])
    p.add_argument("--nprobe", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--classes", type=int, default=100,
                   help="clusters of the synthetic bank (CIFAR-100-like)")
    p.add_argument("--quick", action="store_true", help="smoke run (N=5000)")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.nprobe = [5000], [4]

    rows = []
    for n in args.sizes:
        x, _ = clustered_features(n, args.dim, num_classes=args.classes, seed=n)
        t = time.perf_counter()
        exact = build_density_graph(x, args.k, backend="faiss")
        t_exact = time.perf_counter() - t
        ref = exact.edge_index[0].view(n, args.k)
        nlist = default_nlist(n)
        rows.append({"N": n, "backend": "faiss (exact)", "nlist": None,
                     "nprobe": None, "time_s": t_exact, "speedup": 1.0,
                     "recall": 1.0, "density_err": 0.0,
                     "index_mb": n * args.dim * 4 / 2**20})
        for nprobe in [*args.nprobe, "tuned"]:
            t = time.perf_counter()
            if nprobe == "tuned":
                g = build_density_graph(x, args.k, backend="faiss_ivf")
                nprobe = f"tuned:{g.ivf_nprobe}"
            else:
                g = build_density_graph(x, args.k, backend="faiss_ivf",
                                        ivf_nprobe=nprobe, ivf_recall=None)
            dt = time.perf_counter() - t
            rows.append({
                "N": n, "backend": "faiss_ivf", "nlist": nlist, "nprobe": nprobe,
                "sample_recall": g.ivf_recall,
                "time_s": dt, "speedup": t_exact / dt,
                "recall": neighbour_recall(g.edge_index[0].view(n, args.k), ref),
                "density_err": float((g.density - exact.density).abs().mean()),
                "index_mb": (n * args.dim * 4 + nlist * args.dim * 4 + n * 8) / 2**20})
            print(rows[-1], flush=True)
    cols = ["N", "backend", "nlist", "nprobe", "time_s", "speedup", "recall",
            "sample_recall", "density_err", "index_mb"]
    print_table(rows, cols)
    write_json("bench_knn_ivf", {"args": vars(args), "rows": rows}, SPEED_RESULTS)


if __name__ == "__main__":
    main()
