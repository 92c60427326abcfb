"""A finished run's last model evaluated two ways: from the Feature Bank its
checkpoint holds (what runs logged before the kept tail's evaluation
extracted a bank of its own) and from a bank extracted again by
that model (the graph rebuilt on it). With ``graph.freeze_lr`` the kept bank
is older than the model; the difference is what the stale bank costs.

    python -m benchmarks.analysis.fresh_bank_eval RUN_DIR [RUN_DIR ...]

Prints a table and writes ``benchmarks/analysis/results/fresh_bank_eval.json``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import ANALYSIS_RESULTS, print_table, write_json
from dag_pyg.train import evaluate, load_run
from dag_pyg.train.logger import RunLogger
from dag_pyg.train.refresh import fresh_bank


def fresh_bank_eval(run_dir: Path) -> dict:
    run = load_run(run_dir, progress=False)
    stored, graph = run.bank_and_graph(stored=True)
    with RunLogger(tensorboard=False, progress=False) as log:
        as_run = run.as_run(log)
        kept = evaluate(as_run, stored, graph)
        fresh = evaluate(as_run, *fresh_bank(as_run, graph is not None))
    row = {"run": "/".join(run_dir.parts[-3:]), "epoch": run.state["epoch"]}
    for key in ("test_error", "val_error"):
        if key in kept:
            row[f"{key}_kept_bank"] = kept[key]
            row[f"{key}_fresh_bank"] = fresh[key]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--name", default="fresh_bank_eval")
    args = p.parse_args()
    rows = [fresh_bank_eval(run) for run in args.runs]
    print_table(rows, list(dict.fromkeys(k for r in rows for k in r)))
    write_json(args.name, {"args": {**vars(args), "runs": [str(r) for r in args.runs]},
                           "rows": rows}, ANALYSIS_RESULTS)


if __name__ == "__main__":
    main()
