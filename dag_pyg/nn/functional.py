"""Edge-level kernels shared by the layers: per-edge dot products (SDDMM)
and the weighted sum over a CSR-laid-out graph (SpMM), both with memory
linear in the number of edges."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor


def _csr(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix from row-sorted coordinates."""
    crow = rows.new_zeros(shape[0] + 1)
    torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0, out=crow[1:])
    return _csr_from_ptr(crow, cols, values, shape)


def _csr_from_ptr(rowptr: Tensor, col: Tensor, values: Tensor,
                  shape: tuple[int, int]) -> Tensor:
    """A CSR matrix from its row pointers."""
    with warnings.catch_warnings():  # "CSR support is in beta": noise for users
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
        return torch.sparse_csr_tensor(rowptr, col, values, shape,
                                       check_invariants=False)


def _rows(rowptr: Tensor, num_edges: int) -> Tensor:
    """The row of every entry of a CSR pattern."""
    return torch.repeat_interleave(
        torch.arange(rowptr.numel() - 1, device=rowptr.device), rowptr.diff(),
        output_size=num_edges)


class _EdgeDot(torch.autograd.Function):
    """Row-wise dot products of gathered rows as sparse kernels.

    Autograd of ``(a[ia] * b[ib]).sum(-1)`` gathers two ``[E, d]`` tensors and
    keeps them for the backward pass. Here the forward pass is a sampled dense
    matrix product (SDDMM, :func:`torch.sparse.sampled_addmm`) on the edge
    pattern and the backward pass two sparse-dense products (SpMM), so memory
    stays at ``O(E)`` and no ``[E, d]`` tensor is ever built.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, ia: Tensor, ib: Tensor) -> Tensor:
        perm = None
        if ia.numel() > 1 and not bool((ia[1:] >= ia[:-1]).all()):
            perm = torch.argsort(ia, stable=True)
            ia, ib = ia[perm], ib[perm]
        zeros = a.new_zeros(ia.numel())
        pattern = _csr(ia, ib, zeros, (a.size(0), b.size(0)))
        out = torch.sparse.sampled_addmm(pattern, a, b.t(), beta=0.0).values()
        if perm is not None:
            out = torch.empty_like(out).scatter_(0, perm, out)
        ctx.save_for_backward(a, b, ia, ib, perm)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b, ia, ib, perm = ctx.saved_tensors
        if perm is not None:
            grad = grad[perm]
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = torch.sparse.mm(_csr(ia, ib, grad, (a.size(0), b.size(0))), b)
        if ctx.needs_input_grad[1]:
            order = torch.argsort(ib, stable=True)
            gb = torch.sparse.mm(_csr(ib[order], ia[order], grad[order],
                                      (b.size(0), a.size(0))), a)
        return ga, gb, None, None


def edge_dot(a: Tensor, b: Tensor, index_a: Tensor, index_b: Tensor) -> Tensor:
    r"""Computes :math:`\langle \mathbf{a}_{i_e}, \mathbf{b}_{j_e} \rangle` for
    every edge :math:`e`, with memory linear in the number of edges.

    Args:
        a (torch.Tensor): Node features :math:`[N_a, d]`.
        b (torch.Tensor): Node features :math:`[N_b, d]`.
        index_a (torch.Tensor): Row of ``a`` per edge :math:`[E]`.
        index_b (torch.Tensor): Row of ``b`` per edge :math:`[E]`.
    """
    if torch.compiler.is_compiling() or index_a.numel() == 0:
        # The compiler fuses gather, product and sum without materialising.
        return (a[index_a] * b[index_b]).sum(-1)
    return _EdgeDot.apply(a, b, index_a, index_b)


class _CSRAggregate(torch.autograd.Function):
    """``out[u] = sum_e value[e] * x[col[e]]`` over the edges ``e`` of row
    ``u`` of a CSR pattern, as one sparse-dense product (SpMM); backward is
    the transposed product for ``x`` and an SDDMM for ``value``. Autograd of
    the gather + scatter form keeps an ``[E, d]`` tensor instead."""

    @staticmethod
    def forward(ctx, value: Tensor, rowptr: Tensor, col: Tensor, x: Tensor
                ) -> Tensor:
        shape = (rowptr.numel() - 1, x.size(0))
        out = torch.sparse.mm(_csr_from_ptr(rowptr, col, value, shape), x)
        ctx.save_for_backward(value, rowptr, col, x)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        value, rowptr, col, x = ctx.saved_tensors
        num_rows = rowptr.numel() - 1
        g_value = g_x = None
        if ctx.needs_input_grad[0]:
            pattern = _csr_from_ptr(rowptr, col, torch.zeros_like(value),
                                    (num_rows, x.size(0)))
            g_value = torch.sparse.sampled_addmm(pattern, grad, x.t(),
                                                 beta=0.0).values()
        if ctx.needs_input_grad[3]:
            row = _rows(rowptr, col.numel())
            order = torch.argsort(col, stable=True)
            g_x = torch.sparse.mm(_csr(col[order], row[order], value[order],
                                       (x.size(0), num_rows)), grad)
        return g_value, None, None, g_x


def csr_aggregate(value: Tensor, rowptr: Tensor, col: Tensor, x: Tensor) -> Tensor:
    r"""Computes :math:`\mathbf{o}_u = \sum_{e \in \text{row}(u)} v_e \,
    \mathbf{x}_{\text{col}_e}` for a graph laid out in CSR (edges grouped by
    target row), as one sparse-dense matrix product.

    Args:
        value (torch.Tensor): Weight of every edge :math:`[E]`.
        rowptr (torch.Tensor): CSR row pointers :math:`[N_{out} + 1]`.
        col (torch.Tensor): Source row of ``x`` per edge :math:`[E]`.
        x (torch.Tensor): Source features :math:`[N_{in}, d]`.

    Computes in the promoted dtype of ``value`` and ``x`` (float32 for half
    precision).
    """
    dtype = torch.promote_types(value.dtype, x.dtype)
    if dtype in (torch.float16, torch.bfloat16):
        # The CPU's CSR kernels have no half-precision path.
        dtype = torch.float32
    value, x = value.to(dtype), x.to(dtype)
    if torch.compiler.is_compiling() or col.numel() == 0:
        out = x.new_zeros(rowptr.numel() - 1, x.size(-1))
        return out.index_add(0, _rows(rowptr, col.numel()),
                             value.unsqueeze(-1) * x[col])
    # Autocast would cast the sparse product to half precision (see above).
    with torch.autocast(x.device.type, enabled=False):
        return _CSRAggregate.apply(value, rowptr, col, x)


def grouped_degree(index: Tensor, num_targets: int) -> int | None:
    """The degree ``k`` if ``index`` (the target of every edge) is laid out as
    ``k`` consecutive edges for each of the targets ``0, 1, ..., E/k - 1`` in
    order (``E/k <= num_targets``; later targets have none), else
    :obj:`None`. Graphs of :func:`~dag_pyg.build_density_graph` and the
    sub-graphs of :class:`~dag_pyg.KNNHopSampler` have this layout."""
    e = index.numel()
    if e == 0 or index.dim() != 1:
        return None
    k = int((index == index[0]).sum())
    if int(index[0]) != 0 or e % k or e // k > num_targets:
        return None
    groups = index.view(-1, k)
    ar = torch.arange(groups.size(0), device=index.device).unsqueeze(1)
    return k if bool((groups == ar).all()) else None
