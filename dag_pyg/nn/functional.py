"""Edge-level kernels shared by the layers."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor


def _csr(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix from row-sorted coordinates."""
    crow = rows.new_zeros(shape[0] + 1)
    torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0, out=crow[1:])
    with warnings.catch_warnings():  # "CSR support is in beta": noise for users
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
        return torch.sparse_csr_tensor(crow, cols, values, shape,
                                       check_invariants=False)


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
