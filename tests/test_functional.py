import pytest
import torch
import torch.nn.functional as F

from dag_pyg.nn.functional import csr_aggregate, csr_layout, edge_cosine, edge_dot


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


@pytest.mark.parametrize("shared", [True, False])
def test_edge_cosine_matches_normalize_then_gather(shared, device):
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(6, 4, dtype=torch.float64, generator=gen)
    a[3] = 0.0  # a zero row: cosine 0 to everything, as F.normalize gives
    b = a if shared else torch.randn(8, 4, dtype=torch.float64, generator=gen)
    a = a.to(device).requires_grad_()
    b = a if shared else b.to(device).requires_grad_()
    ia = torch.randint(6, (30,), generator=gen).sort().values.to(device)
    ib = torch.randint(b.size(0), (30,), generator=gen).to(device)
    out = edge_cosine(a, b, ia, ib)
    ref = (F.normalize(a, dim=-1)[ia] * F.normalize(b, dim=-1)[ib]).sum(-1)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    assert bool((out[ia == 3] == 0).all())
    w = torch.randn(30, dtype=torch.float64, generator=gen).to(device)
    inputs = (a,) if shared else (a, b)
    got = torch.autograd.grad((out * w).sum(), inputs)
    want = torch.autograd.grad((ref * w).sum(), inputs)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)  # the zero row: ~1e12


def test_csr_aggregate_matches_gather_scatter(device):
    gen = torch.Generator().manual_seed(1)
    # Rows of 3, 0, 4 and 2 edges (an empty row), duplicate columns in row 2.
    rowptr = torch.tensor([0, 3, 3, 7, 9])
    col = torch.tensor([4, 0, 2, 1, 1, 5, 3, 0, 5])
    row = torch.repeat_interleave(torch.arange(4), rowptr.diff())
    value = torch.randn(9, dtype=torch.float64, generator=gen)
    x = torch.randn(6, 3, dtype=torch.float64, generator=gen)
    value, x = value.to(device).requires_grad_(), x.to(device).requires_grad_()
    rowptr, col, row = rowptr.to(device), col.to(device), row.to(device)
    out = csr_aggregate(value, rowptr, col, x)
    ref = torch.zeros(4, 3, dtype=torch.float64, device=device).index_add(
        0, row, value.unsqueeze(-1) * x[col])
    torch.testing.assert_close(out, ref)
    assert torch.autograd.gradcheck(
        lambda v, y: csr_aggregate(v, rowptr, col, y), (value, x))


def _k(dst, num_dst):
    """The fixed degree csr_layout finds for these targets (sources 0..E-1)."""
    lay = csr_layout(None, torch.stack([torch.arange(dst.numel()), dst]), num_dst)
    return None if lay is None else lay.k


def test_csr_layout_fixed_degree():
    assert _k(torch.tensor([0, 0, 1, 1, 2, 2]), 3) == 2
    assert _k(torch.tensor([0, 0, 1, 1]), 5) == 2  # 2..4 edgeless
    assert csr_layout(None, torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 1, 1, 2, 2]]),
                      2) is None  # a target past num_dst
    assert _k(torch.tensor([0, 1, 0, 1]), 2) is None  # sorted inside: CSR only
    assert _k(torch.tensor([1, 1, 0, 0]), 2) is None
    assert _k(torch.tensor([0, 0, 0, 1, 1]), 2) is None  # degrees 3 and 2
    assert _k(torch.empty(0, dtype=torch.long), 2) is None


def test_edge_dot_with_given_rowptr():
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(3, 5, generator=gen, dtype=torch.float64), torch.randn(
        4, 5, generator=gen, dtype=torch.float64)
    ia, ib = torch.tensor([0, 0, 2, 2, 2]), torch.tensor([1, 3, 0, 1, 2])
    rowptr = torch.tensor([0, 2, 2, 5])
    torch.testing.assert_close(edge_dot(a, b, ia, ib, rowptr=rowptr),
                               (a[ia] * b[ib]).sum(-1))
    a.requires_grad_(), b.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, y: edge_dot(x, y, ia, ib, rowptr=rowptr), (a, b))


def test_csr_aggregate_in_half_precision_and_under_autocast():
    # The CPU's CSR kernels have no half path: the product runs in float32.
    gen = torch.Generator().manual_seed(2)
    rowptr, col = torch.tensor([0, 2, 3]), torch.tensor([1, 0, 2])
    value = torch.rand(3, generator=gen)
    x = torch.randn(3, 4, generator=gen)
    ref = csr_aggregate(value, rowptr, col, x)
    for dtype in (torch.bfloat16, torch.float16):
        out = csr_aggregate(value, rowptr, col, x.to(dtype))
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = csr_aggregate(value, rowptr, col, x)
    torch.testing.assert_close(out, ref)
