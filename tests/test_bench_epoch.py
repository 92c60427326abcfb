"""bench_epoch's training command."""
from pathlib import Path

from benchmarks.speed.bench_epoch import row_settings, train_command
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


def test_a_row_is_timed_as_its_grid_runs_it():
    # The grid's set: first (it pinned model.width=0.25 and ema_decay=0 for
    # mnist_100_recipe_val's rows), then the row's own; a preset file wins.
    grid = {"name": "g", "config": "configs/mnist_100.yaml",
            "set": ["model.width=0.25", "optim.ema_decay=0"],
            "rows": {"wide": ["model.width=0.5"],
                     "plus": {"config": "configs/mnist_100_dagplus.yaml"}}}
    config, sets = row_settings(grid, "wide", "configs/other.yaml")
    assert config == "configs/other.yaml"
    cfg = load_config("configs/mnist_100.yaml", sets)
    assert cfg.model.width == 0.5 and cfg.optim.ema_decay == 0 and cfg.seed == 0
    config, sets = row_settings(grid, "plus", "configs/other.yaml")
    assert config == "configs/mnist_100_dagplus.yaml"
    assert sets[:2] == ["model.width=0.25", "optim.ema_decay=0"]
