"""DensityAwareConv against GATConv(heads=1), with and without self loops,
128 -> 128 channels, on the kNN graph of 50k nodes (k=64) and on the shape of
a sampled mini-batch (256 seeds, k_sub=8, 2 hops, outer layer), CPU.

    python -m benchmarks.speed.bench_conv [--nodes 50000] [--quick]

Each (layer, shape, pass) runs in a fresh subprocess so that its peak memory
(the rise of the process' resident high-water mark over the loaded inputs,
with glibc's mmap threshold fixed so freed tensors leave the process) is its
own. Prints a table, writes ``benchmarks/speed/results/bench_conv.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch_geometric.nn import GATConv
from torch_geometric.profile import count_parameters

from benchmarks.common import (
    ROOT,
    SPEED_RESULTS,
    clustered_features,
    print_table,
    timeit,
    write_json,
)
from dag_pyg import DensityAwareConv, build_density_graph
from dag_pyg.graph import neighbour_table

LAYERS = {
    "DensityAwareConv": lambda c: DensityAwareConv(c, c),
    "GATConv(heads=1)": lambda c: GATConv(c, c, heads=1),
    "GATConv(heads=1, add_self_loops=False)":
        lambda c: GATConv(c, c, heads=1, add_self_loops=False),
}


def make_inputs(n: int, k: int, d: int, path: Path) -> None:
    x, _ = clustered_features(n, d, seed=0)
    g = build_density_graph(x, k)
    # The sampled-batch shape: 256 seeds, their 8 nearest, and those nodes' 8
    # nearest; the outer layer maps every sampled node into hops 0-1.
    table = neighbour_table(g)[:, :8]
    seeds = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:256]
    hop1 = torch.unique(torch.cat([seeds, table[seeds].reshape(-1)]))
    nodes = torch.unique(torch.cat([hop1, table[hop1].reshape(-1)]))
    # Local ids: targets (hop <= 1) first, then the rest.
    rest = nodes[~torch.isin(nodes, hop1)]
    order = torch.cat([hop1, rest])
    local = torch.full((n,), -1, dtype=torch.long)
    local[order] = torch.arange(order.numel())
    src = local[table[hop1].reshape(-1)]
    dst = torch.arange(hop1.numel()).repeat_interleave(8)
    torch.save((x, g.edge_index, g.density), path / "full.pt")
    torch.save(((x[order], x[hop1]), torch.stack([src, dst]), g.density[order]),
               path / "batch.pt")


def worker(path: str, layer: str, shape: str, mode: str, repeat: int) -> None:
    torch.manual_seed(0)
    x, edge_index, density = torch.load(Path(path) / f"{shape}.pt")
    conv = LAYERS[layer](128)
    if isinstance(x, tuple):
        x = (x[0].clone().requires_grad_(mode == "fwd+bwd"), x[1].clone())
    else:
        x = x.clone().requires_grad_(mode == "fwd+bwd")

    def step():
        if layer == "DensityAwareConv":
            out = conv(x, edge_index, density)
        else:
            out = conv(x, edge_index)
        if mode == "fwd+bwd":
            out.sum().backward()

    if mode == "fwd":
        with torch.no_grad():
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t = timeit(step, repeat=repeat)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = timeit(step, repeat=repeat)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    print(json.dumps({"time_s": t, "peak_mib": peak / 1024,
                      "params": count_parameters(conv)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=50_000)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke run (N=3000)")
    p.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(*args.worker, repeat=args.repeat)
        return
    if args.quick:
        args.nodes, args.repeat = 3000, 1

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        make_inputs(args.nodes, args.k, 128, path)
        for shape in ["full", "batch"]:
            for mode in ["fwd", "fwd+bwd"]:
                for layer in LAYERS:
                    res = subprocess.run(
                        [sys.executable, "-m", "benchmarks.speed.bench_conv",
                         "--repeat", str(args.repeat),
                         "--worker", str(path), layer, shape, mode],
                        cwd=ROOT, capture_output=True, text=True, check=True,
                        # A fixed mmap threshold returns freed blocks to the
                        # OS, so the high-water mark tracks live tensors.
                        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
                    r = json.loads(res.stdout.strip().splitlines()[-1])
                    rows.append({"shape": shape, "pass": mode, "layer": layer, **r})
                ref = rows[-2]  # GATConv(heads=1)
                for r in rows[-3:]:
                    r["time_vs_gat"] = r["time_s"] / ref["time_s"]
                    if shape == "batch":
                        # A few MiB: below what the resident high-water mark
                        # can resolve next to torch's own import.
                        r["peak_mib"] = r["mem_vs_gat"] = None
                    else:
                        r["mem_vs_gat"] = r["peak_mib"] / ref["peak_mib"]
    # Order rows: DensityAwareConv first in each group.
    print_table(rows, ["shape", "pass", "layer", "time_s", "peak_mib", "time_vs_gat",
                       "mem_vs_gat", "params"])
    for r in rows:
        if r["layer"] == "DensityAwareConv":
            mem = r["mem_vs_gat"]
            ok = r["time_vs_gat"] <= 1.0 and (mem is None or mem <= 1.0)
            mem_txt = "memory not resolved" if mem is None else f"{mem:.2f}x memory"
            print(f"target {r['shape']}/{r['pass']}: {r['time_vs_gat']:.2f}x time, "
                  f"{mem_txt} of GATConv(heads=1) -> {'MET' if ok else 'MISSED'}")
    write_json("bench_conv", {"nodes": args.nodes, "k": args.k, "channels": 128,
                              "rows": rows}, SPEED_RESULTS)


if __name__ == "__main__":
    main()
