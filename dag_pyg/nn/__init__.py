from dag_pyg.nn.conv import DensityAwareConv

__all__ = ["DensityAwareConv"]
