from dag_pyg.nn.conv.density_aware_conv import DensityAwareConv

__all__ = ["DensityAwareConv"]
