"""The kernels of ``dag_pyg.nn.functional`` against the plain gathers they
replace, on the edge pattern of the 50k-node k=64 kNN graph, 128 channels,
CPU, forward and forward+backward, interleaved rounds in one process:

- ``edge_dot`` (SDDMM: ``torch.sparse.sampled_addmm``) against
  ``(a[i] * b[j]).sum(-1)``: the attention logits;
- ``csr_aggregate`` (CSR SpMM) against ``index_add`` of ``alpha * x[j]``:
  the aggregation.

    python -m benchmarks.speed.bench_kernels [--nodes 50000] [--rounds 3] [--quick]

A kernel stays in the package only while it beats its gather form here.
Prints a table, writes ``benchmarks/speed/results/bench_kernels.json``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.common import SPEED_RESULTS, clustered_features, print_table, write_json
from dag_pyg import build_density_graph
from dag_pyg.nn.functional import csr_aggregate, edge_dot

Kernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cases(x: torch.Tensor, edge_index: torch.Tensor, k: int
          ) -> dict[tuple[str, str], Kernel]:
    """(operation, implementation) -> fn(features, edge weights)."""
    n = x.size(0)
    src, dst = edge_index
    rowptr = torch.arange(n + 1) * k
    return {
        ("cos logits", "edge_dot (SDDMM)"): lambda h, w: edge_dot(h, h, dst, src),
        ("cos logits", "gathers"): lambda h, w: (h[dst] * h[src]).sum(-1),
        ("aggregation", "csr_aggregate (SpMM)"):
            lambda h, w: csr_aggregate(w, rowptr, src, h),
        ("aggregation", "gather + index_add"): lambda h, w: torch.zeros_like(
            h).index_add(0, dst, w.unsqueeze(-1) * h[src]),
    }


def time_once(fn: Kernel, h: torch.Tensor, w: torch.Tensor, backward: bool
              ) -> float:
    h = h.detach().requires_grad_(backward)
    w = w.detach().requires_grad_(backward)
    t = time.perf_counter()
    with torch.set_grad_enabled(backward):
        out = fn(h, w)
        if backward:
            out.sum().backward()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=50_000)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke run (N=3000)")
    args = p.parse_args()
    if args.quick:
        args.nodes, args.rounds = 3000, 1
    x, _ = clustered_features(args.nodes, 128, seed=0)
    g = build_density_graph(x, args.k)
    h = torch.nn.functional.normalize(x, dim=-1)
    w = torch.rand(g.edge_index.size(1), generator=torch.Generator().manual_seed(0))
    fns = cases(h, g.edge_index, args.k)
    # Same numbers from both forms before timing anything.
    for op in ("cos logits", "aggregation"):
        a, b = (fn(h, w) for (o, _), fn in fns.items() if o == op)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    times: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(args.rounds):
        for (op, impl), fn in fns.items():
            for mode in ("fwd", "fwd+bwd"):
                time_once(fn, h, w, mode == "fwd+bwd")  # warm-up
                times.setdefault((op, mode, impl), []).append(
                    time_once(fn, h, w, mode == "fwd+bwd"))
    rows = [{"operation": op, "pass": mode, "implementation": impl,
             "time_s": statistics.median(ts), "times_s": ts}
            for (op, mode, impl), ts in times.items()]
    for r in rows:
        gather = next(q for q in rows if q["operation"] == r["operation"]
                      and q["pass"] == r["pass"] and "gather" in q["implementation"])
        r["time_vs_gathers"] = r["time_s"] / gather["time_s"]
    print_table(rows, ["operation", "pass", "implementation", "time_s",
                       "time_vs_gathers"])
    for r in rows:
        if "gather" not in r["implementation"]:
            verdict = "keep" if r["time_vs_gathers"] < 1.0 else "DELETE"
            print(f"{r['implementation']} {r['pass']}: "
                  f"{r['time_vs_gathers']:.2f}x its gather form -> {verdict}")
    write_json("bench_kernels", {"args": vars(args), "nodes": args.nodes,
                                 "k": args.k,
                                 "channels": 128, "rounds": args.rounds,
                                 "rows": rows}, SPEED_RESULTS)


if __name__ == "__main__":
    main()
