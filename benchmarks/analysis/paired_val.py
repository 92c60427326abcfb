"""Two recipes compared image by image on the validation split.

    python -m benchmarks.analysis.paired_val --a RUN_A [RUN_A2 ...] \
        --b RUN_B [RUN_B2 ...] [--out FILE.json]

A validation split of 1,000 images resolves one run's error to about ±0.5
points (the binomial standard error at 3 %), as coarse as the recipe
choices it has to make. Two runs on the same images are mostly right on
the same ones, and their difference is decided by the images only one of
them gets wrong; the paired interval on those is narrower than two
separate errors suggest. Each ``--a`` run is paired with the ``--b`` run
at the same position; both must hold the same validation images (a split
depends on the seed, so: same seed, same data). Every run is classified
with its last checkpoint's weights, Feature Bank and graph, as training's
own evaluation classifies it (so each run's ``val_error`` is reproduced;
a mismatch is reported). The pairs are then pooled: their images are
nearly distinct where the seeds differ (each seed's split is its own draw
from the training set). The intervals cover the images drawn, not the
training seeds: where two seeds' differences disagree by more than their
intervals, the seeds are the larger noise.

Per pair and pooled: the error of each, the images only A gets wrong and
only B gets wrong, and the error difference A - B with Agresti and Min's
95 % interval for a paired difference of proportions
(:func:`dag_pyg.train.premise.paired_gain`). Nothing is written into the
run folders.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from dag_pyg.train import load_run
from dag_pyg.train.evaluate import model_dir, predict
from dag_pyg.train.logger import RunLogger, read_metrics, write_json_atomic
from dag_pyg.train.premise import paired_gain


def val_right(run_dir: Path) -> tuple[Tensor, Tensor]:
    """The validation rows of a run folder and whether its last checkpoint
    classifies each right."""
    run = load_run(run_dir, progress=False)
    val = run.data.split.val
    if not val.numel():
        raise SystemExit(f"'{run_dir}' has no validation split (data.num_val "
                         "is 0): nothing to compare on.")
    feats, graph = run.bank_and_graph()
    with RunLogger(None, tensorboard=False, progress=False) as log:
        pred = predict(run.as_run(log), feats, graph, run.data.train_set, val, "val")
    return val, pred == run.data.train_set.targets[val]


def compare(a_right: Tensor, b_right: Tensor) -> dict:
    """Errors (%) of ``a`` and ``b`` on the same images, the images only
    one of them gets wrong, and the difference of errors ``a - b`` (points)
    with its 95 % interval."""
    n = a_right.numel()
    # paired_gain is a's accuracy minus b's: b's error minus a's.
    d, lo, hi = paired_gain(b_right, a_right)
    return {"images": n,
            "error_a": 100.0 * float((~a_right).sum()) / n,
            "error_b": 100.0 * float((~b_right).sum()) / n,
            "only_a_wrong": int((~a_right & b_right).sum()),
            "only_b_wrong": int((a_right & ~b_right).sum()),
            "diff": 100.0 * d, "diff_lo": 100.0 * lo, "diff_hi": 100.0 * hi}


def last_val_error(run_dir: Path) -> float | None:
    """The validation error training logged last (``None`` if none), of the
    model :func:`val_right` classifies (``method: auto``'s refit)."""
    errs = [r["val_error"] for r in read_metrics(model_dir(run_dir) / "metrics.jsonl")
            if r.get("val_error") is not None]
    return errs[-1] if errs else None


def paired_val(a_runs: list[Path], b_runs: list[Path]) -> dict:
    """Every pair compared, then all pairs' images pooled."""
    if len(a_runs) != len(b_runs) or not a_runs:
        raise SystemExit("give as many --b runs as --a runs (at least one).")
    pairs, a_all, b_all = [], [], []
    for a, b in zip(a_runs, b_runs, strict=True):
        val_a, right_a = val_right(a)
        val_b, right_b = val_right(b)
        if not torch.equal(val_a, val_b):
            raise SystemExit(f"'{a}' and '{b}' validate on different images "
                             "(pair runs of the same seed and data).")
        rec = {"a": str(a), "b": str(b), **compare(right_a, right_b)}
        for side, run in (("a", a), ("b", b)):
            logged = last_val_error(run)
            rec[f"logged_error_{side}"] = logged
            if logged is not None and abs(logged - rec[f"error_{side}"]) > 1e-3:
                print(f"warning: {run}: re-classified val error "
                      f"{rec[f'error_{side}']:.2f} % against the logged {logged:.2f} %")
        pairs.append(rec)
        a_all.append(right_a)
        b_all.append(right_b)
    pooled = compare(torch.cat(a_all), torch.cat(b_all))
    return {"pairs": pairs, "pooled": pooled}


def fmt(rec: dict) -> str:
    """One table line of a pair's (or the pooled) comparison."""
    return (f"{rec['images']:>6}  {rec['error_a']:6.2f}  {rec['error_b']:6.2f}  "
            f"{rec['only_a_wrong']:>6}  {rec['only_b_wrong']:>6}  "
            f"{rec['diff']:+6.2f} [{rec['diff_lo']:+.2f}, {rec['diff_hi']:+.2f}]")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", nargs="+", type=Path, required=True, help="run folders A")
    p.add_argument("--b", nargs="+", type=Path, required=True,
                   help="run folders B, paired with A's in order")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    args = p.parse_args(argv)
    res = paired_val(args.a, args.b)
    print(f"{'pair':<6} {'images':>6}  {'err A':>6}  {'err B':>6}  "
          f"{'A only':>6}  {'B only':>6}  A - B (points) [95 %]")
    for i, rec in enumerate(res["pairs"]):
        print(f"{i:<6} {fmt(rec)}")
    print(f"{'pooled':<6} {fmt(res['pooled'])}")
    if args.out:
        write_json_atomic(args.out, res)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
