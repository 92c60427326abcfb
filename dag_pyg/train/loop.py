r"""The DAG training loop (the paper's Alg. 2), composed of the steps in
:mod:`~dag_pyg.train.setup`, :mod:`~dag_pyg.train.epoch`,
:mod:`~dag_pyg.train.refresh` and :mod:`~dag_pyg.train.evaluate`.

One epoch trains backbone + head on mini-batches (labelled and pseudo-labelled
samples, mixup, Eq. 2), then refreshes what the next epoch uses: the Feature
Bank (backbone features of every training sample, eval mode, no
augmentation), the density-aware kNN graph over it, the Label Bank (the
head's predictions over the graph) and the pseudo labels (DPLP over the
graph, or the Label Bank itself); then evaluates (test queries retrieve
neighbours from the Feature Bank).

Epoch 0's banks come from ``optim.pretrain_epochs`` epochs on the labelled
samples only. Every epoch ends with an atomic checkpoint from which
``--resume`` continues to the same result as an uninterrupted run.

Under ``torchrun`` (see :mod:`dag_pyg.distributed`) every rank draws the same
global batches from the shared, seeded data generator and trains on its slice
of each with DistributedDataParallel; the Feature Bank is extracted in shards
and all-gathered; the graph, Label Bank and DPLP run once (on rank 0, then
broadcast, or on every rank with ``distributed.graph: replicate``, or in node
shards with ``sharded``: :mod:`~dag_pyg.train.sharded`); test and
validation queries are split across ranks and retrieve from the global bank.
Rank 0 alone writes files. N processes thus train on the same data, in the
same order and with the same augmentation as one.
"""
from __future__ import annotations

import gc
import signal
import time
from pathlib import Path

import numpy as np
import torch

from dag_pyg.config import Config, ConfigError, save_config
from dag_pyg.distributed import (
    DistContext,
    DistributedError,
    init_distributed,
    is_collective_failure,
    shutdown,
)
from dag_pyg.train.auto import train_auto
from dag_pyg.train.checkpoint import load_checkpoint, save_checkpoint
from dag_pyg.train.epoch import train_epoch
from dag_pyg.train.evaluate import evaluate
from dag_pyg.train.features import recalibrate_run
from dag_pyg.train.interrupt import StopRequest, TrainingInterrupted
from dag_pyg.train.logger import RunLogger, read_metrics, write_json_atomic
from dag_pyg.train.optim import build_optim
from dag_pyg.train.plots import plot_curves, plot_path_lengths
from dag_pyg.train.premise import check_summary
from dag_pyg.train.refresh import (
    Refreshed,
    drift_stats,
    fresh_bank,
    frozen,
    refresh,
    shared_graph,
    writes_bank,
)
from dag_pyg.train.setup import (
    CHECKPOINT,
    Run,
    build_model,
    check_run_dir,
    load_data,
    resolve_device,
    seed_everything,
)
from dag_pyg.train.state import TrainState, check_checkpoint, resume_epoch


def _peak_rss_mb() -> float:
    """This process's peak resident memory (MiB; Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def update_best(history: dict, rec: dict) -> None:
    """Keeps the epoch of the lowest validation error (main epochs only)."""
    if "val_error" in rec and rec["phase"] == "train":
        best = history.get("best_val")
        if best is None or rec["val_error"] < best["val_error"]:
            history["best_val"] = {"epoch": rec["epoch"],
                                   "val_error": rec["val_error"],
                                   "test_error": rec.get("test_error")}


def summary_line(rec: dict) -> str:
    parts = [f"epoch {rec['epoch']} ({rec['phase']})"]
    for key in ("loss", "test_error", "val_error", "pl_acc", "pl_coverage",
                "model_acc_on_covered", "time_epoch"):
        if key in rec and rec[key] is not None:
            parts.append(f"{key} {rec[key]:.4g}")
    return "  ".join(parts)


def finish(run: Run, history: dict, last: dict,
           path_lengths: torch.Tensor | None) -> dict:
    """Writes ``summary.json`` and the plots; returns the summary."""
    cfg, run_dir, data = run.cfg, run.run_dir, run.data
    records = read_metrics(run_dir / "metrics.jsonl")
    main = [r for r in records if r.get("phase") == "train"]
    # The targets the last epoch trained on: the last refresh's (with
    # graph.freeze_lr an epoch or more before the last).
    refreshed = next((r for r in reversed(records) if "pl_acc" in r), last)
    summary = {
        "name": cfg.name, "run_dir": str(run_dir),
        "last_epoch": last.get("epoch"),
        "test_error_last": last.get("test_error"),
        "best_by_val": history.get("best_val"),
        "pl_acc_last": refreshed.get("pl_acc"),
        "pl_coverage_last": refreshed.get("pl_coverage"),
        "model_acc_on_covered_last": refreshed.get("model_acc_on_covered"),
        "mean_time": {
            k: float(np.mean([r[k] for r in main if r.get(k) is not None]))
            for k in sorted({k for r in main for k in r if k.startswith("time_")})
        } if main else {},
        "num_labelled": data.num_labelled,
        "num_check": 0 if data.check_mask is None else int(data.check_mask.sum()),
        "num_train_nodes": int(data.nodes.numel()),
        "check": check_summary(records),
        "config": cfg.to_dict(),
    }
    write_json_atomic(run_dir / "summary.json", summary)
    if cfg.log.plots:
        plot_curves(records, run_dir / "curves.png")
        plot_path_lengths(path_lengths, run_dir / "path_lengths.png",
                          title=f"{cfg.name}: DPLP path lengths, last epoch")
    err, best = summary["test_error_last"], history.get("best_val")
    msg = f"done: test error {err if err is None else round(err, 2)}% (last epoch)"
    if best:
        msg += f", {best['test_error']:.2f}% at best val epoch {best['epoch']}"
    run.log.info(msg)
    return summary


def write_checkpoint(state: TrainState) -> None:
    """Every rank adds its RNG state (and within an epoch its loss sums) to
    the checkpoint; rank 0 writes it, atomically."""
    run = state.run
    checkpoint = state.state_dict()
    run.dist.on_main(lambda: save_checkpoint(run.run_dir / CHECKPOINT, checkpoint),
                     share=False)


def _interrupted(run: Run, signum: int, where: str) -> TrainingInterrupted:
    msg = (f"interrupted by {signal.Signals(signum).name} {where}; the checkpoint "
           f"is written: continue with `dag-pyg train CONFIG --out {run.run_dir} "
           "--resume`")
    run.log.warning(msg)
    return TrainingInterrupted(msg, signum)


def skipped_note(skipped: list[str]) -> list[str]:
    """The log's note on undecodable files left out (none: no note)."""
    if not skipped:
        return []
    return [f"data.skip_bad_files: left out {len(skipped)} file(s) that do not "
            f"decode: {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}"]


def run(cfg: Config, run_dir: str | Path, resume: bool = False,
        stop_after: int | None = None, dist: DistContext | None = None) -> dict:
    """Trains ``cfg`` into ``run_dir`` to the last epoch (or through epoch
    ``stop_after``, leaving a checkpoint that ``resume`` continues: for
    time-limited jobs); returns the summary. ``dist``: this process's rank
    and world (one process when omitted)."""
    run_dir, dist = Path(run_dir), dist or DistContext()
    if cfg.method == "auto":
        raise ConfigError("method: auto trains two runs and chooses between "
                          "them: train it with dag_pyg.train.train.")
    dist.on_main(lambda: check_run_dir(run_dir, resume))
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    # Ranks differ only in what the global RNG drives (dropout); the data
    # generator is shared, so all ranks draw the same batches.
    seed_everything(cfg.seed + dist.rank)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = load_data(cfg)
    model = build_model(cfg, data, device, dist)
    optim = build_optim(model.trainable_parameters(), cfg.optim, device)

    saved = None
    if resume:
        # Rank 0 reads the file (other machines need not see it) and shares it.
        saved = dist.on_main(lambda: load_checkpoint(run_dir / CHECKPOINT))
        # Before anything is written: a failed resume leaves the folder as it was.
        check_checkpoint(saved, cfg, data, run_dir)
    if dist.is_main:
        data.split.save(str(run_dir / "split.json"))
        save_config(cfg, run_dir / "config.yaml")
    stop = StopRequest()
    log = RunLogger(run_dir, rank=dist.rank, tensorboard=cfg.log.tensorboard,
                    progress=cfg.log.progress,
                    resume_epoch=0 if saved is None else resume_epoch(saved))
    run = Run(cfg=cfg, model=model, data=data, device=device, dist=dist, log=log,
              gen=gen, run_dir=run_dir, optim=optim, stop=stop)
    state = TrainState(run)
    if saved is not None:
        state.load_state_dict(saved)
    with stop.installed(), log:
        return train_epochs(run, state, stop_after)


def eval_due(cfg: Config, epoch: int) -> bool:
    """Whether ``epoch`` ends with an evaluation: the last, and every
    ``eval.every``-th from the end of pre-training on."""
    main_epoch = epoch - cfg.optim.pretrain_epochs + 1
    last = cfg.optim.pretrain_epochs + cfg.optim.epochs - 1
    return epoch == last or (main_epoch >= 0 and main_epoch % cfg.eval.every == 0)


def refresh_after(run: Run, state: TrainState, epoch: int) -> Refreshed:
    """The refresh after ``epoch`` from the banks it ended with, its
    statistics (:attr:`Refreshed.stats`) gaining the evaluation where one is
    due and the Feature Bank's drift since the epoch started."""
    cfg, banks = run.cfg, state.banks
    pretrain = epoch < cfg.optim.pretrain_epochs
    precise_s = recalibrate_run(run, epoch)
    # An online bank was written by this epoch's steps; the one after
    # pre-training is extracted.
    new = refresh(run, features=banks.features if writes_bank(cfg, pretrain) else None,
                  neighbours=None if banks is None else banks.neighbours, epoch=epoch)
    if eval_due(cfg, epoch):
        new.stats.update(evaluate(run, new.banks.features,
                                  new.graph if new.banks.neighbours else None))
    new.stats.update(drift_stats(run, state.epoch_start, new.banks, new.graph))
    if cfg.model.precise_bn:
        new.stats["time_precise_bn"] = precise_s
    return new


def evaluate_frozen(run: Run, state: TrainState, epoch: int) -> dict:
    """What an epoch that keeps its banks for the next (``graph.freeze_lr``)
    logs: the evaluation where one is due, after PreciseBN's recalibration
    (every epoch, as a refresh does). The queries are the current model's,
    so they retrieve from a bank (and graph) the current model extracts for
    them (:func:`fresh_bank`: none where its head reads no neighbours);
    training keeps the banks it had. (From the kept bank,
    a model one epoch newer than it cost MNIST-100's DAG 0.1-0.3 points:
    ``benchmarks/analysis/fresh_bank_eval.py``.)"""
    rec: dict = {"banks_frozen": 1}
    # So each checkpoint's statistics are its weights' (dag-pyg eval of a
    # run stopped in the tail reads them).
    precise_s = recalibrate_run(run, epoch)
    if run.cfg.model.precise_bn:
        rec["time_precise_bn"] = precise_s
    if eval_due(run.cfg, epoch):
        t = time.perf_counter()
        feats, graph = fresh_bank(run, state.banks.neighbours)
        if feats is not None:
            rec["time_eval_bank"] = time.perf_counter() - t
        rec.update(evaluate(run, feats, graph))
    return rec


def train_epochs(run: Run, state: TrainState, stop_after: int | None) -> dict:
    """The epochs from ``state`` on (see :func:`run`); returns the summary."""
    cfg, dist, log = run.cfg, run.dist, run.log
    total = cfg.optim.pretrain_epochs + cfg.optim.epochs
    start = state.next_epoch
    for note in state.notes + skipped_note(run.data.skipped):
        log.warning(note)
    data = run.data
    procs = (f", {dist.world_size} processes ({dist.backend})"
             if dist.enabled else "")
    log.info(f"run {cfg.name} -> {run.run_dir} on {run.device}{procs}: "
             f"{len(data.nodes)} train nodes ({data.num_labelled} "
             f"labelled), {len(data.test_set)} test, "
             f"epochs {start}..{total - 1}")
    graph = None
    if (built := state.graph_bank()) is not None:
        # An online bank stopped mid-epoch was written since its graph
        # was built: the graph comes from the bank as it was then.
        graph = shared_graph(run, built)
    rec: dict = state.history.get("last", {})
    for epoch in range(start, total):
        pretrain = epoch < cfg.optim.pretrain_epochs
        t0 = time.perf_counter()
        if state.banks is None and not pretrain:  # no pre-training: seed banks
            recalibrate_run(run, epoch - 1)
            seeded = refresh(run)
            state.banks, graph = seeded.banks, seeded.graph
        if state.progress is None:
            # The end-of-epoch drift is measured against the banks the epoch
            # started with, across any mid-epoch refreshes.
            state.epoch_start = None if state.banks is None \
                else state.banks.features
        res = train_epoch(run, epoch, state.banks, graph, state.progress)
        state.banks, graph, state.progress = res.banks, res.graph, None
        if res.signum:
            state.epoch, state.progress = epoch, res.progress
            write_checkpoint(state)
            raise _interrupted(run, res.signum, f"in epoch {epoch} after step "
                               f"{res.progress.done}/{len(res.progress.batches)}")
        t_train = time.perf_counter() - t0
        # The rate this epoch trained at (the step below sets the next one's).
        lr = run.optim.optimizer.param_groups[0]["lr"]
        run.optim.scheduler.step()
        rec = {"epoch": epoch, "phase": "pretrain" if pretrain else "train",
               "lr": lr, **res.losses,
               "time_train": t_train, **res.mids}
        # The last pre-training epoch builds epoch 0's banks; the tail of
        # the schedule (graph.freeze_lr) keeps them: by the rate of the
        # epoch that trains on them (after the last, by the last's own).
        next_lr = (lr if epoch == total - 1
                   else run.optim.optimizer.param_groups[0]["lr"])
        if not pretrain and state.banks is not None and frozen(cfg, next_lr):
            rec.update(evaluate_frozen(run, state, epoch))
        elif not pretrain or epoch == cfg.optim.pretrain_epochs - 1:
            new = refresh_after(run, state, epoch)
            state.banks, graph = new.banks, new.graph
            state.path_lengths = new.path_lengths
            rec.update(new.stats)
        rec["time_epoch"] = time.perf_counter() - t0
        rss = dist.all_gather_object(_peak_rss_mb())
        rec["mem_rss_mb"] = max(rss)
        if dist.enabled:
            rec["mem_rss_mb_ranks"] = rss
        update_best(state.history, rec)
        state.history["last"] = rec
        log.metrics(rec)
        log.info(summary_line(rec))
        state.epoch = epoch
        write_checkpoint(state)
        if epoch < total - 1 and (signum := run.stop.requested(dist)):
            raise _interrupted(run, signum, f"after epoch {epoch}")
        if stop_after is not None and epoch >= stop_after and epoch < total - 1:
            log.info(f"stopping after epoch {epoch} as asked; continue "
                     "with --resume")
            break
    return dist.on_main(lambda: finish(run, state.history, rec,
                                          state.path_lengths))


def _train(cfg: Config, run_dir: str | Path, resume: bool,
           stop_after: int | None, dist: DistContext) -> dict:
    if cfg.method == "auto":
        return train_auto(cfg, run_dir, run, resume, dist)
    return run(cfg, run_dir, resume, stop_after, dist)


def train(cfg: Config, run_dir: str | Path, resume: bool = False,
          stop_after: int | None = None) -> dict:
    """Trains ``cfg`` into ``run_dir``; returns the summary (``stop_after``:
    see :func:`run`).

    Under ``torchrun`` with several processes, joins the process group
    (``cfg.distributed``) and trains with DistributedDataParallel; every rank
    returns the same summary. A failed or timed-out collective (a rank died)
    raises :class:`~dag_pyg.distributed.DistributedError`. ``method: auto``
    trains its arms and chooses (:func:`~dag_pyg.train.auto.train_auto`).
    """
    if cfg.method == "auto" and stop_after is not None:
        raise ConfigError("--stop-after stops one run; method: auto trains two "
                          "(stop it with SIGTERM and --resume it instead).")
    d = cfg.distributed
    ctx = init_distributed(d.backend, d.timeout_s, cfg.device)
    if not ctx.enabled:
        return _train(cfg, run_dir, resume, stop_after, DistContext())
    interrupted = failure = None
    try:
        summary = _train(cfg, run_dir, resume, stop_after, ctx)
    except TrainingInterrupted as e:
        # Without its traceback, which would keep run()'s frame (and DDP's
        # reducer) alive past the process group's end.
        interrupted = e.with_traceback(None)
    except RuntimeError as e:
        if isinstance(e, DistributedError) or not is_collective_failure(e):
            raise
        # Not chained to ``e``, whose traceback holds the frames (and DDP's
        # reducer) that must be freed before the group is destroyed.
        failure = DistributedError(
            f"rank {ctx.rank}/{ctx.world_size}: a collective failed or waited "
            f"longer than distributed.timeout_s={d.timeout_s:g} s ({e}). Another "
            "process probably stopped: its own error is in its output.")
    # DDP's reducer must go before the process group it talks through; a
    # reducer collected after destroy_process_group aborts the process.
    gc.collect()
    shutdown(ctx, failed=failure is not None)
    if failure is not None:
        raise failure
    if interrupted is not None:  # every rank stopped after the same step
        raise interrupted
    return summary
