"""Runs a named grid of experiments (rows x seeds) and collects the results.

    python -m benchmarks.experiments.reproduce \
        benchmarks/experiments/grids/digits_table1.yaml [--rows a b]
        [--seeds 0 1 2] [--force] [--set key=value ...]

A grid YAML names a base config, the seeds, and rows of overrides::

    name: digits_table1
    config: configs/digits.yaml
    seeds: [0, 1, 2]
    set: [optim.epochs=30]            # applied to every row
    rows:
      baseline: [dna.aggregator=none, pseudo_label.source=none]
      dag: []
      dagplus: {config: configs/digits_dagplus.yaml}   # a row of its own config

Each run goes to ``benchmarks/runs/<grid>/<row>/seed<k>`` (not committed)
and its result to ``benchmarks/experiments/results/<grid>/<row>__seed<k>.json``
(summary, per-epoch metrics, the exact command, wall time). Runs whose result
exists are skipped, so a grid can be built over several sessions; a run that
was interrupted resumes from the checkpoint of its last finished epoch (to
the same result as an uninterrupted run), and one that died before its first
checkpoint starts over. ``--force`` re-runs from scratch. Splits depend on the
seed only, so they are shared across rows.
``python -m benchmarks.experiments.make_results`` turns the JSON into tables.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import time
from pathlib import Path

import yaml

from benchmarks.common import EXPERIMENT_RESULTS, ROOT, RUNS
from dag_pyg.config import load_config
from dag_pyg.train import train
from dag_pyg.train.logger import read_metrics, write_json_atomic
from dag_pyg.train.setup import CHECKPOINT

RESULTS = EXPERIMENT_RESULTS


def load_grid(path: Path) -> dict:
    grid = yaml.safe_load(path.read_text())
    for key in ("name", "config", "rows"):
        if key not in grid:
            raise SystemExit(f"grid '{path}' lacks the key '{key}'")
    grid.setdefault("seeds", [0])
    grid.setdefault("set", [])
    return grid


def row_spec(grid: dict, row: str) -> tuple[str, list[str]]:
    """A row's config file and overrides: a list of overrides of the grid's
    ``config``, or a mapping ``{config: FILE, set: [...]}`` (a preset file)."""
    spec = grid["rows"][row]
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - {"config", "set"})
        if unknown or "config" not in spec:
            raise SystemExit(f"grid row '{row}' must be a list of overrides or "
                             f"a mapping of 'config' and 'set' (got {spec!r})")
        return spec["config"], list(spec.get("set") or [])
    return grid["config"], list(spec or [])


def run_one(grid: dict, row: str, seed: int, extra: list[str], force: bool,
            results: Path = RESULTS, runs: Path = RUNS) -> dict:
    out = results / grid["name"] / f"{row}__seed{seed}.json"
    if out.exists() and not force:
        print(f"[skip] {grid['name']}/{row} seed {seed}: {out.name} exists")
        return json.loads(out.read_text())
    config, row_set = row_spec(grid, row)
    overrides = [*grid["set"], *row_set, f"seed={seed}",
                 f"name={grid['name']}_{row}", *extra]
    cfg = load_config(ROOT / config, overrides)
    run_dir = runs / grid["name"] / row / f"seed{seed}"
    resume = (run_dir / CHECKPOINT).is_file() and not force
    if run_dir.exists() and not resume:
        # --force, or an earlier attempt that died before its first checkpoint.
        shutil.rmtree(run_dir)
    shown = run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir
    cmd = ["dag-pyg", "train", config, "--out", str(shown),
           *[a for o in overrides for a in ("--set", o)]]
    verb = "[resume]" if resume else "[run ]"
    print(f"{verb} {grid['name']}/{row} seed {seed}: {shlex.join(cmd)}"
          + (" --resume" if resume else ""), flush=True)
    t = time.perf_counter()
    summary = train(cfg, run_dir, resume=resume)
    wall = time.perf_counter() - t
    # The command of an uninterrupted run: resuming gives the same result.
    result = {"grid": grid["name"], "row": row, "seed": seed,
              "command": shlex.join(cmd), "wall_time_s": wall, "summary": summary,
              "metrics": read_metrics(run_dir / "metrics.jsonl")}
    if resume:  # wall_time_s is then this attempt's only
        result["resumed"] = True
    write_json_atomic(out, result)
    print(f"[done] {grid['name']}/{row} seed {seed}: test error "
          f"{summary['test_error_last']:.2f}% in {wall:.0f} s", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", type=Path)
    p.add_argument("--rows", nargs="+", help="only these rows")
    p.add_argument("--seeds", nargs="+", type=int, help="only these seeds")
    p.add_argument("--set", dest="extra", action="append", default=[],
                   help="extra override for every run (key=value)")
    p.add_argument("--force", action="store_true",
                   help="re-run existing results, from scratch")
    p.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    p.add_argument("--runs", type=Path, default=RUNS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    grid = load_grid(args.grid)
    rows = args.rows or list(grid["rows"])
    unknown = sorted(set(rows) - set(grid["rows"]))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; the grid has {list(grid['rows'])}")
    seeds = args.seeds or grid["seeds"]
    for seed in seeds:  # seed-major: every row gets a result early
        for row in rows:
            run_one(grid, row, seed, args.extra, args.force, args.results,
                    args.runs)


if __name__ == "__main__":
    main()
