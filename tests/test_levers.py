"""The switches beyond the paper (the DAG-that-never-loses issue), at the level
of one training step or one refresh, against references computed by hand:
manifold mixup after aggregation, the online Feature Bank and its live-vs-bank
gap, pseudo-label admission, and the head's attention options."""
from __future__ import annotations

import math

import pytest
import torch

from dag_pyg.config import ConfigError, load_config
from dag_pyg.data import mix, mixup, mixup_draw
from dag_pyg.distributed import DistContext
from dag_pyg.nn import DNAHead
from dag_pyg.propagation import admit_pseudo_labels
from dag_pyg.sampler import make_loader
from dag_pyg.train import refresh
from dag_pyg.train.epoch import epoch_batches, train_steps
from dag_pyg.train.logger import RunLogger
from dag_pyg.train.optim import build_optim, build_optimizer
from dag_pyg.train.setup import Run, build_model, load_data

CPU = torch.device("cpu")
QUIET = RunLogger()


def digits_setup(*extra):
    # The MLP has no dropout: a train-mode forward pass is repeatable.
    cfg = load_config("configs/digits.yaml", ["log.progress=false", *extra])
    torch.manual_seed(0)
    data = load_data(cfg)
    return cfg, data, build_model(cfg, data, CPU, DistContext())


def run_of(cfg, model, data, device=CPU):
    """A one-process run of ``model`` on ``data`` that draws nothing."""
    return Run(cfg=cfg, model=model, data=data, device=device, dist=DistContext(),
               log=QUIET, gen=torch.Generator())


# --------------------------------------------------------------------------- #
# Mixup's two places
# --------------------------------------------------------------------------- #
def test_mixup_is_its_draw_then_mix():
    x, y = torch.randn(6, 3), torch.eye(6)[:, :4]
    xm, ym, lam, perm = mixup(x, y, 0.5, torch.Generator().manual_seed(3),
                              return_perm=True)
    lam2, perm2 = mixup_draw(6, 0.5, torch.Generator().manual_seed(3))
    assert lam == lam2 and torch.equal(perm, perm2)
    assert torch.equal(xm, lam * x + (1 - lam) * x[perm])
    assert torch.equal(mix(y, lam, perm), ym)
    assert mixup_draw(4, 0.0) == (1.0, pytest.approx(torch.arange(4)))
    assert mix(x, 1.0, perm) is x


def one_step(cfg, data, model, banks, graph, seeds):
    """train_steps on one batch at learning rate 0 (nothing moves but the
    banks), returning the loss terms and the generator state it started at."""
    cfg.optim.lr = 0.0
    gen = torch.Generator().manual_seed(11)
    start = gen.get_state()
    run = Run(cfg=cfg, model=model, data=data, device=CPU, dist=DistContext(),
              log=QUIET, gen=gen,
              optim=build_optim(model.trainable_parameters(), cfg.optim, CPU))
    sums, done, _ = train_steps(run, [seeds], banks, graph, pretrain=False,
                                desc="t")
    assert done == 1
    return sums, start


def by_hand(cfg, data, model, banks, graph, seeds, start):
    """The step's logits, targets and live features recomputed from the same
    draws, mixing where ``cfg.loss.mixup_at`` says."""
    gen = torch.Generator()
    gen.set_state(start)
    x = data.train_tf(data.train_set.images[data.nodes[seeds]], generator=gen)
    lam, perm = mixup_draw(seeds.numel(), cfg.loss.mixup_alpha, generator=gen)
    onehot = torch.nn.functional.one_hot(banks.targets[seeds].clamp(min=0), 10)
    onehot = onehot.float() * (banks.targets[seeds] >= 0).float().unsqueeze(1)
    target = lam * onehot + (1 - lam) * onehot[perm]
    model.backbone.train()
    model.head.train()
    batch = make_loader(graph, cfg.dna.k, cfg.dna.hops)(seeds)
    with torch.no_grad():
        if cfg.loss.mixup_at == "input":
            feats = model.backbone.features(lam * x + (1 - lam) * x[perm])
            h = model.head.forward_batch(feats, banks.features, batch,
                                         graph.density, embed=True)
        else:
            feats = model.backbone.features(x)
            h = model.head.forward_batch(feats, banks.features, batch,
                                         graph.density, embed=True)
            h = lam * h + (1 - lam) * h[perm]
        logits = model.head.classifier(h)
    return logits, target, feats, lam


@pytest.mark.parametrize("place", ["input", "feature"])
def test_a_step_mixes_where_asked(place):
    from dag_pyg.train.losses import dag_loss

    cfg, data, model = digits_setup(f"loss.mixup_at={place}")
    out = refresh(run_of(cfg, model, data))
    seeds = epoch_batches(data.num_labelled, data.nodes.numel(), cfg.optim,
                          False, torch.Generator().manual_seed(0))[0]
    bank_before = out.banks.features.clone()
    sums, start = one_step(cfg, data, model, out.banks, out.graph, seeds)
    logits, target, feats, lam = by_hand(cfg, data, model, out.banks, out.graph,
                                         seeds, start)
    assert 0 < lam < 1
    ref = dag_loss(logits, target, cfg.loss.entropy_weight, cfg.loss.balance_weight)
    assert sums["loss"] == pytest.approx(float(ref["loss"]), rel=1e-5)
    # The live-vs-bank gap: cosine of each seed's live feature and bank row.
    cos = torch.nn.functional.cosine_similarity(feats, bank_before[seeds], dim=1)
    assert sums["live_bank_cos"] == pytest.approx(float(cos.mean()), rel=1e-5)
    # A refreshed bank is left as it was.
    assert torch.equal(out.banks.features, bank_before)


def test_the_two_mixup_places_differ_and_agree_without_mixing():
    losses = {}
    for place in ("input", "feature"):
        for alpha in (1.0, 0.0):
            cfg, data, model = digits_setup(f"loss.mixup_at={place}",
                                            f"loss.mixup_alpha={alpha}")
            out = refresh(run_of(cfg, model, data))
            seeds = torch.arange(20, 84)
            losses[place, alpha] = one_step(cfg, data, model, out.banks,
                                            out.graph, seeds)[0]["loss"]
    assert losses["input", 0.0] == losses["feature", 0.0]
    assert losses["input", 1.0] != pytest.approx(losses["feature", 1.0])


def test_online_bank_rows_are_the_live_features():
    cfg, data, model = digits_setup("graph.bank=online", "loss.mixup_at=feature")
    out = refresh(run_of(cfg, model, data))
    seeds = torch.arange(30, 94)
    before = out.banks.features.clone()
    _, start = one_step(cfg, data, model, out.banks, out.graph, seeds)
    *_, feats, _ = by_hand(cfg, data, model, out.banks, out.graph, seeds, start)
    after = out.banks.features
    assert torch.allclose(after[seeds], feats, atol=1e-6)
    rest = torch.ones(after.size(0), dtype=torch.bool)
    rest[seeds] = False
    assert torch.equal(after[rest], before[rest])
    # A refresh from an online bank builds on it and extracts nothing.
    again = refresh(run_of(cfg, model, data), features=after)
    assert again.banks.features is after
    assert again.graph.num_nodes == after.size(0)


def test_online_bank_needs_unmixed_live_features():
    with pytest.raises(ConfigError, match="loss.mixup_at=feature"):
        load_config("configs/digits.yaml", ["graph.bank=online"])
    load_config("configs/digits.yaml", ["graph.bank=online", "loss.mixup_alpha=0"])


# --------------------------------------------------------------------------- #
# Pseudo-label admission
# --------------------------------------------------------------------------- #
def test_admission_hand_computed():
    # Softmax confidences: node 0 labelled; 1: 0.84 (agrees); 2: 0.58,
    # DPLP says 0 but the model 1; 3: 1/3 (uniform, no agreement possible
    # beyond argmax 0); 4: no target at all.
    logits = torch.log(torch.tensor([
        [0.1, 0.1, 0.8], [0.84, 0.08, 0.08], [0.21, 0.58, 0.21],
        [1 / 3, 1 / 3, 1 / 3], [0.9, 0.05, 0.05]]))
    targets = torch.tensor([2, 0, 0, 0, -1])
    mask = torch.tensor([True, False, False, False, False])
    assert admit_pseudo_labels(targets, logits, mask).tolist() == [2, 0, 0, 0, -1]
    assert admit_pseudo_labels(targets, logits, mask, 0.5).tolist() == \
        [2, 0, 0, -1, -1]
    assert admit_pseudo_labels(targets, logits, mask, 0.6).tolist() == \
        [2, 0, -1, -1, -1]
    assert admit_pseudo_labels(targets, logits, mask, 0.9).tolist() == \
        [2, -1, -1, -1, -1]  # a labelled node keeps its label
    assert admit_pseudo_labels(targets, logits, mask, admit="agree").tolist() == \
        [2, 0, -1, 0, -1]
    with pytest.raises(ValueError, match="Unknown admission"):
        admit_pseudo_labels(targets, logits, mask, admit="some")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        admit_pseudo_labels(targets, logits, mask, 1.0)


def test_refresh_admits_by_confidence_and_agreement():
    from dag_pyg.train.refresh import label_bank_logits

    cfg, data, model = digits_setup()
    full = refresh(run_of(cfg, model, data))
    assert full.stats["pl_admitted"] == 1.0
    logits = label_bank_logits(model.head, full.banks.features, full.graph,
                               cfg.dna.k, CPU)
    conf, pred = torch.softmax(logits.double(), 1).max(1)
    unl = ~data.labelled_mask
    thr = float(conf[unl].median())
    expect = {f"pseudo_label.threshold={thr}": conf >= thr,
              "pseudo_label.admit=agree": full.banks.targets == pred}
    for extra, admitted in expect.items():
        cfg, data, model = digits_setup(extra)  # the same model (seeded)
        out = refresh(run_of(cfg, model, data))
        want = torch.where(admitted | data.labelled_mask, full.banks.targets, -1)
        assert torch.equal(out.banks.targets, want)
        assert out.stats["pl_admitted"] == pytest.approx(
            float((want[unl] >= 0).double().mean()))
        # DPLP's statistics count the covered labels that were admitted.
        assert out.stats["pl_coverage"] <= full.stats["pl_coverage"]
        if "agree" in extra:  # admitted DPLP labels are the model's
            assert out.stats["pl_acc"] == out.stats["model_acc_on_covered"]
        has = unl & (want >= 0)
        assert out.stats["pl_acc_all"] == pytest.approx(
            float((want[has] == data.true_y[has]).double().mean()))
        assert 0.2 < out.stats["pl_admitted"] < 1
    with pytest.raises(ConfigError, match="pseudo_label.threshold"):
        load_config("configs/digits.yaml", ["pseudo_label.threshold=1.5"])


# --------------------------------------------------------------------------- #
# The head's attention options
# --------------------------------------------------------------------------- #
def test_head_passes_attention_options_to_its_layers():
    head = DNAHead(8, 3, hops=2, temperature=0.1, learn_beta=True)
    for conv in head.convs:
        assert conv.temperature == 0.1 and float(conv.beta.detach()) == 1.0
        assert conv.log_temperature is None
    head = DNAHead(8, 3, learn_temperature=True, temperature=0.5)
    assert float(head.convs[0].temperature) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="belong to DensityAwareConv"):
        DNAHead(8, 3, aggregator="gat", temperature=0.5)
    cfg, data, model = digits_setup("dna.temperature=0.1", "dna.learn_beta=true")
    names = {n for n, _ in model.head.named_parameters()}
    assert "convs.0.beta" in names
    assert model.head.convs[0].temperature == 0.1
    # The learned scalars take no weight decay; everything else does.
    opt, _ = build_optimizer(model.trainable_parameters(), cfg.optim)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(model.head.convs[0].beta)] == 0.0
    assert decay[id(model.head.classifier.weight)] == cfg.optim.weight_decay > 0
    assert len(decay) == len(list(model.head.parameters())) + len(
        [n for n, _ in model.backbone.named_parameters()
         if not n.startswith("classifier.")])
    _, _, plain = digits_setup()
    assert len(plain.trainable_parameters()) == 1  # the paper's: one group
    for bad, match in ((["dna.temperature=0"], "dna.temperature"),
                       (["dna.aggregator=gat", "dna.learn_beta=true"], "'gat'"),
                       (["loss.mixup_at=hidden"], "loss.mixup_at")):
        with pytest.raises(ConfigError, match=match):
            load_config("configs/digits.yaml", bad)
    assert math.isclose(load_config("configs/digits.yaml").dna.temperature, 1.0)


def test_bank_extraction_precision():
    cfg, data, model = digits_setup("model.backbone=cnn")
    ref = refresh(run_of(cfg, model, data)).banks.features
    cfg.graph.bank_amp = "bf16"
    out = refresh(run_of(cfg, model, data)).banks.features
    assert out.dtype == torch.float32 and not torch.equal(out, ref)
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=1)
    assert float(cos.min()) > 0.99  # bf16 rounding, nothing more
    with pytest.raises(ConfigError, match="graph.bank_amp"):
        load_config("configs/digits.yaml", ["graph.bank_amp=fp8"])
