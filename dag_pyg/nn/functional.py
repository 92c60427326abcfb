"""Edge-level kernels shared by the layers: per-edge dot products (SDDMM)
and the weighted sum over a CSR-laid-out graph (SpMM), both with memory
linear in the number of edges."""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.index import index2ptr


def _csr_from_ptr(rowptr: Tensor, col: Tensor, values: Tensor,
                  shape: tuple[int, int]) -> Tensor:
    """A CSR matrix from its row pointers."""
    with warnings.catch_warnings():  # "CSR support is in beta": noise for users
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
        return torch.sparse_csr_tensor(rowptr, col, values, shape,
                                       check_invariants=False)


def _spmm(rowptr: Tensor, col: Tensor, value: Tensor, x: Tensor) -> Tensor:
    """``out[u] = sum_e value[e] * x[col[e]]`` over the entries ``e`` of row
    ``u`` of a CSR pattern: :func:`torch.nn.functional.embedding_bag` with
    per-sample weights, whose CPU kernel is about twice as fast as
    :func:`torch.sparse.mm` on a CSR tensor (its backward is not: callers
    differentiate by hand)."""
    return F.embedding_bag(col, x, rowptr, mode="sum", per_sample_weights=value,
                           include_last_offset=True)


def _transpose(rowptr: Tensor, col: Tensor, num_cols: int
               ) -> tuple[Tensor, Tensor, Tensor]:
    """The transposed CSR pattern: its row pointers, its columns (the rows of
    the original) and the permutation that takes entries into its order."""
    order = torch.argsort(col, stable=True)
    return (index2ptr(col[order], num_cols), _rows(rowptr, col.numel())[order],
            order)


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
    def forward(ctx, a: Tensor, b: Tensor, ia: Tensor, ib: Tensor,
                rowptr: Tensor | None) -> Tensor:
        perm = None
        if rowptr is None:
            if ia.numel() > 1 and not bool((ia[1:] >= ia[:-1]).all()):
                perm = torch.argsort(ia, stable=True)
                ia, ib = ia[perm], ib[perm]
            rowptr = index2ptr(ia, a.size(0))
        zeros = a.new_zeros(ia.numel())
        pattern = _csr_from_ptr(rowptr, ib, zeros, (a.size(0), b.size(0)))
        out = torch.sparse.sampled_addmm(pattern, a, b.t(), beta=0.0).values()
        if perm is not None:
            out = torch.empty_like(out).scatter_(0, perm, out)
        ctx.save_for_backward(a, b, ia, ib, perm, rowptr)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b, ia, ib, perm, rowptr = ctx.saved_tensors
        grad = grad.contiguous()  # an expanded gradient takes a slow path
        if perm is not None:
            grad = grad[perm]
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = _spmm(rowptr, ib, grad, b)
        if ctx.needs_input_grad[1]:
            colptr, row, order = _transpose(rowptr, ib, b.size(0))
            gb = _spmm(colptr, row, grad[order], a)
        return ga, gb, None, None, None


def edge_dot(a: Tensor, b: Tensor, index_a: Tensor, index_b: Tensor,
             rowptr: Tensor | None = None) -> Tensor:
    r"""Computes :math:`\langle \mathbf{a}_{i_e}, \mathbf{b}_{j_e} \rangle` for
    every edge :math:`e`, with memory linear in the number of edges.

    Args:
        a (torch.Tensor): Node features :math:`[N_a, d]`.
        b (torch.Tensor): Node features :math:`[N_b, d]`.
        index_a (torch.Tensor): Row of ``a`` per edge :math:`[E]`.
        index_b (torch.Tensor): Row of ``b`` per edge :math:`[E]`.
        rowptr (torch.Tensor, optional): CSR row pointers of ``index_a``
            where the edges are sorted by it (skips the order check, a host
            synchronisation). (default: :obj:`None`)
    """
    if torch.compiler.is_compiling() or index_a.numel() == 0:
        # The compiler fuses gather, product and sum without materialising.
        return (a[index_a] * b[index_b]).sum(-1)
    return _EdgeDot.apply(a, b, index_a, index_b, rowptr)


def edge_cosine(a: Tensor, b: Tensor, index_a: Tensor, index_b: Tensor,
                rowptr: Tensor | None = None, eps: float = 1e-12) -> Tensor:
    r"""Computes :math:`\cos(\mathbf{a}_{i_e}, \mathbf{b}_{j_e})` for every
    edge :math:`e` as :func:`torch.nn.functional.normalize` followed by
    :func:`edge_dot` would (a norm below ``eps`` counts as ``eps``, so a zero
    row has cosine 0 to everything), with the dot products of the raw rows
    scaled by both inverse norms per edge: no normalised ``[N, d]`` copy is
    built or differentiated.

    Args:
        a (torch.Tensor): Node features :math:`[N_a, d]`.
        b (torch.Tensor): Node features :math:`[N_b, d]` (may be ``a``).
        index_a (torch.Tensor): Row of ``a`` per edge :math:`[E]`.
        index_b (torch.Tensor): Row of ``b`` per edge :math:`[E]`.
        rowptr (torch.Tensor, optional): As for :func:`edge_dot`.
            (default: :obj:`None`)
        eps (float, optional): The smallest norm. (default: :obj:`1e-12`)
    """
    inv_a = a.norm(dim=-1).clamp_min(eps).reciprocal()
    inv_b = inv_a if b is a else b.norm(dim=-1).clamp_min(eps).reciprocal()
    dot = edge_dot(a, b, index_a, index_b, rowptr=rowptr)
    return dot * inv_a.index_select(0, index_a) * inv_b.index_select(0, index_b)


class _CSRAggregate(torch.autograd.Function):
    """``out[u] = sum_e value[e] * x[col[e]]`` over the edges ``e`` of row
    ``u`` of a CSR pattern, as one sparse-dense product (SpMM); backward is
    the transposed product for ``x`` and an SDDMM for ``value``. Autograd of
    the gather + scatter form keeps an ``[E, d]`` tensor instead."""

    @staticmethod
    def forward(ctx, value: Tensor, rowptr: Tensor, col: Tensor, x: Tensor
                ) -> Tensor:
        out = _spmm(rowptr, col, value, x)
        ctx.save_for_backward(value, rowptr, col, x)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        value, rowptr, col, x = ctx.saved_tensors
        grad = grad.contiguous()  # an expanded gradient takes a slow path
        num_rows = rowptr.numel() - 1
        g_value = g_x = None
        if ctx.needs_input_grad[0]:
            pattern = _csr_from_ptr(rowptr, col, torch.zeros_like(value),
                                    (num_rows, x.size(0)))
            g_value = torch.sparse.sampled_addmm(pattern, grad, x.t(),
                                                 beta=0.0).values()
        if ctx.needs_input_grad[3]:
            colptr, row, order = _transpose(rowptr, col, x.size(0))
            g_x = _spmm(colptr, row, value[order], grad)
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


class CSRLayout(NamedTuple):
    """A graph's edges sorted by target, as compressed rows."""
    rowptr: Tensor        # [N_dst + 1]: the edges of target u are rowptr[u]:rowptr[u+1]
    src: Tensor           # [E]: the source of every edge, in that order
    dst: Tensor           # [E]: the target of every edge, in that order
    perm: Tensor | None   # [E]: each edge's position in the caller's order
    k: int | None         # k edges for each of the first E/k targets, or None


def csr_layout(rowptr: Tensor | None, index: Tensor, num_dst: int,
               perm: Tensor | None = None) -> CSRLayout | None:
    """The :class:`CSRLayout` of a graph given as compressed rows (``rowptr``
    and the sources ``index``: no host synchronisation) or as an
    ``edge_index`` (``rowptr=None``, ``index`` ``[2, E]``): one host
    synchronisation checks the target order and the fixed degree, and edges
    out of target order are sorted (stably; ``perm`` records it). ``None``
    for a graph without edges or with targets past ``num_dst``."""
    if rowptr is not None:
        if rowptr.numel() > num_dst + 1:
            return None
        if rowptr.numel() < num_dst + 1:  # later targets have no edges
            rowptr = torch.cat([rowptr, rowptr[-1:].expand(
                num_dst + 1 - rowptr.numel())])
        return CSRLayout(rowptr, index, _rows(rowptr, index.numel()), perm, None)
    if index.dim() != 2 or index.size(1) == 0:
        return None
    src, dst = index[0], index[1]
    e = dst.numel()
    in_order = (dst[1:] >= dst[:-1]).all()
    # Valid where in order: the degree of target 0, and whether every target
    # u has edges u*k .. u*k+k-1 (targets past E/k none).
    if num_dst == 0:
        return None
    # Clamped: a target past num_dst (refused below, after the one sync)
    # must not reach the kernel, which does not check its input.
    rowptr = index2ptr(dst.clamp(0, num_dst - 1), num_dst)
    k = rowptr[1] - rowptr[0]
    ar = torch.arange(num_dst + 1, device=dst.device)
    grouped = ((rowptr == (ar * k).clamp_max(e)).all() & (k > 0)
               & (e % k.clamp_min(1) == 0))  # the last group whole too
    in_order, grouped, k, low, high = torch.stack(
        [in_order, grouped, k, dst.min(), dst.max()]).tolist()
    if low < 0 or high >= num_dst:
        return None
    if not in_order:
        perm = torch.argsort(dst, stable=True)
        src, dst = src[perm], dst[perm]
        rowptr = index2ptr(dst, num_dst)
        return CSRLayout(rowptr, src, dst, perm, None)
    return CSRLayout(rowptr, src, dst, None, int(k) if grouped else None)
