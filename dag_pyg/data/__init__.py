"""Datasets, semi-supervised splits and batched augmentation."""
from dag_pyg.data.datasets import (
    DATASETS,
    ArrayDataset,
    DatasetNotFoundError,
    channel_stats,
    load_dataset,
)
from dag_pyg.data.splits import Split, make_split
from dag_pyg.data.transforms import (
    BatchTransform,
    mixup,
    normalize,
    random_flip,
    random_translate,
    to_float,
)

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "DatasetNotFoundError",
    "channel_stats",
    "load_dataset",
    "Split",
    "make_split",
    "BatchTransform",
    "mixup",
    "normalize",
    "random_flip",
    "random_translate",
    "to_float",
]
