r"""The process group of a ``torchrun`` launch and the collectives training uses.

``torchrun --nproc_per_node N -m dag_pyg train CONFIG`` starts N processes
with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous address in their
environment; :func:`init_distributed` turns that into a
:class:`DistContext`. A plain ``python -m dag_pyg`` (or ``torchrun`` with one
process) gets a context with ``world_size == 1`` whose helpers are the
identity, so the training loop has one code path.

Every collective runs under ``distributed.timeout_s``: a rank that died or
never arrived ends the others with :class:`DistributedError` instead of a
hang.
"""
from __future__ import annotations

import datetime
import math
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

ENV_KEYS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A multi-process run cannot go on (a rank died, timed out or disagreed)."""


@dataclass
class Traffic:
    """What the collectives of a :class:`DistContext` moved while it counts
    (its ``traffic``): per collective the payload one rank ends up with (a
    broadcast's tensor, an all-gather's whole output including the own rows
    and the padding of unequal shards, an all-reduce's tensor, an object's
    pickle), in bytes, in total and by kind."""
    calls: int = 0
    bytes: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, nbytes: int) -> None:
        self.calls += 1
        self.bytes += nbytes
        self.by_kind[kind] = self.by_kind.get(kind, 0) + nbytes


def _nbytes(x: Tensor) -> int:
    return x.numel() * x.element_size()


def _pickled_size(obj: Any) -> int:
    return len(pickle.dumps(obj))


@dataclass
class DistContext:
    """Rank and world of this process.

    Args:
        rank (int): Global rank (0 writes every file).
        world_size (int): Number of processes.
        local_rank (int): Rank on this machine (picks the GPU).
        backend (str): The ``torch.distributed`` backend, ``""`` when alone.
    """
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    # Collectives inside autograd run on their own group, so their order can
    # never interleave with DDP's gradient all-reduce on the default one.
    grad_group: Any = None
    owns_group: bool = False       # we initialised it, so we tear it down
    # Set to a Traffic to count the bytes of every collective (benchmarks);
    # None (the default) counts nothing.
    traffic: Traffic | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------ splitting
    def shard(self, rows: Tensor) -> Tensor:
        """This rank's contiguous part of ``rows`` (sizes differ by <= 1)."""
        if not self.enabled:
            return rows
        return rows.tensor_split(self.world_size)[self.rank]

    # ---------------------------------------------------------- collectives
    def shard_sizes(self, n: int) -> list[int]:
        """Rows of each rank's :meth:`shard` of ``n`` rows."""
        return [n // self.world_size + (1 if r < n % self.world_size else 0)
                for r in range(self.world_size)]

    def shard_range(self, n: int) -> tuple[int, int]:
        """``(start, end)``: the rows of ``n`` in this rank's :meth:`shard`."""
        sizes = self.shard_sizes(n)
        start = sum(sizes[: self.rank])
        return start, start + sizes[self.rank]

    def all_gather_rows(self, x: Tensor, sizes: list[int] | None = None) -> Tensor:
        """Concatenates every rank's ``x`` (same trailing shape, any number of
        rows) in rank order: the inverse of :meth:`shard`. Passing every
        rank's row count as ``sizes`` saves a collective."""
        if not self.enabled:
            return x
        out, sizes_ = _gather_rows(x, self.world_size, None, sizes)
        if self.traffic is not None:
            if sizes is None:
                self.traffic.add("all_gather_sizes", 8 * self.world_size)
            row = math.prod(x.shape[1:]) * x.element_size()
            self.traffic.add("all_gather", row * max(sizes_) * self.world_size)
        return out

    def all_gather_rows_grad(self, x: Tensor, sizes: list[int] | None = None
                             ) -> Tensor:
        """:meth:`all_gather_rows` that gradients flow through: each rank's
        rows receive the sum of all ranks' gradients for them (what DDP's
        averaging needs when every rank's loss reads every rank's rows)."""
        if not self.enabled:
            return x
        return _AllGatherRows.apply(x, self, sizes)

    def all_reduce_sum(self, x: Tensor) -> Tensor:
        """Sum over ranks (no gradient)."""
        if not self.enabled:
            return x
        x = x.clone()
        dist.all_reduce(x)
        if self.traffic is not None:
            self.traffic.add("all_reduce", _nbytes(x))
        return x

    def all_reduce_sum_grad(self, x: Tensor) -> Tensor:
        """Sum over ranks that gradients flow through: the backward pass sums
        the ranks' gradients, so a term every rank computes from the sum is
        differentiated once per rank and DDP's averaging makes it exact."""
        if not self.enabled:
            return x
        return _AllReduceSum.apply(x, self)

    def broadcast_(self, x: Tensor, src: int = 0) -> Tensor:
        """Overwrites ``x`` on every rank with rank ``src``'s ``x``."""
        if self.enabled:
            dist.broadcast(x, src)
            if self.traffic is not None:
                self.traffic.add("broadcast", _nbytes(x))
        return x

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s picklable ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src)
        if self.traffic is not None:
            self.traffic.add("broadcast_object", _pickled_size(box[0]))
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        if self.traffic is not None:
            self.traffic.add("all_gather_object", sum(map(_pickled_size, out)))
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def on_main(self, fn: Callable[[], Any], share: bool = True) -> Any:
        """Runs ``fn`` on rank 0 only. An exception raised there is raised on
        every rank (same type when it pickles), so no rank waits for a
        partner that already gave up. With ``share`` every rank gets rank 0's
        result (pickled); otherwise the others get :obj:`None`."""
        if not self.enabled:
            return fn()
        result: Any = None
        status: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                result = fn()
            except Exception as e:  # handed to every rank, re-raised below
                status = ("error", _picklable(e))
        kind, error = self.broadcast_object(status)
        if kind == "error":
            raise error
        return self.broadcast_object(result) if share else result


def _gather_rows(x: Tensor, world: int, group: Any,
                 sizes: list[int] | None = None) -> tuple[Tensor, list[int]]:
    if sizes is None:
        n = torch.tensor([x.size(0)], dtype=torch.long, device=x.device)
        sizes_t = [torch.empty_like(n) for _ in range(world)]
        dist.all_gather(sizes_t, n, group=group)
        sizes = [int(s) for s in sizes_t]
    # Collectives need equal shapes: pad to the largest shard.
    pad = x.new_zeros((max(sizes),) + tuple(x.shape[1:]))
    pad[: x.size(0)] = x
    out = [torch.empty_like(pad) for _ in range(world)]
    dist.all_gather(out, pad.contiguous(), group=group)
    return torch.cat([o[:s] for o, s in zip(out, sizes, strict=True)]), sizes


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, dc: DistContext) -> Tensor:
        ctx.dc = dc
        x = x.clone()
        dist.all_reduce(x, group=dc.grad_group)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.dc.grad_group)
        return grad, None


class _AllGatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, dc: DistContext,
                sizes: list[int] | None) -> Tensor:
        out, sizes = _gather_rows(x, dc.world_size, dc.grad_group, sizes)
        ctx.dc, ctx.start = dc, sum(sizes[: dc.rank])
        ctx.size = x.size(0)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.dc.grad_group)
        return grad[ctx.start: ctx.start + ctx.size], None, None


def _picklable(e: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return DistributedError(f"{type(e).__name__}: {e}")


_COLLECTIVE_MARKERS = ("gloo", "nccl", "connection", "timed out", "timeout",
                       "watchdog", "process group")


def is_collective_failure(e: BaseException) -> bool:
    """Whether ``e`` comes from a collective whose partner went away or that
    waited past the timeout (gloo reports those as plain RuntimeErrors)."""
    if isinstance(e, dist.DistError):
        return True
    return isinstance(e, RuntimeError) and any(
        m in str(e).lower() for m in _COLLECTIVE_MARKERS)


def launched_by_torchrun() -> bool:
    """Whether the environment describes a multi-process launch."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(backend: str = "auto", timeout_s: float = 600.0,
                     device: str = "auto") -> DistContext:
    r"""Joins the process group that ``torchrun`` describes in the environment.

    Args:
        backend (str): ``"auto"`` (``nccl`` for CUDA tensors plus ``gloo`` for
            CPU ones on GPU machines, ``gloo`` elsewhere), or any backend
            string :func:`torch.distributed.init_process_group` accepts.
        timeout_s (float): How long any collective (and the rendezvous) may
            wait for the other ranks before the run fails.
        device (str): The run's ``device`` setting; with CUDA each process
            takes GPU ``LOCAL_RANK``.

    Returns:
        DistContext: ``world_size == 1`` (nothing initialised) outside a
        multi-process launch.
    """
    if not launched_by_torchrun():
        return DistContext()
    missing = [k for k in ENV_KEYS if k not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE>1 but {missing} are not set: launch with torchrun "
            "(torchrun --nproc_per_node N -m dag_pyg train CONFIG), which sets "
            "them, or unset WORLD_SIZE for a single process.")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if backend in ("auto", "nccl"):
        # The banks' bookkeeping also exchanges CPU tensors: gloo carries those.
        backend = "cpu:gloo,cuda:nccl" if use_cuda else "gloo"
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK {local} but this machine has "
                f"{torch.cuda.device_count()} GPUs: start at most that many "
                "processes per node (--nproc_per_node).")
        torch.cuda.set_device(local)
    owns = not dist.is_initialized()  # else: the caller's group, kept as is
    if owns:
        try:
            dist.init_process_group(
                backend, timeout=datetime.timedelta(seconds=timeout_s),
                rank=rank, world_size=world)
        except Exception as e:
            raise DistributedError(
                f"rank {rank}: joining the process group of {world} failed "
                f"({type(e).__name__}: {e}). Check that all {world} processes "
                "were started and reach MASTER_ADDR:MASTER_PORT.") from e
    return DistContext(rank=rank, world_size=world, local_rank=local,
                       backend=backend, grad_group=dist.new_group(),
                       owns_group=owns)


def shutdown(ctx: DistContext, failed: bool = False) -> None:
    """Leaves the process group: together with the other ranks after a
    successful run, alone (``failed``) after a collective failed."""
    if ctx.enabled and ctx.owns_group and dist.is_initialized():
        if not failed:
            # All ranks leave together: tearing gloo down while a peer still
            # talks aborts the process ("terminate called ...").
            dist.barrier()
        # A group left to the interpreter's exit aborts it (SIGABRT): gloo's
        # pending work frees tensors after the interpreter is gone.
        dist.destroy_process_group()
