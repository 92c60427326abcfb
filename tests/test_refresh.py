"""The training steps on their own (fast tier): pseudo labels and their
weights, sigma's quantile form, label statistics, batch composition, the
refresh and the evaluation, each against a hand-computed or independently
computed reference."""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch

from dag_pyg.config import load_config
from dag_pyg.distributed import DistContext
from dag_pyg.graph import build_density_graph
from dag_pyg.propagation import (
    check_sigma,
    parent_step_distances,
    pseudo_labels,
    resolve_sigma,
    target_weights,
)
from dag_pyg.sampler import knn_subgraph
from dag_pyg.train import evaluate, refresh
from dag_pyg.train.epoch import epoch_batches, split_for_refreshes
from dag_pyg.train.logger import RunLogger
from dag_pyg.train.refresh import label_stats, needs_banks
from dag_pyg.train.setup import Run, build_model, load_data

sys.path.insert(0, os.path.dirname(__file__))
from dplp_reference import reference_dplp  # noqa: E402

CPU = torch.device("cpu")
QUIET = RunLogger()


def small_graph(n=60, d=5, k=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, d, generator=gen)
    x = centres[torch.arange(n) % 3] + 0.4 * torch.randn(n, d, generator=gen)
    return build_density_graph(x, k, backend="exact")


def test_target_weights_hand_computed():
    n, c = 6, 10
    mask = torch.tensor([True, False, False, False, False, False])
    logits = torch.zeros(n, c)                 # uniform: entropy log C, weight 0
    logits[1] = torch.tensor([math.log(9.0)] + [0.0] * (c - 1))  # p = 1/2, 1/18...
    logits[2, 3] = 1e4                         # one-hot: weight 1 (times 0.5)
    w = target_weights(logits, mask, "dplp", "certainty", 0.5)
    p = [0.5] + [0.5 / (c - 1)] * (c - 1)
    h = -sum(q * math.log(q) for q in p)
    expect = torch.zeros(n, dtype=torch.float64)
    expect[1], expect[2] = 0.5 * (1 - h / math.log(c)), 0.5
    expect[0] = 1.0                            # labels always count fully
    assert torch.allclose(w.double(), expect, atol=1e-6)
    # A plain scale, no certainty: the scale everywhere but on labels.
    w = target_weights(logits, mask, "model", "none", 0.3)
    assert w.tolist() == pytest.approx([1.0] + [0.3] * 5)
    # All ones, or no pseudo labels at all: no weights.
    assert target_weights(logits, mask, "dplp", "none", 1.0) is None
    assert target_weights(logits, mask, "none", "certainty", 0.5) is None
    with pytest.raises(ValueError, match="Unknown weighting 'certain'"):
        target_weights(logits, mask, "dplp", "certain", 1.0)


def test_sigma_quantile_resolves_on_the_graph():
    graph = small_graph()
    steps = parent_step_distances(graph).numpy()
    finite = steps[np.isfinite(steps)]
    for q in (0.0, 0.25, 0.5, 1.0):
        assert resolve_sigma(f"q{q}", graph) == pytest.approx(
            float(np.quantile(finite, q)), abs=1e-12)
    assert resolve_sigma(0.7, graph) == 0.7
    assert resolve_sigma(math.inf, graph) == math.inf
    # No node with a denser neighbour: every step is infinite.
    flat = small_graph()
    flat.density = torch.zeros_like(flat.density)
    assert resolve_sigma("q0.5", flat) == math.inf
    for bad, match in [("q1.5", "quantile"), ("half", "quantile"), (-1.0, ">= 0"),
                       (True, ">= 0"), (math.nan, ">= 0")]:
        with pytest.raises(ValueError, match=match):
            check_sigma(bad)


@pytest.mark.parametrize("mode", ["L", "LU"])
def test_pseudo_labels_by_source(mode):
    graph = small_graph()
    n = graph.num_nodes
    gen = torch.Generator().manual_seed(1)
    y = torch.arange(n) % 3
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen)[:8]] = True
    prior = torch.randint(3, (n,), generator=gen)
    prior[mask] = y[mask]
    garbage = torch.where(mask, y, 7)          # unlabelled labels never read
    sigma = resolve_sigma("q0.75", graph)
    ref = reference_dplp(graph.edge_index, graph.sim, graph.density, y, mask, prior,
                         sigma, mode)
    out = pseudo_labels(graph, garbage, mask, prior, "dplp", "q0.75", mode, 3)
    ref_labels, ref_phase = ref[0], ref[2]
    assert out.targets.tolist() == list(ref_labels)
    assert out.covered.tolist() == [bool(p > 0) and not m
                                    for p, m in zip(ref_phase, mask.tolist(),
                                                    strict=True)]
    assert out.sigma == sigma
    model = pseudo_labels(graph, garbage, mask, prior, "model", sigma)
    assert torch.equal(model.targets, prior) and not model.covered.any()
    none = pseudo_labels(graph, garbage, mask, prior, "none", sigma)
    assert torch.equal(none.targets, torch.where(mask, y, -1))
    assert torch.equal(model.parents, out.parents)
    with pytest.raises(ValueError, match="Unknown pseudo-label source"):
        pseudo_labels(graph, y, mask, prior, "modle")


def test_label_stats_hand_computed():
    truth = torch.tensor([0, 1, 1, 2, 2, 0])
    unl = torch.tensor([False, True, True, True, True, True])
    targets = torch.tensor([0, 1, 0, 2, -1, 0])   # node 4 has no target
    prior = torch.tensor([0, 1, 1, 1, 2, 1])
    covered = torch.tensor([False, True, True, False, False, False])
    lengths = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 10.0])
    rec = label_stats(targets, prior, covered, truth, unl, lengths, 0.5)
    assert rec["dplp_sigma"] == 0.5
    assert rec["path_len_mean"] == pytest.approx(20 / 6)
    assert rec["path_len_q50"] == pytest.approx(2.5)
    assert rec["path_len_max"] == 10.0
    assert rec["pl_acc_all"] == pytest.approx(3 / 4)   # nodes 1, 2, 3, 5
    assert rec["model_acc"] == pytest.approx(3 / 5)    # nodes 1-5: 1, 2, 4 right
    assert rec["pl_coverage"] == pytest.approx(2 / 5)
    assert rec["pl_acc"] == pytest.approx(1 / 2)       # node 1 right, 2 wrong
    assert rec["model_acc_on_covered"] == 1.0
    none = label_stats(targets, prior, torch.zeros(6, dtype=torch.bool), truth,
                       unl, lengths, 0.5)
    assert none["pl_coverage"] == 0 and math.isnan(none["pl_acc"])


def test_epoch_batches_compose_labelled_and_unlabelled():
    o = load_config(None, ["optim.batch_size=5", "optim.labelled_batch_size=2"]).optim
    gen = torch.Generator().manual_seed(0)
    batches = epoch_batches(4, 10, o, pretrain=False, gen=gen)
    assert len(batches) == 2                   # 6 unlabelled, 3 per batch
    for b in batches:
        assert b.numel() == 5 and b.unique().numel() == 5
        assert (b[:2] < 4).all() and (b[2:] >= 4).all()
    assert sorted(torch.cat([b[2:] for b in batches]).tolist()) == list(range(4, 10))
    pre = epoch_batches(4, 10, o, pretrain=True, gen=gen)
    assert len(pre) == 2 and all(b.numel() == 2 and (b < 4).all() for b in pre)


def test_split_for_refreshes():
    b = [torch.tensor([i]) for i in range(10)]
    assert [len(p) for p in split_for_refreshes(b, 3)] == [3, 4, 3]
    assert [len(p) for p in split_for_refreshes(b, 1)] == [10]
    # More parts than steps: a refresh before the only step.
    assert [len(p) for p in split_for_refreshes(b[:1], 3)] == [0, 1]
    assert [int(x) for p in split_for_refreshes(b, 4) for x in p] == list(range(10))


def digits_setup(*extra, device=CPU):
    cfg = load_config("configs/digits.yaml", ["log.progress=false", *extra])
    torch.manual_seed(0)
    data = load_data(cfg)
    return cfg, data, build_model(cfg, data, device, DistContext())


def run_of(cfg, model, data, device=CPU):
    """A one-process run of ``model`` on ``data`` that draws nothing."""
    return Run(cfg=cfg, model=model, data=data, device=device, dist=DistContext(),
               log=QUIET, gen=torch.Generator())


def test_refresh_equals_its_steps_done_by_hand(device):
    cfg, data, model = digits_setup("dplp.sigma=q0.5", device=device)
    out = refresh(run_of(cfg, model, data, device))
    model.backbone.cpu().eval()  # the references on the CPU
    model.head.cpu()
    model.head.eval()
    with torch.no_grad():
        x = data.eval_tf(data.train_set.images[data.nodes])
        feats = model.backbone.features(x)
    assert torch.allclose(out.banks.features, feats, atol=1e-5)
    graph = build_density_graph(out.banks.features, cfg.graph.k, backend="exact")
    assert torch.equal(out.graph.edge_index, graph.edge_index)
    assert torch.allclose(out.graph.density, graph.density, atol=1e-6)
    sub = knn_subgraph(graph, cfg.dna.k)
    with torch.no_grad():
        prior = model.head(out.banks.features, sub.edge_index,
                           graph.density).argmax(1)
    mask = data.labelled_mask
    prior[mask] = data.true_y[mask]
    assert torch.equal(out.banks.prior, prior)
    sigma = resolve_sigma("q0.5", graph)
    ref = reference_dplp(graph.edge_index, graph.sim, graph.density, data.true_y,
                         mask, prior, sigma, "LU")
    assert out.banks.targets.tolist() == list(ref[0])
    covered = torch.tensor([p > 0 for p in ref[2]]) & ~mask
    stats = out.stats
    assert stats["dplp_sigma"] == pytest.approx(sigma)
    assert stats["pl_coverage"] == pytest.approx(float(covered.sum()) / (~mask).sum())
    assert out.banks.weights is None and out.path_lengths.numel() == mask.numel()
    for key in ("time_bank", "time_graph", "time_label_bank", "time_dplp"):
        assert stats[key] >= 0


def test_refresh_of_a_baseline_reads_no_bank():
    cfg, data, model = digits_setup("dna.aggregator=none", "pseudo_label.source=none")
    assert not needs_banks(cfg, model.uses_graph_head)
    out = refresh(run_of(cfg, model, data))
    assert out.graph is None and out.stats == {} and not out.banks.features.numel()
    assert torch.equal(out.banks.targets,
                       torch.where(data.labelled_mask, data.true_y, -1))
    cfg, data, model = digits_setup("pseudo_label.weighting=certainty")
    out = refresh(run_of(cfg, model, data))
    assert out.banks.weights is not None
    assert 0 < out.stats["pl_weight_mean"] < 1


@pytest.mark.parametrize("aggregator", ["none", "dna"])
def test_evaluate_classifies_like_the_model(aggregator, device):
    cfg, data, model = digits_setup(f"dna.aggregator={aggregator}", "data.num_val=40",
                                    device=device)
    out = refresh(run_of(cfg, model, data, device))
    rec = evaluate(run_of(cfg, model, data, device), out.banks.features,
                   out.graph)
    model.backbone.cpu()  # the reference on the CPU
    model.head.cpu()
    test = data.test_set
    with torch.no_grad():
        q = model.backbone.features(data.eval_tf(test.images))
        if aggregator == "none":
            logits = model.head(q)
        else:  # each query beside the bank, its k_sub nearest bank rows as edges
            k, bank = cfg.dna.k, out.banks.features
            sim = torch.nn.functional.normalize(q, dim=1) @ \
                torch.nn.functional.normalize(bank, dim=1).T
            nbr = sim.topk(k, dim=1).indices
            x = torch.cat([q, bank])
            dst = torch.arange(q.size(0)).repeat_interleave(k)
            edge_index = torch.stack([nbr.reshape(-1) + q.size(0), dst])
            rho = torch.cat([torch.full((q.size(0),), math.nan), out.graph.density])
            logits = model.head(x, edge_index, rho, batch_size=q.size(0))
    err = 100.0 * float((logits.argmax(1) != test.targets).float().mean())
    assert rec["test_error"] == pytest.approx(err)
    assert 0 <= rec["val_error"] <= 100 and rec["time_eval"] >= 0


def test_cnn_width_is_a_channel_multiplier():
    cfg = load_config("configs/digits.yaml", ["model.backbone=cnn"])
    data = load_data(cfg)
    assert build_model(cfg, data, CPU, DistContext()).backbone.feat_dim == 64
    cfg = load_config("configs/digits.yaml", ["model.backbone=cnn", "model.width=0.5"])
    assert build_model(cfg, data, CPU, DistContext()).backbone.feat_dim == 32


def test_epoch_progress_sums_per_rank():
    from dag_pyg.train.epoch import EpochProgress

    p = EpochProgress([], done=3, sums={"loss": 1.0},
                      sums_ranks=[{"loss": 1.0}, {"loss": 3.0}])
    two = DistContext(1, 2, 1, "gloo")
    assert p.for_rank(two).sums == {"loss": 3.0}       # its own sums
    # Resumed by one process: the mean, so the epoch's mean loss is kept.
    assert p.for_rank(DistContext()).sums == {"loss": 2.0}
    assert p.for_rank(DistContext()).done == 3


def test_bf16_autocast_is_close_to_fp32_on_a_batch():
    from dag_pyg.train.losses import dag_loss
    from dag_pyg.train.optim import autocast

    cfg, data, model = digits_setup("model.backbone=cnn", "dna.aggregator=none")
    model.backbone.eval()
    x = data.eval_tf(data.train_set.images[:64])
    target = torch.nn.functional.one_hot(data.train_set.targets[:64], 10).float()
    losses = {}
    for amp in ("none", "bf16"):
        with torch.no_grad(), autocast(amp, CPU):
            logits = model.net(x)
        assert logits.dtype == (torch.bfloat16 if amp == "bf16" else torch.float32)
        losses[amp] = float(dag_loss(logits.float(), target, 0.4, 0.8)["loss"])
    assert math.isfinite(losses["bf16"])
    assert losses["bf16"] == pytest.approx(losses["none"], rel=0.02)
