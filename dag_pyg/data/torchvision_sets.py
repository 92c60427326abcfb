r"""torchvision's standard image sets as :class:`ArrayDataset`\ s, in
torchvision's folder layouts under ``root`` (``download`` where a network
allows):

* ``cifar10`` / ``cifar100``: ``root/cifar-10-batches-py``, ``root/cifar-100-python``;
* ``mnist`` / ``fashion_mnist`` / ``kmnist``: the idx files in
  ``root/MNIST/raw``, ``root/FashionMNIST/raw``, ``root/KMNIST/raw``, plain or
  gzipped (one reader, :func:`~dag_pyg.data.idx.read_idx`, for all three);
* ``svhn``: ``root/train_32x32.mat``, ``root/test_32x32.mat``;
* ``stl10``: ``root/stl10_binary`` (its labelled ``train``/``test`` splits).
"""
from __future__ import annotations

import os.path as osp

import numpy as np
import torch

from dag_pyg.data.array_dataset import ArrayDataset, DatasetNotFoundError
from dag_pyg.data.idx import find_idx_file, read_idx

DEFAULT_ROOT = osp.join("~", "data")
# data.name -> (torchvision class name, title)
IDX_SETS = {"mnist": ("MNIST", "MNIST"), "fashion_mnist": ("FashionMNIST",
            "Fashion-MNIST"), "kmnist": ("KMNIST", "KMNIST")}


def _root(root: str | None) -> str:
    return osp.expanduser(root if root is not None else DEFAULT_ROOT)


def _not_found(title: str, expected: str, files: list[str], download: bool,
               cause: object) -> DatasetNotFoundError:
    how = ("the download failed" if download else
           "download is off; `download: true` in the config fetches it where "
           "the machine has a network")
    return DatasetNotFoundError(
        f"{title} was not found: expected {', '.join(files)} under '{expected}' "
        f"({how}; {cause}).")


def _from_torchvision(images, targets, classes, name: str, mean=None,
                      std=None) -> ArrayDataset:
    return ArrayDataset(torch.as_tensor(np.ascontiguousarray(images)),
                        torch.as_tensor(np.asarray(targets), dtype=torch.long),
                        classes, name=name, mean=mean, std=std)


def load_cifar(name: str, root: str | None = None, download: bool = False
               ) -> tuple[ArrayDataset, ArrayDataset]:
    """CIFAR-10 or CIFAR-100 through torchvision's classes."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls, title, folder = {"cifar10": (CIFAR10, "CIFAR-10", "cifar-10-batches-py"),
                          "cifar100": (CIFAR100, "CIFAR-100", "cifar-100-python")
                          }[name]
    root = _root(root)
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except (RuntimeError, OSError) as e:
        # torchvision says "Dataset not found or corrupted" when files are
        # missing, and raises URLError (an OSError) when a download fails.
        err = _not_found(title, osp.join(root, folder), [folder], download, e)
        raise DatasetNotFoundError(
            f"{err} On an offline machine use the `imagefolder` dataset with a "
            "local copy laid out as <root>/train/<class>/* and "
            "<root>/test/<class>/*, e.g. a JPEG copy of CIFAR-10.") from e
    tr = _from_torchvision(np.asarray(train.data).transpose(0, 3, 1, 2),
                           train.targets, train.classes, name)
    te = _from_torchvision(np.asarray(test.data).transpose(0, 3, 1, 2),
                           test.targets, test.classes, name, tr.mean, tr.std)
    return tr, te


def load_idx_set(name: str, root: str | None = None, download: bool = False
                 ) -> tuple[ArrayDataset, ArrayDataset]:
    r"""MNIST, Fashion-MNIST or KMNIST from their four idx files in
    ``root/<Name>/raw/`` (``.gz`` or plain; with ``download``, torchvision
    fetches missing ones first): uint8 images ``[N, 1, 28, 28]``."""
    import torchvision.datasets as tvd

    cls_name, title = IDX_SETS[name]
    cls = getattr(tvd, cls_name)
    root = _root(root)
    folder = osp.join(root, cls_name, "raw")
    names = [f"{part}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
             for part in ("train", "t10k") for kind in ("images", "labels")]
    paths = [find_idx_file(folder, n) for n in names]
    if None in paths and download:
        try:
            cls(root, train=True, download=True)
            cls(root, train=False, download=True)
        except (RuntimeError, OSError) as e:
            raise _not_found(title, folder, names, True, e) from e
        paths = [find_idx_file(folder, n) for n in names]
    if None in paths:
        missing = [n for n, p in zip(names, paths, strict=True) if p is None]
        raise _not_found(title, folder, [f"{n}[.gz]" for n in names], download,
                         f"missing: {', '.join(missing)}")
    sets = []
    for images_path, labels_path in (paths[:2], paths[2:]):
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.dim() != 3 or labels.dim() != 1:
            raise ValueError(f"'{images_path}' must hold [N, H, W] images and "
                             f"'{labels_path}' [N] labels (got shapes "
                             f"{tuple(images.shape)} and {tuple(labels.shape)}).")
        if images.dtype != torch.uint8:
            raise ValueError(f"'{images_path}' holds {images.dtype} pixels; "
                             "MNIST-format images are uint8.")
        if images.size(0) != labels.size(0):
            raise ValueError(f"'{images_path}' holds {images.size(0)} images but "
                             f"'{labels_path}' {labels.size(0)} labels; the two "
                             "files do not belong together.")
        sets.append((images.unsqueeze(1), labels.long()))
    classes = list(cls.classes)
    train = ArrayDataset(*sets[0], classes, name=name)
    test = ArrayDataset(*sets[1], classes, name=name, mean=train.mean,
                        std=train.std)
    return train, test


def load_svhn(root: str | None = None, download: bool = False
              ) -> tuple[ArrayDataset, ArrayDataset]:
    """SVHN's ``train`` and ``test`` splits through torchvision's class."""
    from torchvision.datasets import SVHN

    root = _root(root)
    try:
        train = SVHN(root, split="train", download=download)
        test = SVHN(root, split="test", download=download)
    except (RuntimeError, OSError) as e:
        raise _not_found("SVHN", root, ["train_32x32.mat", "test_32x32.mat"],
                         download, e) from e
    classes = [str(c) for c in range(10)]
    tr = _from_torchvision(train.data, train.labels, classes, "svhn")
    te = _from_torchvision(test.data, test.labels, classes, "svhn", tr.mean, tr.std)
    return tr, te


def load_stl10(root: str | None = None, download: bool = False
               ) -> tuple[ArrayDataset, ArrayDataset]:
    """STL-10's labelled ``train`` and ``test`` splits (96x96) through
    torchvision's class."""
    from torchvision.datasets import STL10

    root = _root(root)
    try:
        train = STL10(root, split="train", download=download)
        test = STL10(root, split="test", download=download)
    except (RuntimeError, OSError) as e:
        raise _not_found("STL-10", osp.join(root, "stl10_binary"),
                         ["train_X.bin", "train_y.bin", "test_X.bin",
                          "test_y.bin"], download, e) from e
    # torchvision reads the names from class_names.txt where it exists.
    classes = list(getattr(train, "classes", None) or range(10))
    classes = [str(c) for c in classes]
    tr = _from_torchvision(train.data, train.labels, classes, "stl10")
    te = _from_torchvision(test.data, test.labels, classes, "stl10", tr.mean,
                           tr.std)
    return tr, te
