"""dag_pyg: Density-Aware Graph for deep semi-supervised visual recognition."""
from dag_pyg.graph import build_density_graph, knn_search
from dag_pyg.nn import DensityAwareConv

__version__ = "0.1.0"

__all__ = [
    "DensityAwareConv",
    "build_density_graph",
    "knn_search",
    "__version__",
]
