"""The device every device-aware test runs on: ``DAG_PYG_TEST_DEVICE``
(``cpu`` by default; ``cuda`` or ``cuda:N`` on a GPU machine, as
``make gpu-check`` sets it). Tests build their inputs on the CPU from seeded
generators, move them to ``device`` and compare on the CPU, so the same
assertions hold on every device. Tests marked ``cpu_only`` (data files,
configs, logs, plots, the CLI) are CPU-only by nature.

``sigterm_at_step`` signals a training run from inside a given step."""
from __future__ import annotations

import os
import signal

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> torch.device:
    dev = torch.device(os.environ.get("DAG_PYG_TEST_DEVICE", "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"DAG_PYG_TEST_DEVICE={dev} but CUDA is not "
                                "available on this machine.")
    return dev


@pytest.fixture
def sigterm_at_step(monkeypatch):
    """``arm(n)`` makes the ``n``-th training step (counted by Eq. 2's loss
    calls) send SIGTERM to this process and returns the list of steps seen
    so far; ``arm(None)`` restores the loss."""
    from dag_pyg.train import epoch as epoch_module

    real_loss, calls = epoch_module.dag_loss, []

    def loss_then_signal(*a, **kw):
        calls.append(1)
        if len(calls) == loss_then_signal.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(*a, **kw)

    def arm(n: int | None) -> list:
        loss_then_signal.kill_at = n
        monkeypatch.setattr(epoch_module, "dag_loss",
                            real_loss if n is None else loss_then_signal)
        return calls

    return arm
