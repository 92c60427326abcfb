"""What a run's checkpoint holds (:class:`TrainState`), and how a run
continues from it."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dag_pyg.config import Config, ConfigError, from_dict, upgrade
from dag_pyg.train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    restore_rng_state,
)
from dag_pyg.train.epoch import EpochProgress
from dag_pyg.train.refresh import Banks
from dag_pyg.train.setup import Run, TrainData, seed_everything


def check_nodes(data: TrainData) -> Tensor:
    """The training samples held out for the premise check (sorted)."""
    if data.check_mask is None:
        return torch.empty(0, dtype=torch.long)
    return data.nodes[data.check_mask].sort().values


def split_record(data: TrainData) -> dict[str, Tensor]:
    """The checkpoint's record of the split it was trained on."""
    split = data.split
    return {"labelled": split.labelled, "unlabelled": split.unlabelled,
            "val": split.val, "check": check_nodes(data)}


def check_checkpoint(state: dict, cfg: Config, data: TrainData,
                     run_dir: str | Path | None) -> None:
    """A checkpoint of another configuration or split than the run's is an
    error (``run_dir``: where it is, for the message)."""
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
    for key, value in split_record(data).items():
        saved_split = state["split"].get(key, value[:0] if key == "check" else None)
        if not torch.equal(saved_split, value):
            raise CheckpointError(f"The checkpoint's data split ({key} samples) "
                                  "differs from this run's; resume with the same "
                                  "data and data.num_check.")


def resume_epoch(state: dict) -> int:
    """The first epoch a run continues with from the checkpoint ``state``:
    the one after it, or the one it stopped within (see
    :attr:`TrainState.next_epoch`)."""
    return state["epoch"] + (state.get("progress") is None)


def _fresh_history() -> dict:
    return {"best_val": None, "best": None}


@dataclasses.dataclass
class TrainState:
    """Everything a checkpoint resumes: the states of the run's model (and
    its averaged weights), optimiser, schedule, scaler and random streams
    (the objects are the run's, ``run``), the banks, the last epoch and
    where within the next one training stopped, the history and the last
    refresh's DPLP path lengths.
    :meth:`state_dict` is the checkpoint; :meth:`load_state_dict`
    continues from one."""
    run: Run
    # The epoch of the last checkpoint: finished, or stopped within where
    # ``progress`` is set (-1: none yet).
    epoch: int = -1
    banks: Banks | None = None
    # The best validation epoch so far (``best_val``) and the last record.
    history: dict = dataclasses.field(default_factory=_fresh_history)
    # Where an interrupted epoch stands (None: at an epoch's end).
    progress: EpochProgress | None = None
    # The Feature Bank the current epoch started with: its end-of-epoch
    # drift is measured against it, across any mid-epoch refreshes.
    epoch_start: Tensor | None = None
    # The last refresh's DPLP path length per node (rank 0; the last
    # epoch's plot): kept so a run resumed in the kept tail still has it.
    path_lengths: Tensor | None = None
    # Lines for the log about how the run was resumed (not saved).
    notes: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.run.optim is None:
            raise ValueError("TrainState needs a run that trains (run.optim).")

    @property
    def next_epoch(self) -> int:
        """The epoch training continues with: the one after :attr:`epoch`,
        or :attr:`epoch` itself where it stopped within it."""
        return self.epoch + (self.progress is None)

    def graph_bank(self) -> Tensor | None:
        """The Feature Bank the graph in use was built on (:obj:`None`: no
        bank): the banks', or, where an online bank stopped mid-epoch, the
        one before the steps since wrote into it."""
        if self.banks is None or not self.banks.features.numel():
            return None
        if self.progress is None or self.progress.built is None:
            return self.banks.features
        return self.progress.built

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint. Every rank calls it: it gathers every rank's RNG
        state and, within an epoch, every rank's loss sums (each rank sums
        its own slice of the batches)."""
        run, dist, optim = self.run, self.run.dist, self.run.optim
        progress = None
        if self.progress is not None:
            progress = dataclasses.asdict(dataclasses.replace(
                self.progress, sums_ranks=dist.all_gather_object(self.progress.sums)))
        rng = dist.all_gather_object(capture_rng_state({"data": run.gen}))
        return {"epoch": self.epoch, "config": run.cfg.to_dict(),
                "progress": progress,
                "epoch_start_features": None if progress is None
                else self.epoch_start,
                "backbone": run.model.backbone.state_dict(),
                "head": run.model.head.state_dict(),
                "optimizer": optim.optimizer.state_dict(),
                "scheduler": optim.scheduler.state_dict(),
                "scaler": optim.scaler.state_dict(),
                "rng": rng[0], "world_size": dist.world_size,
                "rng_ranks": rng,
                "banks": None if self.banks is None else self.banks.state_dict(),
                "history": self.history, "split": split_record(run.data),
                "path_lengths": self.path_lengths,
                "averaged": None if run.model.averaged is None
                else run.model.averaged.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from the checkpoint ``state``: loads the weights,
        optimiser, schedule, scaler and RNG streams into the run's objects
        and takes its banks, history and position. A checkpoint of another
        configuration or split is an error (:func:`check_checkpoint`)."""
        run, dist, optim = self.run, self.run.dist, self.run.optim
        check_checkpoint(state, run.cfg, run.data, run.run_dir)
        run.model.backbone.load_state_dict(state["backbone"])
        run.model.head.load_state_dict(state["head"])
        if run.model.averaged is not None:
            run.model.averaged.load_state_dict(state["averaged"])
        optim.optimizer.load_state_dict(state["optimizer"])
        optim.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # fp16's loss scale (empty when disabled)
            optim.scaler.load_state_dict(state["scaler"])
        saved_world = state.get("world_size", 1)
        if saved_world == dist.world_size:
            restore_rng_state(state.get("rng_ranks", [state["rng"]])[dist.rank],
                              {"data": run.gen})
        else:
            # Batches and augmentation come from the shared data generator and
            # continue exactly; only per-rank draws (dropout) cannot.
            run.gen.set_state(state["rng"]["generators"]["data"])
            seed_everything(run.cfg.seed + dist.rank + 7919 * (state["epoch"] + 1))
            self.notes.append(
                f"resuming a run of {saved_world} process(es) with "
                f"{dist.world_size}: data order and augmentation continue "
                "exactly; dropout masks differ from an uninterrupted run.")
        self.epoch = state["epoch"]
        self.banks = None if state["banks"] is None \
            else Banks.from_state_dict(state["banks"])
        self.history = state["history"]
        self.path_lengths = state.get("path_lengths")
        self.progress = self.epoch_start = None
        if state.get("progress") is not None:  # stopped within the epoch
            self.progress = EpochProgress(**state["progress"]).for_rank(dist)
            self.epoch_start = state.get("epoch_start_features")
