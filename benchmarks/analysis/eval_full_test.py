"""Re-evaluates finished grid runs on the whole test set.

    python -m benchmarks.analysis.eval_full_test GRID [GRID ...] [--rows a b]
        [--seeds 0 1 2] [--force]
    # e.g. cifar10_cpu_table1: the runs in benchmarks/runs/cifar10_cpu_table1/

CPU-scale CIFAR-10 runs train and evaluate on a 1,000-image test subset, so
each test error carries about ±1.6 points of sampling noise (binomial at 50 %)
and a paired difference between two rows up to ±1.7 (where the two models
disagree on ~30 % of the images). This script classifies all 10,000 test
images with each run's last checkpoint (``dag-pyg eval RUN --num-test all``:
the stored Feature Bank, the same graph and retrieval as at the end of
training) and adds the result to the run's record in
``benchmarks/experiments/results/<grid>/<row>__seed<k>.json`` under
``full_test``; ``benchmarks.experiments.make_results`` then reports it on
RESULTS.md (for grids whose every record has it) and beside the subset's
numbers on the grid's detail page. Records that already have it are
skipped. Training is untouched: the test set plays no part in it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import EXPERIMENT_RESULTS, ROOT, RUNS
from dag_pyg.train import evaluate_run
from dag_pyg.train.evaluate import model_dir
from dag_pyg.train.logger import write_json_atomic
from dag_pyg.train.setup import CHECKPOINT

RESULTS = EXPERIMENT_RESULTS


def evaluate_record(path: Path, runs: Path = RUNS, force: bool = False) -> dict | None:
    """Adds ``full_test`` to one result record; ``None`` if it had it."""
    rec = json.loads(path.read_text())
    if "full_test" in rec and not force:
        return None
    run_dir = runs / rec["grid"] / rec["row"] / f"seed{rec['seed']}"
    if not (model_dir(run_dir) / CHECKPOINT).is_file():  # auto: its refit
        raise SystemExit(
            f"{path.name}: the run folder '{run_dir}' has no checkpoint; re-run "
            f"it: python -m benchmarks.experiments.reproduce "
            f"benchmarks/experiments/grids/{rec['grid']}.yaml --rows {rec['row']} "
            f"--seeds {rec['seed']} --force")
    t = time.perf_counter()
    ev = evaluate_run(run_dir, num_test="all")
    last = rec["summary"]["last_epoch"]
    if ev["epoch"] != last:  # the checkpoint must be the run's final state
        raise SystemExit(f"{path.name}: checkpoint of epoch {ev['epoch']}, "
                         f"but the run ended at epoch {last}.")
    shown = run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir
    rec["full_test"] = {"num_test": ev["num_test"], "test_error": ev["test_error"],
                        "epoch": ev["epoch"],
                        "command": f"dag-pyg eval {shown} --num-test all",
                        "wall_time_s": time.perf_counter() - t}
    write_json_atomic(path, rec)
    return rec


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grids", nargs="+", help="grid names, e.g. cifar10_cpu_table1")
    p.add_argument("--rows", nargs="+", help="only these rows")
    p.add_argument("--seeds", nargs="+", type=int, help="only these seeds")
    p.add_argument("--force", action="store_true", help="re-evaluate existing ones")
    p.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    p.add_argument("--runs", type=Path, default=RUNS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    print("| grid | row | seed | test error % (subset) | test error % (all) | n | s |")
    print("|---|---|---|---|---|---|---|")
    for grid in args.grids:
        folder = args.results / Path(grid).stem
        if not folder.is_dir():
            raise SystemExit(f"no results for grid '{grid}' in {args.results}")
        for path in sorted(folder.glob("*__seed*.json")):
            row, seed = path.stem.rsplit("__seed", 1)
            if (args.rows and row not in args.rows) or (
                    args.seeds and int(seed) not in args.seeds):
                continue
            rec = evaluate_record(path, args.runs, args.force)
            if rec is None:
                print(f"| {folder.name} | {row} | {seed} | (done) | | | |", flush=True)
                continue
            f = rec["full_test"]
            print(f"| {folder.name} | {row} | {seed} | "
                  f"{rec['summary']['test_error_last']:.2f} | {f['test_error']:.2f} | "
                  f"{f['num_test']} | {f['wall_time_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
