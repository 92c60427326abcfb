"""Sub-graph sampling and the DNA head (issue 4), CPU.

    python -m benchmarks.speed.bench_sampling [--nodes 50000] [--quick]

1. Time per batch of 256 seeds (k=64 graph, k_sub=8, h in {1, 2}) of
   ``KNNHopSampler`` (dedup and tree) against PyG's ``NeighborLoader``
   (torch-sparse or pyg-lib) on the k_sub-nearest graph (the peer: same
   sub-graphs), both through their PyG loaders (sampling + ``filter_data``) and
   as bare ``sample_from_nodes`` calls, with a plain gather of the neighbour
   table as the floor; also ``NeighborLoader`` used as a drop-in on the global
   k-graph (k_sub random neighbours of k: other sub-graphs).
   Timed with one torch thread (as in DataLoader workers) unless
   ``--sampling-threads`` says otherwise.
2. One training step (forward, backward, SGD step; 256 images 32x32) of the
   cnn13 backbone with its own classifier against the same backbone with the
   DNA head (sampling, bank gather, h layers, classifier, bank update), run
   interleaved; plus the head's own cost timed alone (steady, unlike whole
   steps on shared cores) as a share of the plain step.

The graph is built over a clustered stand-in Feature Bank of the backbone's
width. Prints two tables and writes ``benchmarks/speed/results/bench_sampling.json``.
Targets: our sampler >= 5x faster than NeighborLoader; the DNA head adds
<= 15% to a training step.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch_geometric.loader import NeighborLoader
from torch_geometric.sampler import NodeSamplerInput

from benchmarks.common import (
    SPEED_RESULTS,
    clustered_features,
    print_table,
    timeit,
    write_json,
)
from dag_pyg.graph import build_density_graph, neighbour_table
from dag_pyg.models import build_backbone
from dag_pyg.nn import DNAHead
from dag_pyg.sampler import (
    KNNHopSampler,
    has_neighbor_backend,
    knn_subgraph,
    make_loader,
)


def per_batch(loader, num_batches: int, repeat: int) -> float:
    """Best (over ``repeat`` passes) mean seconds per batch of a loader."""
    best = float("inf")
    for r in range(repeat + 1):  # pass 0 warms up
        it = iter(loader)
        t = time.perf_counter()
        for _ in range(num_batches):
            next(it)
        if r:
            best = min(best, (time.perf_counter() - t) / num_batches)
    return best


def per_call(fn, seed_batches, repeat: int) -> float:
    def run():
        for s in seed_batches:
            fn(s)
    return timeit(run, repeat=repeat) / len(seed_batches)


def plain_gather(table: torch.Tensor, seeds: torch.Tensor, hops: int):
    front = seeds
    for _ in range(hops):
        front = table.index_select(0, front).view(-1)
    return front


NL = "NeighborLoader k_sub-graph (peer)"
NL_SWITCH = "make_loader(sampler='neighbor')"
NL_GLOBAL = "NeighborLoader global k-graph"


def sampler_rows(graph, args) -> list[dict]:
    n = int(graph.num_nodes)
    gen = torch.Generator().manual_seed(0)
    seed_batches = [torch.randperm(n, generator=gen)[:args.batch]
                    for _ in range(args.batches)]
    table = neighbour_table(graph)[:, :args.k_sub].contiguous()
    rows = []
    for hops in args.hops:
        res, setup = {}, {}
        kw = dict(batch_size=args.batch, shuffle=True)
        res["plain gather, no dedup (floor)", "sample"] = per_call(
            lambda s, h=hops: plain_gather(table, s, h), seed_batches, args.repeat)
        for name, dedup in (("KNNHopSampler (ours)", True),
                            ("KNNHopSampler tree (ours)", False)):
            t = time.perf_counter()
            sampler = KNNHopSampler(graph, args.k_sub, hops, dedup=dedup)
            setup[name] = time.perf_counter() - t
            res[name, "sample"] = per_call(sampler.sample, seed_batches, args.repeat)
            loader = make_loader(graph, args.k_sub, hops, dedup=dedup, **kw)
            res[name, "loader"] = per_batch(loader, args.batches, args.repeat)
        if has_neighbor_backend():
            # The peer: PyG's NeighborLoader as shipped, on the k_sub-nearest
            # graph, where it takes every in-neighbour and so yields our
            # sub-graphs.
            t = time.perf_counter()
            loader = NeighborLoader(knn_subgraph(graph, args.k_sub),
                                    num_neighbors=[args.k_sub] * hops, **kw)
            setup[NL] = time.perf_counter() - t
            res[NL, "loader"] = per_batch(loader, args.batches, args.repeat)
            ns = loader.node_sampler

            def nl_sample(s, ns=ns):
                return ns.sample_from_nodes(NodeSamplerInput(None, s))
            res[NL, "sample"] = per_call(nl_sample, seed_batches, args.repeat)
            # Our sampler="neighbor" switch: the peer plus global e_id and the
            # per-hop counts torch-sparse omits.
            t = time.perf_counter()
            loader = make_loader(graph, args.k_sub, hops, sampler="neighbor", **kw)
            setup[NL_SWITCH] = time.perf_counter() - t
            res[NL_SWITCH, "loader"] = per_batch(loader, args.batches, args.repeat)
            # Plain drop-in use on the global graph: k_sub random of the k
            # neighbours per node (not the most similar: other sub-graphs).
            t = time.perf_counter()
            loader = NeighborLoader(graph, num_neighbors=[args.k_sub] * hops, **kw)
            setup[NL_GLOBAL] = time.perf_counter() - t
            res[NL_GLOBAL, "loader"] = per_batch(loader, args.batches, args.repeat)
        for (name, what), sec in res.items():
            peer = res.get((NL, what))
            glob = res.get((NL_GLOBAL, what))
            rows.append({"h": hops, "sampler": name, "timed": what,
                         "ms_per_batch": 1e3 * sec,
                         "x_vs_peer": peer / sec if peer else None,
                         "x_vs_global": glob / sec if glob else None,
                         "setup_ms": 1e3 * setup[name] if name in setup else None})
    return rows


def step_rows(graph, bank, args) -> list[dict]:
    n = int(graph.num_nodes)
    torch.manual_seed(0)
    backbone = build_backbone("cnn13", num_classes=10, width=args.width)
    images = torch.randn(args.batch, 3, 32, 32)
    labels = torch.randint(10, (args.batch,))
    seeds = torch.randperm(n)[:args.batch]

    def plain_step(opt):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(backbone(images), labels).backward()
        opt.step()

    def dna_step(opt, head, loader):
        opt.zero_grad(set_to_none=True)
        batch = loader(torch.arange(args.batch))
        feats = backbone.features(images)
        logits = head.forward_batch(feats, bank, batch, graph.density)
        F.cross_entropy(logits, labels).backward()
        opt.step()
        bank[seeds] = feats.detach()  # Feature Bank update

    def head_only(head, loader, feats):
        # The DNA head's own share of a step, without the backbone: sampling,
        # bank gather, layers, classifier, backward (to the seed features),
        # bank update. The head replaces the backbone's linear classifier.
        batch = loader(torch.arange(args.batch))
        logits = head.forward_batch(feats, bank, batch, graph.density)
        F.cross_entropy(logits, labels).backward()
        bank[seeds] = feats.detach()

    variants, extra = {"backbone + classifier": None}, {}
    feats = backbone.features(images).detach().requires_grad_(True)
    for hops in args.hops:
        head = DNAHead(backbone.feat_dim, 10, hops=hops)
        loader = make_loader(graph, args.k_sub, hops, input_nodes=seeds,
                             batch_size=args.batch)
        name = f"backbone + DNA head (h={hops})"
        variants[name] = (head, loader)
        extra[name] = timeit(lambda h=head, lo=loader: head_only(h, lo, feats),
                             repeat=5 * args.step_repeat, warmup=2)
    fns = {}
    for name, v in variants.items():
        if v is None:
            opt = torch.optim.SGD(backbone.parameters(), lr=0.01, momentum=0.9)
            fns[name] = lambda opt=opt: plain_step(opt)
        else:
            head, loader = v
            params = list(backbone.parameters()) + list(head.parameters())
            opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
            fns[name] = (lambda opt=opt, head=head, loader=loader:
                         dna_step(opt, head, loader))
    # Interleave the variants so drifting load on shared cores hits all alike.
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(args.step_repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["backbone + classifier"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        head_ms = 1e3 * extra[name] if name in extra else None
        rows.append({"step": name, "ms_median": 1e3 * med, "ms_min": 1e3 * min(ts),
                     "vs_backbone": med / base,
                     "head_only_ms": head_ms,
                     "head_share": (head_ms / (1e3 * base)) if head_ms else None})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=50_000)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--k-sub", type=int, default=8)
    p.add_argument("--hops", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=50, help="batches per timing")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--step-repeat", type=int, default=5)
    p.add_argument("--width", type=float, default=0.25, help="cnn13 width")
    p.add_argument("--sampling-threads", type=int, default=1,
                   help="torch threads while timing the samplers")
    p.add_argument("--quick", action="store_true", help="smoke run (N=5000)")
    args = p.parse_args()
    if args.quick:
        args.nodes, args.batches, args.repeat, args.step_repeat = 5000, 5, 1, 1

    feat_dim = build_backbone("cnn13", num_classes=10, width=args.width).feat_dim
    bank, _ = clustered_features(args.nodes, feat_dim, seed=0)
    t = time.perf_counter()
    graph = build_density_graph(bank, args.k)
    build_s = time.perf_counter() - t
    print(f"graph: N={args.nodes}, d={feat_dim}, k={args.k}, backend={graph.backend}, "
          f"built in {build_s:.1f} s; {torch.get_num_threads()} torch threads")
    if not has_neighbor_backend():
        print("NeighborLoader unavailable (needs torch-sparse or pyg-lib): "
              "its rows are skipped.")

    # Sampling runs in DataLoader workers, which PyTorch limits to one thread;
    # one thread also keeps OpenMP spin-waits on busy shared cores out of
    # the timings of both samplers.
    threads = torch.get_num_threads()
    torch.set_num_threads(args.sampling_threads)
    srows = sampler_rows(graph, args)
    torch.set_num_threads(threads)
    print(f"\nSampling: batches of {args.batch} seeds, k_sub={args.k_sub}, "
          f"{args.sampling_threads} torch thread(s)")
    print_table(srows, ["h", "sampler", "timed", "ms_per_batch", "x_vs_peer",
                        "x_vs_global", "setup_ms"])
    trows = step_rows(graph, bank, args)
    print(f"\nTraining step: cnn13 width {args.width}, {args.batch} images 32x32, "
          f"k_sub={args.k_sub}")
    print_table(trows, ["step", "ms_median", "ms_min", "vs_backbone", "head_only_ms",
                        "head_share"])

    def fmt(v):
        return "n/a" if v is None else f"{v:.1f}x"
    for what in ("loader", "sample"):
        ours = [r for r in srows
                if r["sampler"] == "KNNHopSampler (ours)" and r["timed"] == what]
        print(f"ratios: KNNHopSampler speed-up ({what}) vs equivalent NeighborLoader "
              "(k_sub-graph): " + ", ".join(f"h={r['h']}: {fmt(r['x_vs_peer'])}"
                                            for r in ours)
              + (" | vs NeighborLoader on the global k-graph: "
                 + ", ".join(f"h={r['h']}: {fmt(r['x_vs_global'])}" for r in ours)
                 if what == "loader" else "") + " (target >= 5x)")
    head = [r for r in trows if "DNA" in r["step"]]
    print("ratios: training step with DNA head / without (median of interleaved "
          "runs): " + ", ".join(f"{r['vs_backbone']:.3f}" for r in head)
          + "; head's own cost / step: "
          + ", ".join(f"{r['head_share']:.3f}" for r in head) + " (target <= 0.15)")
    write_json("bench_sampling", {
        "config": {k: v for k, v in vars(args).items()},
        "graph": {"nodes": args.nodes, "dim": feat_dim, "k": args.k,
                  "backend": graph.backend, "build_s": build_s},
        "sampling": srows, "training_step": trows,
        "targets": {"sampler_speedup_min": 5.0, "head_overhead_max": 1.15},
    }, SPEED_RESULTS)


if __name__ == "__main__":
    main()
