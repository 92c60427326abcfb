"""The ``dag-pyg`` command line: ``train``, ``eval`` and ``diagnose``.

    dag-pyg train configs/digits.yaml [--set dna.hops=2 ...] [--out DIR] [--resume]
    dag-pyg eval runs/digits
    dag-pyg diagnose configs/digits.yaml [--num-check N] [--out DIR]
    torchrun --nproc_per_node 2 -m dag_pyg train configs/digits.yaml
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dag_pyg.config import load_config
from dag_pyg.distributed.context import DistributedError
from dag_pyg.train import evaluate_run, train
from dag_pyg.train.checkpoint import CheckpointError
from dag_pyg.train.diagnose import diagnose, render
from dag_pyg.train.interrupt import TrainingInterrupted

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "digits.yaml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dag-pyg", description=(
        "Density-Aware Graph for deep semi-supervised visual recognition."))
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an experiment from a YAML config")
    t.add_argument("config", help="YAML experiment file (see configs/)")
    t.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a config key, e.g. "
                   "--set dna.hops=2 (repeatable; values are YAML)")
    t.add_argument("--out", help="run folder (default: <out>/<name> of the config)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in the run folder from its checkpoint")
    t.add_argument("--stop-after", type=int, metavar="EPOCH",
                   help="stop after this epoch's checkpoint (time-limited jobs); "
                   "continue later with --resume")
    e = sub.add_parser("eval", help="evaluate a run folder's last checkpoint")
    d = sub.add_parser("diagnose", help=(
        "will DAG help on this data? pre-training and one refresh with labels "
        "held out; prints the premise check with a verdict per module"))
    d.add_argument("config", help="YAML experiment file (see configs/)")
    d.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a config key (repeatable)")
    d.add_argument("--out", help="run folder (default: <out>/<name>_diagnose)")
    d.add_argument("--num-check", type=int, metavar="N",
                   help="labels held out for the check, spread over the classes "
                   "(default: data.num_check, else 20%% of each class's)")
    for cmd in (t, e, d):
        cmd.add_argument("--debug", action="store_true",
                         help="show the full traceback of an error")
    e.add_argument("run_dir")
    e.add_argument("--num-test", metavar="N|all",
                   help="evaluate on another test set than the run's own: 'all' "
                   "(the whole test set) or a class-balanced subset of N samples")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            cfg = load_config(args.config, args.overrides)
            run_dir = Path(args.out) if args.out else Path(cfg.out) / cfg.name
            summary = train(cfg, run_dir, resume=args.resume,
                            stop_after=args.stop_after)
            err = summary["test_error_last"]
            err_txt = "n/a" if err is None else f"{err:.2f}%"
            if os.environ.get("RANK", "0") == "0":
                if "auto" in summary:
                    c, acc = summary["auto"], summary["auto"]["arms"]
                    print(f"method auto chose {c['arm']}: steered "
                          f"{acc['steered']['acc']:.1%}, the labels alone "
                          f"{acc['labels_only']['acc']:.1%} on {c['check_n']} "
                          "held-out labels")
                print(f"final test error: {err_txt} ({run_dir / 'summary.json'})")
        elif args.command == "diagnose":
            cfg = load_config(args.config, args.overrides)
            run_dir = (Path(args.out) if args.out
                       else Path(cfg.out) / f"{cfg.name}_diagnose")
            print(render(diagnose(cfg, run_dir, args.num_check)))
        else:
            result = evaluate_run(args.run_dir, num_test=args.num_test)
            print(json.dumps(result, indent=2))
    except TrainingInterrupted as e:
        # SIGTERM / Ctrl-C: the run wrote a resumable checkpoint and said how
        # to continue; the exit status tells the scheduler it did not finish.
        if os.environ.get("RANK", "0") == "0":
            print(f"stopped: {e}", file=sys.stderr)
        return e.exit_code
    except (ValueError, FileExistsError, FileNotFoundError, CheckpointError,
            DistributedError) as e:
        # Config mistakes (ConfigError is a ValueError), impossible splits,
        # bad data files, a run folder in the way, missing data, damaged or
        # mismatched checkpoints, a lost rank: a message, not a traceback
        # (--debug shows it).
        if args.debug:
            raise
        rank = os.environ.get("RANK")
        where = f"[rank {rank}] " if rank is not None and os.environ.get(
            "WORLD_SIZE", "1") != "1" else ""
        print(f"{where}error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
