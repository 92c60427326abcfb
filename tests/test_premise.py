"""The premise check (dag_pyg.train.premise) and the held-out labels it
reads (data.num_check): intervals against published values, the check's
numbers against hand-computed ones on a small graph, and the refresh's
record on digits."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch_geometric.data import Data

from dag_pyg.config import ConfigError, load_config
from dag_pyg.data import hold_out
from dag_pyg.distributed import DistContext
from dag_pyg.nn import DNAHead
from dag_pyg.train import refresh
from dag_pyg.train.logger import RunLogger
from dag_pyg.train.premise import neighbour_vote, paired_gain, premise_check, wilson
from dag_pyg.train.setup import Run, build_model, load_data

CPU = torch.device("cpu")


def run_of(cfg, model, data):
    """A one-process run of ``model`` on ``data`` that draws nothing."""
    return Run(cfg=cfg, model=model, data=data, device=CPU, dist=DistContext(),
               log=RunLogger(), gen=torch.Generator())


def test_wilson_matches_published_intervals():
    # Newcombe (1998), Table I: 8/10 -> 0.4902-0.9433; 0/10 -> 0-0.2775.
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_paired_gain_by_hand():
    a = torch.tensor([1, 1, 1, 0], dtype=torch.bool)
    b = torch.tensor([1, 0, 0, 0], dtype=torch.bool)
    # b=2 nodes only a gets right, c=0; Agresti-Min adds 1/2 to all four
    # cells: 2.5, 0.5, n 6: d~ = 1/3, se = sqrt(3 - 4/6)/6 = 0.254588
    # -> 1/3 -+ 1.96 * se = [-0.165651, 0.832317].
    d, lo, hi = paired_gain(a, b)
    assert d == 0.5
    assert lo == pytest.approx(-0.165651, abs=1e-5)
    assert hi == pytest.approx(0.832317, abs=1e-5)
    d, lo, hi = paired_gain(a, a)  # identical: no gain, a narrow symmetric CI
    assert d == 0.0 and lo == pytest.approx(-hi) and 0 < hi < 0.5
    assert math.isnan(paired_gain(a[:0], a[:0])[0])


def test_hold_out_is_class_balanced_and_leaves_training_labels():
    targets = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 2, 2, 2])
    labelled = torch.tensor([0, 1, 2, 3, 4, 5, 8, 9, 10])
    kept, held = hold_out(labelled, targets, 3, seed=1)
    assert sorted(targets[held].tolist()) == [0, 1, 2]
    assert sorted(torch.cat([kept, held]).tolist()) == labelled.tolist()
    assert torch.equal(hold_out(labelled, targets, 3, seed=1)[1], held)
    with pytest.raises(ValueError, match="spread evenly"):
        hold_out(labelled, targets, 4)
    with pytest.raises(ValueError, match="keep at least one"):
        hold_out(labelled, targets, 9)


def tiny():
    """Five nodes; node 4 is the check node (class 1), its neighbours 0-3."""
    #             v: 0  1  2  3   -> u = 4 ; and 4 -> 0 for node 0
    ei = torch.tensor([[0, 1, 2, 3, 4], [4, 4, 4, 4, 0]])
    sim = torch.tensor([0.9, 0.2, 0.3, 0.4, 0.5])
    return Data(edge_index=ei, sim=sim, density=torch.zeros(5), num_nodes=5)


def test_neighbour_vote_by_hand():
    prior = torch.tensor([1, 0, 0, 2, 0])
    # Node 4: class 1 gets 0.9, class 0 0.2 + 0.3 = 0.5, class 2 0.4 -> 1.
    # Node 0: from node 4 (class 0) -> 0. Nodes 1-3 have no in-edges: their own.
    assert neighbour_vote(prior, tiny(), 3).tolist() == [0, 0, 0, 2, 1]


def test_premise_check_by_hand():
    torch.manual_seed(0)
    head = DNAHead(4, 3, hops=1)
    feats = torch.randn(5, 4)
    truth = torch.tensor([1, 0, 0, 2, 1])
    labelled = torch.tensor([True, True, False, False, False])
    check = torch.tensor([False, False, False, False, True])
    prior = torch.tensor([1, 0, 0, 2, 0])            # Label Bank wrong on 4
    dplp_labels = torch.tensor([1, 0, 1, 2, 1])      # DPLP right on 4
    covered = torch.tensor([False, False, True, False, True])
    rec = premise_check(head, feats, tiny(), prior, dplp_labels, covered, truth,
                        labelled, check, CPU)
    assert rec["check_n"] == 1 and rec["check_lb_acc"] == 0.0
    assert rec["check_vote_acc"] == 1.0 and rec["check_vote_gain"] == 1.0
    assert rec["check_dplp_n"] == 1 and rec["check_dplp_acc"] == 1.0
    assert rec["check_lb_acc_covered"] == 0.0 and rec["check_dplp_gain"] == 1.0
    assert rec["check_lb_acc_lo"] == 0.0 and rec["check_lb_acc_hi"] == \
        pytest.approx(wilson(0, 1)[1])
    own = head(feats[4:], torch.empty(2, 0, dtype=torch.long),
               torch.zeros(1)).argmax(1)
    assert rec["check_self_acc"] == float(own.item() == 1)
    # Attention purity: edges into 4 from known labels: node 0 (class 1, same)
    # and node 1 (class 0); node 4's softmax over all four in-edges.
    _, (_, alpha) = head.convs[0](feats, tiny().edge_index[:, :4],
                                  torch.zeros(5), return_attention_weights=True)
    alpha = alpha.view(-1)
    assert rec["check_attention_edges"] == 2
    assert rec["check_attention_purity"] == pytest.approx(
        float(alpha[0] / (alpha[0] + alpha[1])))


def test_num_check_holds_labels_out_and_the_refresh_checks_them():
    cfg = load_config("configs/digits.yaml", ["log.progress=false",
                                              "data.num_check=20"])
    torch.manual_seed(0)
    data = load_data(cfg)
    full = load_data(load_config("configs/digits.yaml", ["log.progress=false"]))
    check = data.check_mask
    assert int(check.sum()) == 20 and data.num_labelled == full.num_labelled - 20
    # The held-out samples are labelled ones of the full split, now unlabelled
    # graph nodes; every training sample is still a node.
    held = data.nodes[check]
    assert set(held.tolist()) <= set(full.nodes[full.labelled_mask].tolist())
    assert not bool((data.labelled_mask & check).any())
    assert sorted(data.nodes.tolist()) == sorted(full.nodes.tolist())
    model = build_model(cfg, data, CPU, DistContext())
    out = refresh(run_of(cfg, model, data))
    s = out.stats
    assert s["check_n"] == 20
    truth = data.true_y[check]
    assert s["check_lb_acc"] == pytest.approx(
        float((out.banks.prior[check] == truth).float().mean()))
    # Training never reads the check nodes' labels: other labels there give
    # the same banks and targets (and another check record).
    data.true_y[check] = out.banks.prior[check]
    again = refresh(run_of(cfg, model, data))
    assert torch.equal(again.banks.targets, out.banks.targets)
    assert torch.equal(again.banks.prior, out.banks.prior)
    assert again.stats["check_lb_acc"] == 1.0 != s["check_lb_acc"]
    assert s["check_lb_acc_lo"] <= s["check_lb_acc"] <= s["check_lb_acc_hi"]
    for key in ("check_vote_gain", "check_neighbour_gain", "check_dplp_gain"):
        assert s[f"{key}_lo"] <= s[key] <= s[f"{key}_hi"] or math.isnan(s[key])
    with pytest.raises(ConfigError, match="data.num_check"):
        load_config("configs/digits.yaml", ["data.num_check=-1"])


def test_verdicts_read_the_intervals():
    from dag_pyg.train.diagnose import verdicts

    rec = {"check_n": 40, "check_lb_acc": 0.6, "check_lb_acc_lo": 0.45,
           "check_lb_acc_hi": 0.73, "check_dplp_n": 20, "check_dplp_acc": 0.9,
           "check_lb_acc_covered": 0.6, "check_dplp_gain": 0.3,
           "check_dplp_gain_lo": 0.1, "check_dplp_gain_hi": 0.5,
           "check_vote_acc": 0.5, "check_vote_gain": -0.1,
           "check_vote_gain_lo": -0.2, "check_vote_gain_hi": -0.01,
           "check_self_acc": 0.55, "check_neighbour_gain": 0.05,
           "check_neighbour_gain_lo": -0.05, "check_neighbour_gain_hi": 0.15}
    v = verdicts(rec)
    assert v["dplp"].startswith("DPLP labels 90.0 % vs model 60.0 % on the 20 ")
    assert v["dplp"].endswith("DPLP should help.")
    assert v["neighbour_vote"].endswith("aggregation's premise fails.")
    assert "no evidence either way" in v["dna"] and "[-5.0, 15.0]" in v["dna"]
    rec.update(check_dplp_n=0, check_dplp_gain_lo=None, check_dplp_gain_hi=None)
    assert verdicts(rec)["dplp"].endswith("no check nodes to read")


@pytest.mark.slow
def test_cli_diagnose(tmp_path, capsys):
    import json

    from dag_pyg.cli import main

    out = tmp_path / "dg"
    args = ["diagnose", "configs/digits.yaml", "--out", str(out), "--set",
            "optim.pretrain_epochs=2", "--set", "log.progress=false",
            "--set", "log.plots=false", "--set", "log.tensorboard=false"]
    assert main(args) == 0
    text = capsys.readouterr().out
    res = json.loads((out / "diagnose.json").read_text())
    # 5 labels per class: one each held out (20 %), read after epoch 1.
    assert res["num_check"] == 10 and res["epoch"] == 1
    last = [json.loads(line) for line in (out / "metrics.jsonl").open()][-1]
    assert res["check"]["check_lb_acc"] == last["check_lb_acc"]
    assert "Label Bank accuracy" in text and set(res["verdicts"]) == {
        "pseudo_labels", "dplp", "neighbour_vote", "dna"}
    assert main(args) == 2  # the folder holds a run: nothing overwritten
    assert main(["diagnose", "configs/digits.yaml", "--out", str(tmp_path / "x"),
                 "--set", "optim.pretrain_epochs=0"]) == 2
    assert "pretrain_epochs >= 1" in capsys.readouterr().err
    assert main(["diagnose", "configs/digits.yaml", "--out", str(tmp_path / "y"),
                 "--set", "data.num_labelled=1"]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_admission_threshold_by_hand():
    from dag_pyg.train.premise import admission_threshold

    conf = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    right = torch.tensor([True, True, True, True, False, False])
    # Prefixes by confidence: 1/1 (Wilson lo 0.207), 2/2 (0.342), 3/3 (0.439),
    # 4/4 (0.510), 4/5 (0.376), 4/6 (0.300): the largest prefix with a lower
    # end >= 1/2 is the top four -> admit confidence >= 0.6.
    assert wilson(4, 4)[0] == pytest.approx(0.5101, abs=1e-4)
    assert admission_threshold(conf, right) == pytest.approx(0.6)
    # A tie at the cut admits both tied nodes or neither: with the wrong
    # fifth node tied to the fourth, the top four cannot be admitted alone,
    # 4/5 fails, and so does every shorter prefix.
    tied = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.6, 0.4])
    assert admission_threshold(tied, right) is None
    right5 = torch.tensor([True, True, True, True, True, False])
    assert admission_threshold(tied, right5) == pytest.approx(0.6)  # 5/5
    assert admission_threshold(conf, torch.zeros(6, dtype=torch.bool)) is None
    assert admission_threshold(conf[:0], right[:0]) is None


def test_auto_decisions():
    from dag_pyg.train.premise import auto_decisions

    rec = {"check_dplp_gain_hi": -0.01, "check_neighbour_gain_hi": -0.05}
    assert auto_decisions(rec) == {"dplp": False, "neighbours": False}
    # Intervals that hold 0 keep the paper's modules, whatever the estimate.
    rec = {"check_dplp_gain_hi": 0.2, "check_neighbour_gain": -0.1,
           "check_neighbour_gain_hi": 0.01}
    assert auto_decisions(rec) == {"dplp": True, "neighbours": True}
    # Nothing to read (no DPLP-covered check node, no graph head): the paper's.
    assert auto_decisions({}) == {"dplp": True, "neighbours": True}


def steered_setup(*extra):
    cfg = load_config("configs/digits.yaml", ["log.progress=false", "method=steered",
                                              *extra])
    torch.manual_seed(0)
    data = load_data(cfg)
    return cfg, data, build_model(cfg, data, CPU, DistContext())


def test_steered_steers_the_refresh(monkeypatch):
    import importlib

    from dag_pyg.propagation import pseudo_labels
    from dag_pyg.train.refresh import label_bank_logits

    refresh_module = importlib.import_module("dag_pyg.train.refresh")
    cfg, data, model = steered_setup()
    # steered holds out 20 % of each class's labels when data.num_check is 0;
    # the labels trained on come first (pre-training's batches read those).
    n_lab = data.num_labelled
    assert int(data.check_mask.sum()) == 10 and n_lab == 40
    assert bool(data.labelled_mask[:n_lab].all())
    assert not bool(data.labelled_mask[n_lab:].any())
    # A threshold inside the (untrained) model's confidences: the check
    # nodes' median.
    monkeypatch.setattr(refresh_module, "admission_threshold",
                        lambda conf, right: float(conf.median()))
    out = refresh(run_of(cfg, model, data))
    s, unl = out.stats, ~data.labelled_mask
    assert s["auto_dplp"] == 1.0 and out.banks.neighbours == bool(s["auto_neighbours"])
    tau = s["auto_threshold"]
    # Admission: exactly the unlabelled nodes at or above the threshold keep
    # a target, by the Label Bank's confidence; the others none.
    logits = label_bank_logits(model.head, out.banks.features, out.graph,
                               cfg.dna.k, CPU)
    conf = torch.softmax(logits.double(), 1).amax(1)
    kept = out.banks.targets >= 0
    train_unl = unl & ~data.check_mask
    assert torch.equal(kept[train_unl], conf[train_unl] >= tau)
    assert not bool(kept[data.check_mask].any())  # check nodes never train
    assert 0 < int(kept[unl].sum()) < int(unl.sum())
    # An earlier choice to drop the neighbour term is kept: the Label Bank is
    # the head on each node alone, and DPLP runs over that Label Bank.
    off = refresh(run_of(cfg, model, data), neighbours=False)
    assert off.banks.neighbours is False and off.stats["auto_neighbours"] == 0.0
    with torch.no_grad():
        own = model.head.classify(model.head.embed_self(off.banks.features))
    prior = own.argmax(1)
    prior[data.labelled_mask] = data.true_y[data.labelled_mask]
    assert torch.equal(off.banks.prior, prior)
    lp = pseudo_labels(off.graph, data.true_y, data.labelled_mask, prior,
                       mode=cfg.dplp.mode, num_classes=data.num_classes)
    conf = torch.softmax(own.double(), 1).amax(1)
    tau = off.stats["auto_threshold"]
    assert torch.equal(off.banks.targets,
                       torch.where(unl & ((conf < tau) | data.check_mask), -1,
                                   lp.targets))
    assert off.stats["check_lb_acc"] == pytest.approx(float(
        (prior[data.check_mask] == data.true_y[data.check_mask]).float().mean()))


@pytest.mark.parametrize("method", ["steered", "auto"])
def test_steered_and_auto_config_errors(method):
    for extra, match in ((["pseudo_label.source=model"], f"method: {method} chooses"),
                         (["optim.pretrain_epochs=0"], "pretrain_epochs >= 1"),
                         (["distributed.graph=replicate"], "rank0")):
        with pytest.raises(ConfigError, match=match):
            load_config("configs/digits.yaml", [f"method={method}", *extra])
    with pytest.raises(ConfigError, match="mixup_neighbours: mixed"):
        load_config("configs/digits.yaml", ["loss.mixup_neighbours=mixed",
                                            "loss.mixup_at=feature"])


def test_check_summary_by_hand():
    from dag_pyg.train.premise import check_summary

    records = [{"epoch": 0}, {"check_lb_acc": 0.5, "check_lb_acc_lo": 0.2,
                              "check_lb_acc_hi": 0.8},
               {"check_lb_acc": 0.7, "check_lb_acc_lo": 0.4,
                "check_lb_acc_hi": 0.9, "check_dplp_acc": math.nan},
               {"check_lb_acc": None}]
    assert check_summary(records) == {"check_lb_acc": {
        "mean": pytest.approx(0.6), "refreshes": 2, "last": 0.7,
        "last_lo": 0.4, "last_hi": 0.9}}


@pytest.mark.slow
def test_steered_without_neighbours_trains_checkpoints_and_evaluates(tmp_path,
                                                                    monkeypatch):
    import importlib

    from dag_pyg.train import evaluate_run, train
    from dag_pyg.train.checkpoint import load_checkpoint

    refresh_module = importlib.import_module("dag_pyg.train.refresh")
    monkeypatch.setattr(refresh_module, "auto_decisions",
                        lambda rec: {"dplp": True, "neighbours": False})
    cfg = load_config("configs/digits.yaml", [
        "log.progress=false", "log.plots=false", "log.tensorboard=false",
        "method=steered", "optim.pretrain_epochs=1", "optim.epochs=2"])
    summary = train(cfg, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["banks"]["neighbours"] is False
    # Re-evaluated from the checkpoint (the head alone on every query): the
    # run's own last test error.
    again = evaluate_run(tmp_path / "run")
    assert again["test_error"] == pytest.approx(summary["test_error_last"])


@pytest.mark.slow
def test_mixup_major_first(tmp_path, monkeypatch):
    """With loss.mixup_major_first every mixed batch's first component (the
    one whose sub-graph it keeps) weighs at least one half: the same draws,
    folded onto [1/2, 1]."""
    import importlib

    from dag_pyg.train import train

    epoch_module = importlib.import_module("dag_pyg.train.epoch")
    seen, real_mix = [], epoch_module.mix

    def mix(x, lam, perm):
        seen.append(lam)
        return real_mix(x, lam, perm)

    monkeypatch.setattr(epoch_module, "mix", mix)
    lams = {}
    for major_first in ("false", "true"):
        seen.clear()
        train(load_config("configs/digits.yaml", [
            "log.progress=false", "log.plots=false", "log.tensorboard=false",
            "optim.pretrain_epochs=1", "optim.epochs=1",
            f"loss.mixup_major_first={major_first}"]), tmp_path / major_first)
        # mix() is called on the targets, then on the images, with one lam.
        assert seen[::2] == seen[1::2] and len(seen) > 20
        lams[major_first] = seen[::2]
    assert min(lams["false"]) < 0.5 < max(lams["false"])
    assert lams["true"] == [max(lam, 1 - lam) for lam in lams["false"]]


def test_diagnose_holds_out_a_share_of_the_split_labels():
    from dag_pyg.train.setup import default_num_check

    # digits: 5 labels per class -> one each; the same for a config whose
    # method (steered, auto) has already held some out.
    for extra in ([], ["method=steered"], ["method=auto"]):
        cfg = load_config("configs/digits.yaml", ["log.progress=false", *extra])
        assert default_num_check(cfg) == 10


def replay_of(n, dplp, threshold, *extra):
    return [f"steer.replay_dplp={json.dumps(dplp * n)}",
            f"steer.replay_threshold={json.dumps(threshold * n)}", *extra]


def test_replay_config_errors():
    cfg = load_config("configs/digits.yaml", ["method=steered"])
    n = cfg.optim.epochs + 1
    ok = load_config("configs/digits.yaml",
                     ["method=steered", *replay_of(n, [True], [0.5])])
    assert ok.steer.replay_threshold == [0.5] * n
    for extra, match in (
            (replay_of(n - 1, [True], [0.5]), f"optim.epochs \\+ 1 = {n}"),
            (replay_of(n, [True], [0.5], "data.num_check=5"), "no check"),
            (replay_of(n, [True], [1.5]), "in \\[0, 1\\] or null"),
            (["steer.replay_threshold=[0.5]"], f"optim.epochs \\+ 1 = {n}"),
            (replay_of(n, [True], [0.5], "graph.refresh_per_epoch=2"),
             "one decision per epoch")):
        with pytest.raises(ConfigError, match=match):
            load_config("configs/digits.yaml", ["method=steered", *extra])
    with pytest.raises(ConfigError, match="set method: steered"):
        load_config("configs/digits.yaml", replay_of(n, [True], [0.5]))


def test_replayed_decision_per_refresh():
    from dag_pyg.train.refresh import replayed

    cfg = load_config("configs/digits.yaml", ["method=steered", "optim.epochs=2",
                                              "optim.pretrain_epochs=3",
                                              "steer.replay_dplp=[true,false,true]",
                                              "steer.replay_threshold=[null,0.5,0.7]"])
    # Refreshes after epochs 2 (the last pre-training one), 3 and 4.
    assert [replayed(cfg, e) for e in (2, 3, 4)] == [(True, None), (False, 0.5),
                                                     (True, 0.7)]
    for epoch in (-1, 1, 5):
        with pytest.raises(ValueError, match="after epochs 2..4 \\(got epoch"):
            replayed(cfg, epoch)
    # Mid-epoch refreshes record no decision: a replay (and auto) refuses them.
    with pytest.raises(ConfigError, match="refresh_per_epoch: 1"):
        load_config("configs/digits.yaml", ["method=auto",
                                            "graph.refresh_per_epoch=2"])


def test_replay_trains_on_every_label_by_the_decisions_given():
    from dag_pyg.propagation import pseudo_labels
    from dag_pyg.train.refresh import label_bank_logits

    base = load_config("configs/digits.yaml", ["method=steered"])
    n = base.optim.epochs + 1
    cfg, data, model = steered_setup(*replay_of(n, [False], [None]))
    # No check: every label trains.
    assert data.check_mask is None and data.num_labelled == 50
    ep = cfg.optim.pretrain_epochs - 1
    # Refresh 0 admits none: the labels alone.
    out = refresh(run_of(cfg, model, data), epoch=ep)
    unl = ~data.labelled_mask
    assert not bool((out.banks.targets[unl] >= 0).any())
    assert torch.equal(out.banks.targets[~unl], data.true_y[~unl])
    assert out.stats["auto_dplp"] == 0.0 and math.isnan(out.stats["auto_threshold"])
    # Model labels at a threshold inside the confidences: exactly those at or
    # above it, with the model's (Label Bank's) label.
    logits = label_bank_logits(model.head, out.banks.features, out.graph,
                               cfg.dna.k, CPU)
    conf = torch.softmax(logits.double(), 1).amax(1)
    tau = float(conf[unl].median())
    cfg.steer.replay_threshold = [None, tau] + [None] * (n - 2)
    out = refresh(run_of(cfg, model, data), epoch=ep + 1)
    prior = logits.argmax(1)
    prior[~unl] = data.true_y[~unl]
    want = torch.where(unl & (conf < tau), -1, prior)
    assert torch.equal(out.banks.targets, want)
    assert out.stats["auto_threshold"] == pytest.approx(tau)
    # DPLP's labels where replayed so.
    cfg.steer.replay_dplp = [False, True] + [False] * (n - 2)
    out = refresh(run_of(cfg, model, data), epoch=ep + 1)
    lp = pseudo_labels(out.graph, data.true_y, data.labelled_mask, prior,
                       mode=cfg.dplp.mode, num_classes=data.num_classes)
    assert torch.equal(out.banks.targets, torch.where(unl & (conf < tau), -1,
                                                      lp.targets))
    # The head's neighbour term as replayed.
    cfg.steer.replay_neighbours = False
    assert refresh(run_of(cfg, model, data), epoch=ep).banks.neighbours is False
