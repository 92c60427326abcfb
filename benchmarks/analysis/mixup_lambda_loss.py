"""The training loss of a finished run's last state, per mixup coefficient.

Tests one suspect for DAG's training loss that does not fall: with input
mixup, the mixed image ``lam * a + (1 - lam) * b`` keeps the sub-graph of
its first component ``a``, so the head's neighbour term speaks for ``a``'s
class at full weight while the target gives ``a`` only ``lam``. If so, the
loss at small ``lam`` is far above the loss at large ``lam`` for a graph
head, and not for a head without neighbours; mixing the two components'
neighbour terms with ``lam`` as the target is mixed should close the gap.

For every ``lam`` of a grid, the same batches (the run's own composition,
augmentation and Label Bank targets, fixed seed) are scored three ways:

- ``first``: as trained (the mixed image's first component's sub-graph);
- ``mixed``: as ``loss.mixup_neighbours: mixed`` trains, the head's outputs
  on both components' sub-graphs mixed by ``lam``
  (:func:`~dag_pyg.sampler.swap_seed_neighbours`; for one layer the
  neighbour term ``lam N(a) + (1 - lam) N(b)``);
- ``self``: the neighbour term off (the head on the seed feature alone).

Batch statistics as in training (train mode), the seed fixed; nothing is
saved.

    python -m benchmarks.analysis.mixup_lambda_loss RUN_DIR [RUN_DIR ...] \
        [--batches 30] [--out FILE.json]

Prints a table of the cross-entropy per ``lam`` and writes it as JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dag_pyg.data.transforms import mix
from dag_pyg.sampler import make_loader, swap_seed_neighbours
from dag_pyg.train import load_run
from dag_pyg.train.epoch import epoch_batches
from dag_pyg.train.losses import soft_cross_entropy

LAMBDAS = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


@torch.no_grad()
def lambda_losses(run_dir: str | Path, batches: int = 30, seed: int = 0,
                  lambdas: tuple[float, ...] = LAMBDAS) -> dict:
    """Cross-entropy of the run's last model against its Label Bank
    targets, per ``lam`` and way of scoring (see the module docstring)."""
    run = load_run(run_dir, progress=False)
    cfg, data, model, state = run.cfg, run.data, run.model, run.state
    banks = state["banks"]
    feats, targets = banks["features"], banks["targets"]
    head, graph_head = model.head, model.uses_graph_head
    graph = run.build_graph(feats) if graph_head else None
    loader = make_loader(graph, cfg.dna.k, cfg.dna.hops) if graph_head else None
    torch.manual_seed(seed)  # dropout, where the model has any
    gen = torch.Generator().manual_seed(seed)
    seeds_list = epoch_batches(data.num_labelled, data.nodes.numel(), cfg.optim,
                               False, gen)[:batches]
    # Train mode as in training (batch statistics); nothing is saved.
    model.backbone.train()
    head.train()
    sums = {lam: {"first": 0.0, "mixed": 0.0, "self": 0.0, "n": 0}
            for lam in lambdas}
    for seeds in seeds_list:
        y = targets[seeds]
        onehot = torch.nn.functional.one_hot(y.clamp(min=0), data.num_classes)
        onehot = onehot.float() * (y >= 0).float().unsqueeze(1)
        x = data.train_tf(data.train_set.images[data.nodes[seeds]], generator=gen)
        perm = torch.randperm(seeds.numel(), generator=gen)
        batch = loader(seeds) if graph_head else None
        for lam in lambdas:
            target = mix(onehot, lam, perm)
            f = model.backbone.features(mix(x, lam, perm))
            if graph_head:
                full = head.forward_batch(f, feats, batch, graph.density, embed=True)
                other = head.forward_batch(f, feats, swap_seed_neighbours(batch, perm),
                                           graph.density, embed=True)
                mixed = lam * full + (1.0 - lam) * other
                own = head.embed_self(f)
            else:
                full = mixed = own = head.embed(f)
            for way, h in (("first", full), ("mixed", mixed), ("self", own)):
                sums[lam][way] += float(soft_cross_entropy(head.classify(h), target))
            sums[lam]["n"] += 1
    rows = [{"lam": lam, **{w: s[w] / s["n"] for w in ("first", "mixed", "self")}}
            for lam, s in sums.items()]
    return {"run_dir": str(run_dir), "aggregator": head.aggregator,
            "epoch": state["epoch"], "batches": len(seeds_list), "rows": rows}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--out", help="JSON file (default: print only)")
    args = p.parse_args(argv)
    results = []
    for run_dir in args.run_dirs:
        res = lambda_losses(run_dir, args.batches)
        results.append(res)
        print(f"{run_dir} ({res['aggregator']}, epoch {res['epoch']}, "
              f"{res['batches']} batches): cross-entropy per lam")
        print("  lam    first  mixed   self")
        for r in res["rows"]:
            print(f"  {r['lam']:.1f}  {r['first']:6.3f} {r['mixed']:6.3f} "
                  f"{r['self']:6.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
