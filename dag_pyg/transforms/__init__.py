"""PyG transforms: density on a graph's own edges, or the density-aware kNN
graph in place of the graph."""
from dag_pyg.transforms.add_density import AddDensity
from dag_pyg.transforms.density_knn_graph import DensityKNNGraph

__all__ = [
    "AddDensity",
    "DensityKNNGraph",
]
