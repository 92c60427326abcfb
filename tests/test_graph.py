import math

import pytest
import torch

from dag_pyg import build_density_graph, knn_search
from dag_pyg.graph import (
    bank_drift,
    exact_neighbours,
    neighbour_table,
    normalize_rows,
    recall_lower_bound,
    resolve_backend,
    row_recalls,
    sample_rows,
)
from dag_pyg.graph.knn import has_faiss, has_torch_cluster


def _available_backends() -> list[str]:
    names = ["exact"]
    if has_faiss():
        names.append("faiss")
    if has_torch_cluster():
        names.append("torch_cluster")
    return names


BACKENDS = _available_backends()


def brute_force_graph(x: torch.Tensor, k: int, threshold: float = 0.5):
    """Independent reference: float64 cosine matrix and a Python sort."""
    x = x.double()
    xn = x / x.norm(dim=1, keepdim=True)
    s = (xn @ xn.t()).tolist()
    n = x.size(0)
    src, dst, sims, dens, count = [], [], [], [], []
    for u in range(n):
        order = sorted((v for v in range(n) if v != u), key=lambda v: (-s[u][v], v))
        nb = order[:k]
        src += nb
        dst += [u] * k
        sims += [s[u][v] for v in nb]
        dens.append(sum(s[u][v] for v in nb) / k)
        count.append(sum(1 for v in nb if s[u][v] > threshold))
    return (torch.tensor([src, dst]), torch.tensor(sims, dtype=torch.float64),
            torch.tensor(dens, dtype=torch.float64),
            torch.tensor(count, dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS + ["auto"])
@pytest.mark.parametrize("n,d,k", [(60, 5, 7), (150, 16, 20), (40, 3, 39)])
def test_graph_matches_brute_force(backend, n, d, k, device):
    gen = torch.Generator().manual_seed(n * d + k)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * 3 + 1
    x_before = x.clone()
    x_dev = x.to(device)
    g = build_density_graph(x_dev, k, backend=backend).cpu()
    assert torch.equal(x_dev.cpu(), x_before)
    ei, sim, dens, _ = brute_force_graph(x, k)  # the caller's x kept as given
    assert g.num_nodes == n and g.k == k
    assert g.edge_index.shape == (2, n * k)
    assert torch.equal(g.edge_index, ei)
    assert torch.allclose(g.sim.double(), sim, atol=1e-5)
    assert torch.allclose(g.density.double(), dens, atol=1e-5)
    assert not bool((g.edge_index[0] == g.edge_index[1]).any())
    assert torch.equal(neighbour_table(g)[:, 0], ei[0].view(n, k)[:, 0])


def test_count_density(device):
    x = torch.randn(80, 6, generator=torch.Generator().manual_seed(3))
    g = build_density_graph(x.to(device), 10, backend="exact", density="count",
                            density_threshold=0.3).cpu()
    _, _, _, count = brute_force_graph(x, 10, threshold=0.3)
    assert torch.equal(g.density.double(), count)
    assert g.density_kind == "count"


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_broken_by_smaller_index(backend, device):
    # Twelve copies of four points: every similarity ties with eleven others,
    # including copies of the centre itself (similarity 1).
    base = torch.tensor([[1., 0.], [0., 1.], [3., 4.], [-1., 2.]])
    x = base.repeat(12, 1)
    g = build_density_graph(x.to(device), 15, backend=backend).cpu()
    ei, _, dens, _ = brute_force_graph(x, 15)
    assert torch.equal(g.edge_index, ei)
    assert torch.allclose(g.density.double(), dens, atol=1e-6)
    # Deterministic: a second run gives the same graph.
    assert torch.equal(build_density_graph(x.to(device), 15, backend=backend)
                       .edge_index.cpu(), g.edge_index)


def test_rescoring_in_blocks_of_rows_does_not_change_result(monkeypatch):
    # Many near-ties in every row (twelve copies of four points, plus noise
    # far below the rescoring tolerance): re-scored in blocks of 5 rows.
    from dag_pyg.graph import knn as knn_module

    gen = torch.Generator().manual_seed(4)
    x = torch.tensor([[1., 0.], [0., 1.], [3., 4.], [-1., 2.]]).repeat(12, 1)
    x = x + 1e-9 * torch.randn(x.shape, generator=gen)
    whole = build_density_graph(x, 15, backend="faiss" if has_faiss() else "exact")
    monkeypatch.setattr(knn_module, "RESCORE_ROWS", 5)
    blocks = build_density_graph(x, 15, backend="faiss" if has_faiss() else "exact")
    assert torch.equal(whole.edge_index, blocks.edge_index)
    assert torch.equal(whole.sim, blocks.sim)


def test_exact_rows_solved_in_blocks_do_not_change_result(monkeypatch):
    # Every row's k-th place ties to the end of its list (twelve copies of
    # four points): all 48 rows are solved exactly, here 5 at a time.
    from dag_pyg.graph import knn as knn_module

    x = torch.tensor([[1., 0.], [0., 1.], [3., 4.], [-1., 2.]]).repeat(12, 1)
    backend = "faiss" if has_faiss() else "exact"
    whole = build_density_graph(x, 15, backend=backend)
    calls = []
    refine = knn_module._refine_rows
    monkeypatch.setattr(knn_module, "_refine_rows", lambda q, b, rows, *a, **kw:
                        calls.append(rows.numel()) or refine(q, b, rows, *a, **kw))
    monkeypatch.setattr(knn_module, "REFINE_SCORES", 48 * 5)
    blocks = build_density_graph(x, 15, backend=backend)
    assert len(calls) > 1 and max(calls) <= 5
    assert torch.equal(whole.edge_index, blocks.edge_index)
    assert torch.equal(whole.sim, blocks.sim)


def test_exact_chunking_does_not_change_result():
    x = torch.randn(97, 8, generator=torch.Generator().manual_seed(1))
    a = build_density_graph(x, 9, backend="exact", chunk_size=7)
    b = build_density_graph(x, 9, backend="exact", chunk_size=1000)
    assert torch.equal(a.edge_index, b.edge_index)
    assert torch.allclose(a.sim, b.sim, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_search_queries_against_bank(backend, device):
    gen = torch.Generator().manual_seed(5)
    bank, query = torch.randn(70, 6, generator=gen), torch.randn(13, 6, generator=gen)
    idx, sim = knn_search(query.to(device), bank.to(device), 5, backend=backend)
    idx, sim = idx.cpu(), sim.cpu()
    s = torch.nn.functional.normalize(query.double(), dim=1) @ \
        torch.nn.functional.normalize(bank.double(), dim=1).t()
    ref = torch.tensor([sorted(range(70), key=lambda v, r=r: (-s[r, v], v))[:5]
                        for r in range(13)])
    assert torch.equal(idx, ref)
    assert torch.allclose(sim.double(), s.gather(1, ref), atol=1e-6)


def test_auto_backend_choice():
    assert resolve_backend("auto", torch.device("cpu")) == (
        "faiss" if has_faiss() else "exact")
    assert resolve_backend("exact", torch.device("cpu")) == "exact"


@pytest.mark.parametrize("x,k,kw,match", [
    (torch.randn(10, 3), 10, {}, "smaller than the number of nodes"),
    (torch.randn(10, 3), 0, {}, "positive integer"),
    (torch.randn(10), 2, {}, "2-D tensor"),
    (torch.randn(4, 3, 2), 2, {}, "2-D tensor"),
    (torch.tensor([[1., math.nan], [1., 2.], [0., 1.]]), 1, {}, "NaN or inf"),
    (torch.tensor([[1., math.inf], [1., 2.], [0., 1.]]), 1, {}, "NaN or inf"),
    (torch.tensor([[0., 0.], [1., 2.], [0., 1.]]), 1, {}, "all-zero rows"),
    (torch.randn(10, 3), 2, {"backend": "annoy"}, "Unknown kNN backend 'annoy'"),
    (torch.randn(10, 3), 2, {"density": "kde"}, "Unknown density 'kde'"),
    (torch.arange(12).view(6, 2), 2, {}, "floating-point"),
])
def test_bad_input(x, k, kw, match):
    with pytest.raises(ValueError, match=match):
        build_density_graph(x, k, **kw)


def test_knn_search_bad_width():
    with pytest.raises(ValueError, match="same encoder"):
        knn_search(torch.randn(3, 4), torch.randn(10, 5), 2)


needs_faiss = pytest.mark.skipif(not has_faiss(), reason="needs faiss")


def _clustered(n: int, d: int, centres: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(centres, d, generator=gen) * 3
    return c[torch.randint(centres, (n,), generator=gen)] + torch.randn(
        n, d, generator=gen)


@needs_faiss
def test_ivf_scanning_every_cell_is_exact():
    x = _clustered(600, 16, 12, 0)
    g = build_density_graph(x, 20, backend="faiss_ivf", ivf_nlist=8, ivf_nprobe=8)
    exact = build_density_graph(x, 20, backend="exact")
    _, _, dens, _ = brute_force_graph(x, 20)
    assert g.backend == "faiss_ivf"
    # The same lists as the exact engine (float32 near-ties included).
    assert torch.equal(g.edge_index, exact.edge_index)
    assert torch.allclose(g.sim, exact.sim, atol=1e-6)
    assert torch.allclose(g.density.double(), dens, atol=1e-5)


@needs_faiss
def test_ivf_partial_scan_is_approximate_but_well_formed():
    x = _clustered(2000, 16, 20, 1)
    k = 10
    exact = build_density_graph(x, k, backend="exact").edge_index[0].view(-1, k)
    approx = build_density_graph(x, k, backend="faiss_ivf", ivf_nlist=40,
                                 ivf_nprobe=2)
    nb = approx.edge_index[0].view(-1, k)
    recall = sum(len(set(a) & set(b)) for a, b in zip(nb.tolist(), exact.tolist(),
                                                      strict=True)) / exact.numel()
    assert 0.8 < recall < 1.0  # close, and not secretly exact
    assert bool((nb >= 0).all())
    assert not bool((nb == torch.arange(2000).unsqueeze(1)).any())
    s = approx.sim.view(-1, k)
    assert bool((s[:, :-1] >= s[:, 1:]).all())


@needs_faiss
def test_ivf_rows_with_too_few_candidates_are_solved_exactly():
    # 10 cells of ~40 points, one probed, k=60: cells run out of points, so
    # faiss returns -1 slots; those rows must fall back to exact search.
    x = _clustered(400, 8, 10, 2)
    g = build_density_graph(x, 60, backend="faiss_ivf", ivf_nlist=10, ivf_nprobe=1)
    exact = build_density_graph(x, 60, backend="exact")
    nb, ref = g.edge_index[0].view(-1, 60), exact.edge_index[0].view(-1, 60)
    assert bool((nb >= 0).all())
    # Every row got 60 distinct neighbours although each cell holds ~40.
    assert all(len(set(row)) == 60 for row in nb.tolist())
    same = sum(torch.equal(a, b) for a, b in zip(nb, ref, strict=True))
    assert same >= 200  # rows whose cell ran out are solved exactly


@needs_faiss
@pytest.mark.parametrize("backend,kw", [
    ("faiss_ivf", {"ivf_nlist": 2, "ivf_nprobe": 2}),
    ("faiss_ivf_hnsw", {"ivf_nlist": 2, "ivf_nprobe": 2}),
    ("faiss_hnsw", {}),
])
def test_approximate_rows_tied_past_the_list_widen_by_the_index(backend, kw,
                                                                 monkeypatch):
    # Forty copies of five points, k=15: every row's k-th place ties with
    # 24 more points, past the list of k + 2. The index itself (every cell
    # scanned, or a 200-node HNSW) re-searches with lists of 34, 68: no row
    # is scanned against the whole base, and the answer is the tie rule's.
    from dag_pyg.graph import knn as knn_module

    x = torch.tensor([[1., 0.], [0., 1.], [3., 4.], [-1., 2.], [2., -1.]]
                     ).repeat(40, 1)
    exact_rows = []
    refine = knn_module._refine_rows
    monkeypatch.setattr(knn_module, "_refine_rows", lambda q, b, rows, *a, **k:
                        exact_rows.append(rows.numel()) or refine(q, b, rows, *a, **k))
    widths = []
    widen = knn_module._widen_rows
    monkeypatch.setattr(knn_module, "_widen_rows", lambda *a, **k:
                        widths.append(a[5].numel()) or widen(*a, **k))
    g = build_density_graph(x, 15, backend=backend, ivf_recall=None, **kw)
    assert widths == [200] and exact_rows == []
    ei, _, _, _ = brute_force_graph(x, 15)
    assert torch.equal(g.edge_index, ei)
    # A shard's rows widen alike: the whole search's lists.
    part, _ = knn_search(x, None, 15, backend=backend, ivf_recall=None,
                         rows=(37, 121), **kw)
    assert torch.equal(part, ei[0].view(200, 15)[37:121])
    # Features of another dtype are searched as float32 (bf16 has no numpy).
    widths.clear()
    g16 = build_density_graph(x.to(torch.bfloat16), 15, backend=backend,
                              ivf_recall=None, **kw)
    assert widths == [200] and torch.equal(g16.edge_index, ei)
    # Widening stops at WIDEN_MAX: the rows still tied are solved exactly.
    monkeypatch.setattr(knn_module, "WIDEN_MAX", 34)
    exact_rows.clear()
    g = build_density_graph(x, 15, backend=backend, ivf_recall=None, **kw)
    assert exact_rows == [200] and torch.equal(g.edge_index, ei)


@needs_faiss
def test_ivf_hnsw_centres_are_exact_k_means_and_the_index_ignores_threads():
    import faiss
    import numpy as np

    from benchmarks.common import clustered_features
    from dag_pyg.graph.knn import ivf_index, train_ivf

    x, _ = clustered_features(13000, 16, num_classes=40, seed=3)
    x = torch.nn.functional.normalize(x, dim=1).numpy()
    # The HNSW quantizer holds the centres of faiss' k-means by exact
    # assignment: those of a flat quantizer trained alike (assigned through
    # the HNSW graph, as faiss does by default, 200 centres come out
    # otherwise).
    flat = ivf_index(16, 200, "flat")
    flat.cp.max_points_per_centroid = 64
    train_ivf(flat, x)
    before = faiss.omp_get_max_threads()
    found = []
    for threads in (1, 2):
        faiss.omp_set_num_threads(threads)
        index = ivf_index(16, 200, "hnsw")
        train_ivf(index, x)
        assert faiss.omp_get_max_threads() == threads  # restored
        index.add(x)
        index.nprobe = 2
        found.append(index.search(x[:500], 10)[1])
        assert np.array_equal(index.quantizer.reconstruct_n(0, 200),
                              flat.quantizer.reconstruct_n(0, 200))
    faiss.omp_set_num_threads(before)
    assert np.array_equal(found[0], found[1])


@needs_faiss
def test_ivf_hnsw_cells_keep_their_size_and_nprobe_is_tuned(monkeypatch, caplog):
    import dag_pyg.graph.knn as knn_module

    # Default cells: ceil(N / IVF_HNSW_CELL), at least 39 training points each.
    assert knn_module.default_nlist(1_000_000, "hnsw") == 977  # ceil(1e6 / 1024)
    assert knn_module.default_nlist(1_000_000) == 4000  # flat: 4 sqrt(N)
    assert knn_module.default_nlist(5000, "hnsw") == 5
    assert knn_module.default_nlist(50, "hnsw") == 1
    monkeypatch.setattr(knn_module, "IVF_HNSW_CELL", 100)
    assert knn_module.default_nlist(6000, "hnsw") == 60
    from benchmarks.common import clustered_features

    x, _ = clustered_features(6000, 32, num_classes=30, seed=1)
    k = 16
    exact = build_density_graph(x, k, backend="exact")
    with caplog.at_level("INFO", logger="dag_pyg.graph.knn"):
        g = build_density_graph(x, k, backend="faiss_ivf_hnsw")
    assert g.backend == "faiss_ivf_hnsw" and g.ivf_nlist == 60
    # Tuned from one cell up (not from ivf_nprobe's 16): the sample reaches
    # the target, and the whole graph's recall (measured here) stands beside.
    assert 1 < g.ivf_nprobe < 16 and g.ivf_recall >= 0.99
    whole = _recall_of(g, exact, k)
    assert whole >= 0.985 and abs(whole - g.ivf_recall) < 0.01
    assert f"faiss_ivf_hnsw: nprobe {g.ivf_nprobe} of 60 cells" in caplog.text
    # One cell per query is far from it: not secretly exact.
    one = build_density_graph(x, k, backend="faiss_ivf_hnsw", ivf_nprobe=1,
                              ivf_recall=None)
    assert _recall_of(one, exact, k) < 0.99
    # Every cell scanned: the exact lists (re-scored, ties by index).
    every = build_density_graph(x[:600], 20, backend="faiss_ivf_hnsw",
                                ivf_nlist=8, ivf_nprobe=8, ivf_recall=None)
    assert torch.equal(every.edge_index,
                       build_density_graph(x[:600], 20, backend="exact").edge_index)
    with pytest.raises(ValueError, match="faiss_ivf_hnsw needs"):
        knn_search(torch.randn(50, 4), None, 5, backend="faiss_ivf_hnsw",
                   ivf_nprobe=0)


def test_ivf_bad_settings():
    if not has_faiss():
        with pytest.raises(ValueError, match="faiss"):
            knn_search(torch.randn(50, 4), None, 5, backend="faiss_ivf")
        return
    with pytest.raises(ValueError, match="ivf_nprobe"):
        knn_search(torch.randn(50, 4), None, 5, backend="faiss_ivf", ivf_nprobe=0)


def test_bank_drift_against_hand_computed():
    def bank(degrees):
        a = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
        return torch.stack([a.cos(), a.sin()], 1).float()

    old = bank([0, 10, 90, 100])  # 1-NN pairs: (0, 1), (2, 3)
    same_ = bank_drift(old, old, build_density_graph(old, 1, backend="exact"), 1)
    assert same_ == pytest.approx({"bank_cos_prev": 1.0, "knn_kept": 1.0})
    # Negated features: every cosine -1, every neighbourhood kept.
    neg = bank_drift(old, -old, build_density_graph(-old, 1, backend="exact"), 1)
    assert neg == pytest.approx({"bank_cos_prev": -1.0, "knn_kept": 1.0})
    # Nodes 1 and 3 swap sides: pairs become (0, 3), (1, 2), none kept;
    # cosines 1, cos 85, 1, cos 95 average to 1/2.
    new = bank([0, 95, 90, 5])
    out = bank_drift(old, new, build_density_graph(new, 1, backend="exact"), 1)
    assert out == pytest.approx({"bank_cos_prev": 0.5, "knn_kept": 0.0}, abs=1e-6)
    # Two of four 2-NN lists: hand count on k=2 (k capped at the graph's k).
    g2 = build_density_graph(new, 2, backend="exact")
    prev = {0: {1, 2}, 1: {0, 2}, 2: {3, 1}, 3: {2, 1}}  # old 2-NN by angle
    now = {u: set(g2.edge_index[0].view(4, 2)[u].tolist()) for u in range(4)}
    expect = sum(len(prev[u] & now[u]) for u in range(4)) / 8
    assert bank_drift(old, new, g2, 5)["knn_kept"] == pytest.approx(expect)
    with pytest.raises(ValueError, match="cannot be compared"):
        bank_drift(old, old[:3], g2, 2)


def _recall_of(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    a, b = a.edge_index[0].view(-1, k), b.edge_index[0].view(-1, k)
    return float((a.unsqueeze(2) == b.unsqueeze(1)).any(2).float().mean())


@pytest.mark.skipif(not has_faiss(), reason="faiss not installed")
def test_ivf_nprobe_is_tuned_to_the_recall_target(caplog):
    from benchmarks.common import clustered_features

    x, _ = clustered_features(6000, 32, num_classes=30, seed=1)
    k = 16
    exact = build_density_graph(x, k, backend="faiss")
    # From one cell per query, far below the target: doubled until the
    # sampled queries recall 99 % of their exact neighbours.
    with caplog.at_level("INFO", logger="dag_pyg.graph.knn"):
        g = build_density_graph(x, k, backend="faiss_ivf", ivf_nlist=100,
                                ivf_nprobe=1)
    # (nprobe 1, 2, 4, ...; then halvings of the last step, to an eighth.)
    assert 1 < g.ivf_nprobe <= 100 and g.ivf_recall >= 0.99
    # The sample's recall stands for the whole graph's (measured here).
    whole = _recall_of(g, exact, k)
    assert whole >= 0.985 and abs(whole - g.ivf_recall) < 0.01
    assert "recalls" in caplog.text and f"nprobe {g.ivf_nprobe} of 100" in caplog.text
    # The tuned nprobe's sample recall, as the tuning measured it, reaches
    # the target less two standard errors; one cell fewer misses it here
    # (the ladder 1, 2, 4, 8: the step from 4 to 8 halved to single cells).
    rows = sample_rows(6000)
    sample_exact = exact_neighbours(normalize_rows(x), rows, k)

    def bound(graph):
        return recall_lower_bound(row_recalls(neighbour_table(graph)[rows],
                                              sample_exact), population=6000)

    tuned = row_recalls(neighbour_table(g)[rows], sample_exact)
    assert float(tuned.mean()) == pytest.approx(g.ivf_recall)
    assert bound(g) >= 0.99
    below = build_density_graph(x, k, backend="faiss_ivf", ivf_nlist=100,
                                ivf_nprobe=g.ivf_nprobe - 1, ivf_recall=None)
    assert g.ivf_nprobe == 6 and bound(below) < 0.99
    # ivf_recall None: nprobe as given, nothing measured.
    given = build_density_graph(x, k, backend="faiss_ivf", ivf_nlist=100,
                                ivf_nprobe=1, ivf_recall=None)
    assert given.ivf_nprobe == 1 and math.isnan(given.ivf_recall)
    assert _recall_of(given, exact, k) < 0.99
    # Recall 1 scans until every sampled neighbour is found (up to all cells).
    full = build_density_graph(x, k, backend="faiss_ivf", ivf_nlist=100,
                               ivf_nprobe=1, ivf_recall=1.0)
    assert full.ivf_recall == 1.0 or full.ivf_nprobe == 100
    with pytest.raises(ValueError, match="ivf_recall"):
        build_density_graph(x, k, backend="faiss_ivf", ivf_recall=1.5)


@pytest.mark.skipif(not has_faiss(), reason="faiss not installed")
def test_auto_backend_turns_to_ivf_for_large_banks(monkeypatch, caplog):
    import dag_pyg.graph.knn as knn_module

    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu, 10_000) == "faiss"
    assert resolve_backend("auto", cpu, knn_module.IVF_AUTO_NODES) == "faiss"
    assert resolve_backend("auto", cpu, knn_module.IVF_AUTO_NODES + 1) == \
        "faiss_ivf_hnsw"
    assert resolve_backend("exact", cpu, 10**9) == "exact"  # explicit wins
    assert resolve_backend("faiss_ivf", cpu, 10**9) == "faiss_ivf"
    monkeypatch.setattr(knn_module, "IVF_AUTO_NODES", 500)
    monkeypatch.setattr(knn_module, "IVF_HNSW_CELL", 100)
    x = torch.randn(800, 8, generator=torch.Generator().manual_seed(0))
    with caplog.at_level("INFO", logger="dag_pyg.graph.knn"):
        g = build_density_graph(x, 5)
    assert g.backend == "faiss_ivf_hnsw" and g.ivf_nlist == 8
    assert g.ivf_recall >= 0.99
    assert "faiss_ivf_hnsw for 800 nodes" in caplog.text


def test_neighbour_recall_by_hand():
    from dag_pyg.graph import neighbour_recall

    exact = torch.tensor([[1, 2, 3], [0, 2, 3]])
    found = torch.tensor([[3, 1, 9], [4, 5, 6]])  # 2 of 3, then 0 of 3
    assert neighbour_recall(found, exact) == pytest.approx(2 / 6)
    assert neighbour_recall(found, exact, chunk=1) == pytest.approx(2 / 6)
    assert neighbour_recall(exact, exact) == 1.0
