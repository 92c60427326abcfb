"""Training (Alg. 2): the loop, its losses, checkpoints and logs."""
from dag_pyg.train.loop import Trainer, evaluate_run, load_run, train

__all__ = ["Trainer", "evaluate_run", "load_run", "train"]
