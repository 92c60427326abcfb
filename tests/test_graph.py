import math

import pytest
import torch

from dag_pyg import build_density_graph, knn_search
from dag_pyg.graph import neighbour_table, resolve_backend
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
def test_graph_matches_brute_force(backend, n, d, k):
    gen = torch.Generator().manual_seed(n * d + k)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * 3 + 1
    x_before = x.clone()
    g = build_density_graph(x, k, backend=backend)
    ei, sim, dens, _ = brute_force_graph(x, k)
    assert torch.equal(x, x_before)  # the caller's features are kept as given
    assert g.num_nodes == n and g.k == k
    assert g.edge_index.shape == (2, n * k)
    assert torch.equal(g.edge_index, ei)
    assert torch.allclose(g.sim.double(), sim, atol=1e-5)
    assert torch.allclose(g.density.double(), dens, atol=1e-5)
    assert not bool((g.edge_index[0] == g.edge_index[1]).any())
    assert torch.equal(neighbour_table(g)[:, 0], ei[0].view(n, k)[:, 0])


def test_count_density():
    x = torch.randn(80, 6, generator=torch.Generator().manual_seed(3))
    g = build_density_graph(x, 10, backend="exact", density="count",
                            density_threshold=0.3)
    _, _, _, count = brute_force_graph(x, 10, threshold=0.3)
    assert torch.equal(g.density.double(), count)
    assert g.density_kind == "count"


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_broken_by_smaller_index(backend):
    # Twelve copies of four points: every similarity ties with eleven others,
    # including copies of the centre itself (similarity 1).
    base = torch.tensor([[1., 0.], [0., 1.], [3., 4.], [-1., 2.]])
    x = base.repeat(12, 1)
    g = build_density_graph(x, 15, backend=backend)
    ei, _, dens, _ = brute_force_graph(x, 15)
    assert torch.equal(g.edge_index, ei)
    assert torch.allclose(g.density.double(), dens, atol=1e-6)
    # Deterministic: a second run gives the same graph.
    assert torch.equal(build_density_graph(x, 15, backend=backend).edge_index,
                       g.edge_index)


def test_exact_chunking_does_not_change_result():
    x = torch.randn(97, 8, generator=torch.Generator().manual_seed(1))
    a = build_density_graph(x, 9, backend="exact", chunk_size=7)
    b = build_density_graph(x, 9, backend="exact", chunk_size=1000)
    assert torch.equal(a.edge_index, b.edge_index)
    assert torch.allclose(a.sim, b.sim, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_knn_search_queries_against_bank(backend):
    gen = torch.Generator().manual_seed(5)
    bank, query = torch.randn(70, 6, generator=gen), torch.randn(13, 6, generator=gen)
    idx, sim = knn_search(query, bank, 5, backend=backend)
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
