from dag_pyg.nn.conv import DensityAwareConv, GATRootConv
from dag_pyg.nn.dna_head import AGGREGATORS, DNAHead, assemble_input

__all__ = [
    "AGGREGATORS",
    "DensityAwareConv",
    "GATRootConv",
    "DNAHead",
    "assemble_input",
]
