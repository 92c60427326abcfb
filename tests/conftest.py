"""The device every device-aware test runs on: ``DAG_PYG_TEST_DEVICE``
(``cpu`` by default; ``cuda`` or ``cuda:N`` on a GPU machine, as
``make gpu-check`` sets it). Tests build their inputs on the CPU from seeded
generators, move them to ``device`` and compare on the CPU, so the same
assertions hold on every device. Tests marked ``cpu_only`` (data files,
configs, logs, plots, the CLI) are CPU-only by nature."""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> torch.device:
    dev = torch.device(os.environ.get("DAG_PYG_TEST_DEVICE", "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"DAG_PYG_TEST_DEVICE={dev} but CUDA is not "
                                "available on this machine.")
    return dev
