"""Runs a named grid of experiments (rows x seeds) and collects the results.

    python -m benchmarks.experiments.reproduce \
        benchmarks/experiments/grids/digits_table1.yaml [--rows a b]
        [--seeds 0 1 2] [--force] [--set key=value ...]

A grid YAML names a base config, the seeds, and rows of overrides::

    name: digits_table1
    kind: headline                    # where RESULTS.md shows it (common.GRID_KINDS)
    config: configs/digits.yaml
    seeds: [0, 1, 2]
    set: [optim.epochs=30]            # applied to every row
    rows:
      labels_only: [dna.aggregator=none, pseudo_label.source=none]
      baseline: [dna.aggregator=none, pseudo_label.source=model]
      dag: []
      dagplus: {config: configs/digits_dagplus.yaml}   # a row of its own config
      dag_lp_l: [dplp.mode=L]
    legacy: [dag_lp_l]                # run only when --rows names it; no headline
    borrow: {labels_only: other_grid/labels_only}   # that grid's runs, not run here

Each run goes to ``benchmarks/runs/<grid>/<row>/seed<k>`` (not committed)
and its result to ``benchmarks/experiments/results/<grid>/<row>__seed<k>.json``
(summary, per-epoch metrics, the exact command, wall time). Runs whose result
exists are skipped, so a grid can be built over several sessions; a run that
was interrupted resumes from the checkpoint of its last finished epoch (to
the same result as an uninterrupted run), and one that died before its first
checkpoint starts over. ``--force`` re-runs from scratch. Splits depend on the
seed only, so they are shared across rows.
``python -m benchmarks.experiments.make_results`` turns the JSON into tables.

Rows named as the paper's (``labels_only``, ``baseline``, ``dna``, ``dplp``,
``dag``, ...; ``paper_rows.PAPER_ROWS``) must resolve to the paper's
definition, and a result is reused only where its recorded configuration is
the row's (:func:`same_config`). A grid's ``renamed: {old: new}`` names rows
of earlier commits whose results now belong to another row name (the
project's ``baseline`` trained on the labels alone until the rows took the
paper's names): :func:`migrate` moves each such result, and its run folder,
to the new name where the configuration matches, recording ``renamed_from``
in the JSON (the command it ran is kept as it was). ``--migrate`` does only
that.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import EXPERIMENT_RESULTS, ROOT, RUNS, grid_kind
from benchmarks.experiments.paper_rows import check_paper_row
from dag_pyg.config import Config, load_config, upgrade
from dag_pyg.train import train
from dag_pyg.train.evaluate import model_dir
from dag_pyg.train.logger import read_metrics, write_json_atomic
from dag_pyg.train.setup import run_started

RESULTS = EXPERIMENT_RESULTS


def load_grid(path: Path) -> dict:
    grid = yaml.safe_load(path.read_text())
    for key in ("name", "config", "rows"):
        if key not in grid:
            raise SystemExit(f"grid '{path}' lacks the key '{key}'")
    grid.setdefault("seeds", [0])
    grid.setdefault("set", [])
    try:  # make_results would refuse an unknown kind: refuse it before any run
        grid_kind(grid)
    except ValueError as e:
        raise SystemExit(f"grid '{path}': {e}") from None
    for row in grid["rows"]:
        try:
            check_paper_row(row, row_config(grid, row, 0))
        except ValueError as e:
            raise SystemExit(f"grid '{path}': {e}") from None
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


def row_overrides(grid: dict, row: str, seed: int,
                  extra: list[str] = ()) -> tuple[str, list[str]]:
    """A run's config file and its overrides, in the order they apply."""
    config, row_set = row_spec(grid, row)
    return config, [*grid["set"], *row_set, f"seed={seed}",
                    f"name={grid['name']}_{row}", *extra]


def row_config(grid: dict, row: str, seed: int, extra: list[str] = ()) -> Config:
    config, overrides = row_overrides(grid, row, seed, extra)
    return load_config(ROOT / config, overrides)


# Keys that say where a run reads and writes or what it prints, not what it
# trains: results differing only there are the same experiment.
NOT_TRAINING = ("name", "out", "device", "log", "data.root", "data.cache_dir",
                "data.download")


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def same_config(record: dict, cfg: Config) -> list[str]:
    """The training keys where a result's recorded configuration differs from
    ``cfg`` (empty: the same experiment). Keys a record predates take their
    defaults, which are what the run used; a recorded ``null`` is how the
    JSON holds an infinite value (``dplp.sigma``)."""
    recorded = {**_flat(Config().to_dict()),
                **_flat(upgrade(record["summary"]["config"]))}

    def same(old: Any, new: Any) -> bool:
        return old == new or (old is None and isinstance(new, float)
                               and not math.isfinite(new))

    return [key for key, value in _flat(cfg.to_dict()).items()
            if not same(recorded.get(key), value)
            and key not in NOT_TRAINING and key.split(".")[0] not in NOT_TRAINING]


def migrate(grid: dict, results: Path = RESULTS, runs: Path = RUNS) -> list[str]:
    """Moves the results (and run folders) of the grid's ``renamed: {old:
    new}`` rows to their new names where the recorded configuration is the
    new row's; returns what it moved. Chains (``baseline`` -> ``labels_only``
    while ``pseudo_label`` -> ``baseline``) go through temporary names."""
    renamed = grid.get("renamed") or {}
    res, run = results / grid["name"], runs / grid["name"]
    moves = []
    for old, new in renamed.items():
        if new not in grid["rows"]:
            raise SystemExit(f"grid '{grid['name']}': renamed row '{old}' -> "
                             f"'{new}', but '{new}' is not one of its rows")
        for path in sorted(res.glob(f"{old}__seed*.json")):
            record = json.loads(path.read_text())
            if "renamed_from" in record or (old in grid["rows"] and not same_config(
                    record, row_config(grid, old, record["seed"]))):
                continue  # migrated already, or the result of today's row 'old'
            diff = same_config(record, row_config(grid, new, record["seed"]))
            if diff:
                print(f"[keep] {grid['name']}/{path.name}: not row '{new}' "
                      f"(differs in {', '.join(diff)})")
                continue
            moves.append((old, new, record))
    # Every destination must be free once the moves' own sources have left
    # (a chain frees its names): checked before anything moves.
    leaving = {(old, r["seed"]) for old, _, r in moves}
    for _, new, r in moves:
        s = r["seed"]
        if (new, s) not in leaving and ((res / f"{new}__seed{s}.json").exists()
                                        or (run / new / f"seed{s}").exists()):
            raise SystemExit(f"{grid['name']}: renaming a result to '{new}' seed "
                             f"{s}, but one is there already; nothing was moved")

    def move(row_a: str, row_b: str, seed: int) -> None:
        (res / f"{row_a}__seed{seed}.json").rename(res / f"{row_b}__seed{seed}.json")
        if (run / row_a / f"seed{seed}").is_dir():
            (run / row_b).mkdir(parents=True, exist_ok=True)
            (run / row_a / f"seed{seed}").rename(run / row_b / f"seed{seed}")
            if not any((run / row_a).iterdir()):  # the old row's last seed
                (run / row_a).rmdir()

    for old, _, r in moves:  # out of the way first, so chains cannot collide
        move(old, f".{old}.migrating", r["seed"])
    for old, new, r in moves:
        move(f".{old}.migrating", new, r["seed"])
        write_json_atomic(res / f"{new}__seed{r['seed']}.json",
                          {**r, "row": new, "renamed_from": old})
    for old, _, _ in moves:
        shutil.rmtree(run / f".{old}.migrating", ignore_errors=True)
    done = [f"{old} -> {new} seed {r['seed']}" for old, new, r in moves]
    for line in done:
        print(f"[renamed] {grid['name']}: {line}")
    return done


def run_one(grid: dict, row: str, seed: int, extra: list[str], force: bool,
            results: Path = RESULTS, runs: Path = RUNS) -> dict:
    out = results / grid["name"] / f"{row}__seed{seed}.json"
    config, overrides = row_overrides(grid, row, seed, extra)
    cfg = load_config(ROOT / config, overrides)
    if out.exists() and not force:
        record = json.loads(out.read_text())
        diff = same_config(record, cfg)
        if diff:
            raise SystemExit(
                f"{out} holds another configuration than row '{row}' (differs "
                f"in {', '.join(diff)}): a renamed row? Name it in the grid's "
                "'renamed:' to move it, or --force to run the row anew.")
        print(f"[skip] {grid['name']}/{row} seed {seed}: {out.name} exists")
        return record
    run_dir = runs / grid["name"] / row / f"seed{seed}"
    resume = run_started(run_dir) and not force
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
              # A method: auto run's metrics are its refit's.
              "metrics": read_metrics(model_dir(run_dir) / "metrics.jsonl")}
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
    p.add_argument("--migrate", action="store_true",
                   help="only move the results of the grid's 'renamed:' rows")
    p.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    p.add_argument("--runs", type=Path, default=RUNS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    grid = load_grid(args.grid)
    migrate(grid, args.results, args.runs)
    if args.migrate:
        return
    legacy = set(grid.get("legacy") or ())
    # A borrowed row's results are another grid's runs (make_results reads
    # them there): trained here they would cost hours and never be shown.
    borrowed = grid.get("borrow") or {}
    rows = args.rows or [r for r in grid["rows"]
                         if r not in legacy and r not in borrowed]
    unknown = sorted(set(rows) - set(grid["rows"]))
    if unknown:
        renamed = grid.get("renamed") or {}
        hints = "".join(f"; '{r}' is now '{renamed[r]}'" for r in unknown
                        if r in renamed)
        raise SystemExit(f"unknown rows {unknown}; the grid has "
                         f"{list(grid['rows'])}{hints}")
    named = [r for r in rows if r in borrowed]
    if named:
        where = ", ".join(f"'{r}' from {borrowed[r]}" for r in named)
        raise SystemExit(f"rows {named} are borrowed ({where}): run them in "
                         "their own grid, or drop them from --rows.")
    if not args.rows:
        for row, source in borrowed.items():
            print(f"[borrowed] {grid['name']}/{row}: {source}'s runs, not run here",
                  flush=True)
    seeds = args.seeds or grid["seeds"]
    for seed in seeds:  # seed-major: every row gets a result early
        for row in rows:
            run_one(grid, row, seed, args.extra, args.force, args.results,
                    args.runs)


if __name__ == "__main__":
    main()
