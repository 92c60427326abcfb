import copy
import math

import pytest
import torch
from torch_geometric.utils import scatter

from dag_pyg import DensityAwareConv


def dense_reference(x_src, x_dst, edge_index, density, weight, bias,
                    use_density=True):
    """Eqs. 4-7 written out per target node with Python loops."""
    out, alpha = [], {}
    for i in range(x_dst.size(0)):
        nbrs = [(e, int(edge_index[0, e])) for e in range(edge_index.size(1))
                if int(edge_index[1, e]) == i]
        scores = []
        for _, j in nbrs:
            c = float(x_dst[i] @ x_src[j] / (x_dst[i].norm() * x_src[j].norm()))
            scores.append(c + (float(density[j]) if use_density else 0.0))
        m = max(scores) if scores else 0.0
        z = sum(math.exp(s - m) for s in scores)
        agg = x_dst[i].clone()
        for (e, j), s in zip(nbrs, scores, strict=True):
            a = math.exp(s - m) / z
            alpha[e] = a
            agg = agg + a * x_src[j]
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


@pytest.mark.parametrize("c_in,c_out", [(6, 3), (3, 6)])  # both projection orders
def test_bipartite_matches_reference(c_in, c_out, device):
    torch.manual_seed(0)
    x_src = torch.randn(9, c_in, dtype=torch.float64)
    x_dst = torch.randn(4, c_in, dtype=torch.float64)
    rho = torch.rand(9, dtype=torch.float64)
    ei = random_graph(9, 4, 20, 1)
    conv = DensityAwareConv(c_in, c_out).double()
    out = conv.to(device)((x_src.to(device), x_dst.to(device)), ei.to(device),
                          rho.to(device)).cpu()
    conv = conv.cpu()
    ref, _ = dense_reference(x_src, x_dst, ei, rho, conv.lin.weight, conv.bias)
    assert out.shape == (4, c_out)
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


def test_compile_has_no_graph_breaks_and_matches_eager(device):
    torch.manual_seed(0)
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
