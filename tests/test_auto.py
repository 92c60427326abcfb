"""method: auto: its arms, its choice and its run folder."""
import importlib
import json
import math

import pytest
import torch

from dag_pyg.cli import main
from dag_pyg.config import ConfigError, load_config
from dag_pyg.train import evaluate_run, load_run, run, train
from dag_pyg.train.auto import ARMS, arm_configs, choose, refit_config
from dag_pyg.train.checkpoint import CheckpointError
from dag_pyg.train.setup import run_started

TINY = ["optim.epochs=2", "optim.pretrain_epochs=1", "optim.batch_size=128",
        "optim.labelled_batch_size=32", "log.progress=false",
        "log.tensorboard=false", "log.plots=false"]


def B(*bits):
    return torch.tensor(bits, dtype=torch.bool)


def test_choose_by_hand():
    # steered right on 3 of 4, the labels alone on 1; only steered right on
    # 2 nodes, only the labels alone on none: d = 2/4. Agresti-Min: b~ 2.5,
    # c~ 0.5, n~ 6: d~ = 1/3, se = sqrt(3 - 4/6)/6.
    out = choose({"steered": B(1, 1, 0, 1), "labels_only": B(1, 0, 0, 0)})
    se = math.sqrt(3 - 4 / 6) / 6
    assert out["arm"] == "steered" and out["check_n"] == 4
    assert out["gain"] == pytest.approx(0.5)
    assert out["gain_lo"] == pytest.approx(1 / 3 - 1.959963984540054 * se)
    assert out["gain_hi"] == pytest.approx(1 / 3 + 1.959963984540054 * se)
    assert out["arms"]["steered"]["acc"] == pytest.approx(0.75)
    assert out["arms"]["labels_only"]["acc"] == pytest.approx(0.25)
    # A tie keeps steered; one node fewer right drops it.
    assert choose({"steered": B(1, 0), "labels_only": B(0, 1)})["arm"] == "steered"
    assert choose({"steered": B(0, 0, 1), "labels_only": B(1, 0, 1)}
                  )["arm"] == "labels_only"
    with pytest.raises(ValueError, match="same, non-empty"):
        choose({"steered": B(1), "labels_only": B(1, 0)})


def test_arm_configs():
    cfg = load_config("configs/digits.yaml", ["method=auto"])
    arms = arm_configs(cfg, 10)
    assert tuple(arms) == ARMS
    s, b = arms["steered"], arms["labels_only"]
    assert (s.method, s.name, s.data.num_check) == ("steered", "digits_steered", 10)
    assert (b.method, b.dna.aggregator, b.pseudo_label.source, b.data.num_check) \
        == ("dag", "none", "none", 10)
    # Nothing else differs from the config (and the config is untouched).
    assert s.dna == cfg.dna and s.optim == cfg.optim and cfg.method == "auto"
    assert b.optim == cfg.optim and b.graph == cfg.graph


def test_refit_config_replays_the_steered_arm(tmp_path):
    cfg = load_config("configs/digits.yaml", ["method=auto", "optim.epochs=2",
                                              "optim.pretrain_epochs=2"])
    # The labels alone: all labels, nothing else changed.
    b = refit_config(cfg, "labels_only", tmp_path)
    assert b.data.num_check == 0 and b.name == "digits_refit"
    assert (b.dna.aggregator, b.pseudo_label.source) == ("none", "none")
    # steered: its decisions per end-of-epoch refresh, in epoch order; a
    # record repeated by a resume counts once (the last); NaN thresholds
    # (JSON null) admit none.
    recs = [{"epoch": 0, "loss": 1.0},
            {"epoch": 1, "auto_dplp": 1.0, "auto_threshold": None,
             "auto_neighbours": 0.0},
            {"epoch": 2, "auto_dplp": 1.0, "auto_threshold": 0.9,
             "auto_neighbours": 0.0},
            {"epoch": 2, "auto_dplp": 0.0, "auto_threshold": 0.8,
             "auto_neighbours": 0.0},
            {"epoch": 3, "auto_dplp": 1.0, "auto_threshold": 0.7,
             "auto_neighbours": 0.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                    for r in recs))
    s = refit_config(cfg, "steered", tmp_path)
    assert (s.method, s.data.num_check) == ("steered", 0)
    assert s.steer.replay_dplp == [True, False, True]
    assert s.steer.replay_threshold == [None, 0.8, 0.7]
    assert s.steer.replay_neighbours is False
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                    for r in recs[:3]))
    with pytest.raises(CheckpointError, match="records 2 steered refreshes"):
        refit_config(cfg, "steered", tmp_path)
    # graph.freeze_lr: an epoch that kept its banks decided nothing; its
    # entry repeats the one before (the refit keeps the same epochs).
    kept = [*recs[:3], {"epoch": 3, "loss": 0.5, "banks_frozen": 1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                    for r in kept))
    s = refit_config(cfg, "steered", tmp_path)
    assert s.steer.replay_dplp == [True, True, True]
    assert s.steer.replay_threshold == [None, 0.9, 0.9]
    # An epoch with neither is an unfinished arm.
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps(r) + "\n" for r in [*recs[:2], kept[-1]]))
    with pytest.raises(CheckpointError, match="1 steered refreshes and 1 epochs"):
        refit_config(cfg, "steered", tmp_path)


def test_auto_is_trained_through_train_only(tmp_path):
    cfg = load_config("configs/digits.yaml", ["method=auto", *TINY])
    with pytest.raises(ConfigError, match="train it with"):
        run(cfg, tmp_path / "r")
    with pytest.raises(ConfigError, match="--stop-after"):
        train(cfg, tmp_path / "r", stop_after=0)
    with pytest.raises(CheckpointError, match="--resume: no checkpoint"):
        train(cfg, tmp_path / "r", resume=True)


def _own_check_acc(arm_dir):
    """An arm's check accuracy computed here: its head on each check
    image's backbone features alone (both arms read no neighbours here)."""
    loaded = load_run(arm_dir, progress=False)
    data, model = loaded.data, loaded.model
    rows = data.nodes[data.check_mask]
    model.backbone.eval()
    model.head.eval()
    with torch.no_grad():
        x = model.backbone.features(data.eval_tf(data.train_set.images[rows]))
        pred = model.head.classify(model.head.embed_self(x)).argmax(1)
    return float((pred == data.train_set.targets[rows]).float().mean())


@pytest.mark.slow
def test_auto_trains_both_arms_and_keeps_the_better(tmp_path, monkeypatch, capsys):
    refresh_module = importlib.import_module("dag_pyg.train.refresh")
    # The steered arm without its neighbour term, so that both arms' check
    # predictions are the head on each image alone (computed independently).
    monkeypatch.setattr(refresh_module, "auto_decisions",
                        lambda rec: {"dplp": True, "neighbours": False})
    out = tmp_path / "auto"
    args = ["train", "configs/digits.yaml", "--out", str(out), "--set",
            "method=auto", *[a for o in TINY for a in ("--set", o)]]
    assert main(args) == 0
    assert "method auto chose" in capsys.readouterr().out
    choice = json.loads((out / "choice.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    accs = {arm: _own_check_acc(out / "arms" / arm) for arm in ARMS}
    for arm in ARMS:
        assert choice["arms"][arm]["acc"] == pytest.approx(accs[arm])
    want = "steered" if accs["steered"] >= accs["labels_only"] else "labels_only"
    assert choice["arm"] == want and choice["check_n"] == 10
    assert choice["model_dir"] == "refit"
    # The run's summary is the refit's, with the choice and both arms.
    refit = json.loads((out / "refit" / "summary.json").read_text())
    assert summary["test_error_last"] == refit["test_error_last"]
    assert summary["auto"] == choice and set(summary["arms"]) == set(ARMS)
    assert summary["config"]["method"] == "auto"
    # Both arms held out the same labels and trained on the rest; the refit
    # trained on all of them, the chosen arm's way.
    splits = [json.loads((out / d / "split.json").read_text())
              for d in ("arms/labels_only", "arms/steered", "refit")]
    assert splits[0]["meta"]["check"] == splits[1]["meta"]["check"]
    assert set(splits[0]["meta"]["check"]) <= set(splits[0]["labelled"])
    assert "check" not in splits[2]["meta"]
    assert splits[2]["labelled"] == splits[0]["labelled"]
    assert refit["config"]["data"]["num_check"] == 0
    assert refit["config"]["method"] == ("steered" if want == "steered" else "dag")
    # eval of the run folder evaluates the refit.
    assert evaluate_run(out)["test_error"] == pytest.approx(
        evaluate_run(out / "refit")["test_error"])
    # A finished run is never overwritten; --resume finds both arms done.
    assert run_started(out)
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["auto"] == choice
    assert again["test_error_last"] == summary["test_error_last"]


@pytest.mark.slow
def test_auto_refit_keeps_the_banks_where_its_arm_did(tmp_path):
    """method auto with graph.freeze_lr (as configs/mnist_100.yaml): the
    steered arm decides at the refreshes it runs; its refit keeps the banks
    in the same epochs (same schedule) and replays every other decision.
    Cosine over 4 main epochs at 0.5: the last two keep their banks."""
    cfg = load_config("configs/digits.yaml", [
        "method=auto", *TINY, "optim.epochs=4", "optim.schedule=cosine",
        "graph.freeze_lr=0.5"])
    arm = tmp_path / "steered"
    train(arm_configs(cfg, 10)["steered"], arm)
    refit = refit_config(cfg, "steered", arm)
    train(refit, tmp_path / "refit")
    recs = {d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").open()]
            for d in ("steered", "refit")}
    kept = {d: [r["epoch"] for r in rs if r.get("banks_frozen")]
            for d, rs in recs.items()}
    assert kept["steered"] == kept["refit"] == [3, 4]
    decided = {d: {r["epoch"]: (r["auto_dplp"], r["auto_threshold"]) for r in rs
                   if "auto_dplp" in r} for d, rs in recs.items()}
    assert sorted(decided["steered"]) == [0, 1, 2]
    # The refit applies the arm's decisions: DPLP's labels or the model's,
    # and the threshold its own Label Bank's confidences then meet.
    assert decided["refit"] == decided["steered"]


@pytest.mark.slow
def test_auto_sigterm_in_an_arm_resumes_the_whole_run(tmp_path, capsys,
                                                     sigterm_at_step):
    import signal

    args = ["--set", "method=auto", *[a for o in TINY for a in ("--set", o)]]
    full = tmp_path / "full"
    assert main(["train", "configs/digits.yaml", "--out", str(full), *args]) == 0
    sigterm_at_step(68)  # in the second arm (steered; 48 steps per arm)
    cut = ["train", "configs/digits.yaml", "--out", str(tmp_path / "cut"), *args]
    assert main(cut) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'cut'} --resume" in err
    assert (tmp_path / "cut" / "arms" / "labels_only" / "summary.json").is_file()
    assert not (tmp_path / "cut" / "choice.json").exists()
    sigterm_at_step(None)
    assert main([*cut, "--resume"]) == 0
    a, b = (json.loads((d / "summary.json").read_text())
            for d in (full, tmp_path / "cut"))
    assert a["auto"] == b["auto"]
    assert a["test_error_last"] == b["test_error_last"]
    # Cut in the refit (after both arms' 96 steps): the choice is on disk
    # already, and the resumed refit ends where the uncut one did.
    sigterm_at_step(110).clear()  # steps counted from here
    refit_cut = ["train", "configs/digits.yaml", "--out", str(tmp_path / "cut2"),
                 *args]
    assert main(refit_cut) == 128 + signal.SIGTERM
    capsys.readouterr()
    saved = json.loads((tmp_path / "cut2" / "choice.json").read_text())
    assert saved == a["auto"] and not (tmp_path / "cut2" / "summary.json").exists()
    sigterm_at_step(None)
    assert main([*refit_cut, "--resume"]) == 0
    c = json.loads((tmp_path / "cut2" / "summary.json").read_text())
    assert c["auto"] == a["auto"] and c["test_error_last"] == a["test_error_last"]
