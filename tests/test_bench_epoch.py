"""bench_epoch's training command."""
from pathlib import Path

from benchmarks.speed.bench_epoch import train_command
from dag_pyg.config import load_config


def test_bench_epochs_win_over_a_rows_own():
    # A grid row may set optim.epochs (mnist_100_recipe_val's dag row does):
    # the bench still times 1 pre-training + --epochs main epochs.
    cmd = train_command("configs/mnist_100.yaml",
                        ["optim.epochs=16", "model.width=0.5"], 1, Path("out"))
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    cfg = load_config("configs/mnist_100.yaml", sets)
    assert (cfg.optim.epochs, cfg.optim.pretrain_epochs) == (1, 1)
    assert cfg.model.width == 0.5 and not cfg.log.plots
    assert cmd[cmd.index("--out") + 1] == "out"
