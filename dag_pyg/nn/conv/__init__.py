from dag_pyg.nn.conv.density_aware_conv import DensityAwareConv
from dag_pyg.nn.conv.gat_root_conv import GATRootConv

__all__ = ["DensityAwareConv", "GATRootConv"]
