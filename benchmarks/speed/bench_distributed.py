"""Multi-process training (torchrun, gloo on CPU / nccl on GPU): epoch time
with 1 and N processes, the Feature Bank all-gather, building the graph on
rank 0 + broadcast against building it on every rank, and the refresh with
``distributed.graph: rank0`` against ``sharded``.

    python -m benchmarks.speed.bench_distributed [--configs digits cifar10_cpu]
        [--procs 1 2] [--gather-sizes 100000 1000000]
        [--refresh-sizes 20000 40000] [--sections training collectives refresh]
        [--quick]

1. Training: ``torchrun --nproc_per_node P -m dag_pyg train CONFIG`` with one
   pre-training and ``--epochs`` main epochs; P processes share the machine's
   cores (``OMP_NUM_THREADS = cores // P``), so the comparison is at equal
   hardware. Read from the run's ``metrics.jsonl`` (main epochs, mean):
   epoch time and its parts, the bank all-gather, the graph broadcast, peak
   memory per rank.
2. Collectives alone (2 spawned processes): all-gather of an ``[N, 128]``
   float32 bank and broadcast of the ``k=64`` graph of N nodes, against
   building that graph (faiss), for the rank-0-vs-replicate choice.
3. The refresh (2 spawned processes, one thread each): ``refresh`` of a
   synthetic clustered ``[N, 128]`` bank (``graph.k`` 64, ``dna.k`` 8, 1 %
   labels, a one-hop DNA head; the bank is given, so its all-gather, the
   same ``4 N d`` bytes in both, is left out) under ``distributed.graph:
   rank0`` and ``sharded``, each in fresh processes: seconds (the slowest
   rank; best of ``--repeat``) and each rank's CPU seconds (its share of
   the work, whatever else the machine runs), the bytes of every collective
   (:class:`~dag_pyg.distributed.Traffic`: what one rank receives,
   own rows included), and per rank the graph tensors held after the
   refresh, their peak during it (sharded: its shard's ``k``-wide rows, then
   the ``k_sub``-graph, from their shapes) and the rise of resident memory.

Prints tables and writes ``benchmarks/speed/results/bench_distributed.json``
(the sections not run keep their earlier results).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.common import (
    ROOT,
    SPEED_RESULTS,
    clustered_features,
    peak_rss_rise_mib,
    print_table,
    start_peak_rss,
    write_json,
)
from dag_pyg import build_density_graph
from dag_pyg.config import Config
from dag_pyg.distributed import DistContext, Traffic
from dag_pyg.nn import DNAHead
from dag_pyg.train.refresh import refresh

CONFIGS = {
    "digits": ("configs/digits.yaml", []),
    "cifar10_cpu": ("configs/cifar10_cpu.yaml", []),
}
# The arguments each section reads.
SECTION_ARGS = {"training": ("configs", "procs", "epochs"),
                "collectives": ("gather_sizes", "build_max", "k"),
                "refresh": ("refresh_sizes", "refresh_k", "k_sub", "repeat")}
TIMES = ["time_epoch", "time_train", "time_bank", "time_bank_gather", "time_graph",
         "time_broadcast", "time_label_bank", "time_dplp", "time_eval"]


def run_training(name: str, procs: int, graph_mode: str, epochs: int,
                 workdir: Path) -> dict:
    config, extra = CONFIGS[name]
    out = workdir / f"{name}_p{procs}_{graph_mode}"
    cmd = ["-m", "dag_pyg", "train", config, "--out", str(out),
           "--set", "optim.pretrain_epochs=1", "--set", f"optim.epochs={epochs}",
           "--set", "log.progress=false", "--set", "log.tensorboard=false",
           "--set", "log.plots=false", "--set", f"distributed.graph={graph_mode}",
           *extra]
    if procs > 1:
        cmd = ["-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={procs}", *cmd]
    threads = max(1, (os.cpu_count() or 1) // procs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t = time.perf_counter()
    res = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"{name} with {procs} processes failed:\n{res.stderr[-3000:]}")
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    main = [r for r in recs if r["phase"] == "train"]
    row = {"config": name, "procs": procs, "threads_each": threads,
           "graph": graph_mode if procs > 1 else "-", "wall_s": wall,
           "test_error": main[-1].get("test_error")}
    for key in TIMES:
        vals = [r[key] for r in main if r.get(key) is not None]
        row[key] = sum(vals) / len(vals) if vals else None
    row["bank_mb"] = main[-1].get("bank_mb")
    last = main[-1]
    row["rss_mb_per_rank"] = last.get("mem_rss_mb_ranks") or [last["mem_rss_mb"]]
    return row


def _collectives(rank: int, world: int, store: str, sizes: list[int], k: int,
                 out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world)
    ctx = DistContext(rank, world, rank, "gloo")
    rows = []
    for n in sizes:
        bank = torch.randn(n, 128)
        local = ctx.shard(bank)
        best = float("inf")
        for _ in range(3):
            ctx.barrier()
            t = time.perf_counter()
            ctx.all_gather_rows(local)
            best = min(best, time.perf_counter() - t)
        edge_index = torch.zeros(2, n * k, dtype=torch.long)
        sim = torch.zeros(n * k)
        bbest = float("inf")
        for _ in range(3):
            ctx.barrier()
            t = time.perf_counter()
            ctx.broadcast_(edge_index)
            ctx.broadcast_(sim)
            bbest = min(bbest, time.perf_counter() - t)
        rows.append({"N": n, "bank_mb": n * 128 * 4 / 2**20, "all_gather_s": best,
                     "graph_mb": (edge_index.numel() * 8 + sim.numel() * 4) / 2**20,
                     "broadcast_s": bbest})
    if rank == 0:
        Path(out).write_text(json.dumps(rows))
    dist.destroy_process_group()


def collectives(sizes: list[int], k: int, build_max: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        mp.spawn(_collectives, args=(2, str(Path(tmp) / "store"), sizes, k, str(out)),
                 nprocs=2, join=True)
        rows = json.loads(out.read_text())
    for row in rows:
        row["build_graph_s"] = None
        if row["N"] <= build_max:
            x, _ = clustered_features(row["N"], 128, num_classes=100, seed=0)
            t = time.perf_counter()
            build_density_graph(x, k, backend="auto")
            row["build_graph_s"] = time.perf_counter() - t
            row["broadcast_over_build"] = row["broadcast_s"] / row["build_graph_s"]
    return rows


def _tensor_mb(graph) -> float:
    return sum(v.numel() * v.element_size() for _, v in graph.items()
               if isinstance(v, torch.Tensor)) / 2**20


def _refresh_ranks(rank: int, world: int, store: str, mode: str, n: int, k: int,
                   k_sub: int, repeat: int, out: str) -> None:
    from types import SimpleNamespace

    torch.set_num_threads(1)
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world)
    ctx = DistContext(rank, world, rank, "gloo")
    cfg = Config()
    cfg.graph.k, cfg.dna.k, cfg.distributed.graph = k, k_sub, mode
    feats, y = clustered_features(n, 128, num_classes=100, seed=0)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[:: 100] = True  # 1 % labels
    torch.manual_seed(0)
    head = DNAHead(128, 100, hops=1)
    run = SimpleNamespace(cfg=cfg, device=torch.device("cpu"), dist=ctx,
                          model=SimpleNamespace(head=head, uses_graph_head=True),
                          data=SimpleNamespace(labelled_mask=mask, true_y=y,
                                               num_classes=100, check_mask=None))
    best, cpu, rss, traffic, held = float("inf"), float("inf"), None, None, 0.0
    for i in range(repeat):
        ctx.barrier()
        start = start_peak_rss()
        ctx.traffic = Traffic()
        t, c = time.perf_counter(), time.process_time()
        res = refresh(run, features=feats)
        took, cpu = time.perf_counter() - t, min(cpu, time.process_time() - c)
        traffic, ctx.traffic = ctx.traffic, None
        if i == 0:  # the first one allocates everything
            rss = peak_rss_rise_mib(start)
            held = _tensor_mb(res.graph)
        best = min(best, max(ctx.all_gather_object(took)))
        del res
    rows = ctx.all_gather_object({"rss_rise_mb": rss, "graph_held_mb": held,
                                  "cpu_s": cpu})
    if rank == 0:
        Path(out).write_text(json.dumps({
            "seconds": best, "bytes": traffic.bytes, "calls": traffic.calls,
            "by_kind": traffic.by_kind, "ranks": rows}))
    dist.destroy_process_group()


def refresh_modes(sizes: list[int], k: int, k_sub: int, repeat: int,
                  world: int = 2) -> list[dict]:
    """Section 3 of the module docstring: one row per size and placement."""
    rows = []
    for n in sizes:
        for mode in ("rank0", "sharded"):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "refresh.json"
                mp.spawn(_refresh_ranks, args=(world, str(Path(tmp) / "store"), mode,
                                               n, k, k_sub, repeat, str(out)),
                         nprocs=world, join=True)
                res = json.loads(out.read_text())
            m = -(-n // world)  # the largest shard
            # Graph tensors at once (edge_index int64 x 2, sim and density
            # float32): rank0, the whole graph on every rank; sharded, the
            # shard's k-wide rows with their k_sub-wide copy and the [N]
            # densities, then those k_sub rows and the gathered k_sub-graph.
            whole = 20 * n * k + 4 * n
            peak = whole if mode == "rank0" else max(
                20 * m * (k + k_sub) + 4 * m + 4 * n,
                20 * m * k_sub + 4 * m + 20 * n * k_sub + 4 * n)
            peak /= 2**20
            row = {"N": n, "procs": world, "graph": mode, "k": k, "k_sub": k_sub,
                   "refresh_s": res["seconds"],
                   "cpu_s_per_rank": [r["cpu_s"] for r in res["ranks"]],
                   "moved_mb": res["bytes"] / 2**20,
                   "moved_bytes_per_node": res["bytes"] / n,
                   "collectives": res["calls"],
                   "graph_held_mb_per_rank": [r["graph_held_mb"] for r in res["ranks"]],
                   "graph_peak_mb_per_rank": peak,
                   "rss_rise_mb_per_rank": [r["rss_rise_mb"] for r in res["ranks"]],
                   "by_kind_mb": {kk: v / 2**20 for kk, v in res["by_kind"].items()}}
            print(row, flush=True)
            rows.append(row)
    for row in rows:
        base = next(r for r in rows if r["N"] == row["N"] and r["graph"] == "rank0")
        row["moved_vs_rank0"] = row["moved_mb"] / base["moved_mb"]
        row["time_vs_rank0"] = row["refresh_s"] / base["refresh_s"]
        row["peak_vs_rank0"] = row["graph_peak_mb_per_rank"] / \
            base["graph_peak_mb_per_rank"]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--configs", nargs="+", default=["digits", "cifar10_cpu"],
                   choices=list(CONFIGS))
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=2, help="main epochs per run")
    p.add_argument("--gather-sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--build-max", type=int, default=100_000,
                   help="largest N to time the exact graph build at")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--refresh-k", type=int, default=64, help="graph.k of the refresh")
    p.add_argument("--k-sub", type=int, default=8, help="dna.k of the refresh")
    p.add_argument("--refresh-sizes", type=int, nargs="+", default=[20_000, 40_000])
    p.add_argument("--repeat", type=int, default=2, help="refreshes per placement")
    p.add_argument("--sections", nargs="+", default=list(SECTION_ARGS),
                   choices=list(SECTION_ARGS))
    p.add_argument("--quick", action="store_true", help="digits, 1 epoch, small N")
    args = p.parse_args()
    if args.quick:
        args.configs, args.epochs, args.gather_sizes = ["digits"], 1, [10_000]
        args.refresh_sizes, args.repeat = [5_000], 1

    # Sections not run keep their earlier results and arguments: the stored
    # command (all sections) remakes every table.
    path = SPEED_RESULTS / "bench_distributed.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    stored = dict(old.get("args", {})) if set(args.sections) != set(SECTION_ARGS) \
        else {}
    for section in args.sections:
        stored.update({key: getattr(args, key) for key in SECTION_ARGS[section]})
    stored.update(quick=args.quick)
    stored.pop("sections", None)
    result = {"args": stored}
    if "refresh" in args.sections:
        ref = refresh_modes(args.refresh_sizes, args.refresh_k, args.k_sub,
                            args.repeat)
        print()
        print_table(ref, ["N", "procs", "graph", "refresh_s", "time_vs_rank0",
                          "cpu_s_per_rank",
                          "moved_mb", "moved_bytes_per_node", "moved_vs_rank0",
                          "collectives", "graph_held_mb_per_rank",
                          "graph_peak_mb_per_rank", "peak_vs_rank0",
                          "rss_rise_mb_per_rank"])
        result["refresh"] = ref
    else:
        result["refresh"] = old.get("refresh", [])
    if "training" not in args.sections:
        result["training"] = old.get("training", [])
    if "collectives" not in args.sections:
        result["collectives"] = old.get("collectives", [])
    if "training" in args.sections:
        result["training"] = training(args)
    if "collectives" in args.sections:
        coll = collectives(args.gather_sizes, args.k, args.build_max)
        print()
        print_table(coll, ["N", "bank_mb", "all_gather_s", "graph_mb", "broadcast_s",
                           "build_graph_s", "broadcast_over_build"])
        result["collectives"] = coll
    write_json("bench_distributed", result, SPEED_RESULTS)


def training(args: argparse.Namespace) -> list[dict]:
    """Section 1 of the module docstring."""
    train_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            modes = [(1, "rank0")] + [(pr, m) for pr in args.procs if pr > 1
                                      for m in ("rank0", "replicate", "sharded")]
            for procs, mode in modes:
                row = run_training(name, procs, mode, args.epochs, Path(tmp))
                print(row, flush=True)
                train_rows.append(row)
    for row in train_rows:
        one = next(r for r in train_rows if r["config"] == row["config"]
                   and r["procs"] == 1)
        row["epoch_vs_1proc"] = row["time_epoch"] / one["time_epoch"]
    print_table(train_rows, ["config", "procs", "threads_each", "graph", "time_epoch",
                             "epoch_vs_1proc", "time_train", "time_bank",
                             "time_bank_gather", "time_graph", "time_broadcast",
                             "time_eval", "bank_mb", "rss_mb_per_rank",
                             "test_error"])
    return train_rows


if __name__ == "__main__":
    main()
