r"""``method: auto``: DAG where the premise check finds it no worse than the
labels alone, the labels alone elsewhere.

Whether pseudo labels and neighbour aggregation help is a property of the
data that no rule read off the graph settles in advance (on CIFAR-10 at CPU
scale the paper's baseline, DAG and the check-steered DAG all train worse
than the labels alone; on MNIST-100 DAG cuts the error by two thirds). So
``auto`` measures it: on one split, with the same ``data.num_check`` labels
held out of both, it trains two arms into ``<run>/arms/``

- ``steered``: DAG steered by the premise check at every refresh
  (``method: steered``; :func:`~dag_pyg.train.premise.auto_decisions` and
  :func:`~dag_pyg.train.premise.admission_threshold`);
- ``labels_only``: the labels alone (a linear head, no pseudo labels:
  ``dna.aggregator: none``, ``pseudo_label.source: none``),

then classifies the held-out check nodes with each arm's final model as it
classifies test images and keeps the arm with more of them right
(:func:`choose`). Neither arm trained on those labels, so the comparison is
an unbiased, paired estimate of the two arms' accuracy difference.

The rule keeps the arm with the higher point estimate, ``steered`` on a
tie, rather than ``steered`` only where its interval lies above 0: with the
20-80 check labels of a few-label split the interval of a paired difference
spans 10-20 points, so an interval rule would drop DAG's gain wherever it
is real but smaller than that, while a point-estimate choice loses, in
expectation, only where the arms are close (a wrong choice between close
arms costs little). The interval is recorded beside the choice.

Then it refits the chosen arm on every label, as a model selection refits
its choice on all the data (scikit-learn's ``refit``), into ``<run>/refit``
(:func:`refit_config`): the labels alone on all labels, or the steered
arm's decisions, refresh by refresh (DPLP's labels or the model's, the
admission threshold, the neighbour term), replayed without a check
(``steer.replay_*``). The held-out labels then cost the choice nothing at
test time: on CIFAR-10 at CPU scale, 320 of 400 labels alone were 0.9
points worse than all 400. The refit's model is the run's: ``dag-pyg
eval`` of the run folder evaluates it
(:func:`~dag_pyg.train.evaluate.model_dir`), and ``summary.json`` is its
summary with the choice (``auto``) and every arm's result (``arms``).
``auto`` costs three trainings: the two arms and the refit. Each is an
ordinary run folder: it checkpoints every epoch and ``--resume`` continues
it, skipping finished ones.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from dag_pyg.config import Config, ConfigError, save_config
from dag_pyg.distributed import DistContext
from dag_pyg.train.checkpoint import CheckpointError
from dag_pyg.train.evaluate import load_run, predict
from dag_pyg.train.interrupt import TrainingInterrupted
from dag_pyg.train.logger import RunLogger, read_metrics, write_json_atomic
from dag_pyg.train.premise import paired_gain, wilson
from dag_pyg.train.setup import CHECKPOINT, CHOICE, default_num_check, run_started

ARMS_DIR = "arms"
REFIT_DIR = "refit"
# Trained in this order: the cheaper arm first.
ARMS = ("labels_only", "steered")


def arm_configs(cfg: Config, num_check: int) -> dict[str, Config]:
    """The configurations of ``cfg``'s arms, each holding the same
    ``num_check`` labels out (same seed, same split)."""
    out = {}
    for arm in ARMS:
        c = copy.deepcopy(cfg)
        c.name = f"{cfg.name}_{arm}"
        c.data.num_check = num_check
        if arm == "steered":
            c.method = "steered"
        else:
            c.method = "dag"
            c.dna.aggregator = "none"
            c.pseudo_label.source = "none"
        out[arm] = c
    return out


def refit_config(cfg: Config, arm: str, arm_dir: Path) -> Config:
    """The configuration of ``arm`` (trained in ``arm_dir``) on every label:
    the labels alone as they are; the steered arm's decisions, one per
    end-of-epoch refresh (its ``auto_*`` records), as a replay
    (``steer.replay_*``). An epoch that kept its banks (``graph.freeze_lr``;
    the refit keeps them in the same epochs: same schedule) decided nothing:
    its entry repeats the decision before it and is not read."""
    c = arm_configs(cfg, 0)[arm]
    c.name = f"{cfg.name}_refit"
    if arm == "steered":
        records = read_metrics(arm_dir)
        decided = {r["epoch"]: r for r in records if "auto_dplp" in r}
        kept = {r["epoch"] for r in records if r.get("banks_frozen")}
        first = cfg.optim.pretrain_epochs - 1
        epochs = range(first, first + cfg.optim.epochs + 1)
        if (first not in decided or set(decided) | kept != set(epochs)
                or len(decided) + len(kept) != len(epochs)):
            raise CheckpointError(
                f"'{arm_dir}' records {len(decided)} steered refreshes and "
                f"{len(kept)} epochs that kept their banks, not one of the two "
                f"for each of epochs {first}..{epochs[-1]}: it is not a "
                "finished arm of this configuration.")
        replay: list[dict] = []
        for e in epochs:
            replay.append(decided.get(e) or replay[-1])
        c.steer.replay_dplp = [bool(r["auto_dplp"]) for r in replay]
        # null (NaN in the run): no pseudo label admitted
        c.steer.replay_threshold = [r["auto_threshold"] for r in replay]
        c.steer.replay_neighbours = bool(decided[first]["auto_neighbours"])
    return c


def check_right(run_dir: Path) -> tuple[Tensor, Tensor]:
    """A finished run's check: the training-set rows of its check nodes and
    whether its final model classifies each right, as it classifies test
    images (retrieving neighbours from its Feature Bank)."""
    loaded = load_run(run_dir, progress=False)
    data = loaded.data
    if data.check_mask is None:
        raise ConfigError(f"'{run_dir}' held no labels out (data.num_check 0): "
                          "it has no check to compare on.")
    rows = data.nodes[data.check_mask]
    feats, graph = loaded.bank_and_graph()
    with RunLogger() as quiet:  # no bars, no files
        pred = predict(loaded.as_run(quiet), feats, graph, data.train_set, rows,
                       "check")
    return rows, pred == data.train_set.targets[rows]


def choose(right: dict[str, Tensor]) -> dict:
    """The choice between the arms from their check results (``right``:
    arm -> whether each check node is classified right, same nodes, same
    order): ``steered`` where it gets at least as many right as
    ``labels_only`` (see the module docstring), with each arm's accuracy
    (95 % Wilson interval) and the paired gain of ``steered`` (95 %
    Agresti-Min interval, :func:`~dag_pyg.train.premise.paired_gain`)."""
    s, b = right["steered"], right["labels_only"]
    if s.shape != b.shape or s.numel() == 0:
        raise ValueError("choose: the arms must be checked on the same, "
                         f"non-empty set of nodes (got {s.numel()} and {b.numel()}).")
    gain, lo, hi = paired_gain(s, b)
    arms = {}
    for arm, r in right.items():
        lo_a, hi_a = wilson(int(r.sum()), r.numel())
        arms[arm] = {"acc": float(r.float().mean()), "acc_lo": lo_a, "acc_hi": hi_a}
    return {"arm": "steered" if int(s.sum()) >= int(b.sum()) else "labels_only",
            "check_n": s.numel(), "gain": gain, "gain_lo": lo, "gain_hi": hi,
            "arms": arms}


def _decide(run_dir: Path) -> dict:
    rows, right = None, {}
    for arm in ARMS:
        arm_rows, right[arm] = check_right(run_dir / ARMS_DIR / arm)
        if rows is not None and not torch.equal(rows, arm_rows):
            raise CheckpointError(
                f"The arms in '{run_dir / ARMS_DIR}' held out different check "
                "labels; they are not comparable. Start the run anew with --out.")
        rows = arm_rows
    choice = choose(right)
    choice["model_dir"] = REFIT_DIR
    return choice


def _saved_choice(run_dir: Path) -> dict | None:
    """The choice an earlier attempt wrote before its refit (:obj:`None`
    where there is none, or one of a release that did not refit)."""
    path = run_dir / CHOICE
    if not path.is_file():
        return None
    choice = json.loads(path.read_text())
    return choice if choice.get("model_dir") == REFIT_DIR else None


def _train_part(run_arm: Callable[..., dict], cfg: Config, run_dir: Path,
                part: str, dist: DistContext) -> dict:
    """Trains (or resumes, or reads back, where finished) one part of an
    ``auto`` run into ``run_dir / part``."""
    part_dir = run_dir / part
    try:
        return run_arm(cfg, part_dir, resume=(part_dir / CHECKPOINT).is_file(),
                       dist=dist)
    except TrainingInterrupted as e:
        raise TrainingInterrupted(
            f"{e}; for the whole method: auto run: `dag-pyg train CONFIG "
            f"--out {run_dir} --resume`", e.signum) from None


def train_auto(cfg: Config, run_dir: str | Path, run_arm: Callable[..., dict],
               resume: bool = False, dist: DistContext | None = None) -> dict:
    """Trains ``method: auto`` (see the module docstring) into ``run_dir``,
    each arm and the refit with ``run_arm`` (:func:`~dag_pyg.train.loop.run`);
    returns the refit's summary with the choice (``auto``) and every arm's
    result (``arms``)."""
    run_dir, dist = Path(run_dir), dist or DistContext()
    if cfg.method != "auto":
        raise ConfigError(f"train_auto trains method: auto (got {cfg.method!r}).")
    started = run_started(run_dir)
    if resume and not started:
        raise CheckpointError(f"--resume: no checkpoint in '{run_dir}' or its "
                              "arms; start the run without --resume.")
    if started and not resume:
        raise FileExistsError(
            f"'{run_dir}' already holds a run; pass --resume to continue it or "
            "--out to start a new one. Nothing was overwritten.")
    num_check = cfg.data.num_check or dist.on_main(lambda: default_num_check(cfg))
    dist.on_main(lambda: (run_dir.mkdir(parents=True, exist_ok=True),
                          save_config(cfg, run_dir / "config.yaml")), share=False)
    summaries = {}
    for arm, arm_cfg in arm_configs(cfg, num_check).items():
        summaries[arm] = _train_part(run_arm, arm_cfg, run_dir, f"{ARMS_DIR}/{arm}",
                                     dist)
    # The choice is written before the refit and read back on a resume, so
    # that an interrupted refit continues the arm it started with.
    choice = dist.on_main(lambda: _saved_choice(run_dir) or _decide(run_dir))
    dist.on_main(lambda: write_json_atomic(run_dir / CHOICE, choice), share=False)
    arm_dir = run_dir / ARMS_DIR / choice["arm"]
    refit_cfg = dist.on_main(lambda: refit_config(cfg, choice["arm"], arm_dir))
    refit = _train_part(run_arm, refit_cfg, run_dir, REFIT_DIR, dist)
    summary = {**refit, "run_dir": str(run_dir),
               "model_dir": str(run_dir / choice["model_dir"]), "auto": choice,
               "arms": {a: {"test_error_last": s["test_error_last"],
                            "check": s.get("check", {})}
                        for a, s in summaries.items()},
               "config": cfg.to_dict()}

    dist.on_main(lambda: write_json_atomic(run_dir / "summary.json", summary),
                 share=False)
    return summary
