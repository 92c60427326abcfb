import pytest
import torch

from dag_pyg.nn.functional import edge_dot


@pytest.mark.parametrize("sorted_rows", [True, False])
def test_edge_dot_matches_autograd_of_gathers(sorted_rows, device):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(7, 5, dtype=torch.float64, generator=gen).to(device)
    b = torch.randn(9, 5, dtype=torch.float64, generator=gen).to(device)
    a.requires_grad_()
    b.requires_grad_()
    ia = torch.randint(7, (40,), generator=gen)
    ib = torch.randint(9, (40,), generator=gen)  # duplicates included
    if sorted_rows:
        ia = ia.sort().values
    ia, ib = ia.to(device), ib.to(device)
    out = edge_dot(a, b, ia, ib)
    ref = (a[ia] * b[ib]).sum(-1)
    assert torch.allclose(out, ref, atol=1e-12)
    w = torch.randn(40, dtype=torch.float64, generator=gen).to(device)
    ga, gb = torch.autograd.grad((out * w).sum(), (a, b))
    ra, rb = torch.autograd.grad((ref * w).sum(), (a, b))
    assert torch.allclose(ga, ra, atol=1e-12) and torch.allclose(gb, rb, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, y: edge_dot(x, y, ia, ib), (a, b))


def test_edge_dot_without_edges():
    a = torch.randn(3, 2, requires_grad=True)
    none = torch.empty(0, dtype=torch.long)
    out = edge_dot(a, a, none, none)
    assert out.shape == (0,)
    out.sum().backward()
    assert torch.equal(a.grad, torch.zeros(3, 2))
