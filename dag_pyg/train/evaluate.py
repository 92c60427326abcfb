"""Evaluation: test and validation queries classified by retrieval from the
Feature Bank, and the re-evaluation of a finished run folder."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch_geometric.data import Data

from dag_pyg.config import Config, ConfigError, load_config
from dag_pyg.data import ArrayDataset
from dag_pyg.distributed import DistContext
from dag_pyg.sampler import predict_queries
from dag_pyg.train.checkpoint import CheckpointError, load_checkpoint
from dag_pyg.train.features import features_of
from dag_pyg.train.logger import RunLogger, write_json_atomic
from dag_pyg.train.refresh import build_graph, fresh_bank
from dag_pyg.train.setup import (
    CHECKPOINT,
    CHOICE,
    Model,
    Run,
    TrainData,
    build_model,
    check_run_dir,
    load_data,
    resolve_device,
    seed_everything,
)


def predict(run: Run, feats: Tensor | None, graph: Data | None,
            dataset: ArrayDataset, rows: Tensor, desc: str) -> Tensor:
    """Predicted class of ``dataset[rows]`` ``[len(rows)]``: each rank
    classifies its shard of the queries, retrieving neighbours from the
    global Feature Bank ``feats`` (a graph head without a ``graph``
    classifies them on their own)."""
    cfg, model, dist, device = run.cfg, run.model, run.dist, run.device
    q = features_of(run, dataset, dist.shard(rows), desc, cfg.optim.amp)
    head = model.eval_head
    head.eval()
    if model.uses_graph_head and graph is not None:
        logits = predict_queries(head, q, feats.to(device), graph.to(device),
                                 cfg.dna.k, batch_size=cfg.eval.batch_size)
    else:
        with torch.no_grad():
            logits = head.forward_self(q)
    return dist.all_gather_rows(logits.argmax(1),
                                dist.shard_sizes(rows.numel())).cpu()


def error_rate(run: Run, feats: Tensor | None, graph: Data | None,
               dataset: ArrayDataset, rows: Tensor, desc: str) -> float:
    """Error (%) of :func:`predict` on ``dataset[rows]`` against their
    labels."""
    pred = predict(run, feats, graph, dataset, rows, desc)
    return 100.0 * float((pred != dataset.targets[rows]).float().mean())


def evaluate(run: Run, feats: Tensor | None, graph: Data | None
             ) -> dict[str, float]:
    """Test error, validation error (where the split holds a validation set)
    and the time both took, retrieving from the Feature Bank ``feats`` over
    ``graph`` (see :func:`predict`)."""
    t, rec = time.perf_counter(), {}
    data = run.data
    test = data.test_set
    rec["test_error"] = error_rate(run, feats, graph, test,
                                   torch.arange(len(test)), "test")
    val = data.split.val
    if val.numel():
        rec["val_error"] = error_rate(run, feats, graph, data.train_set, val, "val")
    rec["time_eval"] = time.perf_counter() - t
    return rec


def _num_test(value: int | str | None, run_value: int | None) -> int | None:
    """``data.num_test`` for a re-evaluation: the run's own (``None``), the
    whole test set (``"all"``) or a class-balanced subset of ``value``."""
    if value is None:
        return run_value
    if value == "all":
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"num_test={value!r}: give a positive number of test "
                          "samples or 'all' for the whole test set.")
    return value


@dataclass
class LoadedRun:
    """A run folder's configuration, data (same split) and model with the
    weights of its last checkpoint, and the checkpoint's state."""
    cfg: Config
    data: TrainData
    model: Model
    state: dict
    device: torch.device

    def build_graph(self, feats: Tensor) -> Data:
        return build_graph(feats, self.cfg, self.device)

    def as_run(self, log: RunLogger) -> Run:
        """The loaded model as a :class:`~dag_pyg.train.setup.Run` of one
        process that evaluates (it draws nothing from its generator)."""
        return Run(cfg=self.cfg, model=self.model, data=self.data,
                   device=self.device, dist=DistContext(), log=log,
                   gen=torch.Generator())

    def kept_banks(self) -> bool:
        """Whether the checkpoint's last epoch kept its banks
        (``graph.freeze_lr``): its Feature Bank is then older than its model."""
        return bool(self.state["history"].get("last", {}).get("banks_frozen"))

    def bank_and_graph(self, stored: bool = False
                       ) -> tuple[Tensor | None, Data | None]:
        """The Feature Bank and the graph queries retrieve from (both
        :obj:`None` where the run has no bank or its head reads no
        neighbours: queries are classified on their own), as training
        evaluated them: where the last epoch kept its banks
        (:meth:`kept_banks`), a bank the model extracts, not the stored one
        (``stored``: the checkpoint's bank in any case)."""
        banks = self.state["banks"]
        # method steered may have turned the neighbour term off.
        if banks is None or not (self.model.uses_graph_head
                                 and banks.get("neighbours", True)):
            return None, None
        if self.kept_banks() and not stored:
            with RunLogger() as quiet:  # no bars, no files
                return fresh_bank(self.as_run(quiet), True)
        return banks["features"], self.build_graph(banks["features"])


def model_dir(run_dir: str | Path) -> Path:
    """The folder of the model a run folder holds: ``method: auto``'s refit
    of the arm it chose (:mod:`~dag_pyg.train.auto`), else the folder
    itself."""
    run_dir = Path(run_dir)
    choice = run_dir / CHOICE
    if choice.is_file():
        return run_dir / json.loads(choice.read_text())["model_dir"]
    return run_dir


def load_run(run_dir: str | Path, progress: bool | None = None,
             num_test: int | str | None = None,
             within_epoch: bool = False) -> LoadedRun:
    """Loads a run folder (see :class:`LoadedRun`). ``num_test`` swaps the
    test set (see :func:`evaluate_run`); training data are untouched. A
    checkpoint written within an epoch (an interrupted run) is refused,
    unless ``within_epoch`` (diagnoses of the weights as they were at that
    step: its banks are the last refresh's, at the epoch's start or within
    it)."""
    run_dir = model_dir(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"'{run_dir}' is not a run folder (no config.yaml).")
    check_run_dir(run_dir, resume=True)
    cfg = load_config(run_dir / "config.yaml")
    cfg.data.split_file = str(run_dir / "split.json")
    cfg.data.num_test = _num_test(num_test, cfg.data.num_test)
    if progress is not None:
        cfg.log.progress = progress
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    data = load_data(cfg)
    model = build_model(cfg, data, device, DistContext())
    state = load_checkpoint(run_dir / CHECKPOINT)
    if state.get("progress") is not None and not within_epoch:
        raise CheckpointError(
            f"The checkpoint in '{run_dir}' is from within epoch {state['epoch']} "
            "(the run was interrupted): its weights and banks do not belong "
            "together. Resume the run (--resume) to finish the epoch first.")
    model.backbone.load_state_dict(state["backbone"])
    model.head.load_state_dict(state["head"])
    if model.averaged is not None:
        model.averaged.load_state_dict(state["averaged"])
    return LoadedRun(cfg, data, model, state, device)


def evaluate_run(run_dir: str | Path, num_test: int | str | None = None) -> dict:
    """Re-evaluates a run folder's last checkpoint: rebuilds the graph from
    the Feature Bank training evaluated with (:meth:`LoadedRun.bank_and_graph`)
    and classifies the test (and validation) set by retrieval. Writes
    ``eval.json`` into the run folder.

    ``num_test`` evaluates on another test set than the run's own: ``"all"``
    (the whole test set, e.g. all 10,000 CIFAR-10 test images for a run
    trained with ``data.num_test=1000``) or a class-balanced subset of that
    size; the result then goes to ``eval_test-<num_test>.json``. A
    ``method: auto`` folder evaluates its refit (:func:`model_dir`).
    """
    run_dir = Path(run_dir)
    model_folder = model_dir(run_dir)
    run = load_run(model_folder, num_test=num_test)
    if run.state["banks"] is None:
        raise CheckpointError(f"The checkpoint in '{model_folder}' is from "
                              "pre-training and holds no Feature Bank yet; train "
                              "further first.")
    feats, graph = run.bank_and_graph()
    with RunLogger(model_folder, tensorboard=False, progress=run.cfg.log.progress,
                   resume_epoch=None) as log:
        out = {"run_dir": str(run_dir), "epoch": run.state["epoch"],
               "num_test": len(run.data.test_set),
               **evaluate(run.as_run(log), feats, graph)}
    name = "eval.json" if num_test is None else f"eval_test-{num_test}.json"
    write_json_atomic(run_dir / name, out)
    return out
