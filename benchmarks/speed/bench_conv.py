"""DensityAwareConv against GATConv(heads=1) (with and without self loops),
the same layer written as plain gathers, and GCNConv as the floor: forward
and forward+backward time and peak memory, CPU, on three shapes:

- ``knn``: the density-aware kNN graph of 50k nodes (k=64), 128 -> 128;
- ``batch``: a sampled mini-batch of it (256 seeds, k_sub=8, 2 hops, the
  outer layer: bipartite, every sampled node into hops 0-1), 128 -> 128;
- ``cora``, ``citeseer``: the citation graph of PyG's ``Planetoid`` Cora
  (1433 -> 64, the first layer of PyG's GAT recipe) or CiteSeer (3703 -> 64;
  15 featureless nodes), when ``--planetoid-root`` holds it.

``DensityAwareConv`` takes its CSR path on all three (on ``knn`` and
``batch``, k edges per target, the dense softmax; a Planetoid edge_index,
sorted by source, is sorted by target inside the call); on Planetoid
``(sim given)``
passes the features' edge cosines (``AddDensity``'s ``data.sim``), as the
README's Planetoid example does. ``DensityAwareConv (propagate)`` is the
same layer sent down PyG's ``propagate()`` (a registered message hook does
that, as explainers do).

    python -m benchmarks.speed.bench_conv [--nodes 50000] [--rounds 3] [--quick]
        [--planetoid-root ../shared/data/planetoid]
        [--shapes knn batch cora citeseer]
        [--name bench_conv]

Every (shape, pass, layer) case runs in a fresh subprocess so that its peak
memory (the rise of the process' resident high-water mark, VmHWM, over the
loaded inputs, with glibc's mmap threshold fixed so freed tensors leave the
process) is its own; the cases run in interleaved rounds (each round runs
every case once) and the table gives each case's median over the rounds.
Ratios are against ``GATConv(heads=1, add_self_loops=False)`` of the same
shape and pass. Prints a table, writes
``benchmarks/speed/results/<--name>.json`` (``bench_conv.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import GATConv, GCNConv
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.profile import count_parameters
from torch_geometric.utils import softmax

from benchmarks.common import (
    ROOT,
    SPEED_RESULTS,
    clustered_features,
    load_planetoid,
    peak_rss_rise_mib,
    print_table,
    start_peak_rss,
    timeit,
    write_json,
)
from dag_pyg import DensityAwareConv, build_density_graph
from dag_pyg.graph import graph_density, neighbour_table

REFERENCE = "GATConv(heads=1, add_self_loops=False)"
# (shape, pass) -> time vs REFERENCE, at most (issue 24); the kNN graph's
# peak memory at most MEM_TARGET of REFERENCE's.
TARGETS = {("knn", "fwd"): 0.35, ("knn", "fwd+bwd"): 0.55,
           ("batch", "fwd+bwd"): 0.8, ("cora", "fwd"): 1.0,
           ("cora", "fwd+bwd"): 1.2}
MEM_TARGET = 0.1
# Timed calls run for at least this long in every case (best of them).
MIN_TIME_S = 1.0
# The row a shape's targets read: on Cora the README's usage (sim given).
TARGET_LAYER = {"cora": "DensityAwareConv (sim given)"}
# shape -> Planetoid data set
PLANETOID = {"cora": "Cora", "citeseer": "CiteSeer"}
SHAPES = ("knn", "batch", *PLANETOID)


class GatherDNA(torch.nn.Module):
    """DNA written as plain gathers: ``(xn[i] * xn[j]).sum(-1)``, PyG's
    ``softmax``, ``index_add``; the honest baseline for the layer's kernels."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.lin = Linear(c_in, c_out, bias=False, weight_initializer='glorot')
        self.bias = torch.nn.Parameter(torch.zeros(c_out))

    def forward(self, x, edge_index: Tensor, density: Tensor) -> Tensor:
        x_src, x_dst = x if isinstance(x, tuple) else (x, x)
        src, dst = edge_index
        xn_src, xn_dst = F.normalize(x_src, dim=-1), F.normalize(x_dst, dim=-1)
        logit = (xn_dst[dst] * xn_src[src]).sum(-1) + density[src]
        alpha = softmax(logit, dst, num_nodes=x_dst.size(0))
        h_src = self.lin(x_src)
        h_dst = h_src if x_dst is x_src else self.lin(x_dst)
        msg = alpha.unsqueeze(-1) * h_src[src]
        return h_dst + torch.zeros_like(h_dst).index_add(0, dst, msg) + self.bias


def _propagate_dna(c_in: int, c_out: int) -> DensityAwareConv:
    conv = DensityAwareConv(c_in, c_out)
    conv.register_message_forward_hook(lambda *args: None)
    return conv


LAYERS = {
    "DensityAwareConv": lambda i, o: DensityAwareConv(i, o),
    "DensityAwareConv (sim given)": lambda i, o: DensityAwareConv(i, o),
    "DensityAwareConv (propagate)": _propagate_dna,
    "DNA as plain gathers": GatherDNA,
    "GATConv(heads=1)": lambda i, o: GATConv(i, o, heads=1),
    REFERENCE: lambda i, o: GATConv(i, o, heads=1, add_self_loops=False),
    "GCNConv": GCNConv,
}
USES_DENSITY = ("DensityAwareConv", "DensityAwareConv (sim given)",
                "DensityAwareConv (propagate)", "DNA as plain gathers")


def make_inputs(n: int, k: int, path: Path, planetoid_root: Path | None,
                shapes: tuple[str, ...] = SHAPES) -> list[str]:
    """Writes each of ``shapes``' ``(x, edge_index, density, channels, sim)``;
    returns the shapes written (a Planetoid shape only where
    ``planetoid_root`` holds its raw files)."""
    written = [s for s in PLANETOID if s in shapes and planetoid_root is not None
               and (planetoid_root / PLANETOID[s] / "raw").is_dir()]
    for shape in written:
        data = load_planetoid(planetoid_root, PLANETOID[shape], path / "planetoid")
        density, sim = graph_density(data.x, data.edge_index)
        torch.save((data.x, data.edge_index, density, (data.num_features, 64), sim),
                   path / f"{shape}.pt")
    if "knn" not in shapes and "batch" not in shapes:
        return written
    x, _ = clustered_features(n, 128, seed=0)
    g = build_density_graph(x, k)
    torch.save((x, g.edge_index, g.density, (128, 128), g.sim), path / "knn.pt")
    # 256 seeds, their 8 nearest, and those nodes' 8 nearest; the outer layer
    # maps every sampled node into hops 0-1 (targets first in local ids).
    table = neighbour_table(g)[:, :8]
    seeds = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:256]
    hop1 = torch.unique(torch.cat([seeds, table[seeds].reshape(-1)]))
    nodes = torch.unique(torch.cat([hop1, table[hop1].reshape(-1)]))
    order = torch.cat([hop1, nodes[~torch.isin(nodes, hop1)]])
    local = torch.full((n,), -1, dtype=torch.long)
    local[order] = torch.arange(order.numel())
    edges = torch.stack([local[table[hop1].reshape(-1)],
                         torch.arange(hop1.numel()).repeat_interleave(8)])
    torch.save(((x[order], x[hop1]), edges, g.density[order], (128, 128), None),
               path / "batch.pt")
    return ["knn", "batch", *written]


def worker(path: str, layer: str, shape: str, mode: str, repeat: int) -> None:
    torch.manual_seed(0)
    x, edge_index, density, (c_in, c_out), sim = torch.load(
        Path(path) / f"{shape}.pt")
    conv = LAYERS[layer](c_in, c_out)
    grad = mode == "fwd+bwd"
    if isinstance(x, tuple):
        x = (x[0].clone().requires_grad_(grad), x[1].clone())
        if layer == "GCNConv":  # no bipartite form: all nodes, edges local
            x = x[0]
    else:
        x = x.clone().requires_grad_(grad)
    args = (x, edge_index, density) if layer in USES_DENSITY else (x, edge_index)
    if layer == "DensityAwareConv (sim given)":
        args = (*args, sim)

    def step():
        out = conv(*args)
        if grad:
            out.sum().backward()

    with torch.set_grad_enabled(grad):
        start = start_peak_rss()
        t = timeit(step, repeat=repeat, min_time_s=MIN_TIME_S)
    print(json.dumps({"time_s": t, "peak_mib": peak_rss_rise_mib(start),
                      "params": count_parameters(conv)}))


def run_case(path: Path, layer: str, shape: str, mode: str, repeat: int) -> dict:
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.speed.bench_conv", "--repeat",
         str(repeat), "--worker", str(path), layer, shape, mode],
        cwd=ROOT, capture_output=True, text=True, check=True,
        # A fixed mmap threshold returns freed blocks to the OS, so the
        # high-water mark tracks live tensors.
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    return json.loads(res.stdout.strip().splitlines()[-1])


def summarise(runs: dict[tuple, list[dict]]) -> list[dict]:
    """One row per case: medians over the rounds, ratios to REFERENCE."""
    rows = []
    for (shape, mode, layer), rs in runs.items():
        rows.append({"shape": shape, "pass": mode, "layer": layer,
                     "time_s": statistics.median(r["time_s"] for r in rs),
                     "peak_mib": (None if any(r["peak_mib"] is None for r in rs) else
                         statistics.median(r["peak_mib"] for r in rs)),
                     "params": rs[0]["params"],
                     "times_s": [r["time_s"] for r in rs]})
    for r in rows:
        ref = next(q for q in rows if q["layer"] == REFERENCE
                   and q["shape"] == r["shape"] and q["pass"] == r["pass"])
        r["time_vs_ref"] = r["time_s"] / ref["time_s"]
        if r["shape"] == "knn" and r["peak_mib"] is not None and \
                ref["peak_mib"]:
            r["mem_vs_ref"] = r["peak_mib"] / ref["peak_mib"]
        else:
            # A few MiB (Cora, a batch, --quick): below what the resident
            # high-water mark resolves next to torch's own import.
            r["peak_mib"] = r["mem_vs_ref"] = None
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=50_000)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3, help="timed calls per process")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--planetoid-root", type=Path,
                   default=ROOT.parent / "shared" / "data" / "planetoid")
    p.add_argument("--quick", action="store_true", help="smoke run (N=3000)")
    p.add_argument("--shapes", nargs="+", default=["knn", "batch", "cora"],
                   choices=SHAPES)
    p.add_argument("--name", default="bench_conv",
                   help="result file stem under benchmarks/speed/results/ (a "
                        "re-measurement of some shapes keeps the full run's)")
    p.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(*args.worker, repeat=args.repeat)
        return
    if args.quick:
        args.nodes, args.repeat, args.rounds = 3000, 1, 1

    runs: dict[tuple, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        shapes = make_inputs(args.nodes, args.k, path, args.planetoid_root,
                             tuple(args.shapes))
        shapes = [s for s in shapes if s in args.shapes]
        for s in args.shapes:
            if s not in shapes:  # a Planetoid shape without its raw files
                print(f"skipping shape '{s}': no {args.planetoid_root}/"
                      f"{PLANETOID[s]}/raw folder (pass --planetoid-root)",
                      file=sys.stderr)
        if not shapes:
            p.error(f"none of --shapes {' '.join(args.shapes)} can run: pass "
                    f"--planetoid-root, the folder holding <Name>/raw/")
        cases = [(s, m, layer) for s in shapes for m in ("fwd", "fwd+bwd")
                 for layer in LAYERS
                 if s in PLANETOID or layer != "DensityAwareConv (sim given)"]
        for rnd in range(args.rounds):
            for i, case in enumerate(cases):
                print(f"round {rnd + 1}/{args.rounds}, case {i + 1}/{len(cases)}: "
                      f"{' / '.join(case)}", file=sys.stderr, flush=True)
                runs.setdefault(case, []).append(
                    run_case(path, case[2], case[0], case[1], args.repeat))
    rows = summarise(runs)
    print_table(rows, ["shape", "pass", "layer", "time_s", "peak_mib",
                       "time_vs_ref", "mem_vs_ref", "params"])
    targets = []
    for r in rows:
        key = (r["shape"], r["pass"])
        if key not in TARGETS or r["layer"] != TARGET_LAYER.get(
                r["shape"], "DensityAwareConv"):
            continue
        limit, mem = TARGETS[key], r["mem_vs_ref"]
        ok = r["time_vs_ref"] <= limit and (mem is None or mem <= MEM_TARGET)
        mem_txt = ("" if mem is None else
                   f", {mem:.2f}x its peak memory (<= {MEM_TARGET})")
        line = (f"target {r['shape']}/{r['pass']} ({r['layer']}): "
                f"{r['time_vs_ref']:.2f}x the time of {REFERENCE} (<= {limit})"
                f"{mem_txt} -> {'MET' if ok else 'MISSED'}")
        targets.append({"shape": r["shape"], "pass": r["pass"], "met": ok,
                        "line": line})
        print(line)
    recorded = {k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items() if k != "worker"}
    write_json(args.name, {"args": recorded, "nodes": args.nodes, "k": args.k,
                              "rounds": args.rounds, "reference": REFERENCE,
                              "rows": rows, "targets": targets}, SPEED_RESULTS)


if __name__ == "__main__":
    main()
