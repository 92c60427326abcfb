"""What a checkpoint holds (fast tier): :class:`TrainState`'s dict, its
round trip into a fresh run, the checks that refuse another run's
checkpoint, and :class:`Banks` by name."""
from __future__ import annotations

import dataclasses
import shutil
import sys

import pytest
import torch

from dag_pyg.config import ConfigError, load_config
from dag_pyg.distributed import DistContext
from dag_pyg.train import Banks, refresh
from dag_pyg.train.checkpoint import CheckpointError
from dag_pyg.train.epoch import EpochProgress
from dag_pyg.train.logger import RunLogger
from dag_pyg.train.optim import build_optim
from dag_pyg.train.setup import Run, build_model, load_data, seed_everything
from dag_pyg.train.state import TrainState, resume_epoch

CPU = torch.device("cpu")
QUIET = RunLogger()
# The checkpoint's keys, in the order they are written (older checkpoints
# lack "path_lengths": see test_a_checkpoint_without_path_lengths_loads).
KEYS = ["epoch", "config", "progress", "epoch_start_features", "backbone", "head",
        "optimizer", "scheduler", "scaler", "rng", "world_size", "rng_ranks",
        "banks", "history", "split", "path_lengths", "averaged"]


def fresh_run(*extra, seed=0):
    """A one-process training run of digits as :func:`~dag_pyg.train.run`
    sets it up (``seed``: the global RNG's)."""
    cfg = load_config("configs/digits.yaml", ["log.progress=false", *extra])
    seed_everything(seed)
    data = load_data(cfg)
    model = build_model(cfg, data, CPU, DistContext())
    return Run(cfg=cfg, model=model, data=data, device=CPU, dist=DistContext(),
               log=QUIET, gen=torch.Generator().manual_seed(cfg.seed),
               run_dir=None, optim=build_optim(model.trainable_parameters(),
                                                cfg.optim, CPU))


def trained_state(run):
    """A state some way into a run: a step taken, banks refreshed, history."""
    x = run.data.train_tf(run.data.train_set.images[:4], generator=run.gen)
    feats = run.model.backbone.features(x)
    loss = run.model.head.forward_self(feats).square().mean()
    loss.backward()
    run.optim.optimizer.step()
    run.optim.scheduler.step()
    torch.rand(3, generator=run.gen)
    out = refresh(run)
    return TrainState(run, epoch=12, banks=out.banks, path_lengths=out.path_lengths,
                      history={"best_val": {"epoch": 11, "val_error": 1.0,
                                            "test_error": 2.0},
                               "best": None, "last": {"epoch": 12}})


def assert_same(a, b, path=""):
    """Equal dicts, lists and tensors, keys in the same order."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    else:
        assert a == b, path


def test_state_dict_is_the_checkpoint_format():
    run = fresh_run("pseudo_label.weighting=certainty")
    state = trained_state(run)
    sd = state.state_dict()
    assert list(sd) == KEYS
    assert sd["epoch"] == 12 and sd["world_size"] == 1
    assert sd["progress"] is None and sd["epoch_start_features"] is None
    assert sd["config"] == run.cfg.to_dict()
    # One process: its RNG state is both the main one and the only rank's.
    assert sd["rng_ranks"] == [sd["rng"]] and sd["rng_ranks"][0] is sd["rng"]
    assert list(sd["banks"]) == ["features", "prior", "targets", "weights",
                                 "neighbours"]
    assert sd["banks"]["weights"] is state.banks.weights is not None
    assert list(sd["split"]) == ["labelled", "unlabelled", "val", "check"]
    assert sd["path_lengths"] is state.path_lengths is not None
    assert resume_epoch(sd) == state.next_epoch == 13
    assert TrainState(run).state_dict()["banks"] is None  # none yet


def test_a_checkpoint_without_path_lengths_loads():
    """Checkpoints written before the state kept DPLP's path lengths load;
    the next refresh sets them."""
    run = fresh_run("pseudo_label.weighting=certainty")
    sd = trained_state(run).state_dict()
    del sd["path_lengths"]
    loaded = TrainState(fresh_run("pseudo_label.weighting=certainty"))
    loaded.load_state_dict(sd)
    assert loaded.path_lengths is None and loaded.next_epoch == 13


def test_round_trip_into_a_fresh_run():
    run = fresh_run("pseudo_label.weighting=certainty")
    state = trained_state(run)
    sd = state.state_dict()
    expect = torch.rand(5, generator=run.gen), torch.rand(5)
    # Another process, seeded otherwise: the checkpoint makes it the same.
    other = fresh_run("pseudo_label.weighting=certainty", seed=99)
    loaded = TrainState(other)
    loaded.load_state_dict(sd)
    assert_same(loaded.state_dict(), sd)
    assert loaded.next_epoch == 13 and loaded.notes == []
    assert_same(dataclasses.asdict(loaded.banks), dataclasses.asdict(state.banks))
    assert loaded.graph_bank() is loaded.banks.features
    # The data generator and the global RNG continue where they were saved.
    assert torch.equal(torch.rand(5, generator=other.gen), expect[0])
    assert torch.equal(torch.rand(5), expect[1])


def test_round_trip_within_an_epoch():
    run = fresh_run()
    state = trained_state(run)
    n = state.banks.features.size(0)
    state.progress = EpochProgress([torch.arange(3), torch.arange(3, 6)], done=1,
                                   sums={"loss": 2.5}, built=torch.randn(n, 8))
    state.epoch_start = torch.randn(n, 8)
    sd = state.state_dict()
    assert sd["progress"]["sums_ranks"] == [{"loss": 2.5}]  # every rank's
    assert state.progress.sums_ranks is None  # the state itself is kept as it was
    assert sd["epoch_start_features"] is state.epoch_start
    assert resume_epoch(sd) == 12  # continues within epoch 12
    loaded = TrainState(fresh_run())
    loaded.load_state_dict(sd)
    assert loaded.next_epoch == 12 and loaded.progress.done == 1
    assert loaded.progress.sums == {"loss": 2.5}
    assert loaded.progress.sums_ranks is None
    assert loaded.epoch_start is sd["epoch_start_features"]
    # The graph in use was built on the bank before the steps wrote into it.
    assert loaded.graph_bank() is sd["progress"]["built"]
    assert_same(loaded.state_dict(), sd)


def test_another_run_s_checkpoint_is_refused():
    sd = trained_state(fresh_run()).state_dict()
    with pytest.raises(CheckpointError, match="another configuration"):
        TrainState(fresh_run("dna.hops=2")).load_state_dict(sd)
    sd["split"]["val"] = torch.tensor([0])
    with pytest.raises(CheckpointError, match=r"split \(val samples\)"):
        TrainState(fresh_run()).load_state_dict(sd)


def test_a_state_needs_a_run_that_trains():
    run = dataclasses.replace(fresh_run(), optim=None)
    with pytest.raises(ValueError, match="run.optim"):
        TrainState(run)


def test_banks_by_name():
    feats = torch.randn(5, 3)
    banks = Banks(features=feats, prior=torch.arange(5),
                  targets=torch.tensor([0, 1, -1, 3, -1]),
                  weights=torch.rand(5), neighbours=False)
    sd = banks.state_dict()
    assert_same(dataclasses.asdict(Banks.from_state_dict(sd)),
                dataclasses.asdict(banks))
    # Checkpoints from before weights and the neighbour flag: the defaults.
    old = Banks.from_state_dict({k: sd[k] for k in ("features", "prior", "targets")})
    assert old.weights is None and old.neighbours is True
    # A rank that receives rank 0's banks: the shapes, on its own Feature Bank.
    shell = Banks.to_receive(feats, weighted=True, neighbours=False)
    assert shell.features is feats and shell.neighbours is False
    assert shell.prior.shape == shell.targets.shape == shell.weights.shape == (5,)
    assert shell.prior.dtype == shell.targets.dtype == torch.long
    assert Banks.to_receive(feats, weighted=False, neighbours=True).weights is None
    # One process: nothing to receive, the banks stay as they are.
    assert banks.broadcast_(DistContext()) is banks
    assert torch.equal(banks.prior, torch.arange(5))


def float_state(*modules):
    """Copies of the floating-point parameters and buffers of ``modules``."""
    return [v.clone() for m in modules for v in m.state_dict().values()
            if v.is_floating_point()]


def test_averaged_weights_by_hand():
    """optim.ema_decay: the averaged copy takes the live weights at its
    first update, then decay * average + (1 - decay) * live, batch-norm
    statistics too; the banks are extracted with it; a checkpoint resumes it."""
    run = fresh_run("optim.ema_decay=0.5")
    model = run.model
    assert model.eval_backbone is not model.backbone
    assert model.eval_head is not model.head
    gen = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(3):
        with torch.no_grad():
            for m in (model.backbone, model.head):
                for v in m.state_dict().values():
                    if v.is_floating_point():
                        # positive: batch-norm variances stay valid
                        v.add_(0.1 * torch.rand(v.shape, generator=gen))
        model.update_average()
        seen.append(float_state(model.backbone, model.head))
    expect = [0.25 * a + 0.25 * b + 0.5 * c for a, b, c in zip(*seen, strict=True)]
    got = float_state(model.eval_backbone, model.eval_head)
    assert len(got) == len(expect) > 4
    for g, e in zip(got, expect, strict=True):
        torch.testing.assert_close(g, e)
    # The Feature Bank comes from the averaged backbone, not the live one.
    bank = refresh(run).banks.features
    rows = run.data.train_set.images[run.data.nodes]
    with torch.no_grad():
        by_hand = model.eval_backbone.eval().features(run.data.eval_tf(rows))
        live = model.backbone.eval().features(run.data.eval_tf(rows))
    torch.testing.assert_close(bank, by_hand)
    assert not torch.allclose(bank, live, atol=1e-3)
    # Round trip: another process gets the same averaged weights.
    sd = TrainState(run).state_dict()
    other = fresh_run("optim.ema_decay=0.5", seed=99)
    TrainState(other).load_state_dict(sd)
    for g, e in zip(float_state(other.model.eval_backbone, other.model.eval_head),
                    got, strict=True):
        assert torch.equal(g, e)
    assert fresh_run().model.averaged is None
    assert TrainState(fresh_run()).state_dict()["averaged"] is None


def test_compile_without_a_compiler_is_refused_in_one_line(monkeypatch):
    # Inductor's compiler: CXX, else g++ (clang++ on macOS).
    found = {"/opt/bin/my-cxx"}
    monkeypatch.setattr(shutil, "which",
                        lambda name: name if name in found else None)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ConfigError, match=r"needs a C\+\+ compiler.*'g\+\+'.*"
                       "model.compile: false"):
        fresh_run("model.backbone=cnn", "model.compile=true")
    monkeypatch.setenv("CXX", "/opt/bin/other-cxx")  # named, but not there
    with pytest.raises(ConfigError, match="other-cxx"):
        fresh_run("model.backbone=cnn", "model.compile=true")
    monkeypatch.setenv("CXX", "/opt/bin/my-cxx")
    assert fresh_run("model.backbone=cnn", "model.compile=true").model is not None
    # Only the compiled runs need one.
    monkeypatch.delenv("CXX")
    assert fresh_run("model.backbone=cnn").model is not None


def test_averaged_weights_with_several_processes_need_synchronised_batch_norm():
    class TwoRanks(DistContext):
        enabled = True

    cfg = load_config("configs/digits.yaml", ["optim.ema_decay=0.9",
                                              "distributed.sync_batchnorm=false"])
    with pytest.raises(ConfigError, match="distributed.sync_batchnorm: true"):
        build_model(cfg, load_data(cfg), CPU, TwoRanks())
