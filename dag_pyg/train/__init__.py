"""Training (Alg. 2): set-up, epochs, the refresh, evaluation, the loop,
its losses, checkpoints and logs."""
from dag_pyg.train.evaluate import LoadedRun, evaluate, evaluate_run, load_run
from dag_pyg.train.loop import run, train
from dag_pyg.train.refresh import Banks, Refreshed, refresh

__all__ = ["Banks", "LoadedRun", "Refreshed", "evaluate", "evaluate_run",
           "load_run", "refresh", "run", "train"]
