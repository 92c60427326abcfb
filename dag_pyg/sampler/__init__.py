from dag_pyg.sampler.knn_sampler import (
    SAMPLERS,
    KNNHopSampler,
    check_hop_args,
    graph_degree,
    has_neighbor_backend,
    hop_expand,
    knn_subgraph,
    make_loader,
)
from dag_pyg.sampler.mixup import swap_seed_neighbours
from dag_pyg.sampler.retrieval import predict_queries, query_subgraph

__all__ = [
    "SAMPLERS",
    "KNNHopSampler",
    "check_hop_args",
    "graph_degree",
    "has_neighbor_backend",
    "hop_expand",
    "knn_subgraph",
    "make_loader",
    "predict_queries",
    "query_subgraph",
    "swap_seed_neighbours",
]
