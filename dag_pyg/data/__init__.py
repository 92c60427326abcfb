"""Datasets, semi-supervised splits and batched augmentation."""
from dag_pyg.data.array_dataset import ArrayDataset, DatasetNotFoundError, channel_stats
from dag_pyg.data.datasets import DATASETS, BadImageError, load_dataset
from dag_pyg.data.idx import IdxFormatError, read_idx
from dag_pyg.data.splits import Split, hold_out, make_split
from dag_pyg.data.transforms import (
    BatchTransform,
    affine,
    mix,
    mixup,
    mixup_draw,
    normalize,
    random_affine,
    random_flip,
    random_translate,
    to_float,
)

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "BadImageError",
    "DatasetNotFoundError",
    "IdxFormatError",
    "read_idx",
    "channel_stats",
    "load_dataset",
    "Split",
    "hold_out",
    "make_split",
    "BatchTransform",
    "affine",
    "mix",
    "mixup",
    "mixup_draw",
    "normalize",
    "random_affine",
    "random_flip",
    "random_translate",
    "to_float",
]
