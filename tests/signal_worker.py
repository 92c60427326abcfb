"""``torchrun`` worker for tests/test_distributed.py: the dag-pyg CLI with a
SIGTERM sent to this process during training step ``DAG_PYG_KILL_STEP`` on
rank ``DAG_PYG_KILL_RANK`` only (a preempted node)."""
import os
import signal
import sys

from dag_pyg.cli import main
from dag_pyg.train import epoch as epoch_module

if os.environ.get("RANK") == os.environ.get("DAG_PYG_KILL_RANK"):
    real_loss, calls = epoch_module.dag_loss, []

    def loss_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == int(os.environ["DAG_PYG_KILL_STEP"]):
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(*args, **kwargs)

    epoch_module.dag_loss = loss_then_signal

sys.exit(main(sys.argv[1:]))
