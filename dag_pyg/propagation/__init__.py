from dag_pyg.propagation.dplp import (
    DPLPResult,
    density_ascending_parents,
    density_order,
    dplp,
    parent_step_distances,
    path_lengths,
)

__all__ = [
    "DPLPResult",
    "density_ascending_parents",
    "density_order",
    "dplp",
    "parent_step_distances",
    "path_lengths",
]
