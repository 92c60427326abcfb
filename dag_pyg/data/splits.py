"""Class-balanced labelled / unlabelled / validation splits of a training set.

A split is three disjoint index sets over the training set that together cover
it. It is saved as JSON in the run folder so that another run can reuse it
(``Split.load``), which keeps comparisons between methods on the same labels.
"""
from __future__ import annotations

import json
import os
import os.path as osp
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

_FORMAT = "dag_pyg.split"
_VERSION = 1


@dataclass
class Split:
    r"""Index sets of one semi-supervised split of a training set.

    Args:
        labelled (Tensor): indices whose labels the method may use.
        unlabelled (Tensor): the remaining training indices (labels hidden).
        val (Tensor): held-out validation indices (possibly empty), disjoint
            from both; used to pick the "best" epoch, never trained on.
        num_samples (int): size of the training set the indices refer to.
        meta (dict): how the split was made (seed, counts) and for which
            training set (data set name, hash of its labels: checked when a
            run reuses the split).
    """
    labelled: Tensor
    unlabelled: Tensor
    val: Tensor
    num_samples: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.labelled = _as_index(self.labelled, "labelled")
        self.unlabelled = _as_index(self.unlabelled, "unlabelled")
        self.val = _as_index(self.val, "val")
        self.num_samples = int(self.num_samples)
        self.validate()

    @property
    def train(self) -> Tensor:
        """All non-validation indices (labelled and unlabelled), sorted."""
        return torch.cat([self.labelled, self.unlabelled]).sort().values

    def validate(self, num_samples: int | None = None) -> None:
        """Checks that the indices are in range, disjoint and cover the set.

        Args:
            num_samples (int, optional): the size of the dataset the split is
                about to index; must equal the size it was made for.
        """
        if num_samples is not None and int(num_samples) != self.num_samples:
            raise ValueError(
                f"The split was made for a training set of {self.num_samples} "
                f"samples but the dataset has {num_samples}; it belongs to "
                "another dataset (or another 'num_train'/'image folder').")
        n = self.num_samples
        parts = {"labelled": self.labelled, "unlabelled": self.unlabelled,
                 "val": self.val}
        for name, idx in parts.items():
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
                raise ValueError(f"Split '{name}' has indices outside [0, {n}) "
                                 f"(range [{int(idx.min())}, {int(idx.max())}]).")
            if idx.unique().numel() != idx.numel():
                raise ValueError(f"Split '{name}' repeats indices.")
        seen = torch.zeros(n, dtype=torch.long)
        for idx in parts.values():
            seen.index_add_(0, idx, torch.ones_like(idx))
        if bool((seen > 1).any()):
            raise ValueError("Split parts overlap: 'labelled', 'unlabelled' and "
                             "'val' must be disjoint.")
        if bool((seen == 0).any()):
            missing = (seen == 0).nonzero().view(-1)
            raise ValueError(f"Split leaves {missing.numel()} of {n} samples out "
                             f"of every part (first: {missing[:5].tolist()}).")

    def save(self, path: str) -> None:
        """Writes the split as JSON (atomically: temporary file + rename)."""
        obj = {"format": _FORMAT, "version": _VERSION,
               "num_samples": self.num_samples, "meta": self.meta,
               "labelled": self.labelled.tolist(),
               "unlabelled": self.unlabelled.tolist(),
               "val": self.val.tolist()}
        d = osp.dirname(osp.abspath(path))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(obj, f)
            os.replace(tmp, path)
        except BaseException:
            if osp.exists(tmp):
                os.remove(tmp)
            raise

    @classmethod
    def load(cls, path: str, num_samples: int | None = None) -> Split:
        """Reads a split written by :meth:`save`.

        Args:
            path (str): the JSON file.
            num_samples (int, optional): size of the training set it will
                index; a mismatch raises a :class:`ValueError`.
        """
        try:
            with open(path) as f:
                obj = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"'{path}' is not a valid split file ({e}).") from e
        if not isinstance(obj, dict) or obj.get("format") != _FORMAT:
            raise ValueError(f"'{path}' is not a dag_pyg split file (no "
                             f"\"format\": \"{_FORMAT}\").")
        missing = [k for k in ("num_samples", "labelled", "unlabelled", "val")
                   if k not in obj]
        if missing:
            raise ValueError(f"Split file '{path}' lacks {missing}.")
        try:
            split = cls(obj["labelled"], obj["unlabelled"], obj["val"],
                        obj["num_samples"], meta=obj.get("meta", {}))
        except (TypeError, ValueError) as e:
            raise ValueError(f"Invalid split file '{path}': {e}") from e
        split.validate(num_samples)
        return split

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(labelled={self.labelled.numel()}, "
                f"unlabelled={self.unlabelled.numel()}, val={self.val.numel()}, "
                f"num_samples={self.num_samples})")


def _as_index(idx: Any, name: str) -> Tensor:
    t = torch.as_tensor(idx)
    if t.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    if t.is_floating_point() or t.dtype == torch.bool or t.dim() != 1:
        raise ValueError(f"Split '{name}' must be a 1-D list of integer indices "
                         f"(got dtype {t.dtype}, shape {tuple(t.shape)}).")
    return t.long()


def _per_class(total: int, num_classes: int, what: str) -> int:
    if total % num_classes:
        lo = total // num_classes * num_classes
        hint = f"{lo} or {lo + num_classes}" if lo else f"{num_classes}"
        raise ValueError(
            f"{what}={total} cannot be spread evenly over {num_classes} "
            f"classes; use a multiple of {num_classes} (e.g. {hint}), or give "
            "a count per class with per_class=True.")
    return total // num_classes


def _shuffled_by_class(idx: Tensor, y: Tensor, seed: int):
    """``(class, its entries of idx shuffled)`` for every class of ``y`` (the
    class of each entry) in ascending order, shuffled by one generator
    seeded with ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    for cls in y.unique().tolist():
        members = idx[y == cls]
        yield cls, members[torch.randperm(members.numel(), generator=gen)]


def make_split(targets: Tensor | Sequence[int], num_labelled: int,
               per_class: bool = False, num_val: int = 0, seed: int = 0
               ) -> Split:
    r"""Draws a class-balanced labelled subset (and validation set) at random.

    Within each class the samples are shuffled with a generator seeded by
    ``seed``; the first ones become labelled, the next ones validation, the
    rest unlabelled. The labelled set therefore does not depend on
    ``num_val``: asking for a validation split leaves the labels unchanged.

    Args:
        targets (Tensor or Sequence[int]): ``[N]`` class of every training
            sample.
        num_labelled (int): labelled samples in total, spread evenly over the
            classes (must divide by the number of classes), or per class when
            ``per_class=True``.
        per_class (bool, optional): read ``num_labelled`` as a count per class.
            (default: :obj:`False`)
        num_val (int, optional): validation samples in total, spread evenly
            over the classes (e.g. 5000 for CIFAR ablations). (default: ``0``)
        seed (int, optional): seed of the draw. (default: ``0``)

    Returns:
        :class:`Split` with sorted index tensors.
    """
    y = torch.as_tensor(targets)
    if y.dim() != 1 or y.is_floating_point() or y.numel() == 0:
        raise ValueError(f"'targets' must be a non-empty 1-D integer tensor "
                         f"(got dtype {y.dtype}, shape {tuple(y.shape)}).")
    y = y.long()
    if int(num_labelled) != num_labelled or num_labelled <= 0:
        raise ValueError(f"'num_labelled' must be a positive integer (got "
                         f"{num_labelled}).")
    if int(num_val) != num_val or num_val < 0:
        raise ValueError(f"'num_val' must be a non-negative integer (got "
                         f"{num_val}).")
    classes = y.unique()  # sorted
    c = classes.numel()
    n_lab = int(num_labelled) if per_class else _per_class(int(num_labelled), c,
                                                           "num_labelled")
    n_val = _per_class(int(num_val), c, "num_val")

    labelled, val, unlabelled = [], [], []
    for cls, idx in _shuffled_by_class(torch.arange(y.numel()), y, seed):
        if idx.numel() < n_lab + n_val + 1:
            raise ValueError(
                f"Class {cls} has {idx.numel()} samples, too few for "
                f"{n_lab} labelled + {n_val} validation per class with at "
                "least one left unlabelled.")
        labelled.append(idx[:n_lab])
        val.append(idx[n_lab:n_lab + n_val])
        unlabelled.append(idx[n_lab + n_val:])

    meta = {"seed": int(seed), "num_classes": c, "labelled_per_class": n_lab,
            "val_per_class": n_val}
    return Split(torch.cat(labelled).sort().values,
                 torch.cat(unlabelled).sort().values,
                 torch.cat(val).sort().values, y.numel(), meta=meta)


def hold_out(labelled: Tensor, targets: Tensor, num: int, seed: int = 0
             ) -> tuple[Tensor, Tensor]:
    r"""Splits labelled indices into the ones trained on and ``num`` held
    out (spread evenly over the classes, drawn with ``seed``), both sorted.

    The held-out samples stay in the training set with their labels hidden
    from training, so that a check can read them as unlabelled samples whose
    labels it knows (:mod:`dag_pyg.train.premise`). At least one label per
    class is kept for training.

    Args:
        labelled (Tensor): Labelled indices into ``targets``.
        targets (Tensor): ``[N]`` class of every training sample.
        num (int): Samples to hold out in total (a multiple of the number of
            classes among ``labelled``).
        seed (int, optional): Seed of the draw. (default: ``0``)

    Returns:
        ``(kept, held)``: the indices trained on and the ones held out.
    """
    if int(num) != num or num < 0:
        raise ValueError(f"'num' must be a non-negative integer (got {num}).")
    y = torch.as_tensor(targets)[labelled]
    classes = y.unique()
    per = _per_class(int(num), classes.numel(), "data.num_check")
    kept, held = [], []
    for cls, idx in _shuffled_by_class(labelled, y, seed):
        if idx.numel() <= per:
            raise ValueError(
                f"data.num_check={num} holds out {per} labels per class, but "
                f"class {cls} has {idx.numel()} labelled samples: keep at least "
                "one for training (lower data.num_check or label more).")
        held.append(idx[:per])
        kept.append(idx[per:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values
