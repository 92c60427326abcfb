from dag_pyg.nn.conv import DensityAwareConv
from dag_pyg.nn.dna_head import (
    DNAHead,
    GATRootConv,
    assemble_input,
    predict_queries,
    query_subgraph,
)

__all__ = [
    "DensityAwareConv",
    "DNAHead",
    "GATRootConv",
    "assemble_input",
    "predict_queries",
    "query_subgraph",
]
