"""Preemption: SIGTERM (SLURM, Kubernetes) or SIGINT (Ctrl-C) asks the run
to stop after the current step; the loop then writes a checkpoint of where
in the epoch it stopped, from which ``--resume`` continues exactly."""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import torch

from dag_pyg.distributed import DistContext

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """The run stopped on a signal after writing a resumable checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 SIGTERM, 130 SIGINT


class StopRequest:
    """Records the first SIGTERM/SIGINT while installed (:meth:`installed`);
    a second one gets the previous handler (Ctrl-C twice aborts at once)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        # Signal handlers can only be set from the main thread.
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous = {}

    def requested(self, dist: DistContext) -> int | None:
        """The signal that asked to stop, on this or any other rank (every
        rank then stops after the same step), or :obj:`None`."""
        if not dist.enabled:
            return self.signum
        mine = torch.tensor([float(self.signum or 0)], dtype=torch.float64)
        # The largest signal number of any rank; 0 means none.
        total = dist.all_gather_rows(mine.view(1, 1), [1] * dist.world_size).max()
        return int(total) or None
