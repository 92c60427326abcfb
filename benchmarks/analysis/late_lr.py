"""One more epoch of a finished run, from its last state, at several
learning rates: the training cross-entropy step by step, and the model's
accuracy after.

Tests why DAG's training loss on MNIST-100 rises over the last epochs of
the cosine schedule (0.78-0.80 -> 0.99-1.01) where the paper's
baseline's stays at 0.70-0.74: every continuation starts from the same
checkpoint (weights, averaged weights, optimiser, banks, data
generator), so the epochs draw the same batches, augmentations and mixup
pairs and differ only in the rate. If the loss falls within the epoch at
a rate from the middle of the schedule and stays up at the tail's, the
model re-fits each refresh's banks only while the rate allows, and the
rise is the schedule's tail.

    python -m benchmarks.analysis.late_lr RUN_DIR [--lrs 0 0.005 0.02 0.05] \
        [--chunks 12] [--swap-lr 0.0005] [--out FILE.json]

``--swap-lr`` adds a probe of what the refresh changes: one epoch at that
rate on the checkpoint's banks (B0), then the refresh (B1); the model the
epoch ended with is scored, without a step, on the same batches with B0,
B1, and each half of B1 alone (its Feature Bank and graph with B0's
targets; B0's Feature Bank and graph with its targets), B1's rows on B0's
graph and the reverse, B1's rows at B0's norms, and B0 and B1 with mixup
off (the same seeds; the augmentation draws differ from the mixed ones,
as no mixup coefficient is drawn). At rate 0 the averaged weights and the
batch-norm statistics still move (as training moves them), so the
evaluation after a continuation at rate 0 is not the checkpoint's.

For runs that extract their Feature Bank once per epoch (``graph.bank:
refresh``, ``graph.refresh_per_epoch: 1``) and do not replay a steered
run's decisions.

Nothing is written into the run folder.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path

import torch
from torch import Tensor
from torch_geometric.data import Data

from dag_pyg.config import load_config, replays
from dag_pyg.distributed import DistContext
from dag_pyg.train import load_run
from dag_pyg.train.checkpoint import capture_rng_state, restore_rng_state
from dag_pyg.train.epoch import epoch_batches, split_for_refreshes, train_steps
from dag_pyg.train.evaluate import evaluate
from dag_pyg.train.logger import RunLogger
from dag_pyg.train.optim import build_optim
from dag_pyg.train.refresh import Banks, refresh, shared_graph
from dag_pyg.train.setup import Run
from dag_pyg.train.state import TrainState


def resumed(run_dir: Path, log: RunLogger) -> TrainState:
    """The run's last state, ready to train on (not into the run folder)."""
    # Checked before anything loads. An online bank is written by the steps
    # (a probe would change what it scores); mid-epoch refreshes and
    # replayed decisions are not continued.
    cfg = load_config(run_dir / "config.yaml")
    if cfg.graph.bank != "refresh" or cfg.graph.refresh_per_epoch != 1 \
            or cfg.method != "dag" or replays(cfg):
        raise ValueError(f"'{run_dir}': late_lr continues runs of method dag "
                         "with graph.bank: refresh, graph.refresh_per_epoch: 1 "
                         "and no steer.replay_*.")
    loaded = load_run(run_dir)
    cfg = loaded.cfg
    if loaded.state["banks"] is None:
        raise ValueError(f"'{run_dir}' must hold a checkpoint at the end of a "
                         "main epoch.")
    # load_run read the data through the run's split.json; the checkpoint's
    # config check wants the config as saved.
    cfg.data.split_file = loaded.state["config"]["data"].get("split_file")
    optim = build_optim(loaded.model.trainable_parameters(), cfg.optim,
                        loaded.device)
    run = Run(cfg=cfg, model=loaded.model, data=loaded.data, device=loaded.device,
              dist=DistContext(), log=log, gen=torch.Generator(), run_dir=None,
              optim=optim)
    state = TrainState(run)
    state.load_state_dict(loaded.state)
    return state


def set_lr(run: Run, lr: float) -> None:
    """Every parameter group's rate (the schedule's own is left unstepped)."""
    for group in run.optim.optimizer.param_groups:
        group["lr"] = lr


def next_batches(run: Run) -> list[Tensor]:
    """A main epoch's batches, drawn from the run's data generator."""
    data = run.data
    return epoch_batches(data.num_labelled, data.nodes.numel(), run.cfg.optim,
                         False, run.gen)


def continue_at(run_dir: str | Path, lr: float, chunks: int = 12) -> dict:
    """One epoch after the run's last at ``lr`` (see the module docstring):
    the mean cross-entropy of each of ``chunks`` equal runs of steps, then
    the refreshed Label Bank's accuracy and the test error."""
    with RunLogger(None, tensorboard=False, progress=False) as log:
        state = resumed(Path(run_dir), log)
        run, banks = state.run, state.banks
        set_lr(run, lr)
        graph = shared_graph(run, banks.features)
        batches = next_batches(run)
        curve = []
        for part in split_for_refreshes(batches, chunks):
            sums, done, _ = train_steps(run, part, banks, graph, False, "late")
            curve.append(sums["loss_ce"] / max(done, 1))
        new = refresh(run, neighbours=banks.neighbours, epoch=state.epoch + 1)
        rec = evaluate(run, new.banks.features,
                       new.graph if new.banks.neighbours else None)
    return {"lr": lr, "from_epoch": state.epoch, "steps": len(batches),
            "loss_ce_chunks": curve, "loss_ce": sum(curve) / len(curve),
            "model_acc": new.stats.get("model_acc"),
            "pl_acc_all": new.stats.get("pl_acc_all"),
            "test_error": rec["test_error"]}


def frozen_loss(run: Run, banks: Banks, graph: Data,
                batches: list[Tensor]) -> float:
    """Mean cross-entropy of the model on ``batches`` as training scores it
    (train mode, augmentation, mixup), changing nothing: the steps run at
    rate 0, then the weights, averaged weights, batch-norm statistics,
    optimiser, gradient scaler and random streams (the data generator's and
    the global ones: dropout) are put back."""
    model, optim = run.model, run.optim
    keep = [copy.deepcopy(m.state_dict()) for m in (model.backbone, model.head)]
    averaged = None if model.averaged is None \
        else copy.deepcopy(model.averaged.state_dict())
    opt = copy.deepcopy(optim.optimizer.state_dict())
    scaler = copy.deepcopy(optim.scaler.state_dict())
    rng = capture_rng_state({"data": run.gen})
    set_lr(run, 0.0)
    sums, done, _ = train_steps(run, batches, banks, graph, False, "probe")
    model.backbone.load_state_dict(keep[0])
    model.head.load_state_dict(keep[1])
    if averaged is not None:
        model.averaged.load_state_dict(averaged)
    optim.optimizer.load_state_dict(opt)
    if scaler:  # empty when the scaler is disabled
        optim.scaler.load_state_dict(scaler)
    restore_rng_state(rng, {"data": run.gen})
    return sums["loss_ce"] / max(done, 1)


def bank_swap(run_dir: str | Path, lr: float, probe_batches: int = 100) -> dict:
    """The refresh probe of the module docstring (``--swap-lr``)."""
    with RunLogger(None, tensorboard=False, progress=False) as log:
        state = resumed(Path(run_dir), log)
        run, b0 = state.run, state.banks
        set_lr(run, lr)
        g0 = shared_graph(run, b0.features)
        train_steps(run, next_batches(run), b0, g0, False, "epoch")
        new = refresh(run, neighbours=b0.neighbours, epoch=state.epoch + 1)
        b1, g1 = new.banks, new.graph
        probe = next_batches(run)[:probe_batches]
        labels = ("prior", "targets", "weights")
        norm0, norm1 = (b.features.float().norm(dim=1).clamp(min=1e-12)
                        for b in (b0, b1))
        ways = {
            "B0": (b0, g0),
            "B1": (b1, g1),
            "B1 features+graph, B0 targets": (dataclasses.replace(
                b1, **{k: getattr(b0, k) for k in labels}), g1),
            "B0 features+graph, B1 targets": (dataclasses.replace(
                b0, **{k: getattr(b1, k) for k in labels}), g0),
            # The head reads edges and densities from the graph, similarities
            # from the rows: the two can be swapped apart. These four keep
            # B0's targets (and the last two B0's graph).
            "B1 features on B0's graph": (dataclasses.replace(
                b0, features=b1.features), g0),
            "B0 features on B1's graph": (b0, g1),
            "B1 features at B0's row norms": (dataclasses.replace(
                b0, features=b1.features * (norm0 / norm1).unsqueeze(1)), g0),
            "B0 features scaled by B1's mean norm ratio": (dataclasses.replace(
                b0, features=b0.features * float(norm1.mean() / norm0.mean())), g0),
        }
        losses = {name: frozen_loss(run, b, g, probe)
                  for name, (b, g) in ways.items()}
        # The same batches unmixed: whether the jump is mixup's.
        alpha, run.cfg.loss.mixup_alpha = run.cfg.loss.mixup_alpha, 0.0
        losses.update({f"{name}, no mixup": frozen_loss(run, *ways[name], probe)
                       for name in ("B0", "B1")})
        run.cfg.loss.mixup_alpha = alpha
        unl = run.data.labelled_mask.logical_not()
        return {"lr": lr, "from_epoch": state.epoch, "probe_batches": len(probe),
                "loss_ce": losses,
                "targets_changed": float((b0.targets != b1.targets)[unl]
                                         .float().mean()),
                "feature_cos": float(torch.nn.functional.cosine_similarity(
                    b0.features.float(), b1.features.float(), dim=1).mean()),
                "feature_norm": [float(b.features.float().norm(dim=1).mean())
                                 for b in (b0, b1)]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--lrs", type=float, nargs="*", default=[0.0, 0.005, 0.02, 0.05])
    p.add_argument("--chunks", type=int, default=12)
    p.add_argument("--swap-lr", type=float, default=None)
    p.add_argument("--out", help="JSON file (default: print only)")
    args = p.parse_args(argv)
    swap = None
    if args.swap_lr is not None:
        swap = bank_swap(args.run_dir, args.swap_lr)
        print(f"one epoch at lr {swap['lr']:g}, then the refresh: targets "
              f"changed on {100 * swap['targets_changed']:.2f} % of the "
              f"unlabelled nodes, Feature Bank cosine {swap['feature_cos']:.4f}, "
              "mean norm {:.3f} -> {:.3f}; ".format(*swap["feature_norm"]) +
              f"cross-entropy of the epoch's last model on {swap['probe_batches']} "
              "batches:", flush=True)
        for name, value in swap["loss_ce"].items():
            print(f"  {name:42s} {value:.3f}", flush=True)
    rows = []
    for lr in args.lrs:
        row = continue_at(args.run_dir, lr, args.chunks)
        rows.append(row)
        curve = " ".join(f"{v:.3f}" for v in row["loss_ce_chunks"])
        print(f"lr {lr:g}: loss_ce {row['loss_ce']:.3f} by chunk [{curve}]  "
              f"model_acc {row['model_acc']}  test_error {row['test_error']:.2f}",
              flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"run_dir": args.run_dir,
                                              "args": vars(args),
                                              "rows": rows, "swap": swap},
                                             indent=1))


if __name__ == "__main__":
    main()
