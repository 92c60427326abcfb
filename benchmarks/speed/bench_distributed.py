"""Multi-process training (torchrun, gloo on CPU / nccl on GPU): epoch time
with 1 and N processes, the Feature Bank all-gather, and building the graph
on rank 0 + broadcast against building it on every rank.

    python -m benchmarks.speed.bench_distributed [--configs digits cifar10_cpu]
        [--procs 1 2] [--gather-sizes 100000 1000000] [--quick]

1. Training: ``torchrun --nproc_per_node P -m dag_pyg train CONFIG`` with one
   pre-training and ``--epochs`` main epochs; P processes share the machine's
   cores (``OMP_NUM_THREADS = cores // P``), so the comparison is at equal
   hardware. Read from the run's ``metrics.jsonl`` (main epochs, mean):
   epoch time and its parts, the bank all-gather, the graph broadcast, peak
   memory per rank.
2. Collectives alone (2 spawned processes): all-gather of an ``[N, 128]``
   float32 bank and broadcast of the ``k=64`` graph of N nodes, against
   building that graph (faiss), for the rank-0-vs-replicate choice.

Prints tables and writes ``benchmarks/speed/results/bench_distributed.json``.
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
    print_table,
    write_json,
)
from dag_pyg import build_density_graph
from dag_pyg.distributed import DistContext

CONFIGS = {
    "digits": ("configs/digits.yaml", []),
    "cifar10_cpu": ("configs/cifar10_cpu.yaml", []),
}
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
    p.add_argument("--quick", action="store_true", help="digits, 1 epoch, small N")
    args = p.parse_args()
    if args.quick:
        args.configs, args.epochs, args.gather_sizes = ["digits"], 1, [10_000]

    train_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            modes = [(1, "rank0")] + [(pr, m) for pr in args.procs if pr > 1
                                      for m in ("rank0", "replicate")]
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
    coll = collectives(args.gather_sizes, args.k, args.build_max)
    print()
    print_table(coll, ["N", "bank_mb", "all_gather_s", "graph_mb", "broadcast_s",
                       "build_graph_s", "broadcast_over_build"])
    write_json("bench_distributed", {"args": vars(args), "training": train_rows,
                                     "collectives": coll}, SPEED_RESULTS)


if __name__ == "__main__":
    main()
