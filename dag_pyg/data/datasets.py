"""Datasets held in memory as tensors, and one loader for all of them.

Every dataset becomes an :class:`ArrayDataset`: ``images`` ``[N, C, H, W]``
(``uint8`` for photographs, ``float32`` in ``[0, 1]`` for digits) and
``targets`` ``[N]`` (``long``). Holding everything as one tensor lets the
training loop slice, augment and refresh its banks in batches without a
``DataLoader`` or per-image decoding.

Supported names (see :func:`load_dataset`):

* ``cifar10`` / ``cifar100``: torchvision's datasets under ``root``.
* ``imagefolder``: any ``root/train/<class>/*`` + ``root/test/<class>/*`` tree
  (Mini-ImageNet, the CIFAR-10 JPEG copy), decoded once into a ``.npz`` cache.
* ``digits``: scikit-learn's bundled 8x8 digits; needs no download.
"""
from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

DATASETS = ("cifar10", "cifar100", "imagefolder", "digits")

# Bump when the cache layout changes so old files are not read.
_CACHE_VERSION = 1
_DEFAULT_CACHE_DIR = osp.join("~", ".cache", "dag_pyg")


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset's files are missing and cannot be downloaded."""


class ArrayDataset(torch.utils.data.Dataset):
    r"""A labelled image set held in memory as two tensors.

    Args:
        images (Tensor): ``[N, C, H, W]``; ``uint8`` (0..255) or floating point
            (already in ``[0, 1]``).
        targets (Tensor): ``[N]`` class indices.
        classes (Sequence[str]): class names; ``classes[t]`` names target ``t``.
        name (str, optional): the dataset's name, e.g. ``"cifar10"``.
        mean (Sequence[float], optional): per-channel mean on the ``[0, 1]``
            scale. Computed from ``images`` when omitted; pass the training
            set's statistics to a test set.
        std (Sequence[float], optional): per-channel standard deviation, as
            ``mean``.
    """

    def __init__(self, images: Tensor, targets: Tensor, classes: Sequence[str],
                 name: str = "", mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None):
        images = torch.as_tensor(images)
        targets = torch.as_tensor(targets, dtype=torch.long)
        if images.dim() != 4:
            raise ValueError(f"'images' must be [N, C, H, W] (got shape "
                             f"{tuple(images.shape)}).")
        if targets.dim() != 1 or targets.numel() != images.size(0):
            raise ValueError(f"'targets' must be [N] with N={images.size(0)} "
                             f"(got shape {tuple(targets.shape)}).")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"'images' must be uint8 or floating point (got "
                             f"{images.dtype}).")
        if targets.numel() and (int(targets.min()) < 0
                                or int(targets.max()) >= len(classes)):
            raise ValueError(f"'targets' must lie in [0, {len(classes)}) for "
                             f"{len(classes)} classes (got range "
                             f"[{int(targets.min())}, {int(targets.max())}]).")
        self.images = images
        self.targets = targets
        self.classes = list(classes)
        self.name = name
        if mean is None or std is None:
            m, s = channel_stats(images)
            mean = m if mean is None else mean
            std = s if std is None else std
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.targets.numel()

    def __getitem__(self, index: Any) -> tuple[Tensor, Tensor]:
        return self.images[index], self.targets[index]

    def subset(self, indices: Tensor | Sequence[int]) -> ArrayDataset:
        """A new dataset with the rows ``indices``, keeping this one's stats."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ArrayDataset(self.images[idx], self.targets[idx], self.classes,
                            name=self.name, mean=self.mean, std=self.std)

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (f"{self.__class__.__name__}({self.name or 'unnamed'}, "
                f"num_samples={len(self)}, num_classes={self.num_classes}, "
                f"image={c}x{h}x{w} {str(self.images.dtype).split('.')[-1]})")


def channel_stats(images: Tensor, chunk: int = 4096
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    r"""Per-channel mean and standard deviation on the ``[0, 1]`` scale.

    ``uint8`` images are divided by 255. Float images are processed in chunks
    of ``chunk`` images so large sets never need a float64 copy.
    """
    if images.numel() == 0:
        c = images.size(1) if images.dim() == 4 else 1
        return (0.0,) * c, (1.0,) * c
    c = images.size(1)
    if images.dtype == torch.uint8:
        # Exact and fast: a 256-bin histogram per channel instead of a float
        # copy of the whole set (CIFAR-10: 0.3 s instead of 2.5 s).
        hist = torch.zeros(c, 256, dtype=torch.float64)
        for ch in range(c):
            hist[ch] = torch.bincount(images[:, ch].reshape(-1),
                                      minlength=256).double()
        levels = torch.arange(256, dtype=torch.float64) / 255.0
        count = hist.sum(dim=1)
        mean = (hist * levels).sum(dim=1) / count
        var = (hist * (levels - mean.view(-1, 1)) ** 2).sum(dim=1) / count
        std = var.clamp_min(0).sqrt()
    else:
        total = torch.zeros(c, dtype=torch.float64)
        total_sq = torch.zeros(c, dtype=torch.float64)
        for start in range(0, images.size(0), chunk):
            x = images[start:start + chunk].to(torch.float64)
            total += x.sum(dim=(0, 2, 3))
            total_sq += (x * x).sum(dim=(0, 2, 3))
        count = images.numel() / c
        mean = total / count
        std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant channel
    return tuple(mean.tolist()), tuple(std.tolist())


def load_dataset(name: str, root: str | None = None, download: bool = False,
                 cache_dir: str | None = None, **kwargs: Any
                 ) -> tuple[ArrayDataset, ArrayDataset]:
    r"""Loads a dataset's training and test sets as :class:`ArrayDataset`\ s.

    The test set carries the training set's ``mean``/``std``.

    Args:
        name (str): one of ``"cifar10"``, ``"cifar100"``, ``"imagefolder"``,
            ``"digits"``.
        root (str, optional): where the data lives. For CIFAR, the folder that
            holds (or will hold) ``cifar-10-batches-py`` / ``cifar-100-python``
            (default ``~/data``). For ``imagefolder``, the folder holding
            ``train/`` and ``test/`` (required). Ignored by ``digits``.
        download (bool, optional): let torchvision fetch CIFAR when missing
            (needs network access). (default: :obj:`False`)
        cache_dir (str, optional): ``imagefolder`` only: where to write the
            decoded-array cache. By default it goes next to the data, or to
            ``~/.cache/dag_pyg`` when ``root`` is not writable.
        **kwargs: per-dataset options. ``imagefolder``: ``image_size`` (int,
            resize every image to ``image_size x image_size``), ``progress``
            (bool), ``train_dir``/``test_dir`` (default ``"train"``/``"test"``).
            ``digits``: ``num_train`` (default 1500).
    """
    key = name.lower().replace("-", "").replace("_", "")
    options = {"cifar10": (), "cifar100": (),
               "imagefolder": ("image_size", "progress", "train_dir", "test_dir"),
               "digits": ("num_train",)}
    if key not in options:
        raise ValueError(f"Unknown dataset '{name}'. Choose one of "
                         f"{list(DATASETS)}.")
    unknown = sorted(set(kwargs) - set(options[key]))
    if unknown:
        raise TypeError(f"Dataset '{key}' got unknown option(s) {unknown}; "
                        f"valid options: {list(options[key])}.")
    if key == "imagefolder":
        return _load_imagefolder(root, cache_dir=cache_dir, **kwargs)
    if key == "digits":
        return _load_digits(**kwargs)
    if key == "cifar10":
        return _load_cifar10(root, download=download)
    return _load_cifar100(root, download=download)


# CIFAR ---------------------------------------------------------------------

def _load_cifar10(root: str | None, download: bool = False):
    from torchvision.datasets import CIFAR10

    return _load_torchvision_cifar(CIFAR10, "cifar10", "CIFAR-10",
                                   "cifar-10-batches-py", root, download)


def _load_cifar100(root: str | None, download: bool = False):
    from torchvision.datasets import CIFAR100

    return _load_torchvision_cifar(CIFAR100, "cifar100", "CIFAR-100",
                                   "cifar-100-python", root, download)


def _load_torchvision_cifar(cls, name: str, title: str, folder: str,
                            root: str | None, download: bool):
    root = osp.expanduser(root if root is not None else osp.join("~", "data"))
    expected = osp.join(root, folder)
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=download)
    except (RuntimeError, OSError) as e:
        # torchvision says "Dataset not found or corrupted" when files are
        # missing, and raises URLError (an OSError) when a download fails.
        cause = ("and the download failed" if download else
                 "and download is off")
        raise DatasetNotFoundError(
            f"{title} was not found under '{expected}' {cause} ({e}). Set "
            f"`download: true` in the config (load_dataset('{name}', root, "
            "download=True)) to fetch it where the network allows. On an "
            "offline machine use the `imagefolder` dataset with a local copy "
            "laid out as <root>/train/<class>/* and <root>/test/<class>/*, "
            "e.g. a JPEG copy of CIFAR-10.") from e
    tr = _from_torchvision(train, name)
    te = _from_torchvision(test, name, mean=tr.mean, std=tr.std)
    return tr, te


def _from_torchvision(ds, name: str, mean=None, std=None) -> ArrayDataset:
    images = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2)
    return ArrayDataset(images.contiguous(), torch.as_tensor(ds.targets),
                        ds.classes, name=name, mean=mean, std=std)


# digits --------------------------------------------------------------------

def _load_digits(num_train: int = 1500):
    r"""scikit-learn's 1,797 8x8 digits as ``[N, 1, 8, 8]`` floats in [0, 1].

    The split is positional and fixed, independent of any seed or library
    version: the first ``num_train`` samples train, the rest test (297 for
    the default 1,500; every class appears in both, about 150 / 30 per
    class). Labelled subsets are drawn from the training part with
    :func:`~dag_pyg.data.make_split`.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)
    images = images.unsqueeze(1)
    targets = torch.from_numpy(bunch.target.astype(np.int64))
    if not 0 < num_train < images.size(0):
        raise ValueError(f"'num_train' must lie in [1, {images.size(0) - 1}] "
                         f"(got {num_train}).")
    classes = [str(c) for c in range(10)]
    train = ArrayDataset(images[:num_train], targets[:num_train], classes,
                         name="digits")
    test = ArrayDataset(images[num_train:], targets[num_train:], classes,
                        name="digits", mean=train.mean, std=train.std)
    return train, test


# image folders -------------------------------------------------------------

def _load_imagefolder(root: str | None, cache_dir: str | None = None,
                      image_size: int | None = None, progress: bool = True,
                      train_dir: str = "train", test_dir: str = "test"):
    if root is None:
        raise ValueError("The 'imagefolder' dataset needs 'root': a folder "
                         "holding train/<class>/* and test/<class>/*.")
    root = osp.expanduser(root)
    for sub in (train_dir, test_dir):
        if not osp.isdir(osp.join(root, sub)):
            raise DatasetNotFoundError(
                f"Expected an image folder at '{osp.join(root, sub)}' (layout "
                f"<root>/{train_dir}/<class>/*, <root>/{test_dir}/<class>/*).")
    if image_size is not None:
        image_size = int(image_size)
        if image_size <= 0:
            raise ValueError(f"'image_size' must be positive (got {image_size}).")
    from torchvision.datasets.folder import find_classes

    classes, class_to_idx = find_classes(osp.join(root, train_dir))
    name = osp.basename(osp.normpath(root)) or "imagefolder"
    parts = []
    for sub in (train_dir, test_dir):
        images, targets = _cached_folder(root, sub, classes, class_to_idx,
                                         image_size, cache_dir, progress)
        parts.append((images, targets))
    train = ArrayDataset(*parts[0], classes, name=name)
    test = ArrayDataset(*parts[1], classes, name=name, mean=train.mean,
                        std=train.std)
    return train, test


def _list_folder(directory: str, class_to_idx: dict[str, int], allow_empty: bool
                 ) -> list[tuple[str, int]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    found, _ = find_classes(directory)
    extra = sorted(set(found) - set(class_to_idx))
    if extra:
        raise ValueError(f"'{directory}' has classes the training folder lacks: "
                         f"{extra[:10]}; train and test must share class names.")
    # make_dataset sorts by class, then by file name: a stable order.
    return make_dataset(directory, class_to_idx, extensions=IMG_EXTENSIONS,
                        allow_empty=allow_empty)


def _cache_key(root: str, samples: list[tuple[str, int]], classes: list[str],
               image_size: int | None) -> str:
    # File names, sizes and labels stand in for the content: re-hashing every
    # JPEG would cost as much as decoding it.
    # make_dataset joins onto ``root``, so slicing gives the relative path
    # (osp.relpath costs a second per 60k files).
    start = len(osp.join(root, ""))
    entries = [(p[start:], osp.getsize(p), t) for p, t in samples]
    blob = json.dumps({"v": _CACHE_VERSION, "size": image_size,
                       "classes": classes, "files": entries})
    return hashlib.sha1(blob.encode()).hexdigest()


def _cached_folder(root: str, sub: str, classes: list[str],
                   class_to_idx: dict[str, int], image_size: int | None,
                   cache_dir: str | None, progress: bool) -> tuple[Tensor, Tensor]:
    samples = _list_folder(osp.join(root, sub), class_to_idx,
                           allow_empty=(sub != "train"))
    if not samples:
        raise DatasetNotFoundError(f"No images under '{osp.join(root, sub)}'.")
    key = _cache_key(root, samples, classes, image_size)
    size_tag = f"{image_size}px" if image_size else "native"
    prefix = osp.basename(osp.normpath(root)) or "imagefolder"
    fname = f".dag_pyg_cache_{prefix}_{sub}_{size_tag}_{key[:16]}.npz"
    dirs = ([cache_dir] if cache_dir is not None
            else [root, _DEFAULT_CACHE_DIR])
    dirs = [osp.expanduser(d) for d in dirs]

    for d in dirs:
        loaded = _read_cache(osp.join(d, fname), key)
        if loaded is not None:
            return loaded

    images, targets = _decode(samples, image_size, progress,
                              desc=f"Decoding {prefix}/{sub}")
    for d in dirs:
        # The data folder may be read-only (a shared mount): fall through to
        # the user's cache directory.
        if _write_cache(osp.join(d, fname), key, images, targets):
            break
    else:
        warnings.warn(f"Could not write the decoded-image cache to any of "
                      f"{dirs}; images will be decoded again next time. Pass a "
                      "writable 'cache_dir'.", stacklevel=3)
    return torch.from_numpy(images), torch.from_numpy(targets)


def _read_cache(path: str, key: str) -> tuple[Tensor, Tensor] | None:
    if not osp.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            images, targets = f["images"], f["targets"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        warnings.warn(f"Ignoring unreadable image cache '{path}' ({e}); "
                      "decoding again.", stacklevel=4)
        return None
    return torch.from_numpy(images), torch.from_numpy(targets.astype(np.int64))


def _write_cache(path: str, key: str, images: np.ndarray, targets: np.ndarray
                 ) -> bool:
    """Writes the cache atomically; returns whether it succeeded."""
    d = osp.dirname(path)
    tmp = None
    try:
        os.makedirs(d, exist_ok=True)
        # A temporary file in the same folder, then os.replace: readers see
        # either no cache or a complete one, never a half-written file.
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=images, targets=targets, key=np.array(key))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; others may share the data
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp is not None and osp.exists(tmp):
            os.remove(tmp)
        return False
    except BaseException:
        if tmp is not None and osp.exists(tmp):
            os.remove(tmp)
        raise


def _decode_image(path: str, image_size: int | None) -> np.ndarray:
    """One image as an ``[H, W, 3]`` uint8 array (RGB)."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if image_size is not None and img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        yield from iterable
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(iterable, total=total, desc=desc, unit="img")
        return
    step = max(1, total // 10)
    for i, item in enumerate(iterable):
        if i % step == 0:
            print(f"{desc}: {i}/{total}", file=sys.stderr, flush=True)
        yield item
    print(f"{desc}: {total}/{total}", file=sys.stderr, flush=True)


def _decode(samples: list[tuple[str, int]], image_size: int | None,
            progress: bool, desc: str) -> tuple[np.ndarray, np.ndarray]:
    images = None
    targets = np.fromiter((t for _, t in samples), dtype=np.int64,
                          count=len(samples))
    for i, (path, _) in enumerate(_progress(samples, len(samples), desc,
                                            progress)):
        arr = _decode_image(path, image_size)
        if images is None:
            # Preallocate from the first image: one [N, C, H, W] buffer.
            h, w, c = arr.shape
            images = np.empty((len(samples), c, h, w), dtype=np.uint8)
        elif arr.shape[:2] != images.shape[2:]:
            raise ValueError(
                f"'{path}' is {arr.shape[1]}x{arr.shape[0]} but earlier images "
                f"are {images.shape[3]}x{images.shape[2]}; pass 'image_size' "
                "to resize every image to one size.")
        images[i] = arr.transpose(2, 0, 1)
    return images, targets
