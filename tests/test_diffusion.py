"""Label diffusion (pseudo_label.source: diffusion) against a hand-solved
two-node system, a dense solve of the same system, and SciPy's conjugate
gradients (the peer in benchmarks/speed/bench_dplp.py)."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import scipy.sparse as scipy_sparse
import torch
from scipy.sparse.linalg import cg as scipy_cg
from torch_geometric.data import Data

from dag_pyg.config import ConfigError, load_config
from dag_pyg.graph import build_density_graph
from dag_pyg.propagation import label_diffusion, normalized_affinity, pseudo_labels


def pair(sim: float = 0.5) -> Data:
    # Two nodes, each the other's neighbour, with a third node alone.
    return Data(edge_index=torch.tensor([[1, 0], [0, 1]]),
                sim=torch.tensor([sim, sim]), density=torch.tensor([sim, sim, 0.0]),
                num_nodes=3)


def test_two_nodes_hand_solved():
    # W + W^T = 2 s^3 off the diagonal, so W_hat = [[0, 1], [1, 0]] whatever
    # s is, and (I - a W_hat) z = e_0 gives z = (1, a) / (1 - a^2).
    a = 0.9
    w_hat = normalized_affinity(pair(0.5)).to_dense()
    assert torch.allclose(w_hat, torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 0]],
                                              dtype=torch.float64))
    y, mask = torch.tensor([0, 1, 1]), torch.tensor([True, False, False])
    z = label_diffusion(pair(0.5), y, mask, num_classes=2, alpha=a)
    want = torch.tensor([[1 / (1 - a * a), 0], [a / (1 - a * a), 0], [0, 0]],
                        dtype=torch.float64)
    assert torch.allclose(z, want, rtol=1e-12, atol=1e-12)
    # Node 2 is reached by no label: the Label Bank's entry stays.
    prior = torch.tensor([0, 1, 1])
    out = pseudo_labels(pair(0.5), y, mask, prior, "diffusion", alpha=a)
    assert out.targets.tolist() == [0, 0, 1]
    assert out.covered.tolist() == [False, True, False]
    # Dissimilar neighbours carry no weight: nothing moves, z = b.
    z = label_diffusion(pair(-0.5), y, mask, num_classes=2, alpha=a)
    assert z.tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    out = pseudo_labels(pair(-0.5), y, mask, prior, "diffusion", alpha=a)
    assert out.targets.tolist() == [0, 1, 1] and not out.covered.any()


def knn_graph(n=120, k=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 8, generator=gen)
    y = torch.arange(n) % 3
    x = centres[y] + 0.9 * torch.randn(n, 8, generator=gen)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen)[:9]] = True
    return build_density_graph(x, k=k, backend="exact"), y, mask


def dense_system(graph, alpha, gamma=3.0):
    n = graph.num_nodes
    w = torch.zeros(n, n, dtype=torch.float64)
    src, dst = graph.edge_index
    w[dst, src] += graph.sim.double().clamp_min(0) ** gamma
    w = w + w.T
    w.fill_diagonal_(0)
    d = w.sum(1).clamp_min(1e-300).rsqrt()
    return torch.eye(n, dtype=torch.float64) - alpha * d[:, None] * w * d[None]


def test_matches_a_dense_solve():
    graph, y, mask = knn_graph()
    b = torch.zeros(graph.num_nodes, 3, dtype=torch.float64)
    b[mask, y[mask]] = 1.0
    b /= b.sum(0)
    for alpha in (0.5, 0.99):
        want = torch.linalg.solve(dense_system(graph, alpha), b).clamp_min(0)
        got = label_diffusion(graph, y, mask, 3, alpha=alpha, max_iter=500,
                              rtol=1e-12)
        assert torch.allclose(got, want, rtol=1e-7, atol=1e-9)


def test_twenty_steps_match_scipy_cg():
    bench = importlib.import_module("benchmarks.speed.bench_dplp")
    graph, y, mask = knn_graph(n=300, k=8, seed=2)
    # The scores after at most 20 steps per class, each class its own CG.
    system = scipy_sparse.eye(300) - 0.99 * bench.affinity(graph)
    want = []
    for c in range(3):
        b = (mask & (y == c)).double().numpy()
        want.append(scipy_cg(system, b / b.sum(), rtol=1e-6, maxiter=20)[0])
    want = torch.from_numpy(np.stack(want, 1)).clamp_min(0)
    got = label_diffusion(graph, y, mask, 3)
    # 1e-8 apart: the sparse products sum in another order, and 20 steps of
    # CG at alpha 0.99 grow rounding by that much.
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(got, label_diffusion(graph, y, mask, 3, max_iter=19),
                              rtol=1e-4)
    ref_pred, ref_reached = bench.run_cg(graph, y, mask, num_classes=3)
    garbage = torch.where(mask, y, 7)  # unlabelled labels are never read
    out = pseudo_labels(graph, garbage, mask, torch.zeros_like(y), "diffusion",
                        num_classes=3)
    assert torch.equal(out.covered, ref_reached & ~mask)
    assert torch.equal(out.targets[ref_reached], ref_pred[ref_reached])


def test_bad_input():
    graph, y, mask = knn_graph(n=30)
    with pytest.raises(ValueError, match="alpha must be in"):
        label_diffusion(graph, y, mask, alpha=1.0)
    with pytest.raises(ValueError, match="shape"):
        label_diffusion(graph, y[:-1], mask)
    with pytest.raises(ValueError, match="at least one labelled node"):
        label_diffusion(graph, y, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="needs 'sim'"):
        label_diffusion(Data(edge_index=graph.edge_index, num_nodes=30), y, mask)
    with pytest.raises(ConfigError, match="pseudo_label.alpha"):
        load_config("configs/digits.yaml", ["pseudo_label.alpha=1"])
    with pytest.raises(ConfigError, match="distributed.graph: rank0"):
        load_config("configs/digits.yaml", ["pseudo_label.source=diffusion",
                                            "distributed.graph=sharded"])
