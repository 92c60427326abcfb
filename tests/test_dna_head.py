"""DNAHead on sampled batches equals the same layers on the whole graph;
gradients reach the seeds only; test-time retrieval equals brute force."""
from __future__ import annotations

import pytest
import torch

from dag_pyg.graph import build_density_graph
from dag_pyg.nn import DNAHead, assemble_input
from dag_pyg.sampler import (
    has_neighbor_backend,
    knn_subgraph,
    make_loader,
    predict_queries,
    query_subgraph,
)

N, D, K, C = 48, 8, 6, 3
SAMPLERS = ["knn", "knn_tree",
            pytest.param("neighbor", marks=pytest.mark.skipif(
                not has_neighbor_backend(),
                reason="NeighborLoader needs torch-sparse or pyg-lib"))]


@pytest.fixture(scope="module")
def bank():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(N, D, generator=gen, dtype=torch.float64)


@pytest.fixture(scope="module")
def graph(bank):
    return build_density_graph(bank, K, backend="exact")


def make_head(hops, aggregator="dna", seed=0, **kw):
    torch.manual_seed(seed)
    return DNAHead(D, C, hops=hops, aggregator=aggregator, **kw).double()


def full_graph_logits(head, bank, graph, k_sub):
    """The same layers on every node of the k_sub-nearest-neighbour graph."""
    sub = knn_subgraph(graph, k_sub)
    return head(bank, sub.edge_index, graph.density)


def loader(graph, k_sub, hops, sampler, **kw):
    return make_loader(graph, k_sub, hops, sampler=sampler.replace("_tree", ""),
                       dedup=not sampler.endswith("_tree"), **kw)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("hops", [1, 2, 3])
def test_batch_equals_full_graph(bank, graph, sampler, hops, device):
    k_sub = 3
    head = make_head(hops)
    ref = full_graph_logits(head, bank, graph, k_sub)  # on the CPU
    # Batches are sampled on the CPU (as in training); the head runs on device.
    head, bank_d, density = head.to(device), bank.to(device), graph.density.to(device)
    seen = []
    for batch in loader(graph, k_sub, hops, sampler, batch_size=20, shuffle=True):
        seeds = batch.n_id[:batch.batch_size]
        seen.append(seeds)
        batch = batch.to(device)
        trimmed = head.forward_batch(bank_d[seeds.to(device)], bank_d, batch,
                                     density).cpu()
        x, rho = assemble_input(bank_d[seeds.to(device)], bank_d, batch, density)
        untrimmed = head(x, batch.edge_index, rho,
                         batch_size=batch.batch_size).cpu()
        torch.testing.assert_close(trimmed, ref[seeds], atol=1e-6, rtol=0)
        torch.testing.assert_close(untrimmed, trimmed, atol=1e-6, rtol=0)
    assert torch.cat(seen).sort().values.tolist() == list(range(N))


@pytest.mark.parametrize("aggregator", ["dna_no_density", "gat", "none"])
def test_other_aggregators(bank, graph, aggregator):
    head = make_head(2, aggregator, hidden_channels=5)
    ref = full_graph_logits(head, bank, graph, 4)
    batch = next(iter(make_loader(graph, 4, 2, batch_size=10)))
    seeds = batch.n_id[:10]
    out = head.forward_batch(bank[seeds], bank, batch)
    torch.testing.assert_close(out, ref[seeds], atol=1e-6, rtol=0)
    if aggregator == "none":
        assert len(head.convs) == 0
        torch.testing.assert_close(out, head.classifier(bank[seeds]))


def test_density_matters(bank, graph):
    head = make_head(1)
    batch = next(iter(make_loader(graph, 4, 1, batch_size=8)))
    x, rho = assemble_input(bank[:8], bank, batch, graph.density)
    a = head(x, batch.edge_index, rho, batch_size=8)
    b = head(x, batch.edge_index, rho * 3, batch_size=8)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("dedup", [True, False])
def test_gradients_reach_seeds_only(bank, graph, dedup):
    head = make_head(2)
    backbone = torch.nn.Linear(D, D).double()
    images = torch.randn(12, D, dtype=torch.float64)
    bank_leaf = bank.clone().requires_grad_(True)
    batch = next(iter(make_loader(graph, 3, 2, batch_size=12, dedup=dedup)))
    seed_feats = backbone(images)
    seed_feats.retain_grad()
    head.forward_batch(seed_feats, bank_leaf, batch, graph.density).sum().backward()
    assert bank_leaf.grad is None
    assert backbone.weight.grad is not None and backbone.weight.grad.abs().sum() > 0
    assert (seed_feats.grad.abs().sum(dim=1) > 0).all()
    # The bank rows of the assembled input hang off no graph.
    rows = assemble_input(seed_feats.detach(), bank_leaf, batch, graph.density)[0]
    assert not rows.requires_grad


def brute_force_query_logits(head, bank, queries, k_sub, k):
    """Dense cosine with python loops: bank graph, densities and query
    neighbours, then the head on the whole graph of bank + queries."""
    bn = torch.nn.functional.normalize(bank, dim=1)
    qn = torch.nn.functional.normalize(queries, dim=1)
    n, m = bank.size(0), queries.size(0)

    def nearest(vec, exclude):
        sims = [(float(vec @ bn[j]), j) for j in range(n) if j != exclude]
        sims.sort(key=lambda t: (-t[0], t[1]))
        return sims

    src, dst, density = [], [], []
    for u in range(n):
        ranked = nearest(bn[u], u)
        density.append(sum(s for s, _ in ranked[:k]) / k)
        for _, v in ranked[:k_sub]:
            src.append(v)
            dst.append(u)
    hop1 = []
    for q in range(m):
        ranked = nearest(qn[q], -1)[:k_sub]
        hop1.append([v for _, v in ranked])
        for _, v in ranked:
            src.append(v)
            dst.append(n + q)
    edge_index = torch.tensor([src, dst])
    rho = torch.tensor(density + [0.0] * m, dtype=bank.dtype)
    out = head(torch.cat([bank, queries]), edge_index, rho)
    return out[n:], hop1


@pytest.mark.parametrize("hops", [1, 2])
def test_queries_equal_brute_force(bank, graph, hops):
    k_sub = 3
    gen = torch.Generator().manual_seed(7)
    queries = torch.randn(7, D, generator=gen, dtype=torch.float64)
    head = make_head(hops).eval()
    ref, hop1 = brute_force_query_logits(head, bank, queries, k_sub, K)
    sub = query_subgraph(queries, bank, graph, k_sub, hops)
    assert sub.batch_size == 7 and (sub.n_id[:7] == -1).all()
    first = sub.n_id[sub.edge_index[0, :7 * k_sub]].view(7, k_sub)
    assert first.tolist() == hop1
    assert torch.isnan(sub.density[:7]).all()
    out = predict_queries(head, queries, bank, graph, k_sub, batch_size=3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    # One batch, trimming off: the same.
    head.trim = False
    out2 = predict_queries(head, queries, bank, graph, k_sub, batch_size=100)
    torch.testing.assert_close(out2, ref, atol=1e-6, rtol=0)


def test_errors(bank, graph):
    with pytest.raises(ValueError, match="hops=-1"):
        DNAHead(D, C, hops=-1)
    with pytest.raises(ValueError, match="Unknown aggregator"):
        DNAHead(D, C, aggregator="sage")
    head = make_head(2)
    batch = next(iter(make_loader(graph, 3, 2, batch_size=5)))
    x, rho = assemble_input(bank[:5], bank, batch, graph.density)
    with pytest.raises(ValueError, match="width 8 but got shape"):
        head(x[:, :5], batch.edge_index, rho)
    with pytest.raises(ValueError, match="needs the node densities"):
        head(x, batch.edge_index, None)
    with pytest.raises(ValueError, match="same backbone"):
        assemble_input(bank[:5], bank[:, :4], batch, graph.density)
    with pytest.raises(ValueError, match=r"\[batch_size=5, d\]"):
        assemble_input(bank[:4], bank, batch, graph.density)
    shallow = next(iter(make_loader(graph, 3, 1, batch_size=5)))
    with pytest.raises(ValueError, match="sampled with 1 hops but the head has 2"):
        head.forward_batch(bank[:5], bank, shallow, graph.density)
    with pytest.raises(ValueError, match="exceeds the graph's k"):
        query_subgraph(bank[:2], bank, graph, K + 1, 1)
    with pytest.raises(ValueError, match="hops=-2"):
        query_subgraph(bank[:2], bank, graph, 2, -2)
    with pytest.raises(ValueError, match="width 8 but the queries have 4"):
        predict_queries(head, bank[:2, :4], bank, graph, 2)
    with pytest.raises(ValueError, match="build the graph from this bank"):
        predict_queries(head, bank[:2], bank[:10], graph, 2)
