"""KNNHopSampler / make_loader: the sampled sub-graphs, their PyG layout
(n_id, e_id, per-hop counts in BFS order) and the input checks."""
from __future__ import annotations

import pytest
import torch
from torch_geometric.loader import NodeLoader
from torch_geometric.utils import trim_to_layer

from dag_pyg.graph import build_density_graph, neighbour_table
from dag_pyg.sampler import (
    KNNHopSampler,
    has_neighbor_backend,
    knn_subgraph,
    make_loader,
    swap_seed_neighbours,
)

# The training loop keeps the global graph on the CPU, where it samples.
pytestmark = pytest.mark.cpu_only

N, D, K = 60, 8, 6
needs_neighbor = pytest.mark.skipif(not has_neighbor_backend(),
                                    reason="NeighborLoader needs torch-sparse or "
                                           "pyg-lib")


@pytest.fixture(scope="module")
def graph():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    return build_density_graph(x, K, backend="exact")


def reference_hops(table, seeds, k_sub, hops):
    """Plain-python BFS: nodes first reached at each hop, and the edge set
    (global v -> u) of every hop."""
    seen, front = set(seeds), list(seeds)
    node_hops, edge_hops = [list(seeds)], []
    for _ in range(hops):
        new, edges = [], set()
        for u in front:
            for v in table[u][:k_sub]:
                edges.add((v, u))
                if v not in seen:
                    seen.add(v)
                    new.append(v)
        node_hops.append(new)
        edge_hops.append(edges)
        front = new
    return node_hops, edge_hops


def split_hops(batch):
    """Per-hop global nodes and edges of a batch, via its per-hop counts."""
    n_id, ei = batch.n_id, batch.edge_index
    nodes, edges, a, e = [], [], 0, 0
    for cnt in batch.num_sampled_nodes:
        nodes.append(n_id[a:a + cnt].tolist())
        a += cnt
    for cnt in batch.num_sampled_edges:
        part = ei[:, e:e + cnt]
        edges.append(set(zip(n_id[part[0]].tolist(), n_id[part[1]].tolist(),
                             strict=True)))
        e += cnt
    return nodes, edges


@pytest.mark.parametrize("hops", [0, 1, 2, 3])
def test_dedup_batch_matches_bfs(graph, hops):
    k_sub = 3
    table = neighbour_table(graph).tolist()
    seeds = torch.tensor([5, 17, 2, 40])
    loader = make_loader(graph, k_sub, hops, input_nodes=seeds, batch_size=4)
    batch = next(iter(loader))
    assert batch.batch_size == 4 and batch.n_id[:4].tolist() == seeds.tolist()
    assert batch.n_id.unique().numel() == batch.num_nodes  # kept once
    assert sum(batch.num_sampled_nodes) == batch.num_nodes
    assert sum(batch.num_sampled_edges) == batch.edge_index.size(1)
    assert len(batch.num_sampled_nodes) == hops + 1
    nodes, edges = split_hops(batch)
    ref_nodes, ref_edges = reference_hops(table, seeds.tolist(), k_sub, hops)
    assert nodes == ref_nodes  # first-appearance order, like PyG
    assert edges == ref_edges
    # Global edge ids, graph attributes gathered through them and n_id.
    src, dst = batch.n_id[batch.edge_index[0]], batch.n_id[batch.edge_index[1]]
    assert torch.equal(graph.edge_index[0, batch.e_id], src)
    assert torch.equal(graph.edge_index[1, batch.e_id], dst)
    assert torch.equal(batch.sim, graph.sim[batch.e_id])
    assert torch.equal(batch.density, graph.density[batch.n_id])


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_tree_batch(graph, hops):
    k_sub = 2
    table = neighbour_table(graph)
    seeds = torch.tensor([3, 9, 3])  # duplicates are fine in a tree
    out = KNNHopSampler(graph, k_sub, hops, dedup=False).sample(seeds)
    assert out.num_sampled_nodes == [3 * k_sub**h for h in range(hops + 1)]
    assert out.num_sampled_edges == [3 * k_sub**h for h in range(1, hops + 1)]
    # Every edge joins a copy to its parent, the parent's k_sub neighbours in
    # similarity order; every copy has its own local id.
    assert torch.equal(out.row, torch.arange(3, out.node.numel()))
    assert torch.equal(out.node[out.row].view(-1, k_sub),
                      table[out.node[out.col].view(-1, k_sub)[:, 0], :k_sub])
    assert torch.equal(out.node[out.batch], seeds[out.batch])
    assert torch.equal(out.batch[:3], torch.arange(3))


def test_node_loader_epoch_and_trim(graph):
    sampler = KNNHopSampler(graph, 3, 2)
    loader = NodeLoader(graph, node_sampler=sampler, batch_size=16, shuffle=True)
    seen = []
    for batch in loader:
        seen += batch.n_id[:batch.batch_size].tolist()
        assert (sampler._mark == -1).all()  # scratch array restored
        x = torch.arange(batch.num_nodes).unsqueeze(1).float()
        x1, ei1, _ = trim_to_layer(1, batch.num_sampled_nodes,
                                   batch.num_sampled_edges, x, batch.edge_index)
        # After trimming one hop only hop-0/1 nodes and hop-1 edges remain.
        assert x1.size(0) == sum(batch.num_sampled_nodes[:2])
        assert ei1.size(1) == batch.num_sampled_edges[0]
        assert int(ei1.max()) < x1.size(0)
        assert int(ei1[1].max()) < batch.batch_size
    assert sorted(seen) == list(range(N))


def test_knn_subgraph(graph):
    sub = knn_subgraph(graph, 4)
    assert sub.edge_index.size(1) == N * 4 and sub.k == 4
    assert torch.equal(neighbour_table(sub), neighbour_table(graph)[:, :4])
    assert torch.equal(sub.sim.view(N, 4), graph.sim.view(N, K)[:, :4])
    assert torch.equal(sub.density, graph.density)


@needs_neighbor
@pytest.mark.parametrize("hops", [1, 2, 3])
def test_neighbor_loader_same_subgraphs(graph, hops):
    seeds = torch.arange(0, N, 7)
    a = next(iter(make_loader(graph, 3, hops, input_nodes=seeds, batch_size=9)))
    b = next(iter(make_loader(graph, 3, hops, input_nodes=seeds, batch_size=9,
                              sampler="neighbor")))
    assert b.num_sampled_nodes == a.num_sampled_nodes
    assert b.num_sampled_edges == a.num_sampled_edges
    nodes_a, edges_a = split_hops(a)
    nodes_b, edges_b = split_hops(b)
    assert [sorted(h) for h in nodes_a] == [sorted(h) for h in nodes_b]
    assert edges_a == edges_b
    # e_id is mapped back to the global graph.
    src, dst = b.n_id[b.edge_index[0]], b.n_id[b.edge_index[1]]
    assert torch.equal(graph.edge_index[0, b.e_id], src)
    assert torch.equal(graph.edge_index[1, b.e_id], dst)
    assert torch.equal(b.sim, graph.sim[b.e_id])


def test_errors(graph):
    with pytest.raises(ValueError, match="exceeds the graph's k=6"):
        KNNHopSampler(graph, K + 1, 1)
    with pytest.raises(ValueError, match="at least 1"):
        make_loader(graph, 0, 1)
    with pytest.raises(ValueError, match="hops=-1 must be >= 0"):
        make_loader(graph, 2, -1)
    sampler = KNNHopSampler(graph, 2, 2)
    with pytest.raises(ValueError, match=r"out of range.*\[0, 59\]"):
        sampler.sample(torch.tensor([0, N]))
    with pytest.raises(ValueError, match="out of range"):
        sampler.sample(torch.tensor([-1]))
    with pytest.raises(ValueError, match="out of range"):
        make_loader(graph, 2, 1, input_nodes=torch.tensor([3, 99]))
    with pytest.raises(ValueError, match="duplicates"):
        sampler.sample(torch.tensor([4, 4]))
    assert (sampler._mark == -1).all()
    with pytest.raises(ValueError, match="integer node indices"):
        sampler.sample(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="Unknown sampler"):
        make_loader(graph, 2, 1, sampler="random")
    with pytest.raises(ValueError, match="dedup=False"):
        make_loader(graph, 2, 1, sampler="neighbor", dedup=False)


@pytest.mark.parametrize("sampler", [
    "knn", pytest.param("neighbor", marks=needs_neighbor)])
@pytest.mark.parametrize("hops", [1, 2])
def test_swap_seed_neighbours(graph, hops, sampler):
    seeds = torch.tensor([3, 17, 40, 8, 55])
    batch = make_loader(graph, 4, hops, sampler=sampler)(seeds)
    perm = torch.tensor([2, 0, 4, 1, 3])
    out = swap_seed_neighbours(batch, perm)
    b, ei, so = 5, batch.edge_index, out.edge_index
    assert torch.equal(out.n_id, batch.n_id)
    # Seed i now has exactly the in-edges (sources, edge ids) of seed perm[i],
    # in their order; every other edge is untouched.
    for i in range(b):
        mine, theirs = so[1] == i, ei[1] == int(perm[i])
        assert torch.equal(so[0, mine], ei[0, theirs])
        assert torch.equal(out.e_id[mine], batch.e_id[theirs])
    assert torch.equal(so[:, ei[1] >= b], ei[:, ei[1] >= b])
    assert bool((so[1, so[1] < b].diff() >= 0).all())  # grouped by seed
    with pytest.raises(ValueError, match="perm has 3 entries"):
        swap_seed_neighbours(batch, torch.arange(3))


def test_neighbour_mixing_is_the_mixed_neighbour_term(graph):
    """One DNA layer is linear in x_u + sum_v alpha_uv x_v: mixing the head's
    outputs on the seeds' and the partners' neighbourhoods is the head with
    the neighbour term mixed by lam (hand-derived, checked here)."""
    from dag_pyg.nn import DNAHead

    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(N, D, generator=gen, dtype=torch.float64)  # the fixture's
    torch.manual_seed(0)
    head = DNAHead(D, 3, hops=1).double()
    seeds = torch.tensor([3, 17, 40, 8])
    batch = make_loader(graph, 4, 1)(seeds)
    feats = torch.randn(4, D, dtype=torch.float64)
    perm = torch.tensor([1, 3, 0, 2])
    h_a = head.forward_batch(feats, bank, batch, graph.density, embed=True)
    h_b = head.forward_batch(feats, bank, swap_seed_neighbours(batch, perm),
                             graph.density, embed=True)
    own = head.embed(feats, torch.empty(2, 0, dtype=torch.long),
                     feats.new_zeros(4))
    nb = h_a - own
    # The partner's neighbour term, read with seed i's own feature as centre:
    # attention of feats[i] over perm[i]'s neighbours.
    conv = head.convs[0]
    ref_b = []
    for i in range(4):
        j = int(perm[i])
        nbrs = batch.n_id[batch.edge_index[0, batch.edge_index[1] == j]]
        x_v = bank[nbrs]
        cos = torch.nn.functional.cosine_similarity(feats[i:i + 1], x_v)
        alpha = torch.softmax(cos + graph.density[nbrs], 0)
        ref_b.append(conv.lin(feats[i] + (alpha[:, None] * x_v).sum(0)))
    ref_b = torch.stack(ref_b) + (conv.bias if conv.bias is not None else 0)
    torch.testing.assert_close(h_b, ref_b)
    # So lam * h_a + (1 - lam) * h_b is the head with the neighbour term
    # mixed by lam: its own neighbours' (nb) and its partner's (h_b - own).
    assert not torch.allclose(h_b - own, nb)
