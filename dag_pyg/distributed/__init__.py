"""Multi-process training on ``torch.distributed`` (launched by ``torchrun``)."""
from dag_pyg.distributed.batchnorm import DistributedBatchNorm, convert_sync_batchnorm
from dag_pyg.distributed.broadcast import broadcast_data
from dag_pyg.distributed.context import (
    DistContext,
    DistributedError,
    Traffic,
    init_distributed,
    is_collective_failure,
    launched_by_torchrun,
    shutdown,
)

__all__ = ["DistContext", "broadcast_data", "DistributedError", "DistributedBatchNorm",
           "convert_sync_batchnorm", "init_distributed", "is_collective_failure",
           "launched_by_torchrun", "shutdown", "Traffic"]
