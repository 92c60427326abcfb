"""benchmarks.analysis.late_lr on a tiny digits run: the probes change
nothing they score, and an epoch at rate 0 scores as the frozen model."""
import importlib

import pytest
import torch

from dag_pyg.config import load_config
from dag_pyg.train import train
from dag_pyg.train.logger import RunLogger
from dag_pyg.train.refresh import shared_graph

pytestmark = [pytest.mark.slow, pytest.mark.cpu_only]

TINY = ["optim.epochs=2", "optim.pretrain_epochs=1", "optim.batch_size=128",
        "optim.labelled_batch_size=32", "log.progress=false",
        "log.tensorboard=false", "log.plots=false", "optim.ema_decay=0.9"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("late") / "run"
    train(load_config("configs/digits.yaml", TINY), out)
    return out


def test_frozen_loss_changes_nothing(run_dir):
    late_lr = importlib.import_module("benchmarks.analysis.late_lr")
    with RunLogger(None, tensorboard=False, progress=False) as log:
        state = late_lr.resumed(run_dir, log)
        run = state.run
        late_lr.set_lr(run, 0.1)  # the probe must not step at this rate
        graph = shared_graph(run, state.banks.features)
        batches = late_lr.next_batches(run)[:3]
        before = {k: v.clone() for k, v in run.model.backbone.state_dict().items()}
        avg = {k: v.clone() for k, v in run.model.averaged.state_dict().items()}
        gen = run.gen.get_state()
        first = late_lr.frozen_loss(run, state.banks, graph, batches)
        second = late_lr.frozen_loss(run, state.banks, graph, batches)
        assert first == second > 0
        # Scored at the run's own rate 0 alike: the probe does not step
        # (a step on the first batch would move the others' loss).
        late_lr.set_lr(run, 0.0)
        assert late_lr.frozen_loss(run, state.banks, graph, batches) == first
        late_lr.set_lr(run, 0.1)
        after = run.model.backbone.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats too
        assert all(torch.equal(avg[k], v)
                   for k, v in run.model.averaged.state_dict().items())
        assert torch.equal(run.gen.get_state(), gen)
        assert run.optim.optimizer.param_groups[0]["lr"] == 0.1


def test_epoch_at_rate_zero_is_the_frozen_model(run_dir):
    late_lr = importlib.import_module("benchmarks.analysis.late_lr")
    row = late_lr.continue_at(run_dir, 0.0, chunks=1)
    # The same batches (the checkpoint's generator) scored by frozen_loss.
    with RunLogger(None, tensorboard=False, progress=False) as log:
        state = late_lr.resumed(run_dir, log)
        run = state.run
        graph = shared_graph(run, state.banks.features)
        batches = late_lr.next_batches(run)
        frozen = late_lr.frozen_loss(run, state.banks, graph, batches)
    assert row["loss_ce"] == pytest.approx(frozen, rel=1e-6)
    assert row["steps"] == len(batches) and 0 <= row["test_error"] <= 100
    # A step at a real rate moves the loss of the epoch's later batches.
    moved = late_lr.continue_at(run_dir, 0.05, chunks=1)
    assert moved["loss_ce"] != pytest.approx(frozen, rel=1e-6)


def test_refuses_runs_it_cannot_continue(tmp_path, run_dir):
    late_lr = importlib.import_module("benchmarks.analysis.late_lr")
    other = tmp_path / "online"
    other.mkdir()
    cfg = (run_dir / "config.yaml").read_text()
    assert "refresh_per_epoch: 1" in cfg
    (other / "config.yaml").write_text(cfg.replace("refresh_per_epoch: 1",
                                                   "refresh_per_epoch: 2"))
    with RunLogger(None, tensorboard=False, progress=False) as log, \
            pytest.raises(ValueError, match="refresh_per_epoch: 1"):
        late_lr.resumed(other, log)
