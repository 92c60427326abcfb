"""End to end on scikit-learn's digits with tiny epochs (whole runs: the
slow tier; the steps themselves are tested in test_refresh.py)."""
import json
import math

import pytest
import torch

from dag_pyg.cli import main
from dag_pyg.config import load_config
from dag_pyg.train import evaluate_run, train
from dag_pyg.train import loop as loop_module
from dag_pyg.train.checkpoint import CheckpointError, load_checkpoint

pytestmark = pytest.mark.slow

TINY = ["optim.epochs=3", "optim.pretrain_epochs=2", "optim.batch_size=128",
        "optim.labelled_batch_size=32", "log.progress=false", "log.tensorboard=false",
        "data.num_val=50"]


def tiny(*extra):
    return load_config("configs/digits.yaml", [*TINY, *extra])


def weights(run_dir):
    s = load_checkpoint(run_dir / "checkpoint.pt")
    return s["backbone"], s["head"], s["banks"]


def same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor) and isinstance(b[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:  # None, or a flag (banks' neighbours)
            assert a[k] == b[k], k


def test_run_writes_every_artefact(tmp_path):
    summary = train(tiny("log.plots=true"), tmp_path / "run")
    run = tmp_path / "run"
    for name in ["config.yaml", "split.json", "train.log", "metrics.jsonl",
                 "summary.json", "checkpoint.pt", "curves.png", "path_lengths.png"]:
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4]
    last = records[-1]
    for key in ["loss", "loss_ce", "loss_entropy", "loss_balance", "test_error",
                "val_error", "pl_acc", "pl_coverage", "model_acc_on_covered",
                "path_len_mean", "bank_cos_prev", "knn_kept", "time_train",
                "time_bank", "time_graph", "time_dplp", "time_eval"]:
        assert key in last, key
    assert 0 <= last["test_error"] <= 100
    assert summary["test_error_last"] == last["test_error"]
    assert summary["best_by_val"]["epoch"] in (2, 3, 4)
    assert json.loads((run / "summary.json").read_text())["name"] == "digits"
    ev = evaluate_run(run)
    assert ev["test_error"] == pytest.approx(last["test_error"])


def test_evaluate_on_another_test_set(tmp_path, capsys):
    full = train(tiny(), tmp_path / "full")  # digits' whole test set
    sub = train(tiny("data.num_test=100"), tmp_path / "sub")
    # The test set plays no part in training: identical weights, so each run
    # evaluated on the other's test set gives the other's error.
    for a, b in zip(weights(tmp_path / "full")[:2], weights(tmp_path / "sub")[:2],
                    strict=True):
        same(a, b)
    ev = evaluate_run(tmp_path / "sub", num_test="all")
    assert ev["test_error"] == pytest.approx(full["test_error_last"])
    assert ev["num_test"] > 100
    assert (tmp_path / "sub" / "eval_test-all.json").is_file()
    ev = evaluate_run(tmp_path / "full", num_test=100)
    assert ev["num_test"] == 100
    assert ev["test_error"] == pytest.approx(sub["test_error_last"])
    assert evaluate_run(tmp_path / "sub")["num_test"] == 100  # the run's own
    assert main(["eval", str(tmp_path / "sub"), "--num-test", "0"]) == 2
    assert "give a positive number of test samples or 'all'" in capsys.readouterr().err


def test_resume_is_exact(tmp_path, monkeypatch):
    cfg = tiny()
    train(cfg, tmp_path / "full")

    real_save = loop_module.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 2:
            raise KeyboardInterrupt("killed after epoch 2")

    monkeypatch.setattr(loop_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut")
    monkeypatch.setattr(loop_module, "save_checkpoint", real_save)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, tmp_path / "cut")
    train(cfg, tmp_path / "cut", resume=True)
    for a, b in zip(weights(tmp_path / "full"), weights(tmp_path / "cut"), strict=True):
        same(a, b)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    full = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(full)
    strip = lambda r: {k: v for k, v in json.loads(r).items()  # noqa: E731
                       if not k.startswith(("time_", "mem_"))}
    assert [strip(x) for x in lines] == [strip(x) for x in full]


def test_damaged_checkpoint_stops_with_clear_error(tmp_path):
    cfg = tiny("optim.epochs=1", "optim.pretrain_epochs=1")
    train(cfg, tmp_path / "r")
    ckpt = tmp_path / "r" / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="checkpoint.pt"):
        train(cfg, tmp_path / "r", resume=True)
    with pytest.raises(CheckpointError, match="another configuration"):
        ckpt.write_bytes(data)
        train(tiny("optim.epochs=1", "optim.pretrain_epochs=1", "dna.hops=2"),
              tmp_path / "r", resume=True)


def test_switches_change_what_they_should(tmp_path):
    def last(*extra):
        name = "_".join(x.replace("=", "-") for x in extra) or "default"
        train(tiny("optim.epochs=1", "optim.pretrain_epochs=1", *extra),
              tmp_path / name)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])

    dplp = last()
    assert dplp["pl_coverage"] > 0
    model = last("pseudo_label.source=model")
    assert model["pl_coverage"] == 0  # no propagation: the Label Bank itself
    assert model["pl_acc_all"] == pytest.approx(model["model_acc"])
    none = last("pseudo_label.source=none")
    assert none["pl_acc_all"] is None  # unlabelled samples carry no target
    lp_l = last("dplp.mode=L")
    assert lp_l["pl_coverage"] <= dplp["pl_coverage"]
    tight = last("dplp.sigma=0")
    assert tight["pl_coverage"] <= dplp["pl_coverage"]
    assert tight["path_len_max"] == 1.0
    # The plain baseline reads no bank: no refresh, no graph, still evaluated.
    base = last("dna.aggregator=none", "pseudo_label.source=none")
    assert "time_bank" not in base and "time_graph" not in base
    assert 0 <= base["test_error"] <= 100
    assert evaluate_run(tmp_path / "dna.aggregator-none_pseudo_label.source-none")[
        "test_error"] == pytest.approx(base["test_error"])


def test_pseudo_label_weights(tmp_path):
    # A pseudo-label weight of zero is exactly training without pseudo labels.
    short = ("optim.epochs=2", "optim.pretrain_epochs=1")
    train(tiny(*short, "pseudo_label.weight=0"), tmp_path / "zero")
    train(tiny(*short, "pseudo_label.source=none"), tmp_path / "none")
    same(weights(tmp_path / "zero")[0], weights(tmp_path / "none")[0])
    read = lambda d: [json.loads(x) for x in  # noqa: E731
                      (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in read("zero")] == [r["loss"] for r in read("none")]

    # Certainty weights are recorded and kept in the checkpoint's banks.
    train(tiny(*short, "pseudo_label.weighting=certainty"), tmp_path / "cert")
    last = read("cert")[-1]
    assert 0.0 < last["pl_weight_mean"] < 1.0
    banks = weights(tmp_path / "cert")[2]
    num_labelled = len(json.loads((tmp_path / "cert" / "split.json").read_text())[
        "labelled"])
    assert torch.all(banks["weights"][:num_labelled] == 1.0)  # labelled first
    assert torch.all((banks["weights"] >= 0) & (banks["weights"] <= 1))


def test_refreshes_within_an_epoch(tmp_path, monkeypatch):
    from dag_pyg.train import epoch as epoch_module

    events = []
    real_steps, real_refresh = epoch_module.train_steps, loop_module.refresh

    def steps(*args, **kwargs):
        events.append(("steps", len(args[5])))  # the batches trained on
        return real_steps(*args, **kwargs)

    def refresh(*args, **kwargs):
        events.append(("refresh", args[1].backbone.training))
        return real_refresh(*args, **kwargs)

    monkeypatch.setattr(epoch_module, "train_steps", steps)
    monkeypatch.setattr(epoch_module, "refresh", refresh)  # mid-epoch
    monkeypatch.setattr(loop_module, "refresh", refresh)   # end of epoch
    short = ("optim.epochs=2", "optim.pretrain_epochs=1")
    train(tiny(*short, "graph.refresh_per_epoch=3"), tmp_path / "r3")
    # Pre-training, the refresh that seeds epoch 1's banks, then per main
    # epoch three runs of steps with a refresh (in training mode) after each.
    kinds = [kind for kind, _ in events]
    assert kinds == ["steps", "refresh"] + ["steps", "refresh"] * 6
    assert all(training for kind, training in events if kind == "refresh")
    # TINY's batches hold 128 - 32 unlabelled seeds, each seed once an epoch;
    # the epoch's steps go in three runs of (nearly) equal length.
    n_unl = len(json.loads((tmp_path / "r3" / "split.json").read_text())[
        "unlabelled"])
    runs = [n for kind, n in events[2:] if kind == "steps"]
    assert sum(runs[:3]) == -(-n_unl // 96) and max(runs[:3]) - min(runs[:3]) <= 1
    monkeypatch.undo()
    rec = [json.loads(x) for x in (tmp_path / "r3" / "metrics.jsonl").open()]
    assert all(r["time_mid_refresh"] > 0 for r in rec if r["phase"] == "train")
    assert all(0 <= r["knn_kept_mid"] <= 1 and -1 <= r["bank_cos_prev_mid"] <= 1
               for r in rec if r["phase"] == "train")
    train(tiny(*short), tmp_path / "r1")
    r1 = [json.loads(x) for x in (tmp_path / "r1" / "metrics.jsonl").open()]
    assert "time_mid_refresh" not in r1[-1]
    assert r1[0]["loss"] == rec[0]["loss"]  # pre-training is untouched
    assert r1[-1]["loss"] != rec[-1]["loss"]  # fresher banks change training


def test_levers_beyond_the_paper_end_to_end(tmp_path, monkeypatch):
    import importlib

    # (dag_pyg.train's `refresh` is the function; the module by its path.)
    refresh_module = importlib.import_module("dag_pyg.train.refresh")

    extractions = []
    real_extract = refresh_module.extract_bank

    def extract(*args, **kwargs):
        extractions.append(1)
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(refresh_module, "extract_bank", extract)

    def records(*extra):
        name = "_".join(x.replace("=", "-") for x in extra)
        train(tiny("optim.epochs=2", "optim.pretrain_epochs=1", *extra),
              tmp_path / name)
        return [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").open()]

    paper = records("seed=0")
    main = [r for r in paper if r["phase"] == "train"]
    assert all(-1 <= r["live_bank_cos"] <= 1 for r in main)
    assert "live_bank_cos" not in paper[0]  # pre-training reads no bank
    assert all(r["pl_admitted"] == 1.0 for r in main)
    assert len(extractions) == 3  # after pre-training, after each main epoch
    extractions.clear()
    feature = records("loss.mixup_at=feature")
    assert len(extractions) == 3
    extractions.clear()
    online = records(*ONLINE)
    assert len(extractions) == 1  # after pre-training only
    # The online bank changes training beyond what feature mixup does.
    assert online[-1]["loss"] != feature[-1]["loss"]
    assert feature[-1]["loss"] != paper[-1]["loss"]
    sharp = records("dna.temperature=0.1", "dna.learn_beta=true")
    assert sharp[-1]["loss"] != paper[-1]["loss"]
    beta = load_checkpoint(tmp_path / "dna.temperature-0.1_dna.learn_beta-true" /
                           "checkpoint.pt")["head"]["convs.0.beta"]
    assert float(beta) != 1.0  # trained
    strict = records("pseudo_label.threshold=0.6", "pseudo_label.admit=agree")
    assert all(r["pl_admitted"] < 1.0 for r in strict if r["phase"] == "train")


def test_cli_train_and_config_errors(tmp_path, capsys):
    rc = main(["train", "configs/digits.yaml", "--out", str(tmp_path / "c"),
               *[a for o in TINY + ["optim.epochs=1", "optim.pretrain_epochs=1"]
                 for a in ("--set", o)]])
    assert rc == 0
    assert "final test error" in capsys.readouterr().out
    rc = main(["train", "configs/digits.yaml", "--set", "dna.hopz=2"])
    assert rc == 2
    assert "Did you mean 'dna.hops'" in capsys.readouterr().err
    rc = main(["train", "configs/digits.yaml", "--out", str(tmp_path / "c")])
    assert rc == 2
    assert "--resume" in capsys.readouterr().err


ONLINE = ("graph.bank=online", "loss.mixup_at=feature")


@pytest.mark.parametrize("kill_at,refreshes,levers", [
    (7, 3, ()), (20, 3, ()), (35, 3, ()), (38, 3, ()), (45, 3, ()),
    (32, 40, ()),  # more refreshes than steps: the first run of steps is empty
    # The bank written by the steps: in the first run of steps (the graph of
    # the epoch's start), at a boundary (the resume refreshes from the
    # written bank), in a later run.
    (33, 3, ONLINE), (35, 3, ONLINE), (38, 3, ONLINE),
    # method steered: its held-out labels, its choices and the neighbour flag.
    (38, 3, ("method=steered",))])
def test_sigterm_mid_epoch_resumes_exactly(tmp_path, monkeypatch, capsys, kill_at,
                                           refreshes, levers):
    """A SIGTERM during step ``kill_at`` (15 steps per epoch here; epochs
    0-1 pre-train; with 3 refreshes, main epochs refresh within after steps 5
    and 10): the step finishes, a checkpoint of the position is written, the
    CLI exits 143; --resume ends identical to an uninterrupted run."""
    import os
    import signal

    from dag_pyg.train import epoch as epoch_module

    extra = [f"graph.refresh_per_epoch={refreshes}", *levers]
    args = [a for o in TINY + extra for a in ("--set", o)]
    assert main(["train", "configs/digits.yaml", "--out", str(tmp_path / "full"),
                 *args]) == 0
    real_loss, calls = epoch_module.dag_loss, []

    def loss_then_signal(*a, **kw):
        calls.append(1)
        if len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_loss(*a, **kw)

    monkeypatch.setattr(epoch_module, "dag_loss", loss_then_signal)
    cut = ["train", "configs/digits.yaml", "--out", str(tmp_path / "cut"), *args]
    assert main(cut) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "interrupted by SIGTERM" in err and "--resume" in err
    assert len(calls) == kill_at  # stopped right after the signalled step
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert state["progress"]["done"] == (kill_at - 1) % 15 + 1
    monkeypatch.setattr(epoch_module, "dag_loss", real_loss)
    assert main([*cut, "--resume"]) == 0
    for a, b in zip(weights(tmp_path / "full"), weights(tmp_path / "cut"), strict=True):
        same(a, b)
    strip = lambda r: {k: v for k, v in json.loads(r).items()  # noqa: E731
                       if not k.startswith(("time_", "mem_"))}
    full = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [strip(x) for x in lines] == [strip(x) for x in full]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_and_resumes(tmp_path, amp):
    cfg = tiny("model.backbone=cnn", f"optim.amp={amp}", "model.channels_last=true")
    train(cfg, tmp_path / "full")
    rec = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").open()]
    assert all(math.isfinite(r["loss"]) for r in rec)
    assert 0 <= rec[-1]["test_error"] < 90
    state = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    # fp16 keeps the grad scaler's state for an exact resume.
    assert bool(state["scaler"]) == (amp == "fp16")
