"""Experiment configuration: typed defaults, YAML files with ``base:``
inheritance, and ``key.sub=value`` overrides.

The dataclasses below are the one set of defaults; experiment files in
``configs/`` say only what differs. From the paper: ``graph.k`` 64, SGD lr 0.1
with x0.1 at epochs 250/350 of 400, mixup, Eq. 2's two regularisers. Our
choices where we did not have the paper's value at hand (tune them on a
validation split): ``dna.hops`` 1, ``dna.k`` 8, loss weights 0.4/0.8 (Tanaka
et al.'s scale), ``labelled_batch_size`` 50, ``pretrain_epochs`` 20,
``weight_decay`` 2e-4.

Every switch of the paper's ablations is a key here (``dna.aggregator``
with ``none`` for no DNA, ``dna.hops``, ``dna.k``, ``pseudo_label.source``,
``dplp.mode``, ``dplp.sigma``, ``graph.k``, ``graph.backend``). An
enumerated key's allowed values are its ``Literal`` type (:func:`choices`);
where a library module validates the same values (``dag_pyg.nn.AGGREGATORS``
and the like), ``tests/test_config.py`` holds the two equal. This module
imports no other ``dag_pyg`` module: loading a YAML file needs neither torch
nor the trainer.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# The allowed values of the enumerated keys.
# method: the paper's DAG as configured; DAG steered by the premise check
# (dag_pyg.train.premise); or auto, which trains the steered DAG and the
# labels alone and keeps the one the check finds better (dag_pyg.train.auto).
Method = Literal["dag", "steered", "auto"]
# dag_pyg.data.DATASETS
DatasetName = Literal["cifar10", "cifar100", "mnist", "fashion_mnist", "kmnist",
                      "svhn", "stl10", "imagefolder", "digits", "synthetic"]
Backbone = Literal["cnn13", "resnet18", "mlp", "cnn"]   # dag_pyg.models.BACKBONES
Schedule = Literal["step", "cosine", "constant"]
AmpMode = Literal["none", "bf16", "fp16"]
# Where mixup mixes: the images, or the head's input after each image was
# aggregated with its own sub-graph (manifold mixup).
MixupPlace = Literal["input", "feature"]
# The neighbour term of an image mixed at the input: its first component's
# sub-graph alone, or both components' in the mixed target's proportions.
MixupNeighbours = Literal["first", "mixed"]
# dag_pyg.graph.knn.BACKENDS
KNNBackend = Literal["auto", "exact", "faiss", "faiss_ivf", "faiss_ivf_hnsw",
                     "faiss_hnsw", "torch_cluster"]
Density = Literal["mean_sim", "count"]                  # dag_pyg.graph DENSITIES
# How the Feature Bank is renewed: re-extracted at every refresh, or written
# by the training steps (see dag_pyg.train.epoch).
BankUpdate = Literal["refresh", "online"]
Aggregator = Literal["dna", "dna_no_density", "gat", "none"]  # dag_pyg.nn
Sampler = Literal["knn", "neighbor"]                    # dag_pyg.sampler
Source = Literal["dplp", "diffusion", "model", "none"]  # dag_pyg.propagation
Weighting = Literal["none", "certainty"]                # dag_pyg.propagation
Admission = Literal["all", "agree"]                     # dag_pyg.propagation
DPLPMode = Literal["L", "LU"]                           # dag_pyg.propagation
# Where the graph, Label Bank and DPLP run under torchrun (sharded: each rank
# its nodes' rows, O(N) all-gathers; see dag_pyg.train.sharded).
GraphPlacement = Literal["rank0", "replicate", "sharded"]


class ConfigError(ValueError):
    """A configuration key or value that cannot be used."""


@dataclass
class DataConfig:
    name: DatasetName = "digits"   # see dag_pyg.data.DATASETS
    root: str | None = None        # data folder (torchvision root / image tree)
    download: bool = False         # torchvision download where the network allows
    cache_dir: str | None = None   # decoded-image cache for read-only data folders
    image_size: int | None = None  # resize for imagefolder (e.g. 84 Mini-ImageNet)
    num_train: int | None = None   # use a class-balanced subset of train (CPU runs)
    num_test: int | None = None    # use a class-balanced subset of test (CPU runs)
    num_labelled: int = 50         # labelled samples in all (or per class)
    per_class: bool = False        # num_labelled counts per class
    num_val: int = 0               # validation samples carved from train
    # Labels held out from training for the premise check (spread evenly
    # over the classes): graph nodes whose labels only the check reads.
    num_check: int = 0
    split_file: str | None = None  # reuse another run's split.json
    translate: int | None = None   # augmentation shift in px (None: dataset default)
    flip: bool | None = None       # horizontal flips (None: dataset default)
    # Random affine map per training image (torchvision's RandomAffine
    # ranges): rotation +-degrees, scale 1 +- scale, x-shear +-degrees.
    affine_degrees: float = 0.0
    affine_scale: float = 0.0
    affine_shear: float = 0.0
    skip_bad_files: bool = False   # imagefolder: skip undecodable files (logged)


@dataclass
class ModelConfig:
    backbone: Backbone = "mlp"
    width: float = 1.0             # cnn13 / cnn channel multiplier (CPU runs: < 1)
    weight_norm: bool = False      # cnn13 weight norm
    dropout: float = 0.5           # cnn13 dropout
    channels_last: bool = False    # NHWC memory format for the CNN backbones
    # torch.compile the backbone's features (inductor; needs a C++ compiler
    # on the CPU). Minutes of compiling at the run's start, then faster steps.
    compile: bool = False
    # Training images (without augmentation) whose batch statistics replace
    # the evaluated backbone's batch-norm statistics before every bank
    # extraction and evaluation (PreciseBN); 0: off, the running statistics
    # of the mixed training batches.
    precise_bn: int = 0


@dataclass
class OptimConfig:
    epochs: int = 400
    pretrain_epochs: int = 20      # labelled-only epochs that seed the banks
    batch_size: int = 100
    labelled_batch_size: int = 50  # labelled samples in every batch
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 2e-4
    schedule: Schedule = "step"
    milestones: list[int] = field(default_factory=lambda: [250, 350])
    gamma: float = 0.1
    amp: AmpMode = "none"          # autocast (fp16 with a grad scaler)
    # Decay of an exponential moving average of the weights (0: off). The
    # averaged model extracts the banks and is evaluated; steps train the
    # live one (Mean Teacher's averaged weights, Tarvainen & Valpola 2017).
    ema_decay: float = 0.0


@dataclass
class LossConfig:
    mixup_alpha: float = 1.0       # Beta(alpha, alpha); 0 disables mixup
    entropy_weight: float = 0.4    # Eq. 2 entropy minimisation
    balance_weight: float = 0.8    # Eq. 2 class balance (KL to a uniform prior)
    # input: mix images (a mixed sample keeps its first image's sub-graph);
    # feature: manifold mixup at the head's input, each image aggregated
    # with its own sub-graph first.
    mixup_at: MixupPlace = "input"
    # With input mixup and a graph head: first (the mixed image keeps its
    # first component's neighbour term at full weight, as so far) or mixed
    # (both components' neighbour terms, in the target's proportions).
    mixup_neighbours: MixupNeighbours = "first"
    # lam = max(lam, 1 - lam): the first component of a mixed image (whose
    # sub-graph it keeps) is its major one, as in MixMatch. The same mixed
    # images and targets in distribution; only which image is "first" moves.
    mixup_major_first: bool = False


@dataclass
class GraphConfig:
    k: int = 64
    # auto: exact search up to 200k nodes on the CPU (faiss' flat index),
    # faiss_ivf_hnsw above (logged); exact search on a GPU.
    backend: KNNBackend = "auto"
    density: Density = "mean_sim"
    density_threshold: float = 0.5
    # IVF cells (null: about 4 sqrt(N) for faiss_ivf, N / 1024 for
    # faiss_ivf_hnsw) and cells scanned per query (where the tuning starts;
    # faiss_ivf_hnsw's starts at 1).
    ivf_nlist: int | None = None
    ivf_nprobe: int = 16
    # The IVF backends double nprobe until sampled queries recall
    # this share of their exact neighbours, then halves the last step 3 times
    # (logged); null: ivf_nprobe as given.
    ivf_recall: float | None = 0.99
    # Feature Bank + graph + pseudo-label refreshes per main epoch: >1 also
    # refreshes them mid-epoch, so DNA reads a less stale bank.
    refresh_per_epoch: int = 1
    # refresh: the Feature Bank re-extracted (eval mode, clean images) at
    # every refresh; online: each batch's live seed features overwrite their
    # rows (a memory bank), no extraction after pre-training.
    bank: BankUpdate = "refresh"
    # Autocast of the bank's extraction pass (null: optim.amp's); the bank
    # is kept in float32. bf16 halves the pass on CPUs with bf16 kernels.
    bank_amp: AmpMode | None = None
    # The banks, graph and targets stay as they are for every epoch whose
    # learning rate is below this fraction of optim.lr (a schedule's tail):
    # the head trains on the bank it has learned to read instead of one it
    # has no rate left to learn again (evaluations in that tail retrieve
    # from a bank the current model extracts). 0: refreshed every epoch
    # (the paper).
    freeze_lr: float = 0.0


@dataclass
class DNAConfig:
    aggregator: Aggregator = "dna"  # none: no DNA
    hops: int = 1
    k: int = 8                     # k_sub: neighbours per node in the sub-graph
    sampler: Sampler = "knn"       # neighbor: PyG NeighborLoader
    temperature: float = 1.0       # attention softmax((cos + rho) / temperature)
    learn_temperature: bool = False  # learn it (from `temperature`)
    learn_beta: bool = False       # x_u + beta * sum(alpha x_v), beta learned from 1


@dataclass
class PseudoLabelConfig:
    # dplp: the paper's; diffusion: LP-DeepSSL's label diffusion over the
    # same graph (Iscen et al., 2019; dag_pyg.propagation.label_diffusion).
    source: Source = "dplp"
    alpha: float = 0.99            # the diffusion's alpha (source: diffusion)
    # Per-sample weight of a pseudo label's cross-entropy: "certainty" is
    # 1 - H(p)/log C of the Label Bank's prediction (Iscen et al., 2019).
    weighting: Weighting = "none"
    weight: float = 1.0            # scale of every pseudo label's weight
    # Admission: unlabelled nodes whose Label Bank confidence (max softmax)
    # is below `threshold`, or (admit: agree) whose DPLP label differs from
    # the model's prediction, get no target (entropy and balance still apply).
    threshold: float = 0.0
    admit: Admission = "all"


@dataclass
class SteerConfig:
    # method: steered without a check replays a steered run's decisions, one
    # per epoch from the last pre-training epoch on, for the refresh after it
    # (method: auto's refit on all labels, dag_pyg.train.auto): DPLP's labels
    # (true) or the model's, and the Label Bank confidence admitted (null:
    # none). Entries of epochs that keep their banks (graph.freeze_lr) are
    # not read.
    replay_dplp: list[bool] = field(default_factory=list)
    replay_threshold: list[float | None] = field(default_factory=list)
    replay_neighbours: bool = True  # the head reads its neighbours


@dataclass
class DPLPConfig:
    mode: DPLPMode = "LU"
    sigma: float | str = math.inf  # a distance, or "q0.5": a quantile of steps


@dataclass
class EvalConfig:
    batch_size: int = 500
    every: int = 1                 # evaluate every n epochs (and at the end)


@dataclass
class LogConfig:
    tensorboard: bool = True       # where tensorboard is installed
    plots: bool = True
    progress: bool | str = "auto"  # true | false | auto (bars on a terminal only)
    bank_stats: bool = False       # refresh banks + DPLP stats even where unused


@dataclass
class DistributedConfig:
    # Read only under torchrun (WORLD_SIZE > 1); see README "Several GPUs".
    backend: str = "auto"          # auto: nccl+gloo on GPUs, gloo on CPU
    timeout_s: float = 600.0       # a collective waiting longer fails the run
    graph: GraphPlacement = "rank0"  # rank0: build there, broadcast
    sync_batchnorm: bool = True    # batch statistics over all ranks' samples


@dataclass
class Config:
    name: str = "digits"
    seed: int = 0
    # steered and auto hold out data.num_check labels (20 % per class if 0)
    # for the premise check; see Method.
    method: Method = "dag"
    device: str = "auto"           # auto | cpu | cuda | cuda:N
    out: str = "runs"              # runs go to out/name (or --out)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    dna: DNAConfig = field(default_factory=DNAConfig)
    pseudo_label: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    dplp: DPLPConfig = field(default_factory=DPLPConfig)
    steer: SteerConfig = field(default_factory=SteerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def choices(cls: type = None, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """The allowed values of every enumerated key (its ``Literal`` type)."""
    out = {}
    for name, tp in _fields(cls or Config).items():
        if dataclasses.is_dataclass(tp):
            out.update(choices(tp, f"{prefix}{name}."))
            continue
        for arg in (typing.get_args(tp) if _is_union(tp) else (tp,)):
            if typing.get_origin(arg) is Literal:
                out[prefix + name] = typing.get_args(arg)
    return out


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def check_sigma(sigma: float | str) -> None:
    """``dplp.sigma``: a distance >= 0 (``inf``: no limit) or ``"qX"``, the
    X-quantile (0 <= X <= 1) of the graph's parent-step distances."""
    if isinstance(sigma, str):
        try:
            q = float(sigma[1:]) if sigma.startswith("q") else math.nan
        except ValueError:
            q = math.nan
        if not 0.0 <= q <= 1.0:
            raise ConfigError("Config key 'dplp.sigma' must be a distance (a "
                              "number, or inf) or a quantile 'q0.5' of the "
                              f"parent-step distances (got '{sigma}').")
    elif not sigma >= 0:
        raise ConfigError(f"Config key 'dplp.sigma' must be >= 0 (got {sigma!r}).")


# Keys of earlier releases, still read (run folders and checkpoints keep
# them) and translated by :func:`upgrade`.
LEGACY_KEYS = ("dna.enabled",)


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A configuration mapping in today's keys: ``dna.enabled: false`` (of
    earlier releases) becomes ``dna.aggregator: none``; ``true`` is the
    default and is dropped. Warns where it translates."""
    dna = data.get("dna")
    if not isinstance(dna, dict) or "enabled" not in dna:
        return data
    dna = dict(dna)
    enabled = dna.pop("enabled")
    if not isinstance(enabled, bool):
        raise ConfigError("Config key 'dna.enabled' must be bool (got "
                          f"{enabled!r}); it is also gone: write "
                          "'dna.aggregator: none' to train without DNA.")
    warnings.warn("Config key 'dna.enabled' is gone: 'dna.aggregator: none' "
                  "trains without DNA; read as such.", FutureWarning, stacklevel=3)
    if not enabled:
        dna["aggregator"] = "none"
    return {**data, "dna": dna}


def replays(cfg: Config) -> bool:
    """Whether ``cfg`` replays a steered run's decisions (``steer.replay_*``)
    rather than steering by a check."""
    return bool(cfg.steer.replay_dplp)


def _check_replay(cfg: Config) -> None:
    s = cfg.steer
    if not (s.replay_dplp or s.replay_threshold):
        return
    refreshes = cfg.optim.epochs + 1
    if cfg.method != "steered":
        raise ConfigError("Config keys 'steer.replay_*' replay a steered run's "
                          f"decisions: set method: steered (got {cfg.method}).")
    if len(s.replay_dplp) != refreshes or len(s.replay_threshold) != refreshes:
        raise ConfigError(
            "Config keys 'steer.replay_dplp' and 'steer.replay_threshold' need "
            f"one entry per end-of-epoch refresh, optim.epochs + 1 = {refreshes} "
            f"(got {len(s.replay_dplp)} and {len(s.replay_threshold)}).")
    if cfg.graph.refresh_per_epoch > 1:
        raise ConfigError("A replay holds one decision per epoch (a steered "
                          "run records its end-of-epoch refresh's): use "
                          "graph.refresh_per_epoch: 1.")
    if cfg.data.num_check:
        raise ConfigError("A replay has no check: leave data.num_check at 0 "
                          f"(got {cfg.data.num_check}).")
    bad = [t for t in s.replay_threshold if t is not None and not 0 <= t <= 1]
    if bad:
        raise ConfigError("Config key 'steer.replay_threshold' holds softmax "
                          f"confidences in [0, 1] or null (got {bad[0]}).")


def _fields(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def valid_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every dotted key of the configuration."""
    keys = []
    for name, tp in _fields(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += valid_keys(tp, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _unknown(key: str) -> ConfigError:
    keys = valid_keys()
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"Unknown config key '{key}'.{hint} Valid keys: "
                       f"{', '.join(keys)}.")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Checks ``value`` against the annotated type; ints pass as floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if _is_union(tp):
        errors = []
        for arg in args:
            try:
                return _coerce(key, value, arg)
            except ConfigError as e:
                errors.append(e)
        names = " or ".join(getattr(a, "__name__", str(a)) for a in args)
        raise ConfigError(f"Config key '{key}' must be {names} (got "
                          f"{value!r} of type {type(value).__name__}).")
    if tp is type(None):
        if value is None:
            return None
    elif origin is list:
        if isinstance(value, list | tuple):
            return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.strip().lower() in ("inf", ".inf"):
            return math.inf
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str or origin is Literal:  # a Literal's values: _check
        if isinstance(value, str):
            return value
    name = "str" if origin is Literal else getattr(tp, "__name__", str(tp))
    raise ConfigError(f"Config key '{key}' must be {name} (got {value!r} of "
                      f"type {type(value).__name__}).")


def _apply(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    fields = _fields(type(obj))
    for name, value in updates.items():
        key = prefix + str(name)
        if name not in fields:
            raise _unknown(key)
        tp = fields[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"Config key '{key}' is a section: give a "
                                  f"mapping of its keys, not {value!r}.")
            _apply(getattr(obj, name), value, key + ".")
        else:
            setattr(obj, name, _coerce(key, value, tp))


def _check(cfg: Config) -> None:
    for key, allowed in choices().items():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value is not None and value not in allowed:  # None: where typed so
            close = difflib.get_close_matches(str(value), allowed, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"Config key '{key}' must be one of {list(allowed)} "
                              f"(got '{value}').{hint}")
    check_sigma(cfg.dplp.sigma)
    positive = {"graph.k": cfg.graph.k, "dna.k": cfg.dna.k,
                "optim.epochs": cfg.optim.epochs,
                "optim.batch_size": cfg.optim.batch_size,
                "graph.ivf_nprobe": cfg.graph.ivf_nprobe,
                "graph.refresh_per_epoch": cfg.graph.refresh_per_epoch,
                "eval.batch_size": cfg.eval.batch_size, "eval.every": cfg.eval.every}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"Config key '{key}' must be >= 1 (got {value}).")
    if cfg.dna.hops < 0:
        raise ConfigError(f"Config key 'dna.hops' must be >= 0 (got {cfg.dna.hops}).")
    if cfg.dna.k > cfg.graph.k:
        raise ConfigError(f"dna.k={cfg.dna.k} (neighbours per node in the "
                          f"sub-graph) cannot exceed graph.k={cfg.graph.k}.")
    if not 0 <= cfg.optim.labelled_batch_size <= cfg.optim.batch_size:
        raise ConfigError("Config key 'optim.labelled_batch_size' must be between 0 "
                          f"and optim.batch_size={cfg.optim.batch_size}.")
    if cfg.graph.ivf_nlist is not None and cfg.graph.ivf_nlist < 1:
        raise ConfigError("Config key 'graph.ivf_nlist' must be >= 1, or null for "
                          f"about 4 sqrt(N) (got {cfg.graph.ivf_nlist}).")
    r = cfg.graph.ivf_recall
    if r is not None and not 0 < r <= 1:
        raise ConfigError("Config key 'graph.ivf_recall' must be in (0, 1], or null "
                          f"to scan graph.ivf_nprobe cells as given (got {r}).")
    if cfg.distributed.timeout_s <= 0:
        raise ConfigError("Config key 'distributed.timeout_s' must be > 0 (got "
                          f"{cfg.distributed.timeout_s}).")
    if not 0.0 <= cfg.pseudo_label.weight < math.inf:
        raise ConfigError("Config key 'pseudo_label.weight' must be a finite "
                          f"number >= 0 (got {cfg.pseudo_label.weight}).")
    pl = cfg.pseudo_label
    if not 0.0 <= pl.alpha < 1.0:
        raise ConfigError("Config key 'pseudo_label.alpha' must be in [0, 1) "
                          f"(at 1 the diffusion's system is singular; got {pl.alpha}).")
    if pl.source == "diffusion" and cfg.distributed.graph == "sharded":
        raise ConfigError("pseudo_label.source: diffusion solves over the whole "
                          "graph, which a sharded refresh never holds: use "
                          "distributed.graph: rank0 or replicate.")
    steers = cfg.method in ("steered", "auto")
    if steers and (pl.source != "dplp" or pl.threshold > 0 or pl.admit != "all"):
        raise ConfigError(f"method: {cfg.method} chooses the pseudo labels "
                          "itself (DPLP's or the model's, and which to admit): leave "
                          "pseudo_label.source, .threshold and .admit at their "
                          "defaults (dplp, 0, all).")
    if steers and cfg.optim.pretrain_epochs < 1:
        raise ConfigError(f"method: {cfg.method} decides on the neighbour term "
                          "at the refresh after pre-training: set "
                          "optim.pretrain_epochs >= 1.")
    if cfg.method == "auto" and cfg.graph.refresh_per_epoch > 1:
        raise ConfigError("method: auto refits the steered arm by replaying its "
                          "end-of-epoch decisions, and the decisions of mid-epoch "
                          "refreshes are not recorded: use "
                          "graph.refresh_per_epoch: 1.")
    if steers and cfg.distributed.graph != "rank0":
        raise ConfigError(f"method: {cfg.method} decides on rank 0 and "
                          "broadcasts: use distributed.graph: rank0.")
    if cfg.loss.mixup_neighbours == "mixed" and cfg.loss.mixup_at != "input":
        raise ConfigError("loss.mixup_neighbours: mixed is for images mixed at "
                          "the input; with loss.mixup_at: feature each image is "
                          "aggregated with its own sub-graph already.")
    if isinstance(cfg.log.progress, str) and cfg.log.progress != "auto":
        raise ConfigError("Config key 'log.progress' must be true, false or auto "
                          f"(got '{cfg.log.progress}').")
    _check_replay(cfg)
    d = cfg.data
    if not (0 <= d.affine_degrees <= 180 and 0 <= d.affine_scale < 1
            and 0 <= d.affine_shear < 90):
        raise ConfigError(
            "Config keys 'data.affine_degrees', 'data.affine_scale' and "
            "'data.affine_shear' must lie in [0, 180], [0, 1) and [0, 90) (got "
            f"{d.affine_degrees}, {d.affine_scale}, {d.affine_shear}).")
    if cfg.data.num_check < 0:
        raise ConfigError("Config key 'data.num_check' must be >= 0 (labels held "
                          f"out for the premise check; got {cfg.data.num_check}).")
    if cfg.model.precise_bn < 0:
        raise ConfigError("Config key 'model.precise_bn' must be >= 0 (training "
                          "images that recompute the batch-norm statistics; 0 "
                          f"turns it off; got {cfg.model.precise_bn}).")
    if not 0.0 <= cfg.optim.ema_decay < 1.0:
        raise ConfigError("Config key 'optim.ema_decay' must be in [0, 1) (0 "
                          "turns the averaged weights off; 0.999 averages over "
                          f"about 1,000 steps; got {cfg.optim.ema_decay}).")
    if cfg.optim.pretrain_epochs < 0:
        raise ConfigError("Config key 'optim.pretrain_epochs' must be >= 0.")
    if not 0.0 <= cfg.pseudo_label.threshold < 1.0:
        raise ConfigError("Config key 'pseudo_label.threshold' must be in [0, 1) "
                          f"(a softmax confidence; got {cfg.pseudo_label.threshold}).")
    d = cfg.dna
    if not 0.0 < d.temperature < math.inf:
        raise ConfigError("Config key 'dna.temperature' must be a finite number "
                          f"> 0 (got {d.temperature}).")
    attention = d.temperature != 1.0 or d.learn_temperature or d.learn_beta
    if attention and d.aggregator not in ("dna", "dna_no_density"):
        raise ConfigError("dna.temperature, dna.learn_temperature and "
                          "dna.learn_beta shape DensityAwareConv: they need "
                          "dna.aggregator 'dna' or 'dna_no_density' (got "
                          f"'{d.aggregator}').")
    if not 0.0 <= cfg.graph.freeze_lr < 1.0:
        raise ConfigError("Config key 'graph.freeze_lr' must be in [0, 1) (a "
                          "fraction of optim.lr below which the banks are no "
                          f"longer refreshed; 0: never; got {cfg.graph.freeze_lr}).")
    if cfg.graph.freeze_lr and cfg.graph.bank == "online":
        raise ConfigError("graph.freeze_lr keeps the Feature Bank as it is, "
                          "while graph.bank=online has the steps write it: use "
                          "graph.bank: refresh, or graph.freeze_lr: 0.")
    if cfg.graph.bank == "online" and cfg.optim.ema_decay > 0:
        raise ConfigError("graph.bank=online writes the live model's features "
                          "into the Feature Bank, while optim.ema_decay has the "
                          "averaged model read it (Label Bank, evaluation): "
                          "use one of the two (graph.bank=refresh or "
                          "optim.ema_decay=0).")
    if cfg.graph.bank == "online" and cfg.loss.mixup_at == "input" and \
            cfg.loss.mixup_alpha > 0:
        raise ConfigError("graph.bank=online writes each batch's live features "
                          "into the Feature Bank, and with input mixup those "
                          "are features of mixed images: set "
                          "loss.mixup_at=feature (or loss.mixup_alpha=0).")


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Reads a YAML file, merged over its ``base:`` file (relative paths are
    resolved next to the file)."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"'base:' files form a cycle: {chain}.")
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        # yaml's message spans lines (a caret under the place): one line here.
        where = " ".join(str(e).split())
        raise ConfigError(f"Config file '{path}' is not valid YAML: {where}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping of keys.")
    base = data.pop("base", None)
    if base is None:
        return data
    return merge(_read_yaml(path.parent / base, (*seen, path)), data)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dictionary merge: ``over`` wins, sections merge key by key."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"dna.hops=2"`` -> ``{"dna": {"hops": 2}}`` (values parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"Override '{text}' must look like key.sub=value.")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key not in valid_keys() and key not in LEGACY_KEYS:
        raise _unknown(key)
    value = yaml.safe_load(raw) if raw.strip() else None
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    _apply(cfg, upgrade(data))
    _check(cfg)
    return cfg


def load_config(path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Builds a :class:`Config` from a YAML file and command-line overrides."""
    data = _read_yaml(Path(path)) if path is not None else {}
    for text in overrides:
        data = merge(data, parse_override(text))
    return from_dict(data)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
