"""What a run's checkpoint holds, and how a run continues from it."""
from __future__ import annotations

import torch
from torch import Tensor

from dag_pyg.config import Config, ConfigError, from_dict, upgrade
from dag_pyg.distributed import DistContext
from dag_pyg.train.checkpoint import CheckpointError, restore_rng_state
from dag_pyg.train.refresh import Banks
from dag_pyg.train.setup import Model, TrainData, seed_everything


def check_nodes(data: TrainData) -> Tensor:
    """The training samples held out for the premise check (sorted)."""
    if data.check_mask is None:
        return torch.empty(0, dtype=torch.long)
    return data.nodes[data.check_mask].sort().values


def run_state(epoch: int, cfg: Config, model: Model,
              optimizer: torch.optim.Optimizer,
              scheduler: torch.optim.lr_scheduler.LRScheduler,
              scaler: torch.amp.GradScaler,
              banks: Banks | None, history: dict, data: TrainData,
              rng_ranks: list[dict], world_size: int,
              progress: dict | None = None,
              epoch_start_features: Tensor | None = None) -> dict:
    """The checkpoint of the end of ``epoch`` (``rng_ranks``: every rank's
    :func:`~dag_pyg.train.checkpoint.capture_rng_state`), or of a point
    within it: ``progress`` (the interrupted epoch's
    :class:`~dag_pyg.train.epoch.EpochProgress` as a dict; ``banks`` are then
    the ones in use) and the Feature Bank the epoch started with (the
    end-of-epoch drift is measured against it)."""
    split = data.split
    return {"epoch": epoch, "config": cfg.to_dict(),
            "progress": progress, "epoch_start_features": epoch_start_features,
            "backbone": model.backbone.state_dict(),
            "head": model.head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_ranks[0], "world_size": world_size,
            "rng_ranks": rng_ranks,
            "banks": None if banks is None else {
                "features": banks.features, "prior": banks.prior,
                "targets": banks.targets, "weights": banks.weights,
                "neighbours": banks.neighbours},
            "history": history, "split": {"labelled": split.labelled,
                                          "unlabelled": split.unlabelled,
                                          "val": split.val,
                                          "check": check_nodes(data)}}


def restore_run_state(state: dict, cfg: Config, model: Model,
                      optimizer: torch.optim.Optimizer,
                      scheduler: torch.optim.lr_scheduler.LRScheduler,
                      scaler: torch.amp.GradScaler,
                      data: TrainData, gen: torch.Generator, dist: DistContext,
                      run_dir: str) -> tuple[int, Banks | None, dict, list[str]]:
    """Loads a checkpoint's weights, optimiser, schedule and RNG streams into
    the run; returns the epoch it ended, its banks, history and notes for the
    log. A checkpoint of another configuration or split is an error."""
    ours = cfg.to_dict()
    try:  # in today's keys, with the defaults of keys added since
        saved = from_dict(state.get("config") or {}).to_dict()
    except ConfigError:
        saved = upgrade(state.get("config") or {})
    if saved != ours:
        diff = sorted(k for k in set(saved) | set(ours)
                      if saved.get(k) != ours.get(k))
        raise CheckpointError(
            f"The checkpoint in '{run_dir}' was written with another "
            f"configuration (sections differing: {diff}); resume with the "
            "same config, or start a new run with --out.")
    current = {"labelled": data.split.labelled, "unlabelled": data.split.unlabelled,
            "val": data.split.val, "check": check_nodes(data)}
    for key, value in current.items():
        saved_split = state["split"].get(key, value[:0] if key == "check" else None)
        if not torch.equal(saved_split, value):
            raise CheckpointError(f"The checkpoint's data split ({key} samples) "
                                  "differs from this run's; resume with the same "
                                  "data and data.num_check.")
    model.backbone.load_state_dict(state["backbone"])
    model.head.load_state_dict(state["head"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):  # fp16's loss scale (empty when disabled)
        scaler.load_state_dict(state["scaler"])
    notes: list[str] = []
    saved_world = state.get("world_size", 1)
    if saved_world == dist.world_size:
        restore_rng_state(state.get("rng_ranks", [state["rng"]])[dist.rank],
                          {"data": gen})
    else:
        # Batches and augmentation come from the shared data generator and
        # continue exactly; only per-rank draws (dropout) cannot.
        gen.set_state(state["rng"]["generators"]["data"])
        seed_everything(cfg.seed + dist.rank + 7919 * (state["epoch"] + 1))
        notes.append(f"resuming a run of {saved_world} process(es) with "
                     f"{dist.world_size}: data order and augmentation "
                     "continue exactly; dropout masks differ from an "
                     "uninterrupted run.")
    b = state["banks"]
    banks = None if b is None else Banks(b["features"], b["prior"], b["targets"],
                                         b.get("weights"), b.get("neighbours", True))
    return state["epoch"], banks, state["history"], notes
