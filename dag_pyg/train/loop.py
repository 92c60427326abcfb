r"""The DAG training loop (the paper's Alg. 2).

One epoch trains backbone + head on mini-batches (labelled and pseudo-labelled
samples, mixup, Eq. 2), then refreshes what the next epoch uses:

1. the Feature Bank (backbone features of every training sample, eval mode,
   no augmentation),
2. the density-aware kNN graph over it,
3. the Label Bank (the model's predictions: the head over the graph),
4. the pseudo labels (DPLP over the graph, or the Label Bank itself),
5. the evaluation (test queries retrieve neighbours from the Feature Bank).

Epoch 0's banks come from ``optim.pretrain_epochs`` epochs on the labelled
samples only. Every epoch ends with an atomic checkpoint from which
``--resume`` continues to the same result as an uninterrupted run.

Under ``torchrun`` (see :mod:`dag_pyg.distributed`) every rank draws the same
global batches from the shared, seeded data generator and trains on its slice
of each with DistributedDataParallel; the Feature Bank is extracted in shards
and all-gathered; the graph, Label Bank and DPLP run once (on rank 0, then
broadcast, or on every rank with ``distributed.graph: replicate``); test and
validation queries are split across ranks and retrieve from the global bank.
Rank 0 alone writes files. N processes thus train on the same data, in the
same order and with the same augmentation as one.
"""
from __future__ import annotations

import gc
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch_geometric.data import Data

from dag_pyg.config import Config, ConfigError, save_config
from dag_pyg.data import ArrayDataset, BatchTransform, Split, load_dataset, make_split
from dag_pyg.data.transforms import mixup
from dag_pyg.distributed import (
    DistContext,
    DistributedError,
    convert_sync_batchnorm,
    init_distributed,
    is_collective_failure,
    shutdown,
)
from dag_pyg.graph import bank_drift, build_density_graph
from dag_pyg.models import build_backbone
from dag_pyg.nn.dna_head import DNAHead, predict_queries
from dag_pyg.propagation import dplp, parent_step_distances, path_lengths
from dag_pyg.propagation.dplp import density_ascending_parents
from dag_pyg.sampler import knn_subgraph, make_loader
from dag_pyg.train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from dag_pyg.train.logger import QuietLogger, RunLogger, write_json_atomic
from dag_pyg.train.losses import dag_loss

CHECKPOINT = "checkpoint.pt"


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


def balanced_subset(targets: Tensor, count: int, seed: int) -> Tensor:
    """A class-balanced subset of ``count`` indices (CPU-scale runs)."""
    return make_split(targets, count, seed=seed).labelled.sort().values


def _peak_rss_mb() -> float:
    """This process's peak resident memory (MiB; Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
                self_only: bool = False, keep: Tensor | None = None) -> Tensor:
        feats = self.backbone.features(x)
        if batch is not None:
            feats = self.dist.all_gather_rows_grad(
                feats, self.dist.shard_sizes(batch.batch_size)
                if self.dist.enabled else None)
            logits = self.head.forward_batch(feats, bank, batch, density)
            return logits if keep is None else logits[keep.to(logits.device)]
        if self_only:  # a graph head before the first graph: self term only
            empty = torch.empty(2, 0, dtype=torch.long, device=feats.device)
            return self.head(feats, empty, feats.new_zeros(feats.size(0)))
        return self.head(feats)


@dataclass
class Banks:
    """What an epoch reads: refreshed at the end of the previous epoch."""
    features: Tensor          # Feature Bank [N, d]
    prior: Tensor             # Label Bank: the model's predictions [N]
    targets: Tensor           # training target per node [N] (-1: none)
    weights: Tensor | None = None  # weight of each target [N] (None: all 1)


class Trainer:
    """Runs one experiment into ``run_dir``.

    Args:
        cfg (Config): The experiment.
        run_dir (str or Path): Where every artefact goes.
        resume (bool): Continue from ``run_dir/checkpoint.pt``.
        dist (DistContext, optional): This process's rank and world; one
            process when omitted.
    """

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False,
                 dist: DistContext | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.dist = dist or DistContext()
        self.dist.on_main(self._check_run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        # Ranks differ only in what the global RNG drives (dropout); the
        # data generator below is shared, so all ranks draw the same batches.
        seed_everything(cfg.seed + self.dist.rank)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.last_path_lengths: Tensor | None = None
        self.last_gather_s = 0.0
        self.last_mid_refresh_s = 0.0
        self.last_mid_drift: dict[str, float] = {}
        self._setup_data()
        self._setup_model()

    def _check_run_dir(self) -> None:
        ckpt_path = self.run_dir / CHECKPOINT
        if self.resume and not ckpt_path.exists():
            raise CheckpointError(f"--resume: no checkpoint at '{ckpt_path}'; "
                                  "start the run without --resume.")
        if not self.resume and ckpt_path.exists():
            raise FileExistsError(
                f"'{self.run_dir}' already holds a run (checkpoint.pt); pass "
                "--resume to continue it or --out to start a new one. Nothing "
                "was overwritten.")

    # ------------------------------------------------------------------ set-up
    def _setup_data(self) -> None:
        cfg = self.cfg.data
        kw = {"image_size": cfg.image_size} if cfg.name == "imagefolder" else {}
        root = os.path.expanduser(cfg.root) if cfg.root else None
        train, test = load_dataset(cfg.name, root=root, download=cfg.download,
                                   cache_dir=cfg.cache_dir, **kw)
        if cfg.num_train is not None:
            train = train.subset(balanced_subset(train.targets, cfg.num_train,
                                                 self.cfg.seed))
        if cfg.num_test is not None:
            test = test.subset(balanced_subset(test.targets, cfg.num_test, 0))
        if cfg.split_file:
            split = Split.load(cfg.split_file, num_samples=len(train))
        else:
            split = make_split(train.targets, cfg.num_labelled, per_class=cfg.per_class,
                               num_val=cfg.num_val, seed=self.cfg.seed)
        if self.dist.is_main:
            split.save(str(self.run_dir / "split.json"))
        self.train_set, self.test_set, self.split = train, test, split
        self.num_classes = train.num_classes
        # Graph node i is training sample nodes[i]: labelled first.
        self.nodes = torch.cat([split.labelled, split.unlabelled])
        self.num_labelled = split.labelled.numel()
        n = self.nodes.numel()
        self.labelled_mask = torch.zeros(n, dtype=torch.bool)
        self.labelled_mask[: self.num_labelled] = True
        self.true_y = train.targets[self.nodes]
        self.train_tf = BatchTransform.for_dataset(train, train=True)
        if cfg.translate is not None:
            self.train_tf.pad = cfg.translate
        if cfg.flip is not None:
            self.train_tf.flip = cfg.flip
        self.eval_tf = BatchTransform.for_dataset(train, train=False)

    def _setup_model(self) -> None:
        cfg = self.cfg
        c, h, w = self.train_set.image_shape
        opts = {}
        if cfg.model.backbone == "cnn13":
            opts = {"width": cfg.model.width, "weight_norm": cfg.model.weight_norm,
                    "dropout": cfg.model.dropout}
        self.backbone = build_backbone(cfg.model.backbone, self.num_classes,
                                       in_channels=c, input_size=min(h, w),
                                       **opts).to(self.device)
        aggregator = cfg.dna.aggregator if cfg.dna.enabled else "none"
        self.head = DNAHead(self.backbone.feat_dim, self.num_classes,
                            hops=cfg.dna.hops, aggregator=aggregator).to(self.device)
        self.uses_graph_head = self.head.hops > 0
        if cfg.distributed.sync_batchnorm:
            self.backbone = convert_sync_batchnorm(self.backbone, self.dist,
                                                   self.device)
        self.net: nn.Module = TrainNet(self.backbone, self.head, self.dist)
        if self.dist.enabled:
            # Unused parameters exist (the backbone's classifier; GAT attention
            # before the first graph). Synchronised batch norm keeps buffers
            # equal, so they need no broadcast.
            self.net = DistributedDataParallel(
                self.net, find_unused_parameters=True,
                forward_sync_buffers=not cfg.distributed.sync_batchnorm,
                device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # The backbone's own classifier is unused: the head classifies.
        params = [p for n, p in self.backbone.named_parameters()
                  if not n.startswith("classifier.")] + list(self.head.parameters())
        o = cfg.optim
        self.optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum,
                                         nesterov=o.nesterov and o.momentum > 0,
                                         weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           self._lr_factor)

    def _lr_factor(self, epoch: int) -> float:
        """Learning-rate factor of an epoch (pre-training runs at the base rate;
        the schedule counts main epochs)."""
        o = self.cfg.optim
        e = epoch - o.pretrain_epochs
        if e < 0 or o.schedule == "constant":
            return 1.0
        if o.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * e / o.epochs))
        return o.gamma ** sum(e >= m for m in o.milestones)

    # ---------------------------------------------------------------- helpers
    def _images(self, dataset: ArrayDataset, rows: Tensor) -> Tensor:
        return dataset.images[rows]

    @torch.no_grad()
    def _extract_local(self, dataset: ArrayDataset, rows: Tensor, log: RunLogger,
                       desc: str) -> Tensor:
        self.backbone.eval()
        bs = self.cfg.eval.batch_size
        out = [torch.empty(0, self.backbone.feat_dim, device=self.device)]
        for s in log.progress(range(0, rows.numel(), bs), desc=desc,
                              total=math.ceil(rows.numel() / bs)):
            x = self.eval_tf(self._images(dataset, rows[s:s + bs])).to(self.device)
            out.append(self.backbone.features(x).float())
        return torch.cat(out)

    def extract(self, dataset: ArrayDataset, rows: Tensor, log: RunLogger,
                desc: str) -> Tensor:
        """Backbone features of ``dataset[rows]`` in eval mode, no
        augmentation (each rank extracts its shard; all-gathered)."""
        local = self._extract_local(dataset, self.dist.shard(rows), log, desc)
        t = time.perf_counter()
        sizes = self.dist.shard_sizes(rows.numel())
        out = self.dist.all_gather_rows(local, sizes).cpu()
        self.last_gather_s = time.perf_counter() - t
        return out

    def build_graph(self, feats: Tensor) -> Data:
        """The density-aware graph of a Feature Bank, built on the run's device
        (the kNN search is the costly part) and kept on the CPU, where the
        sampler and DPLP read it."""
        g = self.cfg.graph
        return build_density_graph(feats.to(self.device), g.k, backend=g.backend,
                                   density=g.density,
                                   density_threshold=g.density_threshold,
                                   ivf_nlist=g.ivf_nlist,
                                   ivf_nprobe=g.ivf_nprobe).cpu()

    def _resolve_sigma(self, graph: Data) -> float:
        sigma = self.cfg.dplp.sigma
        if isinstance(sigma, str):  # "q0.5": a quantile of the parent steps
            steps = parent_step_distances(graph)
            steps = steps[torch.isfinite(steps)]
            if steps.numel() == 0:
                return math.inf
            return float(torch.quantile(steps.double(), float(sigma[1:])))
        return float(sigma)

    def _head_logits(self, feats: Tensor, graph: Data | None) -> Tensor:
        """The head over the whole training graph (the Label Bank)."""
        self.head.eval()
        with torch.no_grad():
            x = feats.to(self.device)
            if not self.uses_graph_head:
                return self.head(x).cpu()
            sub = knn_subgraph(graph, self.cfg.dna.k)
            return self.head(x, sub.edge_index.to(self.device),
                             graph.density.to(self.device)).cpu()

    def _evaluate(self, feats: Tensor | None, graph: Data | None,
                  dataset: ArrayDataset,
                  rows: Tensor, truth: Tensor, log: RunLogger, desc: str) -> float:
        # Each rank classifies its shard of the queries against the global bank.
        q = self._extract_local(dataset, self.dist.shard(rows), log, desc)
        self.head.eval()
        if self.uses_graph_head:
            logits = predict_queries(self.head, q, feats.to(self.device),
                                     graph.to(self.device), self.cfg.dna.k,
                                     batch_size=self.cfg.eval.batch_size)
        else:
            with torch.no_grad():
                logits = self.head(q)
        pred = self.dist.all_gather_rows(logits.argmax(1),
                                         self.dist.shard_sizes(rows.numel())).cpu()
        return 100.0 * float((pred != truth).float().mean())

    # ---------------------------------------------------------------- refresh
    @property
    def needs_banks(self) -> bool:
        """Whether training reads the banks (the DNA head or pseudo labels);
        a plain baseline skips the refresh unless ``log.bank_stats`` asks."""
        return (self.uses_graph_head or self.cfg.pseudo_label.source != "none"
                or self.cfg.log.bank_stats)

    def refresh(self, log: RunLogger, epoch: int, evaluate: bool
                ) -> tuple[Banks, Data | None, dict]:
        """Feature Bank, graph, Label Bank, pseudo labels and evaluation."""
        cfg, rec = self.cfg, {}
        if not self.needs_banks:
            targets = torch.where(self.labelled_mask, self.true_y, -1)
            banks = Banks(torch.empty(0), targets.clone(), targets)
            if evaluate:
                rec.update(self._evaluate_all(None, None, log))
            return banks, None, rec
        t = time.perf_counter()
        feats = self.extract(self.train_set, self.nodes, log, "feature bank")
        rec["time_bank"] = time.perf_counter() - t
        rec["bank_mb"] = feats.numel() * feats.element_size() / 2**20
        if self.dist.enabled:
            rec["time_bank_gather"] = self.last_gather_s

        if self.dist.enabled and cfg.distributed.graph == "rank0":
            out = self.dist.on_main(lambda: self._graph_and_labels(feats),
                                    share=False)
            graph, banks, stats = self._broadcast_labels(out, feats)
        else:
            graph, banks, stats = self._graph_and_labels(feats)
        rec.update(stats)
        if evaluate:
            rec.update(self._evaluate_all(feats, graph, log))
        return banks, graph, rec

    def _graph_and_labels(self, feats: Tensor) -> tuple[Data, Banks, dict]:
        """Graph, Label Bank, pseudo labels and their statistics."""
        cfg, rec = self.cfg, {}
        t = time.perf_counter()
        graph = self.build_graph(feats)
        rec["time_graph"] = time.perf_counter() - t

        t = time.perf_counter()
        logits = self._head_logits(feats, graph)
        prior = logits.argmax(1)
        prior[self.labelled_mask] = self.true_y[self.labelled_mask]
        rec["time_label_bank"] = time.perf_counter() - t

        t = time.perf_counter()
        unl = ~self.labelled_mask
        y_known = torch.where(self.labelled_mask, self.true_y,
                              torch.zeros_like(self.true_y))
        sigma = self._resolve_sigma(graph)
        source = cfg.pseudo_label.source
        if source == "dplp":
            res = dplp(graph, y_known, self.labelled_mask, prior, sigma=sigma,
                       mode=cfg.dplp.mode, num_classes=self.num_classes)
            targets, parents = res.labels.clone(), res.parents
            covered = (res.phase > 0) & unl
        else:
            parents = density_ascending_parents(graph, sigma)
            targets = prior.clone() if source == "model" else \
                torch.where(self.labelled_mask, self.true_y, -1)
            covered = torch.zeros_like(unl)
        rec["time_dplp"] = time.perf_counter() - t

        lengths = path_lengths(parents).float()
        rec.update(self._label_stats(targets, prior, covered, unl, lengths, sigma))
        weights = self._target_weights(logits, targets)
        if weights is not None:
            has = unl & (targets >= 0)
            rec["pl_weight_mean"] = float(weights[has].mean()) if has.any() else 0.0
        self.last_path_lengths = lengths
        return graph, Banks(feats, prior, targets, weights), rec

    @property
    def weights_targets(self) -> bool:
        """Whether pseudo labels carry per-sample weights other than one."""
        pl = self.cfg.pseudo_label
        return pl.source != "none" and (pl.weighting != "none" or pl.weight != 1.0)

    def _target_weights(self, logits: Tensor, targets: Tensor) -> Tensor | None:
        r"""Weight of each node's target: one for labelled nodes,
        ``pseudo_label.weight`` times (with ``weighting: certainty``)
        :math:`1 - H(\mathbf{p}_i) / \log C` of the Label Bank's prediction
        for pseudo-labelled ones, so uncertain pseudo labels count less."""
        if not self.weights_targets:
            return None
        pl = self.cfg.pseudo_label
        w = torch.full(targets.shape, float(pl.weight), dtype=torch.float64)
        if pl.weighting == "certainty":
            logp = torch.log_softmax(logits.double(), dim=1)
            entropy = -(logp.exp() * logp).sum(1)
            w = w * (1.0 - entropy / math.log(logits.size(1))).clamp(0.0, 1.0)
        w[self.labelled_mask] = 1.0
        return w.float()

    def _drift(self, old: Banks | None, new: Banks, graph: Data | None) -> dict:
        """Staleness: how far the Feature Bank moved since ``old`` was read
        (``{}`` where there is no previous bank or no graph)."""
        if graph is None or old is None or not old.features.numel():
            return {}
        return bank_drift(old.features.to(self.device), new.features, graph,
                          self.cfg.dna.k)

    def _broadcast_labels(self, out: tuple[Data, Banks, dict] | None,
                          feats: Tensor) -> tuple[Data, Banks, dict]:
        """Rank 0's graph, labels and statistics on every rank."""
        t = time.perf_counter()
        graph = self._broadcast_graph(None if out is None else out[0])
        stats = self.dist.broadcast_object(None if out is None else out[2])
        if out is None:
            n = feats.size(0)
            banks = Banks(feats, torch.empty(n, dtype=torch.long),
                          torch.empty(n, dtype=torch.long))
            if self.weights_targets:
                banks.weights = torch.empty(n)
        else:
            banks = out[1]
        self.dist.broadcast_(banks.prior)
        self.dist.broadcast_(banks.targets)
        if banks.weights is not None:
            self.dist.broadcast_(banks.weights)
        stats["time_broadcast"] = time.perf_counter() - t
        return graph, banks, stats

    def _broadcast_graph(self, graph: Data | None) -> Data:
        """Rank 0's graph on every rank: attributes and shapes as one small
        object, then the tensors themselves."""
        meta = None
        if graph is not None:
            items = dict(graph.items())
            meta = {"attrs": {k: v for k, v in items.items()
                              if not isinstance(v, Tensor)},
                    "shapes": {k: (tuple(v.shape), v.dtype) for k, v in items.items()
                               if isinstance(v, Tensor)}}
        meta = self.dist.broadcast_object(meta)
        if graph is None:
            graph = Data(**meta["attrs"])
            for key, (shape, dtype) in meta["shapes"].items():
                graph[key] = torch.empty(shape, dtype=dtype)
        for key in sorted(meta["shapes"]):
            self.dist.broadcast_(graph[key])
        return graph

    def _shared_graph(self, feats: Tensor) -> Data:
        """The graph of a Feature Bank, identical on every rank."""
        if self.dist.enabled and self.cfg.distributed.graph == "rank0":
            return self._broadcast_graph(
                self.dist.on_main(lambda: self.build_graph(feats), share=False))
        return self.build_graph(feats)

    def _evaluate_all(self, feats: Tensor | None, graph: Data | None,
                      log: RunLogger) -> dict:
        t, rec = time.perf_counter(), {}
        rec["test_error"] = self._evaluate(feats, graph, self.test_set,
                                           torch.arange(len(self.test_set)),
                                           self.test_set.targets, log, "test")
        if self.split.val.numel():
            rec["val_error"] = self._evaluate(
                feats, graph, self.train_set, self.split.val,
                self.train_set.targets[self.split.val], log, "val")
        rec["time_eval"] = time.perf_counter() - t
        return rec

    def _label_stats(self, targets: Tensor, prior: Tensor, covered: Tensor,
                     unl: Tensor, lengths: Tensor, sigma: float) -> dict:
        truth = self.true_y
        rec = {"dplp_sigma": sigma,
               "path_len_mean": float(lengths.mean()),
               "path_len_q10": float(torch.quantile(lengths, 0.1)),
               "path_len_q50": float(torch.quantile(lengths, 0.5)),
               "path_len_q90": float(torch.quantile(lengths, 0.9)),
               "path_len_max": float(lengths.max())}
        n_unl = max(int(unl.sum()), 1)
        has = unl & (targets >= 0)
        rec["pl_acc_all"] = float((targets[has] == truth[has]).float().mean()) \
            if bool(has.any()) else math.nan
        rec["model_acc"] = float((prior[unl] == truth[unl]).float().mean()) \
            if bool(unl.any()) else math.nan
        rec["pl_coverage"] = float(covered.sum()) / n_unl
        if bool(covered.any()):
            rec["pl_acc"] = float((targets[covered] == truth[covered]).float().mean())
            rec["model_acc_on_covered"] = float(
                (prior[covered] == truth[covered]).float().mean())
        else:
            rec["pl_acc"] = rec["model_acc_on_covered"] = math.nan
        return rec

    # ---------------------------------------------------------------- training
    def _batches(self, pretrain: bool) -> list[Tensor]:
        """Seed node ids of an epoch's batches: ``labelled_batch_size``
        labelled (cycled) plus unlabelled (each once per epoch)."""
        o = self.cfg.optim
        n_lab, n = self.num_labelled, self.nodes.numel()
        lab_bs = o.labelled_batch_size if n_lab else 0
        unl_bs = o.batch_size - lab_bs
        unl = torch.arange(n_lab, n)[torch.randperm(n - n_lab, generator=self.gen)]
        if unl_bs <= 0 or unl.numel() == 0:
            steps = math.ceil(max(n_lab, 1) / max(lab_bs, 1))
        else:
            steps = math.ceil(unl.numel() / unl_bs)
        lab_bs = min(lab_bs, n_lab)
        # Labelled samples cycle through fresh permutations; a batch never
        # straddles two of them, so it holds no sample twice.
        lab_batches: list[Tensor] = []
        while lab_bs and len(lab_batches) < steps:
            perm = torch.randperm(n_lab, generator=self.gen)
            lab_batches += list(perm[: n_lab // lab_bs * lab_bs].view(-1, lab_bs))
        out = []
        for i in range(steps):
            seeds = lab_batches[i] if lab_bs else torch.empty(0, dtype=torch.long)
            if not pretrain and unl_bs > 0:
                seeds = torch.cat([seeds, unl[i * unl_bs:(i + 1) * unl_bs]])
            if seeds.numel():
                out.append(seeds)
        return out

    def train_epoch(self, banks: Banks, graph: Data | None, pretrain: bool,
                    log: RunLogger, epoch: int,
                    refresh: Callable[[], tuple[Banks, Data | None]] | None = None
                    ) -> dict:
        """One epoch over the batches; with ``graph.refresh_per_epoch`` > 1,
        ``refresh()`` renews banks and graph at evenly spaced steps."""
        cfg = self.cfg
        use_graph = self.uses_graph_head and not pretrain

        def start(banks: Banks, graph: Data | None):
            self.backbone.train()
            self.head.train()
            if not use_graph:
                return None, None, None
            loader = make_loader(graph, cfg.dna.k, cfg.dna.hops,
                                 sampler=cfg.dna.sampler)
            return (loader, banks.features.to(self.device),
                    graph.density.to(self.device))

        loader, bank, density = start(banks, graph)
        sums: dict[str, float] = {}
        batches = self._batches(pretrain)
        world = self.dist.world_size
        if world > 1 and any(b.numel() < world for b in batches):
            log.warning(f"epoch {epoch}: batches with fewer samples than the "
                        f"{world} processes are skipped; lower the number of "
                        "processes or raise optim.batch_size.")
            batches = [b for b in batches if b.numel() >= world]
        parts = 1 if refresh is None or pretrain else cfg.graph.refresh_per_epoch
        mid = {round(i * len(batches) / parts) for i in range(1, parts)}
        self.last_mid_refresh_s, drift = 0.0, []
        desc = f"{'pretrain' if pretrain else 'train'} {epoch}"
        for step, seeds in enumerate(log.progress(batches, desc=desc,
                                                  total=len(batches))):
            if step in mid:
                t = time.perf_counter()
                old = banks
                banks, graph = refresh()
                loader, bank, density = start(banks, graph)
                self.last_mid_refresh_s += time.perf_counter() - t
                if step_drift := self._drift(old, banks, graph):
                    drift.append(step_drift)
            y = banks.targets[seeds] if not pretrain else self.true_y[seeds]
            # Samples without a target get an all-zero target row: mixing then
            # weights each component's cross-entropy by its share (see losses).
            onehot = torch.nn.functional.one_hot(y.clamp(min=0), self.num_classes)
            onehot = onehot.float() * (y >= 0).float().unsqueeze(1)
            if not pretrain and banks.weights is not None:
                onehot = onehot * banks.weights[seeds].unsqueeze(1)
            # Every rank augments and mixes the whole global batch with the
            # shared generator (mixup pairs cross the ranks' slices), then
            # keeps its own slice.
            x = self.train_tf(self._images(self.train_set, self.nodes[seeds]),
                              generator=self.gen)
            # Mixed samples keep the sub-graph of their first component.
            x, target, _ = mixup(x, onehot, cfg.loss.mixup_alpha, generator=self.gen)
            mine = self.dist.shard(torch.arange(seeds.numel()))
            x, target = x[mine].to(self.device), target[mine]
            if use_graph:
                batch = loader.collate_fn(seeds)  # the whole batch's sub-graph
                if not isinstance(batch, Data):  # filtering not done per worker
                    batch = loader.filter_fn(batch)
                logits = self.net(x, batch.to(self.device), bank, density,
                                  keep=mine if self.dist.enabled else None)
            else:
                logits = self.net(x, self_only=self.uses_graph_head)
            terms = dag_loss(logits, target.to(self.device),
                             0.0 if pretrain else cfg.loss.entropy_weight,
                             0.0 if pretrain else cfg.loss.balance_weight,
                             ctx=self.dist)
            self.optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            self.optimizer.step()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        # Drift between consecutive mid-epoch banks (the staleness DNA saw).
        self.last_mid_drift = {f"{k}_mid": sum(d[k] for d in drift) / len(drift)
                               for k in (drift[0] if drift else {})}
        n = max(len(batches), 1)
        if self.dist.enabled and sums:  # the whole batch's value: mean over ranks
            keys = sorted(sums)
            total = self.dist.all_reduce_sum(torch.tensor([sums[k] for k in keys],
                                                          dtype=torch.float64))
            sums = {k: float(v) / world for k, v in zip(keys, total, strict=True)}
        return {k: v / n for k, v in sums.items()}

    # --------------------------------------------------------------- the run
    def _state(self, epoch: int, banks: Banks | None, history: dict,
               rng_ranks: list[dict]) -> dict:
        return {"epoch": epoch, "config": self.cfg.to_dict(),
                "backbone": self.backbone.state_dict(), "head": self.head.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_ranks[0], "world_size": self.dist.world_size,
                "rng_ranks": rng_ranks,
                "banks": None if banks is None else {
                    "features": banks.features, "prior": banks.prior,
                    "targets": banks.targets, "weights": banks.weights},
                "history": history, "split": {"labelled": self.split.labelled,
                                              "unlabelled": self.split.unlabelled,
                                              "val": self.split.val}}

    def _save(self, epoch: int, banks: Banks | None, history: dict) -> None:
        """Rank 0 writes the checkpoint (atomically) with every rank's RNG."""
        rng = self.dist.all_gather_object(capture_rng_state({"data": self.gen}))
        self.dist.on_main(lambda: save_checkpoint(
            self.run_dir / CHECKPOINT, self._state(epoch, banks, history, rng)),
            share=False)

    def _load_state(self) -> tuple[int, Banks, dict, list[str]]:
        # Rank 0 reads the file (other machines need not see it) and shares it.
        state = self.dist.on_main(lambda: load_checkpoint(self.run_dir / CHECKPOINT))
        notes: list[str] = []
        if state.get("config") != self.cfg.to_dict():
            diff = sorted(k for k in set(state["config"]) | set(self.cfg.to_dict())
                          if state["config"].get(k) != self.cfg.to_dict().get(k))
            raise CheckpointError(
                f"The checkpoint in '{self.run_dir}' was written with another "
                f"configuration (sections differing: {diff}); resume with the "
                "same config, or start a new run with --out.")
        for key in ("labelled", "unlabelled", "val"):
            if not torch.equal(state["split"][key], getattr(self.split, key)):
                raise CheckpointError("The checkpoint's data split differs from "
                                      "this run's; resume with the same data.")
        self.backbone.load_state_dict(state["backbone"])
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        saved_world = state.get("world_size", 1)
        if saved_world == self.dist.world_size:
            restore_rng_state(state.get("rng_ranks", [state["rng"]])[self.dist.rank],
                              {"data": self.gen})
        else:
            # Batches and augmentation come from the shared data generator
            # and continue exactly; only per-rank draws (dropout) cannot.
            self.gen.set_state(state["rng"]["generators"]["data"])
            seed_everything(self.cfg.seed + self.dist.rank
                            + 7919 * (state["epoch"] + 1))
            notes.append(f"resuming a run of {saved_world} process(es) with "
                         f"{self.dist.world_size}: data order and augmentation "
                         "continue exactly; dropout masks differ from an "
                         "uninterrupted run.")
        b = state["banks"]
        banks = None if b is None else Banks(b["features"], b["prior"], b["targets"],
                                        b.get("weights"))
        return state["epoch"], banks, state["history"], notes

    def run(self, stop_after: int | None = None) -> dict:
        """Trains to the last epoch (or through epoch ``stop_after``, leaving a
        checkpoint that ``--resume`` continues: for time-limited jobs)."""
        cfg = self.cfg
        total = cfg.optim.pretrain_epochs + cfg.optim.epochs
        if self.dist.is_main:
            save_config(cfg, self.run_dir / "config.yaml")
        start, banks, history = 0, None, {"best_val": None, "best": None}
        notes: list[str] = []
        if self.resume:
            done, banks, history, notes = self._load_state()
            start = done + 1
        graph = None
        with self._logger(start) as log:
            for note in notes:
                log.warning(note)
            procs = (f", {self.dist.world_size} processes ({self.dist.backend})"
                     if self.dist.enabled else "")
            log.info(f"run {cfg.name} -> {self.run_dir} on {self.device}{procs}: "
                     f"{len(self.nodes)} train nodes ({self.num_labelled} "
                     f"labelled), {len(self.test_set)} test, "
                     f"epochs {start}..{total - 1}")
            if banks is not None and banks.features.numel():
                graph = self._shared_graph(banks.features)
            rec: dict = history.get("last", {})
            for epoch in range(start, total):
                pretrain = epoch < cfg.optim.pretrain_epochs
                t0 = time.perf_counter()
                if banks is None and not pretrain:  # no pre-training: seed banks
                    banks, graph, _ = self.refresh(log, epoch, evaluate=False)
                losses = self.train_epoch(
                    banks, graph, pretrain, log, epoch,
                    refresh=(lambda e=epoch: self.refresh(log, e, False)[:2])
                    if self.needs_banks else None)
                t_train = time.perf_counter() - t0
                self.scheduler.step()
                rec = {"epoch": epoch, "phase": "pretrain" if pretrain else "train",
                       "lr": self.optimizer.param_groups[0]["lr"], **losses,
                       "time_train": t_train}
                if self.last_mid_refresh_s:
                    rec["time_mid_refresh"] = self.last_mid_refresh_s
                    rec.update(self.last_mid_drift)
                # The last pre-training epoch builds epoch 0's banks.
                if not pretrain or epoch == cfg.optim.pretrain_epochs - 1:
                    main_epoch = epoch - cfg.optim.pretrain_epochs + 1
                    evaluate = epoch == total - 1 or (
                        main_epoch >= 0 and main_epoch % cfg.eval.every == 0)
                    old = banks
                    banks, graph, refreshed = self.refresh(log, epoch, evaluate)
                    rec.update(refreshed)
                    rec.update(self._drift(old, banks, graph))
                rec["time_epoch"] = time.perf_counter() - t0
                rss = self.dist.all_gather_object(_peak_rss_mb())
                rec["mem_rss_mb"] = max(rss)
                if self.dist.enabled:
                    rec["mem_rss_mb_ranks"] = rss
                self._update_best(history, rec)
                history["last"] = rec
                log.metrics(rec)
                log.info(self._summary_line(rec))
                self._save(epoch, banks, history)
                if stop_after is not None and epoch >= stop_after and epoch < total - 1:
                    log.info(f"stopping after epoch {epoch} as asked; continue "
                             "with --resume")
                    break
            summary = self.dist.on_main(lambda: self._finish(log, history, rec))
        return summary

    def _logger(self, start: int) -> RunLogger | QuietLogger:
        if not self.dist.is_main:
            return QuietLogger(self.dist.rank)
        return RunLogger(self.run_dir, tensorboard=self.cfg.log.tensorboard,
                         progress=self.cfg.log.progress, resume_epoch=start)

    def _update_best(self, history: dict, rec: dict) -> None:
        if "val_error" in rec and rec["phase"] == "train":
            best = history.get("best_val")
            if best is None or rec["val_error"] < best["val_error"]:
                history["best_val"] = {"epoch": rec["epoch"],
                                       "val_error": rec["val_error"],
                                       "test_error": rec.get("test_error")}

    @staticmethod
    def _summary_line(rec: dict) -> str:
        parts = [f"epoch {rec['epoch']} ({rec['phase']})"]
        for key in ("loss", "test_error", "val_error", "pl_acc", "pl_coverage",
                    "model_acc_on_covered", "time_epoch"):
            if key in rec and rec[key] is not None:
                parts.append(f"{key} {rec[key]:.4g}")
        return "  ".join(parts)

    def _finish(self, log: RunLogger, history: dict, last: dict) -> dict:
        from dag_pyg.train.logger import read_metrics

        records = read_metrics(self.run_dir / "metrics.jsonl")
        main = [r for r in records if r.get("phase") == "train"]
        summary = {
            "name": self.cfg.name, "run_dir": str(self.run_dir),
            "last_epoch": last.get("epoch"),
            "test_error_last": last.get("test_error"),
            "best_by_val": history.get("best_val"),
            "pl_acc_last": last.get("pl_acc"),
            "pl_coverage_last": last.get("pl_coverage"),
            "model_acc_on_covered_last": last.get("model_acc_on_covered"),
            "mean_time": {
                k: float(np.mean([r[k] for r in main if r.get(k) is not None]))
                for k in sorted({k for r in main for k in r if k.startswith("time_")})
            } if main else {},
            "num_labelled": self.num_labelled,
            "num_train_nodes": int(self.nodes.numel()),
            "config": self.cfg.to_dict(),
        }
        write_json_atomic(self.run_dir / "summary.json", summary)
        if self.cfg.log.plots:
            from dag_pyg.train.plots import plot_curves, plot_path_lengths

            plot_curves(records, self.run_dir / "curves.png")
            plot_path_lengths(self.last_path_lengths, self.run_dir / "path_lengths.png",
                              title=f"{self.cfg.name}: DPLP path lengths, last epoch")
        err, best = summary["test_error_last"], history.get("best_val")
        msg = f"done: test error {err if err is None else round(err, 2)}% (last epoch)"
        if best:
            msg += f", {best['test_error']:.2f}% at best val epoch {best['epoch']}"
        log.info(msg)
        return summary


def train(cfg: Config, run_dir: str | Path, resume: bool = False,
          stop_after: int | None = None) -> dict:
    """Trains ``cfg`` into ``run_dir``; returns the summary (``stop_after``:
    see :meth:`Trainer.run`).

    Under ``torchrun`` with several processes, joins the process group
    (``cfg.distributed``) and trains with DistributedDataParallel; every rank
    returns the same summary. A failed or timed-out collective (a rank died)
    raises :class:`~dag_pyg.distributed.DistributedError`.
    """
    d = cfg.distributed
    ctx = init_distributed(d.backend, d.timeout_s, cfg.device)
    if not ctx.enabled:
        return Trainer(cfg, run_dir, resume=resume).run(stop_after)
    try:
        trainer = Trainer(cfg, run_dir, resume=resume, dist=ctx)
        summary = trainer.run(stop_after)
    except RuntimeError as e:
        if isinstance(e, DistributedError) or not is_collective_failure(e):
            raise
        raise DistributedError(
            f"rank {ctx.rank}/{ctx.world_size}: a collective failed or waited "
            f"longer than distributed.timeout_s={d.timeout_s:g} s ({e}). Another "
            "process probably stopped: its own error is in its output.") from e
    # DDP's reducer must go before the process group it talks through; a
    # reducer collected after destroy_process_group aborts the process.
    del trainer
    gc.collect()
    shutdown(ctx)
    return summary


def _num_test(value: int | str | None, run_value: int | None) -> int | None:
    """``data.num_test`` for a re-evaluation: the run's own (``None``), the
    whole test set (``"all"``) or a class-balanced subset of ``value``."""
    if value is None:
        return run_value
    if value == "all":
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"num_test={value!r}: give a positive number of test "
                         "samples or 'all' for the whole test set.")
    return value


def load_run(run_dir: str | Path, progress: bool | None = None,
             num_test: int | str | None = None) -> tuple[Trainer, dict]:
    """A run folder's trainer (same config, data and split) with the weights
    of its last checkpoint, and the checkpoint's state. ``num_test`` swaps
    the test set (see :func:`evaluate_run`); training data are untouched."""
    from dag_pyg.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"'{run_dir}' is not a run folder (no config.yaml).")
    cfg = load_config(run_dir / "config.yaml")
    cfg.data.split_file = str(run_dir / "split.json")
    cfg.data.num_test = _num_test(num_test, cfg.data.num_test)
    if progress is not None:
        cfg.log.progress = progress
    trainer = Trainer(cfg, run_dir, resume=True)
    state = load_checkpoint(run_dir / CHECKPOINT)
    trainer.backbone.load_state_dict(state["backbone"])
    trainer.head.load_state_dict(state["head"])
    return trainer, state


def evaluate_run(run_dir: str | Path, num_test: int | str | None = None) -> dict:
    """Re-evaluates a run folder's last checkpoint: rebuilds the graph from
    the stored Feature Bank and classifies the test (and validation) set by
    retrieval. Writes ``eval.json`` into the run folder.

    ``num_test`` evaluates on another test set than the run's own: ``"all"``
    (the whole test set, e.g. all 10,000 CIFAR-10 test images for a run
    trained with ``data.num_test=1000``) or a class-balanced subset of that
    size; the result then goes to ``eval_test-<num_test>.json``.
    """
    run_dir = Path(run_dir)
    trainer, state = load_run(run_dir, num_test=num_test)
    cfg = trainer.cfg
    if state["banks"] is None:
        raise CheckpointError(f"The checkpoint in '{run_dir}' is from pre-training "
                              "and holds no Feature Bank yet; train further first.")
    feats, graph = state["banks"]["features"], None
    if trainer.uses_graph_head:
        graph = trainer.build_graph(feats)
    with RunLogger(run_dir, tensorboard=False, progress=cfg.log.progress,
                   resume_epoch=None) as log:
        out = {"run_dir": str(run_dir), "epoch": state["epoch"],
               "num_test": len(trainer.test_set),
               **trainer._evaluate_all(feats, graph, log)}
    name = "eval.json" if num_test is None else f"eval_test-{num_test}.json"
    write_json_atomic(run_dir / name, out)
    return out
