"""DPLP (issue 3): the tensor implementation against the sequential reference."""
from __future__ import annotations

import io
import math
import os
import sys
import warnings

import pytest
import torch
from torch_geometric.data import Data

from dag_pyg.graph import build_density_graph
from dag_pyg.propagation import (
    DPLPResult,
    density_ascending_parents,
    density_order,
    dplp,
    nearest_denser_rows,
    parent_step_distances,
    path_lengths,
)

sys.path.insert(0, os.path.dirname(__file__))
from dplp_reference import (  # noqa: E402
    reference_dplp,
    reference_parents,
    reference_path_lengths,
    reference_step_distances,
)


# --------------------------------------------------------------------------- #
# Random graphs
# --------------------------------------------------------------------------- #
def clustered_features(gen, n, d, num_clusters, noise):
    centres = torch.randn(num_clusters, d, generator=gen)
    assign = torch.randint(num_clusters, (n,), generator=gen)
    return centres[assign] + noise * torch.randn(n, d, generator=gen)


def feature_graph(gen, kind):
    n = int(torch.randint(20, 201, (1,), generator=gen))
    d = int(torch.randint(2, 17, (1,), generator=gen))
    k = int(torch.randint(1, min(16, n - 1) + 1, (1,), generator=gen))
    if kind == "uniform":
        x = torch.rand(n, d, generator=gen) - 0.5
    elif kind == "clustered":
        c = int(torch.randint(1, 8, (1,), generator=gen))
        x = clustered_features(gen, n, d, c, 0.3)
    elif kind == "duplicates":
        # Few distinct points, many copies: ties in similarity and density.
        base = torch.randn(max(2, n // 6), d, generator=gen)
        x = base[torch.randint(base.size(0), (n,), generator=gen)]
    elif kind == "disconnected":
        # Far-apart groups larger than k: no edge between groups.
        groups = int(torch.randint(2, 5, (1,), generator=gen))
        d = max(d, groups)
        k = min(k, n // groups - 1)
        x = torch.randn(n, d, generator=gen) * 0.01
        x[:, :groups] += 10 * torch.eye(groups)[torch.arange(n) % groups]
    else:
        raise AssertionError(kind)
    # Lower precision makes equal similarities (and densities) common.
    if kind in ("uniform", "clustered") and bool(torch.rand(1, generator=gen) < 0.3):
        x = torch.round(x * 2) / 2
        x[x.abs().sum(1) == 0, 0] = 1.0
    return build_density_graph(x, k=k, backend="exact")


def random_data(gen):
    """Hand-made graph: variable degree, shuffled edges, quantised sim/density."""
    n = int(torch.randint(1, 120, (1,), generator=gen))
    e = int(torch.randint(0, 6 * n + 1, (1,), generator=gen))
    src = torch.randint(n, (e,), generator=gen)
    dst = torch.randint(n, (e,), generator=gen)
    sim = torch.randint(-4, 5, (e,), generator=gen).float() / 4
    density = torch.randint(0, 6, (n,), generator=gen).float()
    return Data(edge_index=torch.stack([src, dst]), sim=sim, density=density,
                num_nodes=n)


def chain_data(gen):
    """Several long chains: node j's only denser neighbour is its successor."""
    num_chains = int(torch.randint(1, 4, (1,), generator=gen))
    length = int(torch.randint(50, 201, (1,), generator=gen))
    n = num_chains * length
    perm = torch.randperm(n, generator=gen)  # scramble node ids
    src, dst = [], []
    density = torch.empty(n)
    for c in range(num_chains):
        ids = perm[c * length:(c + 1) * length]
        density[ids] = torch.arange(length, dtype=torch.float) + c * 0.5
        src += [ids[1:], ids[:-1]]  # successor -> node, node -> successor
        dst += [ids[:-1], ids[1:]]
    ei = torch.stack([torch.cat(src), torch.cat(dst)])
    sim = torch.full((ei.size(1),), 0.9)
    return Data(edge_index=ei, sim=sim, density=density, num_nodes=n)


def random_labels(gen, n, num_classes=5):
    y = torch.randint(num_classes, (n,), generator=gen)
    r = float(torch.rand(1, generator=gen))
    if r < 0.1:
        mask = torch.zeros(n, dtype=torch.bool)
    elif r < 0.2:
        mask = torch.ones(n, dtype=torch.bool)
    elif r < 0.35:
        mask = torch.zeros(n, dtype=torch.bool)
        mask[int(torch.randint(n, (1,), generator=gen))] = True
    else:
        mask = torch.rand(n, generator=gen) < float(torch.rand(1, generator=gen)) * 0.3
    # Unlabelled entries of y are never read: poison them.
    y = torch.where(mask, y, -7)
    prior = torch.randint(num_classes, (n,), generator=gen) \
        if bool(torch.rand(1, generator=gen) < 0.5) else None
    return y, mask, prior


def random_sigma(gen, graph):
    r = float(torch.rand(1, generator=gen))
    if r < 0.2:
        return 0.0
    if r < 0.5:
        return math.inf
    dist = parent_step_distances(graph)
    dist = dist[torch.isfinite(dist)]
    if dist.numel() == 0:
        return 0.5
    # Exactly a step distance half the time (boundary is inclusive).
    if r < 0.75:
        return float(dist[int(torch.randint(dist.numel(), (1,), generator=gen))])
    return float(dist.float().quantile(float(torch.rand(1, generator=gen))))


CPU = torch.device("cpu")


def check_against_reference(graph, y, mask, prior, sigma, mode, device=CPU):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = dplp(graph.to(device), y.to(device), mask.to(device),
                   prior=None if prior is None else prior.to(device),
                   sigma=sigma, mode=mode)
    out = DPLPResult(*(t.cpu() for t in out))
    labels, source, phase, parents = reference_dplp(
        graph.edge_index, graph.sim, graph.density, y, mask, prior, sigma, mode)
    assert out.parents.tolist() == parents
    assert out.labels.tolist() == labels
    assert out.source.tolist() == source
    assert out.phase.tolist() == phase
    check_consistency(out, y, mask, prior, mode)
    return out


def check_consistency(out, y, mask, prior, mode):
    n = y.numel()
    assert isinstance(out, DPLPResult)
    assert out.labels.shape == out.source.shape == out.phase.shape == (n,)
    assert out.source.dtype == out.phase.dtype == torch.long
    lab = out.phase == 0
    assert torch.equal(lab, mask)
    assert torch.equal(out.source[lab], torch.arange(n)[lab])
    assert torch.equal(out.labels[lab], y[lab])
    prop = (out.phase == 1) | (out.phase == 2)
    assert bool(mask[out.source[prop]].all())
    assert torch.equal(out.labels[prop], y[out.source[prop]])
    kept = out.phase == -1
    assert bool((out.source[kept] == -1).all())
    expected = prior[kept] if prior is not None else torch.full_like(y[kept], -1)
    assert torch.equal(out.labels[kept], expected)
    if mode == "L":
        assert not bool((out.phase == 2).any())


# --------------------------------------------------------------------------- #
# Equality with the reference
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kind", ["uniform", "clustered", "duplicates",
                                  "disconnected"])
def test_dplp_matches_reference_on_feature_graphs(kind, device):
    gen = torch.Generator().manual_seed(sum(map(ord, kind)))
    for _ in range(60):
        graph = feature_graph(gen, kind)
        y, mask, prior = random_labels(gen, graph.num_nodes)
        sigma = random_sigma(gen, graph)
        for mode in ("LU", "L"):
            check_against_reference(graph, y, mask, prior, sigma, mode, device)


def test_dplp_matches_reference_on_hand_made_graphs(device):
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        graph = random_data(gen)
        y, mask, prior = random_labels(gen, graph.num_nodes)
        sigma = random_sigma(gen, graph)
        for mode in ("LU", "L"):
            check_against_reference(graph, y, mask, prior, sigma, mode, device)


def test_dplp_matches_reference_on_long_chains(device):
    gen = torch.Generator().manual_seed(2)
    for _ in range(20):
        graph = chain_data(gen)
        y, mask, prior = random_labels(gen, graph.num_nodes)
        for mode in ("LU", "L"):
            out = check_against_reference(graph, y, mask, prior, math.inf, mode,
                                          device)
        lengths = path_lengths(out.parents)
        assert int(lengths.max()) >= 50
        assert lengths.tolist() == reference_path_lengths(out.parents.tolist())


def test_single_chain_by_hand(device):
    # 0 <- 1 <- 2 <- 3 <- 4 (density rises with the index; 4 is the root).
    n = 5
    src = torch.tensor([1, 2, 3, 4, 0, 1, 2, 3])
    dst = torch.tensor([0, 1, 2, 3, 1, 2, 3, 4])
    graph = Data(edge_index=torch.stack([src, dst]), sim=torch.full((8,), 0.5),
                 density=torch.arange(n, dtype=torch.float), num_nodes=n).to(device)
    assert density_ascending_parents(graph).tolist() == [1, 2, 3, 4, -1]
    assert path_lengths(density_ascending_parents(graph)).tolist() == [5, 4, 3, 2, 1]
    y = torch.tensor([-1, 7, -1, 3, -1], device=device)
    mask = torch.tensor([False, True, False, True, False], device=device)
    out = dplp(graph, y, mask)
    # Phase 1: node 3 (denser) labels 4; node 1 labels 2. Phase 2: 0 takes the
    # densest labelled node on its path, node 3.
    assert out.labels.tolist() == [3, 7, 7, 3, 3]
    assert out.source.tolist() == [3, 1, 1, 3, 3]
    assert out.phase.tolist() == [2, 0, 1, 0, 1]
    out_l = dplp(graph, y, mask, mode="L")
    assert out_l.labels.tolist() == [-1, 7, 7, 3, 3]
    assert out_l.phase.tolist() == [-1, 0, 1, 0, 1]


def test_mode_l_is_phase_one_of_lu(device):
    gen = torch.Generator().manual_seed(3)
    for _ in range(30):
        graph = feature_graph(gen, "clustered")
        y, mask, prior = random_labels(gen, graph.num_nodes)
        if not bool(mask.any()):
            continue
        graph, y, mask = graph.to(device), y.to(device), mask.to(device)
        prior = None if prior is None else prior.to(device)
        lu = dplp(graph, y, mask, prior)
        lo = dplp(graph, y, mask, prior, mode="L")
        keep = lu.phase != 2
        assert torch.equal(lu.labels[keep], lo.labels[keep])
        assert torch.equal(lu.phase[keep], lo.phase[keep])
        assert bool((lo.phase[~keep] == -1).all())


# --------------------------------------------------------------------------- #
# Parents, distances, path lengths
# --------------------------------------------------------------------------- #
def test_parents_and_step_distances_match_reference():
    gen = torch.Generator().manual_seed(4)
    for i in range(60):
        graph = feature_graph(gen, ["uniform", "clustered", "duplicates"][i % 3]) \
            if i % 2 else random_data(gen)
        n = graph.num_nodes
        dist = parent_step_distances(graph)
        assert dist.dtype == torch.float64
        assert dist.tolist() == reference_step_distances(
            graph.edge_index, graph.sim, graph.density, n)
        for sigma in (0.0, 0.3, math.inf):
            par = density_ascending_parents(graph, sigma)
            assert par.dtype == torch.long
            assert par.tolist() == reference_parents(
                graph.edge_index, graph.sim, graph.density, n, sigma)
            # Density strictly rises along every parent edge.
            has = par >= 0
            assert bool((graph.density[par[has]] > graph.density[has]).all())
            assert bool((dist[has] <= sigma).all())


def test_fast_and_generic_layouts_agree():
    # Sorted [N, k] rows, unsorted [N, k] rows and arbitrary edge order take
    # three different code paths.
    gen = torch.Generator().manual_seed(5)
    for i in range(30):
        graph = feature_graph(gen, ["duplicates", "uniform", "clustered"][i % 3])
        n, e = graph.num_nodes, graph.edge_index.size(1)
        k = e // n
        within = (torch.rand(n, k, generator=gen).argsort(dim=1)
                  + torch.arange(n).view(n, 1) * k).view(-1)
        anywhere = torch.randperm(e, generator=gen)
        # Still sorted by similarity, but equal similarities by descending
        # index: the fast path must not trust the tie order.
        nbr = graph.edge_index[0].view(n, k)
        by_nbr = nbr.argsort(dim=1, descending=True, stable=True)
        by_sim = graph.sim.view(n, k).gather(1, by_nbr).argsort(
            dim=1, descending=True, stable=True)
        ties_reversed = (by_nbr.gather(1, by_sim)
                         + torch.arange(n).view(n, 1) * k).view(-1)
        for perm in (within, anywhere, ties_reversed):
            shuffled = Data(edge_index=graph.edge_index[:, perm],
                            sim=graph.sim[perm], density=graph.density,
                            num_nodes=n)
            for sigma in (0.2, math.inf):
                assert torch.equal(density_ascending_parents(graph, sigma),
                                   density_ascending_parents(shuffled, sigma))
            assert torch.equal(parent_step_distances(graph),
                               parent_step_distances(shuffled))


def test_a_built_graph_skips_the_layout_checks_until_it_changes(monkeypatch):
    # build_density_graph records its layout on its tensors: DPLP's parents
    # then skip the three checks over the N*k edges, with the same answer;
    # an in-place edit, a copy or a new tensor is checked again.
    import importlib

    from dag_pyg.graph.layout import copy_record, knn_rows

    dplp_module = importlib.import_module("dag_pyg.propagation.dplp")
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(3))
    graph = build_density_graph(x, 7, backend="exact")
    checked = []
    dense_rows = dplp_module._dense_rows
    monkeypatch.setattr(dplp_module, "_dense_rows", lambda *a: checked.append(1)
                        or dense_rows(*a))
    plain = Data(edge_index=graph.edge_index.clone(), sim=graph.sim.clone(),
                 density=graph.density, num_nodes=300)
    assert knn_rows(graph.edge_index, graph.sim, 300) == 7
    assert knn_rows(plain.edge_index, plain.sim, 300) is None
    assert knn_rows(graph.edge_index, graph.sim, 299) is None
    fast = density_ascending_parents(graph, 0.5)
    assert checked == []
    assert torch.equal(fast, density_ascending_parents(plain, 0.5))
    assert checked == [1]
    assert fast.tolist() == reference_parents(graph.edge_index, graph.sim,
                                              graph.density, 300, 0.5)
    # The record is not part of the graph: it saves and loads as any graph.
    buffer = io.BytesIO()
    torch.save(graph, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert knn_rows(loaded.edge_index, loaded.sim, 300) is None
    assert torch.equal(density_ascending_parents(loaded, 0.5), fast)
    # A copy of the graph carries the record only where copy_record says so.
    copy = graph.clone()
    assert knn_rows(copy.edge_index, copy.sim, 300) is None
    copy_record(graph, copy)
    assert knn_rows(copy.edge_index, copy.sim, 300) == 7
    # A new sim, or an edit of either tensor in place (through a view too),
    # voids the record: the edit below is then caught by the range check.
    copy.sim = copy.sim.clone()
    assert knn_rows(copy.edge_index, copy.sim, 300) is None
    graph.sim.mul_(1.0)
    assert knn_rows(graph.edge_index, graph.sim, 300) is None
    graph = build_density_graph(x, 7, backend="exact")
    graph.edge_index[0][5] = 300
    assert knn_rows(graph.edge_index, graph.sim, 300) is None
    with pytest.raises(ValueError, match="outside"):
        density_ascending_parents(graph)


def test_one_unsorted_row_past_the_first_block_of_rows_is_seen():
    # The row-order check runs in blocks of 4,096 rows: a row out of order in
    # a later block must still send the graph down the exact path, where the
    # first denser entry of that row is not its most similar one.
    n, k = 5000, 6
    nbr = (torch.arange(n).view(n, 1) + torch.arange(1, k + 1)) % n
    sim = torch.linspace(0.9, 0.4, k).repeat(n, 1)
    density = torch.linspace(0.0, 1.0, n)  # every neighbour of u < n - 6 is denser
    row = 4500
    sim[row] = torch.linspace(0.4, 0.9, k)  # ascending: the last entry is nearest
    graph = Data(edge_index=torch.stack([nbr.view(-1),
                                         torch.arange(n).repeat_interleave(k)]),
                 sim=sim.view(-1), density=density, num_nodes=n)
    par = density_ascending_parents(graph)
    assert int(par[row]) == int(nbr[row, -1])
    assert int(par[row - 1]) == int(nbr[row - 1, 0])
    assert par.tolist() == reference_parents(graph.edge_index, graph.sim,
                                             density, n, math.inf)


def test_rows_without_neighbours_have_no_parent():
    density = torch.rand(5, generator=torch.Generator().manual_seed(0))
    parent, best = nearest_denser_rows(torch.empty(3, 0, dtype=torch.long),
                                       torch.empty(3, 0), density, start=1)
    assert parent.tolist() == [-1, -1, -1]
    assert best.tolist() == [-math.inf] * 3


def test_int32_edge_index_gives_int64_parents_in_every_layout():
    gen = torch.Generator().manual_seed(7)
    graph = feature_graph(gen, "clustered")
    n, e = graph.num_nodes, graph.edge_index.size(1)
    k = e // n
    expected = density_ascending_parents(graph)
    within = (torch.rand(n, k, generator=gen).argsort(dim=1)
              + torch.arange(n).view(n, 1) * k).view(-1)
    for perm in (torch.arange(e), within, torch.randperm(e, generator=gen)):
        narrow = Data(edge_index=graph.edge_index[:, perm].int(),
                      sim=graph.sim[perm], density=graph.density, num_nodes=n)
        parents = density_ascending_parents(narrow)
        assert parents.dtype == torch.long and torch.equal(parents, expected)


def test_path_lengths_against_loop():
    gen = torch.Generator().manual_seed(6)
    for _ in range(50):
        n = int(torch.randint(1, 300, (1,), generator=gen))
        # A random forest: parents point to larger ids (or are roots).
        perm = torch.randperm(n, generator=gen)
        par_sorted = torch.full((n,), -1)
        for j in range(n - 1):
            if bool(torch.rand(1, generator=gen) < 0.9):
                par_sorted[j] = int(torch.randint(j + 1, min(n, j + 4), (1,),
                                                  generator=gen))
        parents = torch.full((n,), -1)
        has = par_sorted >= 0
        parents[perm[has]] = perm[par_sorted[has]]
        assert path_lengths(parents).tolist() == reference_path_lengths(
            parents.tolist())
    assert path_lengths(torch.empty(0, dtype=torch.long)).tolist() == []


def test_density_order_ties_by_index():
    order, rank = density_order(torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0]))
    assert order.tolist() == [1, 2, 4, 3, 0]
    assert rank.tolist() == [4, 0, 1, 3, 2]


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #
@pytest.fixture
def small():
    gen = torch.Generator().manual_seed(7)
    graph = build_density_graph(torch.randn(30, 4, generator=gen), k=5,
                                backend="exact")
    y = torch.randint(3, (30,), generator=gen)
    mask = torch.zeros(30, dtype=torch.bool)
    mask[:5] = True
    return graph, y, mask


def test_errors(small):
    graph, y, mask = small
    with pytest.raises(ValueError, match="labelled_mask must be a torch.bool"):
        dplp(graph, y, mask.long())
    with pytest.raises(ValueError, match="labelled_mask must have shape"):
        dplp(graph, y, mask[:-1])
    with pytest.raises(ValueError, match="y must have shape"):
        dplp(graph, y[:-1], mask)
    with pytest.raises(ValueError, match="y must be an integer tensor"):
        dplp(graph, y.float(), mask)
    with pytest.raises(ValueError, match="prior must have shape"):
        dplp(graph, y, mask, prior=y[:10])
    with pytest.raises(ValueError, match="negative labels"):
        dplp(graph, torch.where(mask, -1, y), mask)
    with pytest.raises(ValueError, match="num_classes=2"):
        dplp(graph, y + 2, mask, num_classes=2)
    with pytest.raises(ValueError, match="Unknown mode"):
        dplp(graph, y, mask, mode="U")
    for bad in (-0.1, float("nan"), "q0.5"):
        with pytest.raises(ValueError, match="sigma"):
            dplp(graph, y, mask, sigma=bad)
        with pytest.raises(ValueError, match="sigma"):
            density_ascending_parents(graph, sigma=bad)
    bad_graph = Data(edge_index=graph.edge_index, sim=graph.sim[:-1],
                     density=graph.density, num_nodes=30)
    with pytest.raises(ValueError, match="graph.sim must have shape"):
        dplp(graph=bad_graph, y=y, labelled_mask=mask)
    bad_graph = Data(edge_index=graph.edge_index, sim=graph.sim,
                     density=graph.density[:-1], num_nodes=30)
    with pytest.raises(ValueError, match="graph.density must have shape"):
        density_ascending_parents(bad_graph)
    with pytest.raises(ValueError, match="cycle"):
        path_lengths(torch.tensor([1, 2, 0, -1]))
    with pytest.raises(ValueError, match="parents must"):
        path_lengths(torch.tensor([5, -1]))


def test_no_labelled_node_warns_and_returns_prior(small):
    graph, y, _ = small
    mask = torch.zeros(30, dtype=torch.bool)
    prior = torch.arange(30) % 4
    with pytest.warns(UserWarning, match="no labelled node"):
        out = dplp(graph, y, mask, prior=prior)
    assert torch.equal(out.labels, prior)
    assert out.labels is not prior
    assert bool((out.source == -1).all()) and bool((out.phase == -1).all())
    with pytest.warns(UserWarning):
        out = dplp(graph, y, mask)
    assert bool((out.labels == -1).all())


def test_all_labelled_keeps_ground_truth(small):
    graph, y, _ = small
    mask = torch.ones(30, dtype=torch.bool)
    out = dplp(graph, y, mask, prior=torch.zeros(30, dtype=torch.long))
    assert torch.equal(out.labels, y)
    assert bool((out.phase == 0).all())
