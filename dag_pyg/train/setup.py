"""Set-up of a run: device, seeds, data and split, the model (backbone +
DNA head, wrapped for DistributedDataParallel), the run-folder check, and
:class:`Run`, what a run is made of."""
from __future__ import annotations

import hashlib
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch_geometric.data import Data

from dag_pyg.config import Config, ConfigError, replays
from dag_pyg.data import (
    ArrayDataset,
    BatchTransform,
    Split,
    hold_out,
    load_dataset,
    make_split,
    mix,
)
from dag_pyg.distributed import DistContext, convert_sync_batchnorm
from dag_pyg.models import build_backbone
from dag_pyg.nn import DNAHead
from dag_pyg.sampler import swap_seed_neighbours
from dag_pyg.train.checkpoint import CheckpointError
from dag_pyg.train.interrupt import StopRequest
from dag_pyg.train.logger import RunLogger, show_progress
from dag_pyg.train.optim import Optim
from dag_pyg.train.premise import default_check_count

CHECKPOINT = "checkpoint.pt"
# A method: auto folder's record of the arm it chose (dag_pyg.train.auto).
CHOICE = "choice.json"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' was asked for but CUDA is not "
                         "available; use device: auto or cpu.")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_started(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run to resume: a checkpoint, or one in
    the arm folders of a ``method: auto`` run."""
    return (run_dir / CHECKPOINT).is_file() or any(
        run_dir.glob(f"arms/*/{CHECKPOINT}"))


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run never overwrites one; ``--resume`` needs a checkpoint."""
    ckpt_path = run_dir / CHECKPOINT
    if resume and not ckpt_path.exists():
        raise CheckpointError(f"--resume: no checkpoint at '{ckpt_path}'; "
                              "start the run without --resume.")
    if not resume and ckpt_path.exists():
        raise FileExistsError(
            f"'{run_dir}' already holds a run (checkpoint.pt); pass "
            "--resume to continue it or --out to start a new one. Nothing "
            "was overwritten.")


def balanced_subset(targets: Tensor, count: int, seed: int) -> Tensor:
    """A class-balanced subset of ``count`` indices (CPU-scale runs)."""
    return make_split(targets, count, seed=seed).labelled.sort().values


@dataclass
class TrainData:
    """A run's data: graph node ``i`` is training sample ``nodes[i]``,
    labelled nodes first."""
    train_set: ArrayDataset
    test_set: ArrayDataset
    split: Split
    nodes: Tensor            # training-set row of every graph node [N]
    labelled_mask: Tensor    # [N] labels trained on
    true_y: Tensor           # label of every node [N]: trained on where labelled,
    #                          elsewhere read by the statistics only
    train_tf: BatchTransform
    eval_tf: BatchTransform
    skipped: list[str]       # undecodable files left out (data.skip_bad_files)
    # [N] labels held out for the premise check (data.num_check): unlabelled
    # to training, read by the check only. None: no check.
    check_mask: Tensor | None = None

    @property
    def num_classes(self) -> int:
        return self.train_set.num_classes

    @property
    def num_labelled(self) -> int:
        """Labels trained on (the split's, less any held out for the check)."""
        return int(self.labelled_mask.sum())


def load_data(cfg: Config) -> TrainData:
    """The data set, its CPU-scale subsets, the split and the transforms."""
    d = cfg.data
    kw = ({"image_size": d.image_size, "skip_bad_files": d.skip_bad_files,
           "progress": show_progress(cfg.log.progress)}
          if d.name == "imagefolder" else {})
    if d.name == "synthetic" and d.image_size:
        kw = {"image_size": d.image_size}
    root = os.path.expanduser(d.root) if d.root else None
    train, test = load_dataset(d.name, root=root, download=d.download,
                               cache_dir=d.cache_dir, **kw)
    skipped = train.skipped + test.skipped
    if d.num_train is not None:
        train = train.subset(balanced_subset(train.targets, d.num_train, cfg.seed))
    if d.num_test is not None:
        test = test.subset(balanced_subset(test.targets, d.num_test, 0))
    # What the split indexes: a split.json of another data set (or subset)
    # of the same size would otherwise pass silently.
    made_for = {"dataset": d.name, "targets_sha1": hashlib.sha1(
        train.targets.numpy().tobytes()).hexdigest()}
    if d.split_file:
        split = Split.load(d.split_file, num_samples=len(train))
        wrong = [k for k, v in made_for.items() if split.meta.get(k, v) != v]
        if wrong:
            raise ValueError(
                f"data.split_file '{d.split_file}' was made for another training "
                f"set ({', '.join(f'{k} {split.meta[k]!r}' for k in wrong)}; this "
                f"run: {', '.join(f'{k} {made_for[k]!r}' for k in wrong)}); use "
                "the split.json of a run on the same data, or leave "
                "data.split_file out.")
    else:
        split = make_split(train.targets, d.num_labelled, per_class=d.per_class,
                           num_val=d.num_val, seed=cfg.seed)
    split.meta.update(made_for)
    labelled, check = split.labelled, split.labelled[:0]
    num_check = d.num_check
    # They need a check; a replay (auto's refit) trains on every label.
    if not num_check and cfg.method in ("steered", "auto") and not replays(cfg):
        num_check = default_check_count(train.targets[split.labelled])
    if num_check:
        labelled, check = hold_out(split.labelled, train.targets, num_check,
                                   cfg.seed)
        split.meta["check"] = check.tolist()  # in split.json, for the record
    # Labelled nodes first; held-out ones last, unlabelled to training.
    nodes = torch.cat([labelled, split.unlabelled, check])
    labelled_mask = torch.zeros(nodes.numel(), dtype=torch.bool)
    labelled_mask[: labelled.numel()] = True
    check_mask = None
    if check.numel():
        check_mask = torch.zeros(nodes.numel(), dtype=torch.bool)
        check_mask[nodes.numel() - check.numel():] = True
    train_tf = BatchTransform.for_dataset(train, train=True)
    if d.translate is not None:
        train_tf.pad = d.translate
    if d.flip is not None:
        train_tf.flip = d.flip
    train_tf.affine = (d.affine_degrees, d.affine_scale, d.affine_shear)
    return TrainData(train, test, split, nodes, labelled_mask,
                     train.targets[nodes], train_tf,
                     BatchTransform.for_dataset(train, train=False), skipped,
                     check_mask)


class TrainNet(nn.Module):
    """Backbone + head as one module: what DistributedDataParallel wraps
    (its forward is one training step's forward).

    With several ranks, ``x`` is this rank's slice of the batch while a
    graph ``batch`` is the sub-graph of the whole batch: a seed's neighbours
    may be seeds of another rank, whose live features it reads as one
    process would. The ranks' features are all-gathered (gradients flow
    back to their owners) and the logits of ``keep`` are returned.
    """

    def __init__(self, backbone: nn.Module, head: DNAHead,
                 dist: DistContext | None = None):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.dist = dist or DistContext()

    def forward(self, x: Tensor, batch: Data | None = None,
                bank: Tensor | None = None, density: Tensor | None = None,
                self_only: bool = False, keep: Tensor | None = None,
                mixing: tuple[float, Tensor] | None = None,
                features: bool = False,
                neighbour_mixing: tuple[float, Tensor] | None = None
                ) -> Tensor | tuple[Tensor, Tensor]:
        """Logits of a training batch; ``mixing`` (``lam``, ``perm`` of the
        whole batch) mixes the head's input (manifold mixup) after
        aggregation; ``neighbour_mixing`` (the same, for images mixed at the
        input) mixes the head's outputs on the seeds' own neighbourhoods and
        on their mixing partners' (:func:`~dag_pyg.sampler.swap_seed_neighbours`);
        ``features`` also returns the backbone features (detached; the
        whole batch's where they were gathered, else this rank's slice)."""
        feats = self.backbone.features(x)
        # The whole batch on every rank where a seed reads other seeds:
        # neighbours in the sub-graph, mixing partners.
        whole = self.dist.enabled and (batch is not None or mixing is not None)
        if whole:
            n = batch.batch_size if batch is not None else mixing[1].numel()
            feats = self.dist.all_gather_rows_grad(feats, self.dist.shard_sizes(n))
        if batch is not None:
            h = self.head.forward_batch(feats, bank, batch, density, embed=True)
            if neighbour_mixing is not None:
                lam, perm = neighbour_mixing
                other = swap_seed_neighbours(batch, perm)
                h = lam * h + (1.0 - lam) * self.head.forward_batch(
                    feats, bank, other, density, embed=True)
        elif self_only:  # a graph head without a graph: self term only
            h = self.head.embed_self(feats)
        else:
            h = self.head.embed(feats)
        if mixing is not None:
            h = mix(h, *mixing)
        logits = self.head.classify(h)
        if whole and keep is not None:
            logits = logits[keep.to(logits.device)]
        if not features:
            return logits
        return logits, feats.detach()


@dataclass
class Model:
    """The backbone, the DNA head, and ``net``: both as one module (wrapped
    in DistributedDataParallel under ``torchrun``) for training steps."""
    backbone: nn.Module
    head: DNAHead
    net: nn.Module
    # optim.ema_decay > 0: the moving average of backbone and head
    # (``module["backbone"]``, ``module["head"]``), which extracts the banks
    # and is evaluated.
    averaged: AveragedModel | None = None

    @property
    def uses_graph_head(self) -> bool:
        return self.head.hops > 0

    @property
    def eval_backbone(self) -> nn.Module:
        """The backbone the banks and evaluation read: the averaged one
        where there is one."""
        return self.backbone if self.averaged is None \
            else self.averaged.module["backbone"]

    @property
    def eval_head(self) -> DNAHead:
        """The head the Label Bank and evaluation read (see
        :attr:`eval_backbone`)."""
        return self.head if self.averaged is None else self.averaged.module["head"]

    def update_average(self) -> None:
        """Moves the averaged weights (and batch-norm statistics) towards the
        live ones: after every optimiser step. (Batch norm's integer
        ``num_batches_tracked`` is averaged and truncated too: unused, every
        backbone's batch norm has a fixed momentum.)"""
        if self.averaged is not None:
            self.averaged.update_parameters(
                nn.ModuleDict({"backbone": self.backbone, "head": self.head}))

    def trainable_parameters(self) -> list[dict]:
        """The optimiser's parameter groups. The attention's learned scalars
        (``beta``, ``log_temperature``) start at the paper's values and take
        no weight decay, which would pull them to 0 (neighbours off, or
        :math:`\tau = 1`) instead."""
        # The backbone's own classifier is unused: the head classifies.
        params = [p for n, p in self.backbone.named_parameters()
                  if not n.startswith("classifier.")]
        scalars = []
        for name, p in self.head.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            (scalars if leaf in ("beta", "log_temperature") else params).append(p)
        groups = [{"params": params}]
        if scalars:
            groups.append({"params": scalars, "weight_decay": 0.0})
        return groups


def check_compiler(device: torch.device) -> None:
    """``model.compile`` on the CPU: inductor builds its kernels with the C++
    compiler ``CXX`` names, else ``g++`` (``clang++`` on macOS), whose
    absence would surface at the first step as a long inductor error;
    refused here in one line instead."""
    if device.type != "cpu":
        return
    name = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin"
                                     else "g++")
    if shutil.which(name) is None:
        raise ConfigError(f"model.compile: true needs a C++ compiler on the CPU "
                          f"(torch.compile's inductor builds its kernels with "
                          f"'{name}', which is not on PATH): install it (or "
                          "point CXX at one), or set model.compile: false.")


def build_model(cfg: Config, data: TrainData, device: torch.device,
                dist: DistContext) -> Model:
    if cfg.model.compile:
        check_compiler(device)
    c, h, w = data.train_set.image_shape
    opts = {}
    if cfg.model.backbone == "cnn13":
        opts = {"width": cfg.model.width, "weight_norm": cfg.model.weight_norm,
                "dropout": cfg.model.dropout}
    elif cfg.model.backbone == "cnn":  # width 1.0: its 32 channels
        opts = {"width": max(1, round(32 * cfg.model.width))}
    backbone = build_backbone(cfg.model.backbone, data.num_classes,
                              in_channels=c, input_size=min(h, w),
                              **opts).to(device)
    if cfg.model.channels_last:  # NHWC kernels (tensor cores under AMP)
        backbone = backbone.to(memory_format=torch.channels_last)
    d = cfg.dna
    head = DNAHead(backbone.feat_dim, data.num_classes, hops=d.hops,
                   aggregator=d.aggregator, temperature=d.temperature,
                   learn_temperature=d.learn_temperature,
                   learn_beta=d.learn_beta).to(device)
    averaged = None
    if cfg.optim.ema_decay > 0:
        if dist.enabled and not cfg.distributed.sync_batchnorm:
            raise ConfigError(
                "optim.ema_decay with several processes needs "
                "distributed.sync_batchnorm: true: without it each rank's "
                "batch-norm statistics enter its own average, and the ranks' "
                "averaged models drift apart.")
        # Copied before batch norm is synchronised (the copy is only read in
        # eval mode, where plain batch norm computes the same; the CPU's
        # synchronised kind holds the process group, which cannot be
        # copied) and before compiling (the copy must not call the live
        # backbone's compiled bound method). Parameters and buffers keep
        # their order, which the updates pair them by.
        averaged = AveragedModel(
            nn.ModuleDict({"backbone": backbone, "head": head}),
            multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema_decay),
            use_buffers=True)
        averaged.requires_grad_(False)
    if cfg.distributed.sync_batchnorm:
        backbone = convert_sync_batchnorm(backbone, dist, device)
    if cfg.model.compile:
        # The bound method, not the module: the state_dict keeps its keys
        # (checkpoints load either way). One graph per batch shape.
        backbone.features = torch.compile(backbone.features, dynamic=False)
        if averaged is not None:  # the copy extracts the banks: its own
            copy = averaged.module["backbone"]
            copy.features = torch.compile(copy.features, dynamic=False)
    net: nn.Module = TrainNet(backbone, head, dist)
    if dist.enabled:
        # Unused parameters exist (the backbone's classifier; GAT attention
        # before the first graph). Synchronised batch norm keeps buffers
        # equal, so they need no broadcast.
        net = DistributedDataParallel(
            net, find_unused_parameters=True,
            forward_sync_buffers=not cfg.distributed.sync_batchnorm,
            device_ids=[device.index] if device.type == "cuda" else None)
    return Model(backbone, head, net, averaged)


@dataclass(frozen=True)
class Run:
    """The collaborators a run is made of, fixed from its set-up to its end
    (what changes and what a checkpoint resumes is
    :class:`~dag_pyg.train.state.TrainState`)."""
    cfg: Config
    model: Model
    data: TrainData
    device: torch.device
    dist: DistContext         # this process's rank and world
    log: RunLogger
    # The data generator (batches, augmentation, mixup): seeded alike on
    # every rank, so that all draw the same global batches.
    gen: torch.Generator
    run_dir: Path | None = None   # where rank 0 writes the checkpoint
    optim: Optim | None = None    # None: a run loaded to be evaluated
    stop: StopRequest | None = None  # a signal ends training after a step


def default_num_check(cfg: Config) -> int:
    """:func:`~dag_pyg.train.premise.default_check_count` of the config's
    split."""
    data = load_data(cfg)
    try:  # the split's labels (steered's and auto's load_data hold some out)
        return default_check_count(data.train_set.targets[data.split.labelled])
    except ValueError as e:
        raise ConfigError(str(e)) from None
