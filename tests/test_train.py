"""End to end on scikit-learn's digits with tiny epochs (whole runs: the
slow tier; the steps themselves are tested in test_refresh.py)."""
import inspect
import json
import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks.analysis.fresh_bank_eval import fresh_bank_eval
from dag_pyg.cli import main
from dag_pyg.config import load_config
from dag_pyg.graph import build_density_graph
from dag_pyg.models import build_backbone
from dag_pyg.sampler import knn_subgraph
from dag_pyg.train import epoch as epoch_module
from dag_pyg.train import evaluate_run, load_run, train
from dag_pyg.train import loop as loop_module
from dag_pyg.train.checkpoint import CheckpointError, load_checkpoint
from dag_pyg.train.features import recalibrate_run
from dag_pyg.train.logger import RunLogger

pytestmark = pytest.mark.slow

TINY = ["optim.epochs=3", "optim.pretrain_epochs=2", "optim.batch_size=128",
        "optim.labelled_batch_size=32", "log.progress=false", "log.tensorboard=false",
        "data.num_val=50"]


def tiny(*extra):
    return load_config("configs/digits.yaml", [*TINY, *extra])


def weights(run_dir):
    s = load_checkpoint(run_dir / "checkpoint.pt")
    return s["backbone"], s["head"], s["banks"], s["averaged"] or {}


def bound(fn, args, kwargs):
    """The arguments of a call ``fn(*args, **kwargs)``, by parameter name."""
    return inspect.signature(fn).bind(*args, **kwargs).arguments


def same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor) and isinstance(b[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:  # None, or a flag (banks' neighbours)
            assert a[k] == b[k], k


def train_killed_after(cfg, run_dir, epoch):
    """Trains ``cfg`` into ``run_dir`` until the checkpoint after ``epoch``
    is written, then stops as a kill would."""
    real_save = loop_module.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == epoch:
            raise KeyboardInterrupt(f"killed after epoch {epoch}")

    loop_module.save_checkpoint = save_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, run_dir)
    finally:
        loop_module.save_checkpoint = real_save


def dna_logits(head, x, src, rho, nbr, tau=1.0, beta=1.0):
    """The head written out from its state dict (one layer, Eqs. 4-7):
    node ``i`` attends to the rows ``nbr[i]`` of ``src`` with
    softmax((cos + rho_j) / tau), then Theta(x_i + beta sum alpha x_j) + b
    and the classifier (``nbr`` None: a head without layers)."""
    if nbr is not None:
        cos = F.cosine_similarity(x[:, None], src[nbr], dim=-1)
        alpha = ((cos + rho[nbr]) / tau).softmax(1)
        x = x + beta * (alpha[..., None] * src[nbr]).sum(1)
        x = x @ head["convs.0.lin.weight"].T + head["convs.0.bias"]
    return x @ head["classifier.weight"].T + head["classifier.bias"]


def errors_by_hand(run_dir):
    """Test and validation error of a run's last checkpoint, recomputed
    without evaluate(): the backbone (the averaged one where the run
    averaged its weights) on the clean images, each query's dna.k
    most cosine-similar Feature Bank rows, the head of :func:`dna_logits`."""
    run = load_run(run_dir)
    cfg, data, head = run.cfg, run.data, run.state["head"]
    if run.state["averaged"] is not None:  # optim.ema_decay: the average's
        head = {k.removeprefix("module.head."): v for k, v in
                run.state["averaged"].items() if k.startswith("module.head.")}
    backbone = run.model.eval_backbone.cpu().eval()
    bank = run.state["banks"]["features"]
    rho = build_density_graph(bank, cfg.graph.k, backend="exact").density \
        if bank.numel() else None
    val = data.split.val
    out = {}
    for key, images, truth in [
            ("test_error", data.test_set.images, data.test_set.targets),
            ("val_error", data.train_set.images[val], data.train_set.targets[val])]:
        with torch.no_grad():
            q = backbone.features(data.eval_tf(images))
        nbr = None if cfg.dna.aggregator == "none" else (
            F.normalize(q, dim=1) @ F.normalize(bank, dim=1).T).topk(
                cfg.dna.k, dim=1).indices
        pred = dna_logits(head, q, bank, rho, nbr).argmax(1)
        out[key] = 100.0 * float((pred != truth).float().mean())
    return out


def bank_by_hand(backbone, data):
    """The Feature Bank of ``backbone`` as it is: eval mode, clean images
    (its mode is left as it was)."""
    mode = backbone.training
    backbone.eval()
    with torch.no_grad():
        feats = backbone.features(data.eval_tf(data.train_set.images[data.nodes]))
    backbone.train(mode)
    return feats


def test_run_writes_every_artefact(tmp_path):
    summary = train(tiny("log.plots=true"), tmp_path / "run")
    run = tmp_path / "run"
    for name in ["config.yaml", "split.json", "train.log", "metrics.jsonl",
                 "summary.json", "checkpoint.pt", "curves.png", "path_lengths.png"]:
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4]
    # The rate each epoch trained at: pre-training at the base 0.05, then a
    # cosine over the 3 main epochs, 0.05 * (1 + cos(pi * e / 3)) / 2.
    assert [r["lr"] for r in records] == pytest.approx(
        [0.05, 0.05, 0.05, 0.0375, 0.0125])
    last = records[-1]
    for key in ["loss", "loss_ce", "loss_entropy", "loss_balance", "test_error",
                "val_error", "pl_acc", "pl_coverage", "model_acc_on_covered",
                "path_len_mean", "bank_cos_prev", "knn_kept", "time_train",
                "time_bank", "time_graph", "time_dplp", "time_eval"]:
        assert key in last, key
    # The last epoch's errors are the last checkpoint's, recomputed by hand.
    hand = errors_by_hand(run)
    assert last["test_error"] == pytest.approx(hand["test_error"])
    assert last["val_error"] == pytest.approx(hand["val_error"])
    assert summary["test_error_last"] == last["test_error"]
    # Best by validation: the main epoch of the lowest recorded val_error
    # (the first of equals), with that epoch's test error.
    main_epochs = [r for r in records if r["phase"] == "train"]
    best = min(main_epochs, key=lambda r: r["val_error"])
    assert summary["best_by_val"] == {k: best[k] for k in
                                      ("epoch", "val_error", "test_error")}
    # The run's errors may fall every epoch, where "the last epoch" would
    # pass too: the rule on errors that do not, by hand. Pre-training is no
    # candidate; of equals the earlier epoch is kept.
    history = {}
    for epoch, phase, val in [(1, "pretrain", 5.0), (2, "train", 30.0),
                              (3, "train", 10.0), (4, "train", 20.0),
                              (5, "train", 10.0)]:
        loop_module.update_best(history, {"epoch": epoch, "phase": phase,
                                          "val_error": val, "test_error": -epoch})
    assert history["best_val"] == {"epoch": 3, "val_error": 10.0, "test_error": -3}
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
    assert base["test_error"] == pytest.approx(errors_by_hand(
        tmp_path / "dna.aggregator-none_pseudo_label.source-none")["test_error"])
    assert evaluate_run(tmp_path / "dna.aggregator-none_pseudo_label.source-none")[
        "test_error"] == pytest.approx(base["test_error"])


def test_graph_k_does_not_train_the_papers_baseline(tmp_path):
    # The paper's baseline trains on its Label Bank, a head without a
    # neighbour term: the graph (graph.k) feeds logged statistics only, so
    # its runs at one graph.k stand for another's (mnist_100_k64 borrows
    # mnist_100_w05's). DAG's own graph.k does train it.
    def run(*extra):
        name = "_".join(x.replace("=", "-") for x in extra)
        train(tiny("optim.epochs=2", "optim.pretrain_epochs=1", *extra),
              tmp_path / name)
        records = [json.loads(line) for line in
                   (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return records, weights(tmp_path / name)

    base = ("dna.aggregator=none", "pseudo_label.source=model",
            "optim.ema_decay=0.9")  # the recipe's averaged weights too
    (r16, w16), (r32, w32) = run(*base, "graph.k=16"), run(*base, "graph.k=32")
    trained = ("loss", "loss_ce", "test_error", "val_error", "pl_acc_all",
               "model_acc")
    assert [[r.get(k) for k in trained] for r in r16] == \
        [[r.get(k) for k in trained] for r in r32]
    # Backbone, head, averaged weights; the banks' features and targets
    # (their graph statistics differ, below).
    for a, b in ((w16[0], w32[0]), (w16[1], w32[1]), (w16[3], w32[3])):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert w16[3]  # averaged weights were kept
    for key in ("features", "prior", "targets"):
        assert torch.equal(w16[2][key], w32[2][key])
    assert r16[-1]["path_len_mean"] != r32[-1]["path_len_mean"]  # the graph did change
    (d16, _), (d32, _) = run("graph.k=16"), run("graph.k=32")
    assert [r["loss"] for r in d16] != [r["loss"] for r in d32]


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

    events, read, fresh = [], [], []
    real_steps, real_refresh = epoch_module.train_steps, loop_module.refresh

    def steps(*args, **kwargs):
        call = bound(real_steps, args, kwargs)
        events.append(("steps", len(call["batches"])))  # the batches trained on
        banks = call["banks"]
        read.append(None if banks is None else banks.features.clone())
        return real_steps(*args, **kwargs)

    def refresh(*args, **kwargs):
        run = bound(real_refresh, args, kwargs)["run"]
        events.append(("refresh", run.model.backbone.training))
        fresh.append(bank_by_hand(run.model.backbone, run.data))
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
    # Each run of steps after pre-training (which reads no bank) reads the
    # Feature Bank of the model as the refresh before it found it, recomputed
    # here; steps that ignored a mid-epoch refresh would read the previous
    # one, and consecutive banks differ (the model trained in between).
    assert read[0] is None and len(read) == len(fresh) == 7
    for bank, feats in zip(read[1:], fresh[:-1], strict=True):
        assert torch.allclose(bank, feats, atol=1e-5)
    assert not any(torch.allclose(a, b, atol=1e-3)
                   for a, b in zip(fresh[:-1], fresh[1:], strict=True))
    monkeypatch.undo()
    rec = [json.loads(x) for x in (tmp_path / "r3" / "metrics.jsonl").open()]
    assert all(r["time_mid_refresh"] > 0 for r in rec if r["phase"] == "train")
    assert all(0 <= r["knn_kept_mid"] <= 1 and -1 <= r["bank_cos_prev_mid"] <= 1
               for r in rec if r["phase"] == "train")
    train(tiny(*short), tmp_path / "r1")
    r1 = [json.loads(x) for x in (tmp_path / "r1" / "metrics.jsonl").open()]
    assert "time_mid_refresh" not in r1[-1]
    assert r1[0]["loss"] == rec[0]["loss"]  # pre-training is untouched


def label_bank_by_hand(run, tau, beta):
    """A loaded run's Label Bank: the head of :func:`dna_logits` over the
    Feature Bank's graph (every node's dna.k nearest), labels kept."""
    feats, k = run.state["banks"]["features"], run.cfg.dna.k
    graph = build_density_graph(feats, run.cfg.graph.k, backend="exact")
    src, dst = knn_subgraph(graph, k).edge_index
    order = dst.argsort(stable=True)
    assert torch.equal(dst[order], torch.arange(feats.size(0)).repeat_interleave(k))
    nbr = src[order].view(-1, k)
    pred = dna_logits(run.state["head"], feats, feats, graph.density, nbr, tau,
                      beta).argmax(1)
    return torch.where(run.data.labelled_mask, run.data.true_y, pred)


def test_levers_beyond_the_paper_end_to_end(tmp_path, monkeypatch):
    import importlib

    from dag_pyg.models.small import MLP
    from dag_pyg.train import epoch as epoch_module

    # (dag_pyg.train's `refresh` is the function; the module by its path.)
    refresh_module = importlib.import_module("dag_pyg.train.refresh")

    extractions = []
    real_extract = refresh_module.extract_bank

    def extract(*args, **kwargs):
        extractions.append(1)
        return real_extract(*args, **kwargs)

    monkeypatch.setattr(refresh_module, "extract_bank", extract)

    # What the steps fed the backbone: each epoch's batches and, in step
    # order, the input and output of every training-mode pass (the bank's
    # extraction and the evaluation run in eval mode).
    seen = {"batches": [], "inputs": [], "feats": []}
    real_batches, real_features = epoch_module.epoch_batches, MLP.features

    def batches(*args, **kwargs):
        seen["batches"].append(real_batches(*args, **kwargs))
        return seen["batches"][-1]

    def features(self, x):
        out = real_features(self, x)
        if self.training:
            seen["inputs"].append(x.detach().clone())
            seen["feats"].append(out.detach().clone())
        return out

    monkeypatch.setattr(epoch_module, "epoch_batches", batches)
    monkeypatch.setattr(MLP, "features", features)

    def folder(*extra):
        return tmp_path / "_".join(x.replace("=", "-") for x in extra)

    def records(*extra):
        for v in seen.values():
            v.clear()
        train(tiny("optim.epochs=2", "optim.pretrain_epochs=1", *extra),
              folder(*extra))
        assert len(seen["inputs"]) == sum(map(len, seen["batches"]))  # one a step
        return [json.loads(x) for x in (folder(*extra) / "metrics.jsonl").open()]

    def own_images(*extra):
        """Whether each training-mode backbone input is its seed's own
        image: one of its nine 1-px shifts (digits' augmentation, zero fill)."""
        data = load_run(folder(*extra)).data
        seeds = torch.cat([b for epoch in seen["batches"] for b in epoch])
        img = data.train_set.images[data.nodes[seeds]]
        h, w = img.shape[-2:]
        pad = F.pad(img, (1, 1, 1, 1))
        shifts = torch.stack([data.eval_tf(pad[..., 1 + i:1 + i + h, 1 + j:1 + j + w])
                              for i in (-1, 0, 1) for j in (-1, 0, 1)], 1)
        return (torch.cat(seen["inputs"])[:, None] == shifts).flatten(2).all(2).any(1)

    paper = records("seed=0")
    main = [r for r in paper if r["phase"] == "train"]
    assert all(-1 <= r["live_bank_cos"] <= 1 for r in main)
    assert "live_bank_cos" not in paper[0]  # pre-training reads no bank
    assert all(r["pl_admitted"] == 1.0 for r in main)
    assert len(extractions) == 3  # after pre-training, after each main epoch
    # Input mixup: the backbone sees mixed images (a few pair with themselves).
    assert own_images("seed=0").float().mean() < 0.5
    extractions.clear()
    records("loss.mixup_at=feature")
    assert len(extractions) == 3
    # Feature mixup mixes after the backbone: it sees every image unmixed.
    assert own_images("loss.mixup_at=feature").all()
    extractions.clear()
    records(*ONLINE)
    assert len(extractions) == 1  # after pre-training only
    # The online bank the last refresh built on holds, for every seed of the
    # last epoch, the live (training-mode, unmixed) feature of its last step,
    # rebuilt here from the passes in step order; an extracted bank would
    # hold eval-mode features of clean images instead.
    state = load_checkpoint(folder(*ONLINE) / "checkpoint.pt")
    bank, last = state["banks"]["features"], seen["batches"][-1]
    written = torch.full_like(bank, math.nan)
    for seeds, feats in zip(last, seen["feats"][-len(last):], strict=True):
        written[seeds] = feats
    rows = ~written.isnan().any(1)
    assert rows[len(state["split"]["labelled"]):].all()  # each unlabelled seed
    assert torch.equal(bank[rows], written[rows])
    # Temperature and learned beta: the checkpoint's Label Bank is the head
    # written out with tau 0.1 and the trained beta; with tau 1 (the lever
    # ignored) or beta 1 (its start: untrained or unused) it is not.
    sharp = ("dna.temperature=0.1", "dna.learn_beta=true")
    records(*sharp)
    run = load_run(folder(*sharp))
    beta, prior = float(run.state["head"]["convs.0.beta"]), run.state["banks"]["prior"]
    assert torch.equal(label_bank_by_hand(run, 0.1, beta), prior)
    assert not torch.equal(label_bank_by_hand(run, 1.0, beta), prior)
    assert not torch.equal(label_bank_by_hand(run, 0.1, 1.0), prior)
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
    (38, 3, ("method=steered",)),
    # Averaged weights: their state and its update count continue exactly.
    (20, 3, ("optim.ema_decay=0.9",)),
    # PreciseBN before the refreshes within the epoch too.
    (20, 3, ("optim.ema_decay=0.9", "model.precise_bn=200"))])
def test_sigterm_mid_epoch_resumes_exactly(tmp_path, capsys, sigterm_at_step,
                                           kill_at, refreshes, levers):
    """A SIGTERM during step ``kill_at`` (15 steps per epoch here; epochs
    0-1 pre-train; with 3 refreshes, main epochs refresh within after steps 5
    and 10): the step finishes, a checkpoint of the position is written, the
    CLI exits 143; --resume ends identical to an uninterrupted run."""
    import signal

    extra = [f"graph.refresh_per_epoch={refreshes}", *levers]
    args = [a for o in TINY + extra for a in ("--set", o)]
    assert main(["train", "configs/digits.yaml", "--out", str(tmp_path / "full"),
                 *args]) == 0
    calls = sigterm_at_step(kill_at)
    cut = ["train", "configs/digits.yaml", "--out", str(tmp_path / "cut"), *args]
    assert main(cut) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "interrupted by SIGTERM" in err and "--resume" in err
    assert len(calls) == kill_at  # stopped right after the signalled step
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert state["progress"]["done"] == (kill_at - 1) % 15 + 1
    with pytest.raises(CheckpointError, match="within epoch"):
        load_run(tmp_path / "cut")
    same(load_run(tmp_path / "cut", within_epoch=True).model.backbone.state_dict(),
         state["backbone"])
    sigterm_at_step(None)
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


def test_compiled_backbone_trains_and_matches_eager(tmp_path):
    """model.compile: a run trains with the compiled features; they equal
    an eager backbone's with the checkpoint's weights (to float32
    rounding, in eval and in train mode, gradients too), whose state_dict
    keys the checkpoint keeps."""
    train(tiny("model.backbone=cnn", "model.compile=true"), tmp_path / "c")
    run = load_run(tmp_path / "c")
    compiled = run.model.backbone
    assert not inspect.ismethod(compiled.features)  # the compiled wrapper
    width = max(1, round(32 * run.cfg.model.width))
    eager = build_backbone("cnn", 10, in_channels=1, input_size=8, width=width)
    eager.load_state_dict(run.state["backbone"])
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for mode in (False, True):
        compiled.train(mode), eager.train(mode)
        a, b = compiled.features(x), eager.features(x)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    a.square().sum().backward(), b.square().sum().backward()
    for (name, p), q in zip(compiled.named_parameters(), eager.parameters(),
                            strict=True):
        if p.grad is not None or q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5,
                                       msg=name)


def test_averaged_weights_extract_the_banks_and_are_evaluated(tmp_path):
    """optim.ema_decay: the last epoch's errors are the averaged model's
    (recomputed by hand from its weights), its Feature Bank the averaged
    backbone's, and neither is the live model's."""
    train(tiny("optim.ema_decay=0.9"), tmp_path / "ema")
    last = [json.loads(x) for x in (tmp_path / "ema" / "metrics.jsonl").open()][-1]
    hand = errors_by_hand(tmp_path / "ema")
    assert last["test_error"] == pytest.approx(hand["test_error"])
    assert last["val_error"] == pytest.approx(hand["val_error"])
    run = load_run(tmp_path / "ema")
    bank = run.state["banks"]["features"]
    torch.testing.assert_close(bank, bank_by_hand(run.model.eval_backbone, run.data))
    assert not torch.allclose(bank, bank_by_hand(run.model.backbone, run.data),
                              atol=1e-3)
    assert evaluate_run(tmp_path / "ema")["test_error"] == pytest.approx(
        last["test_error"])


def test_precise_bn_recomputes_the_evaluated_statistics(tmp_path, monkeypatch):
    """model.precise_bn: before the last refresh and evaluation the averaged
    backbone's batch-norm statistics are recomputed on clean training images
    (the checkpoint's are those; recomputing them from its weights gives
    them again, and they are not the average of the training batches'); the
    errors are those of the recomputed model; resume stays exact."""
    cfg = tiny("optim.ema_decay=0.9", "model.precise_bn=300")
    train(cfg, tmp_path / "pbn")
    train(tiny("optim.ema_decay=0.9"), tmp_path / "off")
    rows = [json.loads(x) for x in (tmp_path / "pbn" / "metrics.jsonl").open()]
    assert all(r["time_precise_bn"] > 0 for r in rows[1:])  # every refresh
    last = rows[-1]
    hand = errors_by_hand(tmp_path / "pbn")
    assert last["test_error"] == pytest.approx(hand["test_error"])
    assert last["val_error"] == pytest.approx(hand["val_error"])
    run = load_run(tmp_path / "pbn")
    stats = lambda m: {k: v.clone() for k, v in m.state_dict().items()  # noqa: E731
                       if "running" in k}
    stored = stats(run.model.eval_backbone)
    with RunLogger(tensorboard=False, progress=False) as log:
        assert recalibrate_run(run.as_run(log), last["epoch"]) > 0
    assert stats(run.model.eval_backbone).keys() == stored.keys() != set()
    for k, v in stats(run.model.eval_backbone).items():
        assert torch.equal(v, stored[k]), k
    # Off: the averaged statistics of the training batches, not these.
    off = load_run(tmp_path / "off")
    assert not all(torch.allclose(v, stats(off.model.eval_backbone)[k], atol=1e-3)
                   for k, v in stored.items())
    # Before every refresh: the seeded banks without pre-training (after
    # "epoch -1") and those within an epoch (graph.refresh_per_epoch) too.
    calls = []
    for module in (loop_module, epoch_module):
        monkeypatch.setattr(module, "recalibrate_run", lambda run, epoch, m=module:
                            calls.append((m.__name__, epoch))
                            or recalibrate_run(run, epoch))
    train(tiny("optim.pretrain_epochs=0", "model.precise_bn=100",
               "graph.refresh_per_epoch=2"), tmp_path / "seeded")
    loop, within = "dag_pyg.train.loop", "dag_pyg.train.epoch"
    assert calls == [(loop, -1), (within, 0), (loop, 0), (within, 1), (loop, 1),
                     (within, 2), (loop, 2)]
    monkeypatch.undo()
    # An interrupted run resumes to the same weights and statistics.
    train_killed_after(cfg, tmp_path / "cut", 2)
    train(cfg, tmp_path / "cut", resume=True)
    for a, b in zip(weights(tmp_path / "pbn"), weights(tmp_path / "cut"), strict=True):
        same(a, b)


def test_kept_epochs_recalibrate_where_no_evaluation_is_due(tmp_path):
    """With graph.freeze_lr and eval.every > 1, a kept epoch without an
    evaluation still recalibrates PreciseBN, as a refresh would: its
    checkpoint holds its weights' statistics, the same as a run evaluating
    every epoch. Epochs 5-7 keep the banks; with eval.every=4 only the end
    of pre-training (epoch 1) and epoch 5 are evaluated before the stop
    after epoch 6 (kept, not evaluated)."""
    base = ["optim.epochs=6", "optim.schedule=cosine", "graph.freeze_lr=0.3",
            "model.precise_bn=100"]
    train(tiny(*base), tmp_path / "every", stop_after=6)
    train(tiny(*base, "eval.every=4"), tmp_path / "sparse", stop_after=6)
    rows = [json.loads(x) for x in (tmp_path / "sparse" / "metrics.jsonl").open()]
    assert [("test_error" in r) for r in rows] == [False, True, False, False,
                                                    False, True, False]
    assert rows[6]["banks_frozen"] and rows[6]["time_precise_bn"] > 0
    for a, b in zip(weights(tmp_path / "every"), weights(tmp_path / "sparse"),
                    strict=True):
        same(a, b)


def test_kept_epochs_of_a_head_without_neighbours_extract_no_bank(tmp_path):
    """The paper's baseline classifies queries on their own: its kept tail
    (graph.freeze_lr) is evaluated without extracting a bank, and a
    re-evaluation of the folder agrees with the last epoch's record."""
    cfg = tiny("optim.epochs=6", "optim.schedule=cosine", "graph.freeze_lr=0.3",
               "dna.aggregator=none", "pseudo_label.source=model")
    train(cfg, tmp_path / "base")
    rows = [json.loads(x) for x in (tmp_path / "base" / "metrics.jsonl").open()]
    tail = [r for r in rows if r.get("banks_frozen")]
    assert [r["epoch"] for r in tail] == [5, 6, 7]
    assert all("test_error" in r and "time_eval_bank" not in r for r in tail)
    assert load_run(tmp_path / "base", progress=False).bank_and_graph() == (None, None)
    assert evaluate_run(tmp_path / "base")["test_error"] == pytest.approx(
        rows[-1]["test_error"])


def test_freeze_lr_keeps_the_banks_in_the_schedules_tail(tmp_path):
    """graph.freeze_lr: an epoch whose rate is below the fraction trains on
    the banks the last refresh left (no refresh before it, none within it)
    and is still evaluated; everything before the tail is as without it;
    resume within the tail is exact. Cosine over 6 main epochs: rates 1,
    .93, .75, .5, .25, .07 of optim.lr, so with 0.3 the last two epochs
    (6 and 7) keep the banks of the refresh after epoch 4."""
    base = ["optim.epochs=6", "optim.schedule=cosine"]
    cfg = tiny(*base, "graph.freeze_lr=0.3")
    train(cfg, tmp_path / "frozen")
    rows = [json.loads(x) for x in (tmp_path / "frozen" / "metrics.jsonl").open()]
    tail = [r for r in rows if r.get("banks_frozen")]
    assert [r["epoch"] for r in tail] == [5, 6, 7]  # the refreshes after them
    assert all("test_error" in r and "pl_acc_all" not in r for r in tail)
    # The summary's targets are those the tail trained on: epoch 4's.
    summary = json.loads((tmp_path / "frozen" / "summary.json").read_text())
    assert summary["pl_acc_last"] == rows[4]["pl_acc"] is not None
    # The same run without the tail, stopped after epoch 4, has the same
    # banks (nothing before the tail changed).
    train(tiny(*base), tmp_path / "full", stop_after=4)
    full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").open()]
    strip = lambda r: {k: v for k, v in r.items()  # noqa: E731
                       if not k.startswith(("time_", "mem_"))}
    assert [strip(r) for r in full] == [strip(r) for r in rows[:5]]
    kept = load_checkpoint(tmp_path / "frozen" / "checkpoint.pt")["banks"]
    at4 = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["banks"]
    for key in ("features", "prior", "targets"):
        assert torch.equal(kept[key], at4[key]), key
    # The tail is evaluated from a bank the current model extracts, not the
    # kept one (which the checkpoint holds for training).
    again = fresh_bank_eval(tmp_path / "frozen")
    assert rows[-1]["test_error"] == pytest.approx(again["test_error_fresh_bank"])
    assert rows[-1]["val_error"] == pytest.approx(again["val_error_fresh_bank"])
    assert rows[-1]["time_eval_bank"] > 0
    # ... and so does a re-evaluation of the run folder (not the kept bank).
    loaded = load_run(tmp_path / "frozen", progress=False)
    assert loaded.kept_banks()
    assert not torch.equal(loaded.bank_and_graph()[0], kept["features"])
    assert torch.equal(loaded.bank_and_graph(stored=True)[0], kept["features"])
    assert evaluate_run(tmp_path / "frozen")["test_error"] == pytest.approx(
        rows[-1]["test_error"])
    # Interrupted after epoch 6 (in the tail) and resumed: the same run.
    train_killed_after(cfg, tmp_path / "cut", 6)
    train(cfg, tmp_path / "cut", resume=True)
    for a, b in zip(weights(tmp_path / "frozen"), weights(tmp_path / "cut"),
                    strict=True):
        same(a, b)
    # ... and it still has the last refresh's DPLP path lengths for its plot.
    lengths = load_checkpoint(tmp_path / "frozen" / "checkpoint.pt")["path_lengths"]
    assert lengths is not None and lengths.numel() == kept["features"].shape[0]
    assert torch.equal(
        load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["path_lengths"], lengths)
    # Refreshes within an epoch: epoch 5 (half the rate) still has them,
    # epochs 6 and 7 do not.
    train(tiny(*base, "graph.freeze_lr=0.3", "graph.refresh_per_epoch=2"),
          tmp_path / "mid")
    mid = [json.loads(x) for x in (tmp_path / "mid" / "metrics.jsonl").open()]
    assert ["time_mid_refresh" in r for r in mid[4:]] == [True, True, False, False]
    # Below every epoch's rate (the last's is .067): nothing is kept, not
    # even after the last epoch (the cosine's rate after it is 0).
    train(tiny(*base, "graph.freeze_lr=0.05"), tmp_path / "none")
    none = [json.loads(x) for x in (tmp_path / "none" / "metrics.jsonl").open()]
    assert not any(r.get("banks_frozen") for r in none)
    assert "pl_acc_all" in none[-1]
