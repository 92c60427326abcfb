"""dag_pyg: Density-Aware Graph for deep semi-supervised visual recognition.

The layout follows the method: graph (``dag_pyg.graph``) -> layers
(``dag_pyg.nn``) -> sampling (``dag_pyg.sampler``) -> propagation
(``dag_pyg.propagation``) -> training (``dag_pyg.train``) -> CLI.
``dag_pyg.transforms`` brings the density to any PyG graph.
"""
from dag_pyg.graph import build_density_graph, graph_density, knn_search
from dag_pyg.nn import DensityAwareConv, DNAHead
from dag_pyg.propagation import (
    DPLPResult,
    density_ascending_parents,
    dplp,
    parent_step_distances,
    path_lengths,
)
from dag_pyg.sampler import KNNHopSampler, make_loader

__version__ = "0.1.0"

__all__ = [
    "DensityAwareConv",
    "DNAHead",
    "build_density_graph",
    "graph_density",
    "knn_search",
    "dplp",
    "DPLPResult",
    "density_ascending_parents",
    "parent_step_distances",
    "path_lengths",
    "KNNHopSampler",
    "make_loader",
    "__version__",
]
