"""graph_density and the PyG transforms AddDensity / DensityKNNGraph: against
hand-computed values, and against build_density_graph."""
import math

import pytest
import torch
import torch_geometric.transforms as T
from torch_geometric.data import Data

from dag_pyg import build_density_graph, graph_density
from dag_pyg.graph.knn import has_faiss
from dag_pyg.transforms import AddDensity, DensityKNNGraph

BACKENDS = ["exact"] + (["faiss"] if has_faiss() else [])


def tiny_graph() -> Data:
    """4 nodes, 5 edges; node 0 has no incoming edge."""
    x = torch.tensor([[1., 0.], [0., 1.], [1., 1.], [3., 4.]])
    edge_index = torch.tensor([[0, 1, 2, 0, 3],
                               [1, 2, 1, 3, 2]])
    return Data(x=x, edge_index=edge_index, y=torch.tensor([0, 1, 1, 0]),
                train_mask=torch.tensor([True, False, True, False]))


# cos of the edges 0->1, 1->2, 2->1, 0->3, 3->2 of tiny_graph(), by hand.
R2 = 1 / math.sqrt(2)
TINY_SIM = [0.0, R2, R2, 0.6, 7 / (5 * math.sqrt(2))]
# In-neighbours: 0: none; 1: {0, 2}; 2: {1, 3}; 3: {0}.
TINY_MEAN = [0.0, R2 / 2, (R2 + 7 / (5 * math.sqrt(2))) / 2, 0.6]
TINY_COUNT_05 = [0.0, 1.0, 2.0, 1.0]


def exact_features(n: int, d: int, seed: int) -> torch.Tensor:
    """Rows of four +-1 entries: norm 2, so every cosine (a multiple of 1/4)
    and every mean of them is computed without rounding by any engine."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, d)
    for i in range(n):
        cols = torch.randperm(d, generator=gen)[:4]
        x[i, cols] = torch.randint(0, 2, (4,), generator=gen).float() * 2 - 1
    return x


def test_graph_density_by_hand(device):
    g = tiny_graph()
    x, ei = g.x.to(device), g.edge_index.to(device)
    dens, sim = graph_density(x, ei)
    torch.testing.assert_close(sim.cpu(), torch.tensor(TINY_SIM))
    torch.testing.assert_close(dens.cpu(), torch.tensor(TINY_MEAN))
    count, _ = graph_density(x, ei, kind="count", threshold=0.5)
    assert torch.equal(count.cpu(), torch.tensor(TINY_COUNT_05))
    count, _ = graph_density(x, ei, kind="count", threshold=0.65)
    assert torch.equal(count.cpu(), torch.tensor([0., 1., 2., 0.]))
    assert dens.dtype == sim.dtype == x.dtype


def test_graph_density_num_nodes_and_empty_graph():
    g = tiny_graph()
    # Nodes past the last target, and a graph without edges, have density 0.
    x = torch.cat([g.x, torch.tensor([[2., 1.]])])
    dens, sim = graph_density(x, g.edge_index)
    assert dens.shape == (5,) and float(dens[4]) == 0.0 and sim.numel() == 5
    dens, sim = graph_density(g.x, torch.empty(2, 0, dtype=torch.long))
    assert torch.equal(dens, torch.zeros(4)) and sim.shape == (0,)
    dens, _ = graph_density(g.x, g.edge_index.int(), num_nodes=4)
    torch.testing.assert_close(dens, torch.tensor(TINY_MEAN))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["mean_sim", "count"])
def test_graph_density_reproduces_build_density_graph(backend, kind, device):
    x = exact_features(40, 16, seed=1).to(device)
    g = build_density_graph(x, 6, backend=backend, density=kind,
                            density_threshold=0.25)
    dens, sim = graph_density(x, g.edge_index, kind, threshold=0.25)
    assert torch.equal(sim, g.sim)
    assert torch.equal(dens, g.density)


def test_graph_density_close_to_build_density_graph_on_any_features():
    # General features: the kNN engines score pairs inside a matrix product,
    # so the two agree to float32 rounding.
    x = torch.randn(200, 24, generator=torch.Generator().manual_seed(0))
    g = build_density_graph(x, 8, backend="exact")
    dens, sim = graph_density(x, g.edge_index)
    torch.testing.assert_close(sim, g.sim, rtol=0, atol=1e-6)
    torch.testing.assert_close(dens, g.density, rtol=0, atol=1e-6)


@pytest.mark.parametrize("edge_index,kw,match", [
    (torch.tensor([0, 1]), {}, r"\[2, num_edges\] tensor \(got shape \(2,\)\)\.$"),
    ([[0, 1], [1, 2]], {}, r"\[2, num_edges\] tensor \(got list\)"),
    (torch.tensor([[0, 1], [1, 2], [2, 3]]), {}, r"edge_index.t\(\)"),
    (torch.tensor([[0., 1.], [1., 2.]]), {}, "integer"),
    (torch.tensor([[0, 4], [1, 2]]), {}, "node 4 but x has 4 rows"),
    (torch.tensor([[0, -1], [1, 2]]), {}, "negative"),
    (torch.tensor([[0, 1], [1, 3]]), {"num_nodes": 3}, "num_nodes=3"),
    (torch.tensor([[0, 1], [1, 2]]), {"kind": "median"},
     r"Unknown density 'median'. Choose one of \['mean_sim', 'count'\]"),
])
def test_graph_density_bad_input(edge_index, kw, match):
    with pytest.raises(ValueError, match=match):
        graph_density(tiny_graph().x, edge_index, **kw)


def test_graph_density_zero_rows_have_similarity_zero(device):
    """CiteSeer-shaped: node 2 has no features (similarity 0 to everything)
    and a fifth node has neither features nor edges."""
    g = tiny_graph()
    x = torch.cat([g.x, torch.zeros(1, 2)]).to(device)
    x[2] = 0
    dens, sim = graph_density(x, g.edge_index.to(device))
    # Edges 0->1, 1->2, 2->1, 0->3, 3->2: those touching node 2 score 0.
    torch.testing.assert_close(sim.cpu(), torch.tensor([0.0, 0.0, 0.0, 0.6, 0.0]))
    torch.testing.assert_close(dens.cpu(), torch.tensor([0.0, 0.0, 0.0, 0.6, 0.0]))
    data = AddDensity()(Data(x=x, edge_index=g.edge_index.to(device)))
    assert torch.equal(data.sim, sim) and torch.equal(data.density, dens)
    # The layer's own cosine (F.normalize) agrees on every edge.
    from dag_pyg import DensityAwareConv
    conv = DensityAwareConv(2, 3).to(device)
    out_own = conv(x, data.edge_index, data.density)
    out_sim = conv(x, data.edge_index, data.density, sim=data.sim)
    torch.testing.assert_close(out_own, out_sim)


def test_density_knn_graph_zero_rows():
    x = torch.tensor([[1., 0.], [0., 0.], [1., 1.], [0., 1.], [-1., 0.]])
    data = DensityKNNGraph(k=2, backend="exact")(Data(x=x))
    nbr = data.edge_index[0].view(5, 2)
    # Node 1 scores 0 against all: its ties go to the smaller indices.
    assert nbr[1].tolist() == [0, 2]
    torch.testing.assert_close(data.sim.view(5, 2)[1], torch.zeros(2))
    # Node 4 = (-1, 0): cos 0 to nodes 1 (zero) and 3, -1/sqrt(2) to 2, -1 to 0.
    assert nbr[4].tolist() == [1, 3]
    # A Feature Bank keeps refusing zero rows (there they signal a bug).
    with pytest.raises(ValueError, match="all-zero rows"):
        build_density_graph(x, 2)


def test_add_density(device):
    data = tiny_graph().to(device)
    out = AddDensity()(data)
    torch.testing.assert_close(out.density.cpu(), torch.tensor(TINY_MEAN))
    torch.testing.assert_close(out.sim.cpu(), torch.tensor(TINY_SIM))
    assert "density" not in data  # __call__ works on a shallow copy
    assert out.y is data.y and out.train_mask is data.train_mask
    assert out.edge_index is data.edge_index
    out = AddDensity(kind="count", threshold=0.5)(tiny_graph())
    assert torch.equal(out.density, torch.tensor(TINY_COUNT_05))
    assert repr(AddDensity()) == "AddDensity(kind=mean_sim)"
    assert repr(AddDensity("count")) == "AddDensity(kind=count)"


def test_add_density_other_attribute():
    data = tiny_graph()
    data.feat, data.x = data.x, torch.randn(4, 3)
    out = AddDensity(attr="feat")(data)
    torch.testing.assert_close(out.density, torch.tensor(TINY_MEAN))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["mean_sim", "count"])
def test_density_knn_graph_equals_build_density_graph(backend, kind, device):
    x = torch.randn(60, 8, generator=torch.Generator().manual_seed(2))
    data = Data(x=x, y=torch.arange(60) % 3, train_mask=torch.arange(60) < 10,
                edge_index=torch.tensor([[0, 1], [1, 0]]),
                edge_attr=torch.ones(2, 4), edge_weight=torch.ones(2)).to(device)
    out = DensityKNNGraph(k=5, backend=backend, density=kind,
                          density_threshold=0.3)(data)
    ref = build_density_graph(x.to(device), 5, backend=backend, density=kind,
                              density_threshold=0.3)
    assert torch.equal(out.edge_index, ref.edge_index)
    assert torch.equal(out.sim, ref.sim)
    assert torch.equal(out.density, ref.density)
    assert "edge_attr" not in out and "edge_weight" not in out
    assert out.y is data.y and out.train_mask is data.train_mask
    assert out.x is data.x and out.num_nodes == 60
    assert set(out.keys()) == {"x", "y", "train_mask", "edge_index", "sim",
                               "density"}
    assert repr(DensityKNNGraph(k=5)) == "DensityKNNGraph(k=5, density=mean_sim)"


def test_compose_knn_graph_then_add_density():
    x = exact_features(30, 12, seed=3) * 5  # NormalizeFeatures keeps cosines
    x = x.abs()  # NormalizeFeatures divides by the row sum: keep it positive
    data = Data(x=x, y=torch.zeros(30, dtype=torch.long))
    transform = T.Compose([T.NormalizeFeatures(), DensityKNNGraph(k=4),
                           AddDensity()])
    out = transform(data)
    ref = build_density_graph(x, 4)
    assert torch.equal(out.edge_index, ref.edge_index)
    torch.testing.assert_close(out.density, ref.density, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.x.sum(dim=1), torch.ones(30))
    assert "DensityKNNGraph(k=4" in repr(transform)


def test_compose_on_citation_style_graph():
    data = tiny_graph()
    out = T.Compose([T.ToUndirected(), AddDensity()])(data)
    # 1->2 and 2->1 are already a pair: 5 edges become 8.
    assert out.edge_index.size(1) == 8 and out.sim.numel() == 8
    # Undirected: node 0 now receives from 1 (cos 0) and 3 (cos 0.6).
    torch.testing.assert_close(out.density[0], torch.tensor(0.3))


def test_transform_bad_inputs():
    with pytest.raises(ValueError, match=r"Choose one of \['mean_sim', 'count'\]"):
        AddDensity(kind="max")
    with pytest.raises(ValueError, match=r"Choose one of \['mean_sim', 'count'\]"):
        DensityKNNGraph(density="max")
    with pytest.raises(ValueError, match="Unknown kNN backend 'annoy'"):
        DensityKNNGraph(backend="annoy")
    for k in (0, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            DensityKNNGraph(k=k)
    data = tiny_graph()
    with pytest.raises(ValueError, match=r"data.pos.*attr="):
        AddDensity(attr="pos")(data)
    with pytest.raises(ValueError, match=r"data.pos.*attr="):
        DensityKNNGraph(k=2, attr="pos")(data)
    with pytest.raises(ValueError, match="needs data.edge_index"):
        AddDensity()(Data(x=data.x))
    with pytest.raises(ValueError, match="k=4 must be smaller"):
        DensityKNNGraph(k=4)(data)
    data.batch = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="before batching"):
        DensityKNNGraph(k=1)(data)
