from dag_pyg.sampler.knn_sampler import (
    KNNHopSampler,
    has_neighbor_backend,
    hop_expand,
    knn_subgraph,
    make_loader,
)

__all__ = [
    "KNNHopSampler",
    "has_neighbor_backend",
    "hop_expand",
    "knn_subgraph",
    "make_loader",
]
