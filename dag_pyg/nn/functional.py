"""Edge-level kernels shared by the layers."""
from __future__ import annotations

import torch
from torch import Tensor

# Edges per block: bounds the gathered [block, d] temporaries (~32 MiB at d=128).
EDGE_BLOCK = 2**16


class _EdgeDot(torch.autograd.Function):
    """Row-wise dot products of gathered rows without keeping the gathers.

    Autograd of ``(a[ia] * b[ib]).sum(-1)`` stores two ``[E, d]`` gathers for
    the backward pass; this recomputes them block by block instead, so memory
    stays at ``O(E + block * d)``.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, ia: Tensor, ib: Tensor) -> Tensor:
        out = a.new_empty(ia.numel())
        for s in range(0, ia.numel(), EDGE_BLOCK):
            e = s + EDGE_BLOCK
            out[s:e] = (a[ia[s:e]] * b[ib[s:e]]).sum(-1)
        ctx.save_for_backward(a, b, ia, ib)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b, ia, ib = ctx.saved_tensors
        ga = torch.zeros_like(a) if ctx.needs_input_grad[0] else None
        gb = torch.zeros_like(b) if ctx.needs_input_grad[1] else None
        for s in range(0, ia.numel(), EDGE_BLOCK):
            e = s + EDGE_BLOCK
            g = grad[s:e].unsqueeze(-1)
            if ga is not None:
                ga.index_add_(0, ia[s:e], g * b[ib[s:e]])
            if gb is not None:
                gb.index_add_(0, ib[s:e], g * a[ia[s:e]])
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
    if torch.compiler.is_compiling():
        # The compiler fuses gather, product and sum without materialising.
        return (a[index_a] * b[index_b]).sum(-1)
    return _EdgeDot.apply(a, b, index_a, index_b)
