from dag_pyg.propagation.dplp import (
    MODES,
    DPLPResult,
    density_ascending_parents,
    density_order,
    dplp,
    parent_step_distances,
    path_lengths,
)
from dag_pyg.propagation.pseudo_labels import (
    SOURCES,
    WEIGHTINGS,
    PseudoLabels,
    check_sigma,
    has_target_weights,
    pseudo_labels,
    resolve_sigma,
    target_weights,
)

__all__ = [
    "MODES",
    "DPLPResult",
    "density_ascending_parents",
    "density_order",
    "dplp",
    "parent_step_distances",
    "path_lengths",
    "SOURCES",
    "WEIGHTINGS",
    "PseudoLabels",
    "check_sigma",
    "has_target_weights",
    "pseudo_labels",
    "resolve_sigma",
    "target_weights",
]
