"""One epoch: batch composition (labelled + unlabelled seeds), the training
steps (augmentation, mixup of images or of the head's input, the sub-graph
of every batch, Eq. 2, the online Feature Bank's writes), mid-epoch
refreshes, and where an interrupted epoch stands."""
from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import NamedTuple

import torch
from torch import Tensor
from torch_geometric.data import Data

from dag_pyg.config import OptimConfig
from dag_pyg.data.transforms import mix, mixup_draw
from dag_pyg.distributed import DistContext
from dag_pyg.sampler import make_loader
from dag_pyg.train.features import recalibrate_run
from dag_pyg.train.losses import dag_loss
from dag_pyg.train.optim import autocast
from dag_pyg.train.refresh import (
    Banks,
    drift_stats,
    frozen,
    needs_banks,
    refresh,
    writes_bank,
)
from dag_pyg.train.setup import Run


def epoch_batches(num_labelled: int, num_nodes: int, o: OptimConfig,
                  pretrain: bool, gen: torch.Generator) -> list[Tensor]:
    """Seed node ids of an epoch's batches: ``labelled_batch_size``
    labelled (cycled) plus unlabelled (each once per epoch; none in
    pre-training). Graph nodes ``0..num_labelled-1`` are the labelled ones."""
    n_lab, n = num_labelled, num_nodes
    lab_bs = o.labelled_batch_size if n_lab else 0
    unl_bs = o.batch_size - lab_bs
    unl = torch.arange(n_lab, n)[torch.randperm(n - n_lab, generator=gen)]
    if unl_bs <= 0 or unl.numel() == 0:
        steps = math.ceil(max(n_lab, 1) / max(lab_bs, 1))
    else:
        steps = math.ceil(unl.numel() / unl_bs)
    lab_bs = min(lab_bs, n_lab)
    # Labelled samples cycle through fresh permutations; a batch never
    # straddles two of them, so it holds no sample twice.
    lab_batches: list[Tensor] = []
    while lab_bs and len(lab_batches) < steps:
        perm = torch.randperm(n_lab, generator=gen)
        lab_batches += list(perm[: n_lab // lab_bs * lab_bs].view(-1, lab_bs))
    out = []
    for i in range(steps):
        seeds = lab_batches[i] if lab_bs else torch.empty(0, dtype=torch.long)
        if not pretrain and unl_bs > 0:
            seeds = torch.cat([seeds, unl[i * unl_bs:(i + 1) * unl_bs]])
        if seeds.numel():
            out.append(seeds)
    return out


def split_for_refreshes(batches: list[Tensor], parts: int) -> list[list[Tensor]]:
    """``batches`` in ``parts`` runs of (nearly) equal length; the banks are
    refreshed before every run but the first. Fewer runs where there are
    fewer batches than parts."""
    cuts = sorted({round(i * len(batches) / parts) for i in range(1, parts)}
                  & set(range(len(batches))))
    bounds = [0, *cuts, len(batches)]
    return [batches[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def train_steps(run: Run, batches: list[Tensor], banks: Banks | None,
                graph: Data | None, pretrain: bool, desc: str,
                sums: dict[str, float] | None = None
                ) -> tuple[dict[str, float], int, int | None]:
    """Trains on ``batches`` with the banks and graph given (``desc``: the
    progress bar's label); returns the loss terms summed over the steps
    (added to ``sums``), the number of steps taken and, where the run's
    ``stop`` was requested, the signal (the steps then end after the
    current one)."""
    cfg, model, data, device = run.cfg, run.model, run.data, run.device
    gen, dist, optim = run.gen, run.dist, run.optim
    sums = dict(sums or {})
    done, signum = 0, None
    use_graph = model.uses_graph_head and not pretrain and banks.neighbours
    at_input = cfg.loss.mixup_at == "input"
    online = writes_bank(cfg, pretrain)
    reads_bank = not pretrain and banks is not None and banks.features.numel() > 0
    model.backbone.train()
    model.head.train()
    loader, bank, density = None, None, None
    if use_graph:
        loader = make_loader(graph, cfg.dna.k, cfg.dna.hops, sampler=cfg.dna.sampler)
        bank, density = banks.features.to(device), graph.density.to(device)
    num_classes = data.num_classes
    for seeds in run.log.progress(batches, desc=desc, total=len(batches)):
        y = data.true_y[seeds] if pretrain else banks.targets[seeds]
        # Samples without a target get an all-zero target row: mixing then
        # weights each component's cross-entropy by its share (see losses).
        onehot = torch.nn.functional.one_hot(y.clamp(min=0), num_classes)
        onehot = onehot.float() * (y >= 0).float().unsqueeze(1)
        if not pretrain and banks.weights is not None:
            onehot = onehot * banks.weights[seeds].unsqueeze(1)
        # Every rank augments and mixes the whole global batch with the
        # shared generator (mixup pairs cross the ranks' slices), then
        # keeps its own slice.
        x = data.train_tf(data.train_set.images[data.nodes[seeds]], generator=gen)
        lam, perm = mixup_draw(seeds.numel(), cfg.loss.mixup_alpha, generator=gen)
        if cfg.loss.mixup_major_first:
            lam = max(lam, 1.0 - lam)
        target = mix(onehot, lam, perm)
        mixing = neighbour_mixing = None
        if at_input:
            x = mix(x, lam, perm)
            if use_graph and lam != 1.0 and cfg.loss.mixup_neighbours == "mixed":
                neighbour_mixing = (lam, perm.to(device))
        else:
            mixing = (lam, perm.to(device))
        mine = dist.shard(torch.arange(seeds.numel()))
        x, target = x[mine].to(device), target[mine]
        if cfg.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # The whole batch's sub-graph, sampled on the CPU.
        batch = loader(seeds).to(device) if use_graph else None
        keep = mine if dist.enabled else None
        with autocast(cfg.optim.amp, device):
            # Without a batch graph, a graph head takes the self term only.
            out = model.net(x, batch, bank, density,
                            self_only=model.uses_graph_head, keep=keep,
                            mixing=mixing, features=reads_bank,
                            neighbour_mixing=neighbour_mixing)
        logits, live = out if reads_bank else (out, None)
        # The loss in float32 whatever the forward pass ran in.
        terms = dag_loss(logits.float(), target.to(device),
                         0.0 if pretrain else cfg.loss.entropy_weight,
                         0.0 if pretrain else cfg.loss.balance_weight, ctx=dist)
        optim.optimizer.zero_grad(set_to_none=True)
        optim.scaler.scale(terms["loss"]).backward()
        optim.scaler.step(optim.optimizer)
        optim.scaler.update()
        model.update_average()
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach())
        if live is not None:
            if live.size(0) != seeds.numel():  # this rank's slice: the whole batch
                live = dist.all_gather_rows(live, dist.shard_sizes(seeds.numel()))
            live = live.float()
            # The gap between a seed's live feature and its bank row (with
            # input mixup: the feature of the mixed image whose first
            # component the seed is).
            rows = banks.features[seeds].to(live.device)
            sums["live_bank_cos"] = sums.get("live_bank_cos", 0.0) + float(
                torch.nn.functional.cosine_similarity(live, rows, dim=1).mean())
            if online:  # later steps read the new rows
                # An overflowed fp16 step must not poison the bank for good.
                ok = torch.isfinite(live).all(1)
                live, rows_ok = live[ok], seeds[ok.cpu()]
                banks.features[rows_ok] = live.cpu()
                if use_graph and bank is not banks.features:
                    bank[rows_ok.to(device)] = live.to(bank.device)
        done += 1
        if run.stop is not None and (signum := run.stop.requested(dist)):
            break
    return sums, done, signum


def mean_losses(sums: dict[str, float], num_batches: int,
                dist: DistContext) -> dict[str, float]:
    """Per-step means of the summed loss terms (under torchrun the whole
    batch's value: the mean over ranks)."""
    if dist.enabled and sums:
        keys = sorted(sums)
        total = dist.all_reduce_sum(torch.tensor([sums[k] for k in keys],
                                                 dtype=torch.float64))
        sums = {k: float(v) / dist.world_size
                for k, v in zip(keys, total, strict=True)}
    n = max(num_batches, 1)
    return {k: v / n for k, v in sums.items()}


@dataclasses.dataclass
class EpochProgress:
    """How far an epoch got: its batches, the steps done, the loss sums and
    the mid-epoch refreshes' record so far. A checkpoint written on a signal
    holds it, so that the epoch continues exactly."""
    batches: list[Tensor]
    done: int = 0
    sums: dict[str, float] = dataclasses.field(default_factory=dict)
    mid_s: float = 0.0
    drift: list[dict[str, float]] = dataclasses.field(default_factory=list)
    # Every rank's loss sums (under torchrun each rank sums its own slice).
    sums_ranks: list[dict[str, float]] | None = None
    # An online bank: the Feature Bank the current graph was built on (the
    # steps since wrote into a copy), for the next refresh's drift.
    built: Tensor | None = None

    def for_rank(self, dist: DistContext) -> EpochProgress:
        """This rank's share of a checkpoint's progress: its own loss sums,
        or, resumed with another number of processes, every rank the mean
        (the epoch's mean loss then comes out the same)."""
        ranks = self.sums_ranks or [self.sums]
        if len(ranks) == dist.world_size:
            sums = ranks[dist.rank]
        else:
            sums = {k: sum(r[k] for r in ranks) / len(ranks) for k in ranks[0]}
        return dataclasses.replace(self, sums=dict(sums), sums_ranks=None)


class EpochResult(NamedTuple):
    losses: dict[str, float]   # mean loss terms (empty if interrupted)
    mids: dict[str, float]     # mid-epoch refreshes' time and drift
    banks: Banks | None        # the banks and graph the epoch ended with
    graph: Data | None
    progress: EpochProgress
    signum: int | None         # the signal that interrupted the epoch


def train_epoch(run: Run, epoch: int, banks: Banks | None, graph: Data | None,
                progress: EpochProgress | None = None) -> EpochResult:
    """One epoch (or the rest of an interrupted one, ``progress``) from the
    banks and graph given; with ``graph.refresh_per_epoch`` > 1 they are also
    refreshed at evenly spaced steps. A signal (the run's ``stop``) ends it
    after the current step."""
    cfg, data, dist = run.cfg, run.data, run.dist
    pretrain = epoch < cfg.optim.pretrain_epochs
    if progress is None:
        batches = epoch_batches(data.num_labelled, data.nodes.numel(), cfg.optim,
                                pretrain, run.gen)
        world = dist.world_size
        if world > 1 and any(b.numel() < world for b in batches):
            run.log.warning(f"epoch {epoch}: batches with fewer samples than "
                            f"the {world} processes are skipped; lower the "
                            "number of processes or raise optim.batch_size.")
            batches = [b for b in batches if b.numel() >= world]
        progress = EpochProgress(batches)
    mid = (not pretrain and needs_banks(cfg, run.model.uses_graph_head)
           and not frozen(cfg, run.optim.optimizer.param_groups[0]["lr"]))
    parts = split_for_refreshes(progress.batches,
                                cfg.graph.refresh_per_epoch if mid else 1)
    desc = f"{'pretrain' if pretrain else 'train'} {epoch}"
    online = mid and writes_bank(cfg, pretrain) and banks is not None
    # The Feature Bank the current graph was built on (an online bank: the
    # steps since wrote into a copy).
    built = None if banks is None else banks.features
    if online and progress.built is not None:
        built = progress.built
    ends = itertools.accumulate(len(part) for part in parts)
    for i, (part, end) in enumerate(zip(parts, ends, strict=True)):
        start = end - len(part)
        if part and end <= progress.done:
            continue  # finished before the interruption
        if i and start >= progress.done:  # not refreshed before it
            t = time.perf_counter()
            recalibrate_run(run, epoch)
            new = refresh(run, features=banks.features if online else None,
                          neighbours=banks.neighbours)
            progress.mid_s += time.perf_counter() - t
            if step_drift := drift_stats(run, built, new.banks, new.graph):
                progress.drift.append(step_drift)
            banks, graph = new.banks, new.graph
            built = banks.features
        if online:  # the steps write into a copy: `built` stays as it was
            banks = dataclasses.replace(banks, features=banks.features.clone())
            progress.built = built
        shown = desc if len(parts) == 1 else f"{desc} ({i + 1}/{len(parts)})"
        todo = part[max(0, progress.done - start):]
        progress.sums, taken, signum = train_steps(
            run, todo, banks, graph, pretrain, shown, progress.sums)
        # max: an empty first run (a cut at step 0) must not move it back.
        progress.done = max(progress.done, end - len(todo) + taken)
        if signum:
            return EpochResult({}, {}, banks, graph, progress, signum)
    mids: dict[str, float] = {}
    if progress.mid_s:
        mids["time_mid_refresh"] = progress.mid_s
        # Drift between consecutive mid-epoch banks (the staleness DNA saw).
        drift = progress.drift
        mids.update({f"{k}_mid": sum(d[k] for d in drift) / len(drift)
                     for k in (drift[0] if drift else {})})
    losses = mean_losses(progress.sums, len(progress.batches), dist)
    return EpochResult(losses, mids, banks, graph, progress, None)
