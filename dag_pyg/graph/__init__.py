from dag_pyg.graph.build import build_density_graph, neighbour_table
from dag_pyg.graph.density import compute_density, graph_density
from dag_pyg.graph.drift import bank_drift
from dag_pyg.graph.knn import (
    exact_neighbours,
    knn_search,
    neighbour_recall,
    normalize_rows,
    recall_lower_bound,
    resolve_backend,
    row_recalls,
    sample_rows,
)

__all__ = [
    "build_density_graph",
    "neighbour_table",
    "compute_density",
    "graph_density",
    "bank_drift",
    "exact_neighbours",
    "knn_search",
    "neighbour_recall",
    "normalize_rows",
    "recall_lower_bound",
    "resolve_backend",
    "row_recalls",
    "sample_rows",
]
