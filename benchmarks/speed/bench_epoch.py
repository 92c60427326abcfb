"""Seconds per training epoch of ablation rows, measured back to back on a
quiet machine (the grids' wall times are not: grid runs share the machine).

    python -m benchmarks.speed.bench_epoch [--config configs/cifar10_cpu.yaml]
        [--rows labels_only baseline dag dna gat] [--epochs 1] [--rounds 2]

Each row is a config plus the overrides of
``benchmarks/experiments/grids/cifar10_cpu_table1.yaml`` (``--grid``: the
grid's ``set:``, then the row's own, as the grid runs it); each round runs
every row once (1 pre-training + ``--epochs`` main epochs, seed 0), rows
interleaved so that drifts in machine speed hit all rows alike. Reports the
best round's mean main-epoch time and its parts, and each row's ratio to the
first row. Prints a table and writes
``benchmarks/speed/results/bench_epoch.json`` (``--name``: another stem).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks.common import GRIDS, ROOT, SPEED_RESULTS, print_table, write_json
from benchmarks.experiments.reproduce import row_overrides

PARTS = ["time_epoch", "time_train", "time_bank", "time_graph", "time_label_bank",
         "time_dplp", "time_eval", "time_precise_bn"]


def train_command(config: str, overrides: list[str], epochs: int,
                  out: Path) -> list[str]:
    """The ``dag-pyg train`` command of one row: 1 pre-training and
    ``epochs`` main epochs, whatever the row's own ``optim.epochs``."""
    cmd = [sys.executable, "-m", "dag_pyg", "train", config, "--out", str(out)]
    # The bench's own settings last: the last --set of a key wins.
    for o in [*overrides, "optim.pretrain_epochs=1", f"optim.epochs={epochs}",
              "log.progress=false", "log.tensorboard=false", "log.plots=false"]:
        cmd += ["--set", o]
    return cmd


def row_settings(grid: dict, row: str, config: str) -> tuple[str, list[str]]:
    """A grid row's config file and overrides as the grid runs it (its
    ``set:``, then the row's own; seed 0), with ``config`` standing for the
    grid's base config (a row's own preset file wins)."""
    own, overrides = row_overrides(grid, row, seed=0)
    return (config if own == grid["config"] else own), overrides


def run(config: str, overrides: list[str], epochs: int, out: Path,
        threads: int) -> dict:
    cmd = train_command(config, overrides, epochs, out)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(res.stderr[-3000:])
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    main = [r for r in recs if r["phase"] == "train"]
    return {k: sum(r.get(k) or 0.0 for r in main) / len(main) for k in PARTS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="configs/cifar10_cpu.yaml")
    p.add_argument("--grid", default=str((GRIDS / "cifar10_cpu_table1.yaml")
                                         .relative_to(ROOT)),
                   help="where the rows' overrides come from")
    p.add_argument("--rows", nargs="+",
                   default=["labels_only", "baseline", "dag", "dna", "gat"])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--name", default="bench_epoch",
                   help="result file stem (benchmarks/speed/results/NAME.json)")
    args = p.parse_args()
    grid = yaml.safe_load((ROOT / args.grid).read_text())
    unknown = [r for r in args.rows if r not in grid["rows"]]
    if unknown:
        raise SystemExit(f"rows {unknown} are not in {args.grid}: "
                         f"{list(grid['rows'])}")
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for row in args.rows:
                config, overrides = row_settings(grid, row, args.config)
                t = run(config, overrides, args.epochs,
                        Path(tmp) / f"{row}_{rnd}", args.threads)
                print(f"round {rnd} {row}: {t}", flush=True)
                if row not in best or t["time_epoch"] < best[row]["time_epoch"]:
                    best[row] = t
    first = best[args.rows[0]]["time_epoch"]
    rows = [{"row": r, **best[r], "vs_" + args.rows[0]: best[r]["time_epoch"] / first}
            for r in args.rows]
    print_table(rows, ["row", *PARTS, "vs_" + args.rows[0]])
    write_json(args.name, {"args": vars(args), "rows": rows}, SPEED_RESULTS)


if __name__ == "__main__":
    main()
