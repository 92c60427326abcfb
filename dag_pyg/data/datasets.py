"""Datasets held in memory as tensors, and one loader for all of them.

Every dataset becomes an :class:`ArrayDataset`: ``images`` ``[N, C, H, W]``
(``uint8`` for photographs, ``float32`` in ``[0, 1]`` for digits) and
``targets`` ``[N]`` (``long``). Holding everything as one tensor lets the
training loop slice, augment and refresh its banks in batches without a
``DataLoader`` or per-image decoding.

Supported names (see :func:`load_dataset`):

* ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``, ``kmnist``,
  ``svhn``, ``stl10``: torchvision's data sets in their folder layouts under
  ``root`` (see :mod:`dag_pyg.data.torchvision_sets`).
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
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dag_pyg.data.array_dataset import ArrayDataset, DatasetNotFoundError
from dag_pyg.data.torchvision_sets import (
    IDX_SETS,
    load_cifar,
    load_idx_set,
    load_stl10,
    load_svhn,
)


class BadImageError(ValueError):
    """An image file that does not decode."""


DATASETS = ("cifar10", "cifar100", *IDX_SETS, "svhn", "stl10", "imagefolder",
            "digits", "synthetic")

# Bump when the cache layout changes so old files are not read.
_CACHE_VERSION = 1
_DEFAULT_CACHE_DIR = osp.join("~", ".cache", "dag_pyg")


def load_dataset(name: str, root: str | None = None, download: bool = False,
                 cache_dir: str | None = None, **kwargs: Any
                 ) -> tuple[ArrayDataset, ArrayDataset]:
    r"""Loads a dataset's training and test sets as :class:`ArrayDataset`\ s.

    The test set carries the training set's ``mean``/``std``.

    Args:
        name (str): one of :data:`DATASETS` (``-``/``_`` and case ignored).
        root (str, optional): where the data lives. For torchvision's sets,
            the folder holding their layout (``cifar-10-batches-py``,
            ``MNIST/raw``, ``train_32x32.mat``, ``stl10_binary``, ...;
            default ``~/data``). For ``imagefolder``, the folder holding
            ``train/`` and ``test/`` (required). Ignored by ``digits``.
        download (bool, optional): let torchvision fetch its sets when
            missing (needs network access). (default: :obj:`False`)
        cache_dir (str, optional): ``imagefolder`` only: where to write the
            decoded-array cache. By default it goes next to the data, or to
            ``~/.cache/dag_pyg`` when ``root`` is not writable.
        **kwargs: per-dataset options. ``imagefolder``: ``image_size`` (int,
            resize every image to ``image_size x image_size``), ``progress``
            (bool), ``train_dir``/``test_dir`` (default ``"train"``/``"test"``),
            ``skip_bad_files`` (bool: skip files that do not decode, listed in
            the sets' ``skipped``; by default such a file is a
            :class:`BadImageError` naming it). ``digits``: ``num_train``
            (default 1500). ``synthetic`` (random images for throughput
            checks): ``num_train``, ``num_test``, ``image_size``,
            ``channels``, ``num_classes``.
    """
    canonical = {d.replace("_", ""): d for d in DATASETS}
    key = canonical.get(name.lower().replace("-", "").replace("_", ""))
    options = {d: () for d in DATASETS}
    options["imagefolder"] = ("image_size", "progress", "train_dir", "test_dir",
                              "skip_bad_files")
    options["digits"] = ("num_train",)
    options["synthetic"] = ("num_train", "num_test", "image_size", "channels",
                            "num_classes")
    if key is None:
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
    if key == "synthetic":
        return _load_synthetic(**kwargs)
    if key in IDX_SETS:
        return load_idx_set(key, root, download)
    if key == "svhn":
        return load_svhn(root, download)
    if key == "stl10":
        return load_stl10(root, download)
    return load_cifar(key, root, download)


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


# synthetic -----------------------------------------------------------------

def _load_synthetic(num_train: int = 50_000, num_test: int = 10_000,
                    image_size: int = 32, channels: int = 3, num_classes: int = 10
                    ) -> tuple[ArrayDataset, ArrayDataset]:
    r"""Random uint8 images with random labels (seed 0): a stand-in of a data
    set's shape (CIFAR-10's by default) for throughput and smoke checks,
    where nothing is there to learn."""
    gen = torch.Generator().manual_seed(0)
    shape = (channels, image_size, image_size)
    classes = [str(c) for c in range(num_classes)]
    sets = [(torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8),
             torch.arange(n) % num_classes) for n in (num_train, num_test)]
    train = ArrayDataset(*sets[0], classes, name="synthetic")
    return train, ArrayDataset(*sets[1], classes, name="synthetic",
                               mean=train.mean, std=train.std)


# image folders -------------------------------------------------------------

def _load_imagefolder(root: str | None, cache_dir: str | None = None,
                      image_size: int | None = None, progress: bool = True,
                      train_dir: str = "train", test_dir: str = "test",
                      skip_bad_files: bool = False):
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
        parts.append(_cached_folder(root, sub, classes, class_to_idx, image_size,
                                    cache_dir, progress, skip_bad_files))
    train = ArrayDataset(*parts[0][:2], classes, name=name)
    test = ArrayDataset(*parts[1][:2], classes, name=name, mean=train.mean,
                        std=train.std)
    train.skipped, test.skipped = parts[0][2], parts[1][2]
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
                   cache_dir: str | None, progress: bool, skip_bad: bool = False
                   ) -> tuple[Tensor, Tensor, list[str]]:
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
            if loaded[2] and not skip_bad:  # decoded earlier with skipping
                raise BadImageError(
                    f"'{loaded[2][0]}' cannot be decoded (and "
                    f"{len(loaded[2]) - 1} more under '{osp.join(root, sub)}'). "
                    "Remove or replace the files, or set `data.skip_bad_files: "
                    "true` to skip them.")
            return loaded

    images, targets, skipped = _decode(samples, image_size, progress,
                                       desc=f"Decoding {prefix}/{sub}",
                                       skip_bad=skip_bad)
    for d in dirs:
        # The data folder may be read-only (a shared mount): fall through to
        # the user's cache directory.
        if _write_cache(osp.join(d, fname), key, images, targets, skipped):
            break
    else:
        warnings.warn(f"Could not write the decoded-image cache to any of "
                      f"{dirs}; images will be decoded again next time. Pass a "
                      "writable 'cache_dir'.", stacklevel=3)
    return torch.from_numpy(images), torch.from_numpy(targets), skipped


def _read_cache(path: str, key: str) -> tuple[Tensor, Tensor, list[str]] | None:
    if not osp.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            images, targets = f["images"], f["targets"]
            skipped = [str(p) for p in f["skipped"]] if "skipped" in f else []
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        warnings.warn(f"Ignoring unreadable image cache '{path}' ({e}); "
                      "decoding again.", stacklevel=4)
        return None
    return (torch.from_numpy(images), torch.from_numpy(targets.astype(np.int64)),
            skipped)


def _write_cache(path: str, key: str, images: np.ndarray, targets: np.ndarray,
                 skipped: list[str] | None = None) -> bool:
    """Writes the cache atomically; returns whether it succeeded."""
    d = osp.dirname(path)
    tmp = None
    try:
        os.makedirs(d, exist_ok=True)
        # A temporary file in the same folder, then os.replace: readers see
        # either no cache or a complete one, never a half-written file.
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=images, targets=targets, key=np.array(key),
                     skipped=np.array(skipped or [], dtype=str))
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
            progress: bool, desc: str, skip_bad: bool = False
            ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decodes every image into one ``[N, C, H, W]`` array; returns it, the
    targets and the files skipped as undecodable (``skip_bad``)."""
    images = None
    targets = np.fromiter((t for _, t in samples), dtype=np.int64,
                          count=len(samples))
    keep = np.ones(len(samples), dtype=bool)
    skipped: list[str] = []
    for i, (path, _) in enumerate(_progress(samples, len(samples), desc,
                                            progress)):
        try:
            arr = _decode_image(path, image_size)
        except (OSError, ValueError, SyntaxError) as e:
            # PIL raises OSError for truncated or unidentified files (and
            # ValueError / SyntaxError for some malformed headers).
            if not skip_bad:
                raise BadImageError(
                    f"'{path}' cannot be decoded ({type(e).__name__}: {e}). "
                    "Remove or replace the file, or set `data.skip_bad_files: "
                    "true` to skip undecodable files (they are counted in the "
                    "log).") from e
            keep[i] = False
            skipped.append(path)
            continue
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
    if images is None:
        raise BadImageError(f"None of the {len(samples)} images of '{desc}' "
                            f"decodes (first: '{samples[0][0]}').")
    if skipped:  # indexing copies: only where something was left out
        images, targets = images[keep], targets[keep]
    return images, targets, skipped
