"""The approximate ``faiss_hnsw`` backend against exact search, and its
efSearch tuned to the recall target (as faiss_ivf's nprobe)."""
import math

import pytest
import torch

from dag_pyg import build_density_graph, knn_search
from dag_pyg.graph import (
    exact_neighbours,
    neighbour_recall,
    neighbour_table,
    normalize_rows,
    recall_lower_bound,
    resolve_backend,
    row_recalls,
    sample_rows,
)
from dag_pyg.graph import knn as knn_module
from dag_pyg.graph.knn import BACKENDS, has_faiss

pytestmark = pytest.mark.skipif(not has_faiss(), reason="needs faiss")


@pytest.fixture(autouse=True)
def one_faiss_thread():
    # faiss builds HNSW graphs in an order that depends on its threads'
    # timing: one thread makes them, and these tests, deterministic.
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def _clustered(n: int, d: int, centres: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, d, generator=gen) * 3
    return c[torch.randint(centres, (n,), generator=gen)] + torch.randn(
        n, d, generator=gen)


def test_hnsw_graph_recalls_exact_neighbours_in_the_same_format(caplog):
    x, k = _clustered(3000, 16, 15, 0), 12
    exact = build_density_graph(x, k, backend="exact")
    with caplog.at_level("INFO", logger="dag_pyg.graph.knn"):
        g = build_density_graph(x, k, backend="faiss_hnsw")
    assert "faiss_hnsw" in BACKENDS and g.backend == "faiss_hnsw"
    assert g.edge_index.shape == exact.edge_index.shape == (2, 3000 * k)
    assert torch.equal(g.edge_index[1], exact.edge_index[1])  # grouped by centre
    nb = neighbour_table(g)
    assert bool((nb >= 0).all()) and bool((nb < 3000).all())
    assert not bool((nb == torch.arange(3000).unsqueeze(1)).any())  # no self
    assert all(len(set(row)) == k for row in nb[:200].tolist())
    s = g.sim.view(-1, k)
    assert bool((s[:, :-1] >= s[:, 1:]).all())
    # The same similarity formula and density as exact search.
    xn = normalize_rows(x)
    assert torch.allclose(g.sim, (xn[g.edge_index[0]] * xn[g.edge_index[1]]).sum(1),
                          atol=1e-5)
    assert torch.allclose(g.density, s.mean(1), atol=1e-6)
    whole = neighbour_recall(nb, neighbour_table(exact))
    assert g.hnsw_recall >= 0.99 and whole >= 0.99
    assert abs(whole - g.hnsw_recall) < 0.01  # the sample stands for the graph
    assert g.hnsw_m == knn_module.HNSW_M
    assert g.hnsw_ef_construction == knn_module.HNSW_EF_CONSTRUCTION
    assert f"efSearch {g.hnsw_ef_search} " in caplog.text and "recalls" in caplog.text


def test_hnsw_ef_search_is_tuned_to_the_recall_target(caplog):
    # A sparse, poorly built graph (M 8, build beam 10): its first efSearch
    # (k + 3: what faiss searches at least) misses the target.
    x, k = _clustered(2000, 16, 10, 1), 10
    weak = {"hnsw_m": 8, "hnsw_ef_construction": 10, "hnsw_ef_search": 1}
    start = k + knn_module.EXTRA + 1
    with caplog.at_level("INFO", logger="dag_pyg.graph.knn"):
        g = build_density_graph(x, k, backend="faiss_hnsw", **weak)
    ladder = [start]
    while ladder[-1] < g.hnsw_ef_search:
        ladder.append(math.ceil(knn_module.HNSW_EF_STEP * ladder[-1]))
    assert len(ladder) > 1 and g.hnsw_recall >= 0.99
    # The sample's recall as the tuning measured it, by the public functions:
    # it reaches the target less two standard errors.
    xn = normalize_rows(x)
    rows = sample_rows(2000)
    exact = exact_neighbours(xn, rows, k)

    def bound(graph):
        return recall_lower_bound(row_recalls(neighbour_table(graph)[rows], exact),
                                  population=2000)

    tuned = row_recalls(neighbour_table(g)[rows], exact)
    assert float(tuned.mean()) == pytest.approx(g.hnsw_recall)
    assert rows.numel() == 1000 and bound(g) >= 0.99
    assert f"standard errors: {bound(g):.4f})" in caplog.text
    # The ladder's step before misses it on the same sample (ivf_recall None
    # searches at hnsw_ef_search as given, nothing measured); the tuned value
    # lies in the step after it (the bisection: test_tuning_bisects_...).
    below = build_density_graph(x, k, backend="faiss_hnsw", ivf_recall=None,
                                **{**weak, "hnsw_ef_search": ladder[-2]})
    assert below.hnsw_ef_search == ladder[-2] and math.isnan(below.hnsw_recall)
    assert bound(below) < 0.99
    assert ladder[-2] < g.hnsw_ef_search <= ladder[-1]


def test_tuning_bisects_the_last_step_to_the_smallest_value_that_reaches_it():
    # A search whose sampled recall is a known step function of its setting:
    # every row's 2 neighbours found at 40 and above, 9 rows of 10 at 37-39,
    # half of each row below 37.
    exact = torch.arange(20).view(10, 2)
    rows = torch.arange(10)
    tried = []

    def search(value):
        tried.append(value)
        found = exact.clone()
        if value < 40:
            found[0, 1] = -1
        if value < 37:
            found[:, 1] = -1
        return found.numpy()

    def tune(values, target):
        tried.clear()
        return knn_module._tune(search, values, exact, rows, 2, False, target,
                                population=1000)

    value, rec, lower = tune([10, 20, 40, 80], 0.8)
    # 40 reaches it, 20 did not: 30 and 35 miss, 37 reaches it.
    assert tried == [10, 20, 40, 30, 35, 37]  # three halvings
    assert value == 37 and rec == pytest.approx(0.95)
    per_row = torch.tensor([0.5] + [1.0] * 9, dtype=torch.float64)
    assert lower == pytest.approx(recall_lower_bound(per_row, population=1000))
    # The first value reaches it: nothing to bisect.
    assert tune([40, 80], 0.8) == (40, 1.0, 1.0) and tried == [40]
    # None reaches it: the last, with what it measured.
    value, rec, lower = tune([10, 20], 0.99)
    assert (value, rec) == (20, 0.5) and lower < 0.99 and tried == [10, 20]


def test_row_recalls_and_their_lower_bound_by_hand():
    exact = torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]])
    found = torch.tensor([[2, 1], [3, 4], [5, 0], [8, 7]])
    per_row = row_recalls(found, exact, chunk=3)
    assert per_row.tolist() == [1.0, 1.0, 0.5, 1.0]
    assert float(per_row.mean()) == pytest.approx(neighbour_recall(found, exact))
    # mean 0.875, sample standard deviation 0.25, standard error 0.25 / 2.
    assert recall_lower_bound(per_row) == pytest.approx(0.875 - 2 * 0.125)
    assert recall_lower_bound(per_row, z=0) == pytest.approx(0.875)
    # Drawn from 7 queries: the standard error shrinks by sqrt((7-4)/(7-1));
    # the sample that is every query has no margin.
    assert recall_lower_bound(per_row, population=7) == pytest.approx(
        0.875 - 2 * 0.125 * math.sqrt(3 / 6))
    assert recall_lower_bound(per_row, population=4) == pytest.approx(0.875)
    with pytest.raises(ValueError, match="population"):
        recall_lower_bound(per_row, population=3)
    assert recall_lower_bound(torch.tensor([0.5], dtype=torch.float64)) == 0.5
    assert recall_lower_bound(row_recalls(exact, exact)) == 1.0


def test_hnsw_tuning_stops_at_its_largest_ef_search(monkeypatch, caplog):
    # Out of reach below HNSW_EF_MAX: the largest efSearch tried, the recall
    # it measured, and a warning.
    monkeypatch.setattr(knn_module, "HNSW_EF_MAX", 20)
    x = _clustered(2000, 16, 10, 1)
    with caplog.at_level("INFO", logger="dag_pyg.graph.knn"):
        g = build_density_graph(x, 10, backend="faiss_hnsw", hnsw_m=8,
                                hnsw_ef_construction=10, hnsw_ef_search=1)
    assert g.hnsw_ef_search == 20 and g.hnsw_recall < 0.99
    assert "recalls only" in caplog.text


def test_hnsw_small_bank_is_exact_with_the_tie_rule():
    # Twelve copies of four points: every similarity ties; with efSearch
    # above N the search reaches every node and the lists are the exact ones.
    x = torch.tensor([[1., 0.], [0., 1.], [3., 4.], [-1., 2.]]).repeat(12, 1)
    g = build_density_graph(x, 15, backend="faiss_hnsw")
    assert torch.equal(g.edge_index, build_density_graph(x, 15,
                                                         backend="exact").edge_index)


def test_hnsw_shard_rows_equal_the_whole_graphs():
    # A sharded refresh's part (rows of the centres, searched against all
    # nodes) equals those rows of the whole graph: the same index (one
    # thread) and the same efSearch, tuned on the whole bank's sample.
    x, k = _clustered(3000, 16, 15, 2), 12
    whole = build_density_graph(x, k, backend="faiss_hnsw")
    part = build_density_graph(x, k, backend="faiss_hnsw", rows=(1000, 1700))
    assert part.hnsw_ef_search == whole.hnsw_ef_search
    assert part.hnsw_recall == whole.hnsw_recall
    assert torch.equal(part.edge_index, whole.edge_index[:, 1000 * k:1700 * k])
    assert torch.equal(part.sim, whole.sim[1000 * k:1700 * k])
    assert torch.equal(part.density, whole.density[1000:1700])


def test_hnsw_queries_against_a_bank():
    gen = torch.Generator().manual_seed(5)
    bank, query = torch.randn(300, 8, generator=gen), torch.randn(40, 8, generator=gen)
    idx, sim = knn_search(query, bank, 6, backend="faiss_hnsw")
    ref, ref_sim = knn_search(query, bank, 6, backend="exact")
    assert torch.equal(idx, ref)
    assert torch.allclose(sim, ref_sim, atol=1e-6)


def test_exact_neighbours_by_hand():
    x = normalize_rows(torch.tensor([[1., 0.], [0.9, 0.1], [0., 1.], [0.1, 0.9]]))
    rows = torch.tensor([0, 2])
    assert exact_neighbours(x, rows, 1).tolist() == [[1], [3]]
    # Against another base: the row itself is not left out.
    assert exact_neighbours(x, rows, 1, base=x).tolist() == [[0], [2]]
    assert sample_rows(10, 4).tolist() == [0, 3, 6, 9]
    assert sample_rows(3).tolist() == [0, 1, 2]


def test_hnsw_bad_settings():
    assert resolve_backend("faiss_hnsw", torch.device("cpu")) == "faiss_hnsw"
    for kw in ({"hnsw_m": 1}, {"hnsw_ef_construction": 0}, {"hnsw_ef_search": 0}):
        with pytest.raises(ValueError, match="faiss_hnsw needs"):
            knn_search(torch.randn(50, 4), None, 5, backend="faiss_hnsw", **kw)


def test_local_order_groups_nearby_rows():
    # 4 far-apart clusters, rows in random order: the order visits each
    # cluster in few runs (at most one per centre, ceil(sqrt(400)) = 20).
    gen = torch.Generator().manual_seed(3)
    label = torch.randint(4, (400,), generator=gen)
    x = torch.randn(4, 16, generator=gen)[label] * 3 + torch.randn(400, 16,
                                                                   generator=gen)
    order = knn_module.local_order(x)
    assert torch.equal(order.sort().values, torch.arange(400))
    runs = 1 + int((label[order][1:] != label[order][:-1]).sum())
    random_runs = 1 + int((label[1:] != label[:-1]).sum())
    assert runs <= 20 < random_runs
    assert knn_module.local_order(x[:0]).numel() == 0


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_search_in_local_order_equals_one_search(kind, monkeypatch):
    import faiss

    x = normalize_rows(_clustered(1000, 16, 10, seed=4))
    base = x.numpy()
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(16, 8, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(16), 16, 20,
                                   faiss.METRIC_INNER_PRODUCT)
        index.train(base)
        index.nprobe = 2
    index.add(base)
    want_sim, want_idx = index.search(base, 9)
    monkeypatch.setattr(knn_module, "LOCAL_ORDER_BLOCK", 300)  # 4 blocks
    sim, idx = knn_module.search_local(index, x, 9)
    assert torch.equal(idx, torch.from_numpy(want_idx))
    assert torch.equal(sim, torch.from_numpy(want_sim))
    # An order given (as faiss_hnsw passes its insertion order): the same.
    sim, idx = knn_module.search_local(index, x, 9, torch.arange(999, -1, -1))
    assert torch.equal(idx, torch.from_numpy(want_idx))
    assert torch.equal(sim, torch.from_numpy(want_sim))
