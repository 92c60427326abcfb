import copy
import math

import pytest
import torch
from torch_geometric.utils import scatter

from dag_pyg import DensityAwareConv
from dag_pyg.nn.functional import csr_layout


def dense_reference(x_src, x_dst, edge_index, density, weight, bias,
                    use_density=True, scale=1.0, beta=1.0):
    """Eqs. 4-7 written out per target node with Python loops (``scale``
    multiplies the cosine: 1 / temperature; ``beta`` the neighbour sum)."""
    out, alpha = [], {}
    for i in range(x_dst.size(0)):
        nbrs = [(e, int(edge_index[0, e])) for e in range(edge_index.size(1))
                if int(edge_index[1, e]) == i]
        scores = []
        for _, j in nbrs:
            c = float(x_dst[i] @ x_src[j] / (x_dst[i].norm() * x_src[j].norm()))
            scores.append(scale * c + (float(density[j]) if use_density else 0.0))
        m = max(scores) if scores else 0.0
        z = sum(math.exp(s - m) for s in scores)
        agg = x_dst[i].clone()
        for (e, j), s in zip(nbrs, scores, strict=True):
            a = math.exp(s - m) / z
            alpha[e] = a
            agg = agg + beta * a * x_src[j]
        out.append(weight @ agg + bias)
    return torch.stack(out), torch.tensor([alpha[e] for e in sorted(alpha)],
                                          dtype=torch.float64)


def random_graph(num_src, num_dst, num_edges, seed):
    gen = torch.Generator().manual_seed(seed)
    ei = torch.stack([torch.randint(num_src, (num_edges,), generator=gen),
                      torch.randint(num_dst, (num_edges,), generator=gen)])
    return ei


@pytest.mark.parametrize("use_density", [True, False])
@pytest.mark.parametrize("seed", range(5))
def test_matches_dense_reference(use_density, seed, device):
    torch.manual_seed(seed)
    n, c_in, c_out = 12, 5, 7
    x = torch.randn(n, c_in, dtype=torch.float64)
    rho = torch.rand(n, dtype=torch.float64)
    ei = random_graph(n, n, 30, seed)
    conv = DensityAwareConv(c_in, c_out, use_density=use_density).double()
    torch.nn.init.normal_(conv.bias)
    out, (ei_out, alpha) = conv.to(device)(x.to(device), ei.to(device),
                                           rho.to(device),
                                           return_attention_weights=True)
    conv, out, ei_out, alpha = conv.cpu(), out.cpu(), ei_out.cpu(), alpha.cpu()
    ref, ref_alpha = dense_reference(x, x, ei, rho, conv.lin.weight, conv.bias,
                                     use_density)
    assert torch.allclose(out, ref, atol=1e-10)
    assert torch.equal(ei_out, ei)
    assert torch.allclose(alpha, ref_alpha, atol=1e-12)


# Project first where it takes fewer multiply-adds (12 -> 2, many targets:
# the projection runs on sources and targets), aggregate first otherwise (the
# projection runs on the targets alone).
@pytest.mark.parametrize("c_in,c_out,num_src,num_dst,lin_rows", [
    (12, 2, 4, 9, [4, 9]), (6, 3, 9, 4, [4]), (3, 6, 9, 4, [4])])
def test_bipartite_matches_reference(c_in, c_out, num_src, num_dst, lin_rows,
                                     device):
    torch.manual_seed(0)
    x_src = torch.randn(num_src, c_in, dtype=torch.float64)
    x_dst = torch.randn(num_dst, c_in, dtype=torch.float64)
    rho = torch.rand(num_src, dtype=torch.float64)
    ei = random_graph(num_src, num_dst, 20, 1)
    conv = DensityAwareConv(c_in, c_out).double()
    seen = []
    conv.lin.register_forward_hook(lambda m, i, o: seen.append(i[0].size(0)))
    out = conv.to(device)((x_src.to(device), x_dst.to(device)), ei.to(device),
                          rho.to(device)).cpu()
    conv = conv.cpu()
    ref, _ = dense_reference(x_src, x_dst, ei, rho, conv.lin.weight, conv.bias)
    assert seen == lin_rows
    assert out.shape == (num_dst, c_out)
    assert torch.allclose(out, ref, atol=1e-10)


def test_torch_sparse_adjacency_equals_edge_index(device):
    torch.manual_seed(0)
    x, rho = torch.randn(10, 4), torch.rand(10)
    ei = torch.unique(random_graph(10, 10, 40, 2), dim=1)  # coalesced order
    ei = ei[:, torch.argsort(ei[1] * 10 + ei[0])]
    adj_t = torch.sparse_coo_tensor(ei.flip(0), torch.ones(ei.size(1)),
                                    (10, 10)).coalesce().to(device)
    x, rho, ei = x.to(device), rho.to(device), ei.to(device)
    conv = DensityAwareConv(4, 8).to(device)
    out1, (_, alpha1) = conv(x, ei, rho, return_attention_weights=True)
    out2, (adj_alpha, alpha2) = conv(x, adj_t, rho, return_attention_weights=True)
    assert torch.allclose(out1, out2, atol=1e-6)
    assert torch.allclose(alpha1, alpha2, atol=1e-6)
    assert adj_alpha.is_sparse
    assert torch.allclose(adj_alpha.to_dense(),
                          torch.zeros(10, 10, device=device).index_put_(
                              (ei[1], ei[0]), alpha1))


def test_edge_permutation_invariance_and_attention_sums_to_one(device):
    torch.manual_seed(0)
    x, rho = torch.randn(15, 6), torch.rand(15)
    ei = random_graph(15, 15, 60, 3)
    conv = DensityAwareConv(6, 6).to(device)
    perm = torch.randperm(ei.size(1)).to(device)
    x, rho, ei = x.to(device), rho.to(device), ei.to(device)
    out, (_, alpha) = conv(x, ei, rho, return_attention_weights=True)
    out_p, (_, alpha_p) = conv(x, ei[:, perm], rho, return_attention_weights=True)
    assert torch.allclose(out, out_p, atol=1e-5)
    assert torch.allclose(alpha[perm], alpha_p, atol=1e-6)
    sums = scatter(alpha, ei[1], dim=0, dim_size=15, reduce="sum")
    has_nbr = torch.zeros(15, dtype=torch.bool, device=device).index_fill_(
        0, ei[1], True)
    assert torch.allclose(sums[has_nbr].cpu(), torch.ones(int(has_nbr.sum())),
                          atol=1e-6)


def test_isolated_nodes_and_empty_edge_index(device):
    torch.manual_seed(0)
    x, rho = torch.randn(5, 3).to(device), torch.rand(5).to(device)
    conv = DensityAwareConv(3, 4).to(device)
    expected = x @ conv.lin.weight.t() + conv.bias
    empty = torch.empty(2, 0, dtype=torch.long, device=device)
    assert torch.allclose(conv(x, empty, rho), expected, atol=1e-6)
    out, (_, alpha) = conv(x, empty, rho, return_attention_weights=True)
    assert alpha.numel() == 0
    # Node 4 has no in-edges: W x_4 + b.
    ei = torch.tensor([[0, 1, 2], [1, 2, 3]], device=device)
    assert torch.allclose(conv(x, ei, rho)[4], expected[4], atol=1e-6)


def test_gradcheck(device):
    torch.manual_seed(0)
    x = torch.randn(6, 3, dtype=torch.float64).to(device).requires_grad_()
    rho = torch.rand(6, dtype=torch.float64).to(device).requires_grad_()
    ei = random_graph(6, 6, 14, 4).to(device)
    conv = DensityAwareConv(3, 2).double().to(device)
    assert torch.autograd.gradcheck(lambda a, b: conv(a, ei, b), (x, rho))


def test_density_changes_attention():
    x = torch.randn(4, 3)
    ei = torch.tensor([[1, 2, 3], [0, 0, 0]])
    conv = DensityAwareConv(3, 3)
    _, (_, a_low) = conv(x, ei, torch.tensor([0., 0., 0., 0.]),
                         return_attention_weights=True)
    _, (_, a_high) = conv(x, ei, torch.tensor([0., 0., 0., 5.]),
                          return_attention_weights=True)
    assert a_high[2] > a_low[2]
    no_rho = DensityAwareConv(3, 3, use_density=False)
    _, (_, a_nd) = no_rho(x, ei, None, return_attention_weights=True)
    assert torch.allclose(a_nd, a_low)


def test_lazy_init_reset_and_repr():
    conv = DensityAwareConv(-1, 8)
    x, rho = torch.randn(7, 5), torch.rand(7)
    out = conv(x, random_graph(7, 7, 10, 5), rho)
    assert out.shape == (7, 8) and conv.lin.weight.shape == (8, 5)
    with torch.no_grad():
        conv.bias.fill_(1.0)
    conv.reset_parameters()
    assert torch.equal(conv.bias, torch.zeros(8))
    assert repr(conv) == "DensityAwareConv(-1, 8, use_density=True)"
    assert repr(DensityAwareConv(4, 2, use_density=False)) == \
        "DensityAwareConv(4, 2, use_density=False)"


def test_missing_inputs_raise():
    conv = DensityAwareConv(3, 3)
    with pytest.raises(ValueError, match="density"):
        conv(torch.randn(4, 3), torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match="target features"):
        conv((torch.randn(4, 3), None), torch.tensor([[0], [1]]), torch.rand(4))


@pytest.mark.parametrize("grouped", [False, True])
def test_compile_has_no_graph_breaks_and_matches_eager(grouped, device):
    torch.manual_seed(0)
    if grouped:  # eager takes the dense path, compiled code the general one
        x, g = knn_graph(20, 8, 4, 7, dtype=torch.float32)
        x, rho, ei = x.to(device), g.density.to(device), g.edge_index.to(device)
    else:
        x, rho = torch.randn(20, 8).to(device), torch.rand(20).to(device)
        ei = random_graph(20, 20, 80, 6).to(device)
    conv = DensityAwareConv(8, 4).to(device)
    explanation = torch._dynamo.explain(conv)(x, ei, rho)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(conv, backend="aot_eager", dynamic=False)
    assert torch.allclose(compiled(x, ei, rho), conv(x, ei, rho), atol=1e-6)


def test_device_matches_cpu_forward_and_backward(device):
    torch.manual_seed(0)
    x, rho = torch.randn(20, 8), torch.rand(20)
    ei = random_graph(20, 20, 80, 7)
    conv = DensityAwareConv(8, 4)
    xs = [x.clone().requires_grad_(), x.to(device).requires_grad_()]
    outs, grads = [], []
    for i, (xi, dev) in enumerate(zip(xs, (torch.device("cpu"), device),
                                      strict=True)):
        c = conv if i == 0 else copy.deepcopy(conv).to(dev)
        out = c(xi, ei.to(dev), rho.to(dev))
        out.pow(2).sum().backward()
        outs.append(out.detach().cpu())
        grads.append((xi.grad.cpu(), c.lin.weight.grad.cpu()))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    for a, b in zip(grads[0], grads[1], strict=True):
        assert torch.allclose(a, b, atol=1e-4)


# ------------------------------------------------- the grouped (k-per-target) path
def knn_graph(n, d, k, seed, dtype=torch.float64):
    from dag_pyg import build_density_graph

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    return x, build_density_graph(x, k, backend="exact")


def no_propagate(*args, **kwargs):
    raise AssertionError("the CSR layout should not reach propagate()")


class general_path:
    """Sends a layer down PyG's propagate() (any message hook does), the
    reference every CSR layout is checked against."""
    def __init__(self, conv):
        self.conv = conv

    def __enter__(self):
        self.handle = self.conv.register_message_forward_hook(lambda *a: None)
        return self.conv

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("c_in,c_out", [(6, 3), (3, 6)])
@pytest.mark.parametrize("learn", [False, True])
def test_grouped_layout_equals_general_path(c_in, c_out, learn, device,
                                            monkeypatch):
    x, g = knn_graph(30, c_in, 5, 0)
    ei, rho = g.edge_index, g.density
    assert csr_layout(None, ei, 30).k == 5
    perm = torch.randperm(ei.size(1), generator=torch.Generator().manual_seed(1))
    shuffled = csr_layout(None, ei[:, perm], 30)
    assert shuffled.k is None and torch.equal(shuffled.dst, ei[1])
    conv = DensityAwareConv(c_in, c_out, temperature=0.3,
                            learn_temperature=learn).double().to(device)
    torch.nn.init.normal_(conv.bias)
    x, ei, rho, perm = x.to(device), ei.to(device), rho.to(device), perm.to(device)
    outs, grads = [], []
    # General path (shuffled), then CSR: shuffled (sorted inside), grouped.
    for edges, path in ((ei[:, perm], "general"), (ei[:, perm], "csr"),
                        (ei, "csr")):
        xi = x.clone().requires_grad_()
        with monkeypatch.context() as m:
            if path == "csr":
                m.setattr(DensityAwareConv, "propagate", no_propagate)
                out, (_, alpha) = conv(xi, edges, rho, return_attention_weights=True)
            else:
                with general_path(conv):
                    out, (_, alpha) = conv(xi, edges, rho,
                                           return_attention_weights=True)
        out.pow(2).sum().backward()
        params = [p.grad.clone() for p in conv.parameters()]
        conv.zero_grad()
        outs.append((out.detach(), alpha.detach()))
        grads.append([xi.grad, *params])
    (out_g, alpha_g), (out_s, alpha_s), (out_d, alpha_d) = outs
    torch.testing.assert_close(out_s, out_g)
    torch.testing.assert_close(alpha_s, alpha_g)  # in the caller's order
    torch.testing.assert_close(out_d, out_g)
    torch.testing.assert_close(alpha_d[perm], alpha_g)
    for other in grads[1:]:
        for a, b in zip(grads[0], other, strict=True):
            torch.testing.assert_close(a, b)
    ref, ref_alpha = dense_reference(
        x.cpu(), x.cpu(), ei.cpu(), rho.cpu() / 0.3, conv.lin.weight.cpu(),
        conv.bias.cpu(), scale=1 / 0.3)
    torch.testing.assert_close(out_d.cpu(), ref)
    torch.testing.assert_close(alpha_d.cpu(), ref_alpha)


def test_sampled_layout_bipartite_with_edgeless_targets(device, monkeypatch):
    # KNNHopSampler's layout: targets 0..3 with 3 edges each; targets 4..5
    # (the outer hop) have none and keep their self term.
    gen = torch.Generator().manual_seed(0)
    x_src = torch.randn(10, 4, generator=gen, dtype=torch.float64)
    x_dst = x_src[:6]
    rho = torch.rand(10, generator=gen, dtype=torch.float64)
    ei = torch.stack([torch.randint(10, (12,), generator=gen),
                      torch.arange(4).repeat_interleave(3)])
    assert csr_layout(None, ei, 6).k == 3 and csr_layout(None, ei, 3) is None
    conv = DensityAwareConv(4, 5).double()
    torch.nn.init.normal_(conv.bias)
    monkeypatch.setattr(DensityAwareConv, "propagate", no_propagate)
    conv = conv.to(device)
    out = conv((x_src.to(device), x_dst.to(device)), ei.to(device),
               rho.to(device)).cpu()
    conv = conv.cpu()
    ref, _ = dense_reference(x_src, x_dst, ei, rho, conv.lin.weight, conv.bias)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("grouped", [True, False])
def test_temperature_limits(grouped, device):
    x, g = knn_graph(25, 4, 6, 2)
    ei = g.edge_index if grouped else g.edge_index.flip(1)
    x, ei = x.to(device), ei.to(device)
    src, dst = ei
    xn = torch.nn.functional.normalize(x, dim=-1)
    cos = (xn[src] * xn[dst]).sum(-1)
    best = torch.full((25,), -2.0, dtype=x.dtype, device=device).scatter_reduce(
        0, dst, cos, "amax")
    nearest = torch.zeros_like(x).index_add_(0, dst[cos == best[dst]],
                                             x[src[cos == best[dst]]])
    mean = scatter(x[src], dst, dim=0, dim_size=25, reduce="mean")
    for tau, agg in ((1e-6, nearest), (1e6, mean)):
        conv = DensityAwareConv(4, 4, use_density=False, temperature=tau,
                                bias=False).double().to(device)
        conv.lin.weight.data = torch.eye(4, dtype=x.dtype, device=device)
        torch.testing.assert_close(conv(x, ei), x + agg, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grouped", [True, False])
def test_gradcheck_learnable_temperature(grouped, device):
    x, g = knn_graph(8, 3, 3, 3)
    ei = g.edge_index if grouped else g.edge_index.flip(1)
    conv = DensityAwareConv(3, 2, temperature=0.5, learn_temperature=True)
    conv = conv.double().to(device)
    assert torch.allclose(conv.temperature, torch.tensor(0.5, dtype=torch.float64))
    x, ei, rho = x.to(device).requires_grad_(), ei.to(device), g.density.to(device)
    log_t = conv.log_temperature.detach().clone().requires_grad_()

    def f(x, log_t):
        return torch.func.functional_call(conv, {"log_temperature": log_t},
                                          (x, ei, rho))
    assert torch.autograd.gradcheck(f, (x, log_t))
    assert set(dict(conv.named_parameters())) == {"log_temperature", "lin.weight",
                                                  "bias"}


@pytest.mark.parametrize("c_in,c_out", [(6, 3), (3, 6)])  # both projection orders
@pytest.mark.parametrize("grouped", [True, False])
def test_learned_beta_weighs_the_neighbour_sum(c_in, c_out, grouped, device):
    x, g = knn_graph(15, c_in, 4, 5)
    ei = g.edge_index if grouped else g.edge_index.flip(1)
    conv = DensityAwareConv(c_in, c_out, learn_beta=True).double()
    plain = DensityAwareConv(c_in, c_out).double()
    plain.load_state_dict({k: v for k, v in conv.state_dict().items()
                           if k != "beta"})
    torch.nn.init.normal_(conv.bias)
    plain.bias.data.copy_(conv.bias.data)
    conv, plain = conv.to(device), plain.to(device)
    x, ei, rho = x.to(device), ei.to(device), g.density.to(device)
    assert float(conv.beta) == 1.0  # the paper's layer at the start
    torch.testing.assert_close(conv(x, ei, rho), plain(x, ei, rho))
    for beta in (0.0, 0.35):
        conv.beta.data.fill_(beta)
        ref, _ = dense_reference(x.cpu(), x.cpu(), ei.cpu(), rho.cpu(),
                                 conv.lin.weight.cpu(), conv.bias.cpu(),
                                 beta=beta)
        torch.testing.assert_close(conv(x, ei, rho).cpu(), ref)
    # The gradient reaches beta: d out / d beta = W sum_j alpha x_j.
    out = conv(x, ei, rho)
    (grad,) = torch.autograd.grad(out.sum(), conv.beta)
    delta = plain(x, ei, rho) - (x @ plain.lin.weight.T + plain.bias)
    torch.testing.assert_close(grad, delta.sum())
    conv.reset_parameters()
    assert float(conv.beta) == 1.0
    assert "beta" in dict(conv.named_parameters())
    assert "learn_beta=True" in repr(conv)


@pytest.mark.parametrize("grouped", [True, False])
def test_given_sim_equals_computed(grouped, device):
    x, g = knn_graph(20, 5, 4, 4)
    ei, sim = (g.edge_index, g.sim) if grouped else (g.edge_index.flip(1),
                                                      g.sim.flip(0))
    conv = DensityAwareConv(5, 5).double().to(device)
    x, ei, sim, rho = x.to(device), ei.to(device), sim.to(device), g.density.to(device)
    torch.testing.assert_close(conv(x, ei, rho, sim=sim), conv(x, ei, rho))
    # The given sim is what the attention reads.
    other = conv(x, ei, rho, sim=torch.zeros_like(sim))
    assert not torch.allclose(other, conv(x, ei, rho))


@pytest.mark.parametrize("grouped", [True, False])
def test_attention_dropout(grouped):
    x, g = knn_graph(40, 4, 8, 5)
    ei = g.edge_index if grouped else g.edge_index.flip(1)
    conv = DensityAwareConv(4, 4, dropout=0.5).double()
    conv.eval()
    _, (_, clean) = conv(x, ei, g.density, return_attention_weights=True)
    conv.train()
    torch.manual_seed(0)
    _, (_, dropped) = conv(x, ei, g.density, return_attention_weights=True)
    kept = dropped != 0
    assert 0.3 < float(kept.double().mean()) < 0.7
    torch.testing.assert_close(dropped[kept], clean[kept] * 2)


def test_explainer_masks_reach_the_grouped_layout():
    from torch_geometric.explain.algorithm.utils import clear_masks, set_masks

    x, g = knn_graph(12, 3, 4, 6)
    conv = DensityAwareConv(3, 3).double()
    plain = conv(x, g.edge_index, g.density)
    set_masks(conv, torch.zeros(g.edge_index.size(1), dtype=x.dtype),
              g.edge_index, apply_sigmoid=False)
    masked = conv(x, g.edge_index, g.density)
    clear_masks(conv)
    torch.testing.assert_close(masked, conv.lin(x) + conv.bias)
    torch.testing.assert_close(conv(x, g.edge_index, g.density), plain)


def test_bad_temperature_and_dropout_and_repr():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        DensityAwareConv(3, 3, temperature=0.0)
    with pytest.raises(ValueError, match="dropout must be in"):
        DensityAwareConv(3, 3, dropout=1.0)
    assert repr(DensityAwareConv(3, 2, temperature=0.1)) == \
        "DensityAwareConv(3, 2, use_density=True, temperature=0.1)"
    assert repr(DensityAwareConv(3, 2, learn_temperature=True)) == \
        "DensityAwareConv(3, 2, use_density=True, learn_temperature=True)"


# ------------------------------------------- every target-sorted layout: CSR
def csr_graph():
    """Bipartite, variable degree: targets 1 and 4 have no edges, target 0
    has a duplicate edge (2 -> 0 twice), edges out of target order."""
    ei = torch.tensor([[2, 5, 2, 0, 6, 1, 3, 2, 4],
                       [3, 0, 0, 2, 2, 0, 5, 5, 2]])
    gen = torch.Generator().manual_seed(3)
    x_src = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    x_dst = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    rho = torch.rand(7, generator=gen, dtype=torch.float64)
    return x_src, x_dst, ei, rho


def layouts(ei, num_src, num_dst):
    """The same graph in every form a PyG user passes a target-sorted one,
    with the order of the attention values each returns."""
    from torch_geometric import EdgeIndex
    from torch_geometric.typing import WITH_TORCH_SPARSE, SparseTensor
    from torch_geometric.utils import to_torch_csc_tensor

    order = torch.argsort(ei[1] * num_src + ei[0], stable=True)
    by_col = EdgeIndex(ei[:, torch.argsort(ei[1], stable=True)],
                       sparse_size=(num_src, num_dst), sort_order="col")
    by_row = EdgeIndex(ei[:, torch.argsort(ei[0], stable=True)],
                       sparse_size=(num_src, num_dst), sort_order="row")
    out = {"edge_index": (ei, None),
           "edge_index sorted": (ei[:, order], None),
           "EdgeIndex by col": (by_col, None), "EdgeIndex by row": (by_row, None),
           # PyG's way to a transposed torch.sparse adjacency (CSR rows =
           # targets; duplicates summed away, so a graph without them).
           "torch.sparse adj_t": (to_torch_csc_tensor(ei[:, order], size=(
               num_src, num_dst)).t(), order)}
    if WITH_TORCH_SPARSE:
        out["SparseTensor adj_t"] = (SparseTensor.from_edge_index(
            ei, sparse_sizes=(num_src, num_dst)).t(), order)
    return out


def test_csr_layouts_match_the_loop_reference(device, monkeypatch):
    x_src, x_dst, ei, rho = csr_graph()
    ei = torch.unique(ei, dim=1)  # sparse adjacencies hold no duplicates
    ei = ei[:, torch.randperm(ei.size(1), generator=torch.Generator().manual_seed(0))]
    conv = DensityAwareConv(4, 3).double()
    torch.nn.init.normal_(conv.bias)
    ref, ref_alpha = dense_reference(x_src, x_dst, ei, rho, conv.lin.weight,
                                     conv.bias)
    monkeypatch.setattr(DensityAwareConv, "propagate", no_propagate)
    conv = conv.to(device)
    for name, (adj, _) in layouts(ei, 7, 6).items():
        edges = adj.as_tensor() if hasattr(adj, "as_tensor") else None
        out, att = conv((x_src.to(device), x_dst.to(device)), adj.to(device),
                        rho.to(device), return_attention_weights=True)
        torch.testing.assert_close(out.cpu(), ref, msg=name)
        if name == "SparseTensor adj_t":  # GATConv's form: the adjacency
            row, col, alpha = att.coo()
            edges = torch.stack([col, row])
        elif name == "torch.sparse adj_t":
            adj_alpha, alpha = att
            edges = adj_alpha.to_sparse_coo().indices().flip(0)
            torch.testing.assert_close(adj_alpha.to_sparse_coo().values(), alpha)
        else:
            edges = edges if edges is not None else att[0]
            alpha = att[1]
        # Each edge's attention, wherever the layout put it.
        want = {(int(s), int(t)): float(a) for (s, t), a in
                zip(ei.t(), ref_alpha, strict=True)}
        got = {(int(s), int(t)): float(a) for (s, t), a in
               zip(edges.cpu().t(), alpha.cpu(), strict=True)}
        assert got.keys() == want.keys(), name
        for key, value in want.items():
            assert math.isclose(got[key], value, rel_tol=1e-9), (name, key)


@pytest.mark.parametrize("c_in,c_out", [(4, 3), (4, 6)])  # both projection orders
def test_csr_path_gradients_with_duplicates_and_empty_rows(c_in, c_out, device):
    """Unsorted, duplicate edges, empty targets: the CSR path's output,
    attention and every gradient equal PyG's propagate() path, and its
    gradients pass gradcheck."""
    x_src, x_dst, ei, rho = csr_graph()
    x_src, x_dst = x_src[:, :c_in], x_dst[:, :c_in]
    conv = DensityAwareConv(c_in, c_out, learn_beta=True).double().to(device)
    torch.nn.init.normal_(conv.bias)
    results = []
    for general in (True, False):
        xs = x_src.to(device).requires_grad_()
        xd = x_dst.to(device).requires_grad_()
        r = rho.to(device).requires_grad_()
        if general:
            with general_path(conv):
                out, (_, alpha) = conv((xs, xd), ei.to(device), r,
                                       return_attention_weights=True)
        else:
            out, (_, alpha) = conv((xs, xd), ei.to(device), r,
                                   return_attention_weights=True)
        (out.pow(2).sum() + alpha.pow(3).sum()).backward()
        results.append([out.detach(), alpha.detach(), xs.grad, xd.grad, r.grad,
                        *[p.grad.clone() for p in conv.parameters()]])
        conv.zero_grad()
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)
    ref, ref_alpha = dense_reference(x_src, x_dst, ei, rho, conv.lin.weight.cpu(),
                                     conv.bias.cpu())
    torch.testing.assert_close(results[1][0].cpu(), ref)
    torch.testing.assert_close(results[1][1].cpu(), ref_alpha)
    ei, rho = ei.to(device), rho.to(device).requires_grad_()
    xs = x_src.to(device).requires_grad_()
    xd = x_dst.to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: conv((a, b), ei, c),
                                    (xs, xd, rho))


def test_csr_layout_reads_the_order_in_one_check():
    ei = torch.tensor([[0, 1, 2, 3], [0, 0, 2, 2]])
    lay = csr_layout(None, ei, 4)
    assert lay.rowptr.tolist() == [0, 2, 2, 4, 4] and lay.perm is None
    assert lay.k is None  # target 1 has no edges: not k per target
    lay = csr_layout(None, ei.flip(1), 4)
    assert lay.perm.tolist() == [2, 3, 0, 1] and lay.dst.tolist() == [0, 0, 2, 2]
    assert csr_layout(None, torch.tensor([[0, 1, 2, 3], [0, 0, 1, 1]]), 2).k == 2
    assert csr_layout(None, torch.tensor([[0], [5]]), 4) is None  # past the targets
    assert csr_layout(None, torch.empty(2, 0, dtype=torch.long), 4) is None
    # Compressed rows as given, padded for targets past the last row.
    lay = csr_layout(torch.tensor([0, 1, 3]), torch.tensor([4, 0, 2]), 4)
    assert lay.rowptr.tolist() == [0, 1, 3, 3, 3] and lay.dst.tolist() == [0, 1, 1]


# ------------------------------------------------------- explainers, any layout
class _DNAModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = DensityAwareConv(4, 3)

    def forward(self, x, edge_index, density):
        return self.conv(x, edge_index, density)


def _explainer_layouts():
    x, g = knn_graph(12, 4, 3, 8, dtype=torch.float32)
    grouped = g.edge_index
    sorted_var = grouped[:, grouped[0] != 0]  # node 0 dropped as a source
    shuffled = sorted_var[:, torch.randperm(sorted_var.size(1),
                                            generator=torch.Generator().manual_seed(2))]
    return x, g.density, {"grouped": grouped, "csr": sorted_var,
                          "unsorted": shuffled}


def _explain(algorithm, layout, **kwargs):
    """A one-layer DNA model explained on one of the layouts."""
    from torch_geometric.explain import Explainer

    x, rho, graphs = _explainer_layouts()
    ei = graphs[layout]
    torch.manual_seed(0)
    model = _DNAModel().eval()
    explainer = Explainer(model, algorithm, explanation_type="model",
                          edge_mask_type="object", model_config=dict(
                              mode="multiclass_classification", task_level="node",
                              return_type="raw"), **kwargs)
    return model, x, ei, rho, explainer


@pytest.mark.parametrize("layout", ["grouped", "csr", "unsorted"])
def test_attention_explainer_on_every_layout(layout):
    from torch_geometric.explain.algorithm import AttentionExplainer

    model, x, ei, rho, explainer = _explain(AttentionExplainer(), layout)
    _, (_, alpha) = model.conv(x, ei, rho, return_attention_weights=True)
    explanation = explainer(x, ei, density=rho)
    # One layer: the explainer's mask is the layer's attention.
    torch.testing.assert_close(explanation.edge_mask, alpha)


@pytest.mark.parametrize("layout", ["grouped", "csr", "unsorted"])
def test_gnn_explainer_on_every_layout(layout):
    from torch_geometric.explain import GNNExplainer

    model, x, ei, rho, explainer = _explain(GNNExplainer(epochs=5), layout,
                                            node_mask_type="attributes")
    explanation = explainer(x, ei, density=rho, index=3)
    # Only the edges into node 3 reach its prediction: the rest get no mask.
    into = ei[1] == 3
    assert explanation.edge_mask.shape == (ei.size(1),)
    assert bool((explanation.edge_mask[into] > 0).all())
    assert float(explanation.edge_mask[~into].abs().sum()) == 0.0
    assert model.conv.explain is False or model.conv.explain is None


# ------------------------------------- PyG's test_gat_conv.py checks, one each
def _pyg_inputs():
    torch.manual_seed(12345)
    x1 = torch.randn(4, 8)
    x2 = torch.randn(2, 8)
    edge_index = torch.tensor([[0, 1, 2, 3], [0, 0, 1, 1]])
    return x1, x2, edge_index, torch.rand(4)


def test_pyg_str_and_shape():
    x1, _, edge_index, rho = _pyg_inputs()
    conv = DensityAwareConv(8, 32)
    assert str(conv) == "DensityAwareConv(8, 32, use_density=True)"
    assert conv(x1, edge_index, rho).size() == (4, 32)


def test_pyg_size_argument():
    x1, _, edge_index, rho = _pyg_inputs()
    conv = DensityAwareConv(8, 32)
    out = conv(x1, edge_index, rho)
    torch.testing.assert_close(conv(x1, edge_index, rho, size=(4, 4)), out)


def test_pyg_torch_sparse_adjacency():
    from torch_geometric.utils import to_torch_csc_tensor

    x1, _, edge_index, rho = _pyg_inputs()
    conv = DensityAwareConv(8, 32)
    adj1 = to_torch_csc_tensor(edge_index, size=(4, 4))
    torch.testing.assert_close(conv(x1, adj1.t(), rho), conv(x1, edge_index, rho))


def _sparse_tensor(edge_index, size):
    """PyG's ``SparseTensor`` adjacency (skips where torch-sparse is absent)."""
    from torch_geometric.typing import WITH_TORCH_SPARSE, SparseTensor

    if not WITH_TORCH_SPARSE:
        pytest.skip("torch_sparse is not installed")
    return SparseTensor.from_edge_index(edge_index, sparse_sizes=size)


def test_pyg_sparse_tensor_adjacency():
    x1, _, edge_index, rho = _pyg_inputs()
    conv = DensityAwareConv(8, 32)
    adj2 = _sparse_tensor(edge_index, (4, 4))
    torch.testing.assert_close(conv(x1, adj2.t(), rho), conv(x1, edge_index, rho))


def test_pyg_return_attention_weights_edge_index():
    x1, _, edge_index, rho = _pyg_inputs()
    conv = DensityAwareConv(8, 32)
    result = conv(x1, edge_index, rho, return_attention_weights=True)
    torch.testing.assert_close(result[0], conv(x1, edge_index, rho))
    # No self loops are added (the centre enters through x_i): 4 edges.
    assert result[1][0].size() == (2, 4) and result[1][1].size() == (4,)
    assert result[1][1].min() >= 0 and result[1][1].max() <= 1


def test_pyg_return_attention_weights_torch_sparse():
    from torch_geometric.utils import to_torch_csc_tensor

    x1, _, edge_index, rho = _pyg_inputs()
    conv = DensityAwareConv(8, 32)
    adj1 = to_torch_csc_tensor(edge_index, size=(4, 4))
    result = conv(x1, adj1.t(), rho, return_attention_weights=True)
    torch.testing.assert_close(result[0], conv(x1, edge_index, rho))
    assert result[1][0].size() == (4, 4) and result[1][0]._nnz() == 4


def test_pyg_return_attention_weights_sparse_tensor():
    x1, _, edge_index, rho = _pyg_inputs()
    conv = DensityAwareConv(8, 32)
    adj2 = _sparse_tensor(edge_index, (4, 4))
    result = conv(x1, adj2.t(), rho, return_attention_weights=True)
    torch.testing.assert_close(result[0], conv(x1, edge_index, rho))
    assert result[1].sizes() == [4, 4] and result[1].nnz() == 4


def test_pyg_bipartite():
    from torch_geometric.typing import WITH_TORCH_SPARSE, SparseTensor
    from torch_geometric.utils import to_torch_csc_tensor

    x1, x2, edge_index, rho = _pyg_inputs()
    conv = DensityAwareConv(8, 32)
    out1 = conv((x1, x2), edge_index, rho)
    assert out1.size() == (2, 32)
    torch.testing.assert_close(conv((x1, x2), edge_index, rho, size=(4, 2)), out1)
    adj1 = to_torch_csc_tensor(edge_index, size=(4, 2))
    torch.testing.assert_close(conv((x1, x2), adj1.t(), rho), out1)
    if WITH_TORCH_SPARSE:
        adj2 = SparseTensor.from_edge_index(edge_index, sparse_sizes=(4, 2))
        torch.testing.assert_close(conv((x1, x2), adj2.t(), rho), out1)


def test_pyg_bipartite_without_target_features():
    # GATConv accepts (x1, None); DNA's self term x_i needs the targets.
    x1, _, edge_index, rho = _pyg_inputs()
    with pytest.raises(ValueError, match="target features"):
        DensityAwareConv(8, 32)((x1, None), edge_index, rho, size=(4, 2))


def test_pyg_edge_input_is_the_similarity():
    # GATConv's edge input is edge_attr; DNA's is the edge similarity.
    x1, _, edge_index, rho = _pyg_inputs()
    conv = DensityAwareConv(8, 32)
    xn = torch.nn.functional.normalize(x1, dim=-1)
    sim = (xn[edge_index[0]] * xn[edge_index[1]]).sum(-1)
    torch.testing.assert_close(conv(x1, edge_index, rho, sim=sim),
                               conv(x1, edge_index, rho))


def test_pyg_empty_edge_index(device):
    x = torch.randn(0, 8, device=device)
    edge_index = torch.empty(2, 0, dtype=torch.long, device=device)
    conv = DensityAwareConv(8, 32).to(device)
    out = conv(x, edge_index, torch.empty(0, device=device))
    assert out.size() == (0, 32)
