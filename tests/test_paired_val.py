"""benchmarks.analysis.paired_val: the paired error difference against a
hand-computed table, and on tiny digits runs the logged validation error
reproduced and pairs of different splits refused."""
import importlib
import math

import pytest
import torch

from dag_pyg.config import load_config
from dag_pyg.train import train

TINY = ["optim.epochs=2", "optim.pretrain_epochs=1", "optim.batch_size=128",
        "optim.labelled_batch_size=32", "log.progress=false",
        "log.tensorboard=false", "log.plots=false", "data.num_val=200"]


def paired_val():
    return importlib.import_module("benchmarks.analysis.paired_val")


def test_compare_by_hand():
    # Ten images: A wrong on 2 and 3, B wrong on 3, 4 and 5.
    a = torch.ones(10, dtype=torch.bool)
    b = torch.ones(10, dtype=torch.bool)
    a[[2, 3]] = False
    b[[3, 4, 5]] = False
    rec = paired_val().compare(a, b)
    assert rec["images"] == 10
    assert rec["error_a"] == pytest.approx(20.0)
    assert rec["error_b"] == pytest.approx(30.0)
    assert (rec["only_a_wrong"], rec["only_b_wrong"]) == (1, 2)
    assert rec["diff"] == pytest.approx(-10.0)
    # Agresti-Min: half an image added to each cell; only-A-wrong 1.5,
    # only-B-wrong 2.5 of 12: d~ = -1/12, se = sqrt(4 - 1/12) / 12.
    se = math.sqrt(4 - 1 / 12) / 12
    assert rec["diff_lo"] == pytest.approx(100 * (-1 / 12 - 1.959964 * se), abs=1e-3)
    assert rec["diff_hi"] == pytest.approx(100 * (-1 / 12 + 1.959964 * se), abs=1e-3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    for seed in (0, 1):
        train(load_config("configs/digits.yaml", TINY + [f"seed={seed}"]),
              root / f"seed{seed}")
    return root


@pytest.mark.slow
@pytest.mark.cpu_only
def test_reproduces_logged_val_error(runs):
    res = paired_val().paired_val([runs / "seed0"], [runs / "seed0"])
    rec = res["pairs"][0]
    assert rec["images"] == 200
    assert rec["error_a"] == pytest.approx(rec["logged_error_a"], abs=1e-3)
    assert rec["error_a"] == rec["error_b"]
    assert rec["only_a_wrong"] == rec["only_b_wrong"] == rec["diff"] == 0
    assert res["pooled"]["images"] == 200


@pytest.mark.slow
@pytest.mark.cpu_only
def test_pools_every_pair(runs):
    res = paired_val().paired_val([runs / "seed0", runs / "seed1"],
                                  [runs / "seed0", runs / "seed1"])
    errors = [rec["error_a"] for rec in res["pairs"]]
    assert res["pooled"]["images"] == 400
    assert res["pooled"]["error_a"] == pytest.approx(sum(errors) / 2)


@pytest.mark.slow
@pytest.mark.cpu_only
def test_refuses_different_splits(runs):
    with pytest.raises(SystemExit, match="different images"):
        paired_val().paired_val([runs / "seed0"], [runs / "seed1"])
    with pytest.raises(SystemExit, match="as many"):
        paired_val().paired_val([runs / "seed0"], [])
