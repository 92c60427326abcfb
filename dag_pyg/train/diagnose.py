"""``dag-pyg diagnose``: will DAG help on this data? Pre-training and one
refresh with labels held out for the premise check
(:mod:`dag_pyg.train.premise`), then the check's table with a plain
verdict per module; minutes, never a full run."""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path

from dag_pyg.config import Config, ConfigError
from dag_pyg.train.logger import read_metrics, write_json_atomic
from dag_pyg.train.loop import run
from dag_pyg.train.setup import default_num_check


def _pct(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.1f}"


def _ci(rec: dict, key: str) -> str:
    lo, hi = rec.get(f"{key}_lo"), rec.get(f"{key}_hi")
    if lo is None or math.isnan(lo):
        return ""
    return f"[{_pct(lo)}, {_pct(hi)}]"


def _call(rec: dict, key: str, helps: str, hurts: str) -> str:
    """``helps`` where the gain's interval lies above 0, ``hurts`` below,
    else undecided."""
    lo, hi = rec.get(f"{key}_lo"), rec.get(f"{key}_hi")
    if lo is None or math.isnan(lo):  # JSON holds NaN as null
        return "no check nodes to read"
    if lo > 0:
        return helps
    if hi < 0:
        return hurts
    return (f"no evidence either way at this size (its 95 % interval, "
            f"{_ci(rec, key)} points, holds 0)")


def verdicts(rec: dict) -> dict[str, str]:
    """One plain sentence per module from a refresh's ``check_*`` record."""
    n = int(rec["check_n"])
    out = {"pseudo_labels": (
        f"Label Bank {_pct(rec['check_lb_acc'])} % right "
        f"{_ci(rec, 'check_lb_acc')} on the {n} held-out nodes: what "
        "pseudo-labelling (the paper's baseline) teaches.")}
    m = int(rec["check_dplp_n"])
    out["dplp"] = (
        f"DPLP labels {_pct(rec['check_dplp_acc'])} % vs model "
        f"{_pct(rec['check_lb_acc_covered'])} % on the {m} nodes their paths "
        "cover: " + _call(rec, "check_dplp_gain", "DPLP should help.",
                          "DPLP should hurt: train on the model's labels."))
    out["neighbour_vote"] = (
        f"neighbours' vote {_pct(rec['check_vote_acc'])} % vs the model "
        f"{_pct(rec['check_lb_acc'])} %: " + _call(
            rec, "check_vote_gain",
            "the graph's neighbours are more often right than the model; "
            "aggregation's premise holds.",
            "the neighbours are less often right than the model; "
            "aggregation's premise fails."))
    if "check_neighbour_gain" in rec:
        out["dna"] = (
            f"head with neighbours {_pct(rec['check_lb_acc'])} % vs without "
            f"{_pct(rec['check_self_acc'])} %: " + _call(
                rec, "check_neighbour_gain", "DNA should help.",
                "DNA should hurt: train without it (dna.aggregator=none)."))
    return out


def diagnose(cfg: Config, run_dir: str | Path, num_check: int | None = None
             ) -> dict:
    """Pre-trains ``cfg`` into ``run_dir`` with ``num_check`` labels held
    out (default: the config's ``data.num_check``, else
    :func:`default_num_check`), builds the first banks, and returns (and
    writes to ``diagnose.json``) the premise check with verdicts."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("diagnose runs in one process (minutes): start it "
                          "without torchrun.")
    cfg = copy.deepcopy(cfg)
    if cfg.optim.pretrain_epochs < 1:
        raise ConfigError("diagnose reads the banks built after pre-training: "
                          "set optim.pretrain_epochs >= 1.")
    if num_check is not None:
        cfg.data.num_check = num_check
    if cfg.method == "auto":  # its steered arm's first refresh
        cfg.method = "steered"
    if not cfg.data.num_check:
        cfg.data.num_check = default_num_check(cfg)
    run_dir = Path(run_dir)
    run(cfg, run_dir, stop_after=cfg.optim.pretrain_epochs - 1)
    last = read_metrics(run_dir / "metrics.jsonl")[-1]
    check = {k: v for k, v in last.items() if k.startswith("check_")}
    out = {"config": cfg.name, "run_dir": str(run_dir),
           "num_check": cfg.data.num_check, "epoch": last["epoch"],
           "check": check, "verdicts": verdicts(check)}
    write_json_atomic(run_dir / "diagnose.json", out)
    return out


ROWS = (("Label Bank accuracy", "check_lb_acc"),
        ("neighbour vote accuracy", "check_vote_acc"),
        ("  gain over the Label Bank", "check_vote_gain"),
        ("head without neighbours", "check_self_acc"),
        ("  neighbour term's gain", "check_neighbour_gain"),
        ("DPLP accuracy (covered)", "check_dplp_acc"),
        ("Label Bank (same nodes)", "check_lb_acc_covered"),
        ("  DPLP's gain", "check_dplp_gain"),
        ("attention purity", "check_attention_purity"))


def render(out: dict) -> str:
    """The premise table and the verdicts as text."""
    c = out["check"]
    lines = [f"premise check of {out['config']} after pre-training "
             f"({int(c['check_n'])} held-out labels; "
             f"{int(c['check_dplp_n'])} covered by DPLP), in %:",
             f"  {'':28s} {'value':>7s}  95 % interval"]
    for name, key in ROWS:
        if key in c:
            lines.append(f"  {name:28s} {_pct(c[key]):>7s}  {_ci(c, key)}")
    lines += ["", *(f"{k}: {v}" for k, v in out["verdicts"].items()),
              "", f"written: {Path(out['run_dir']) / 'diagnose.json'}"]
    return "\n".join(lines)
