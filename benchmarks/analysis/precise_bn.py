"""How right a finished run's Label Bank is with the batch-norm statistics
its evaluated backbone ended with, and with statistics recomputed on clean
training images (``model.precise_bn``'s pass), from the same weights.

    python -m benchmarks.analysis.precise_bn RUN_DIR [RUN_DIR ...] [--images 20000]

For each run: the Feature Bank is extracted again, its graph built, and the
Label Bank (the head over every node's ``dna.k`` neighbours) and the head's
own term (``self``) scored on the unlabelled nodes, first with the
checkpoint's statistics, then with statistics recomputed on ``--images``
training images without augmentation. A checkpoint written within an epoch
(an interrupted run) is read as it is. Uses the training labels of the
unlabelled nodes (ground truth the run never saw): a diagnosis, not a way
to choose settings. Prints a table and writes
``benchmarks/analysis/results/precise_bn.json``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import ANALYSIS_RESULTS, print_table, write_json
from dag_pyg.train import load_run
from dag_pyg.train.features import extract_features, recalibrate_batchnorm
from dag_pyg.train.refresh import label_bank_logits


def label_bank_acc(run) -> tuple[float, float]:
    """Accuracy on the unlabelled nodes of the Label Bank and of the head's
    self term, from the run's evaluated backbone as it is now."""
    cfg, data = run.cfg, run.data
    feats = extract_features(run.model.eval_backbone, data.eval_tf, data.train_set,
                             data.nodes, run.device, cfg.eval.batch_size)
    graph = run.build_graph(feats)  # as the run's refresh builds it
    head = run.model.eval_head
    bank = label_bank_logits(head, feats, graph, cfg.dna.k, run.device).argmax(1)
    own = head.eval().forward_self(feats).argmax(1)
    truth, unl = data.true_y, ~data.labelled_mask
    return (float((bank == truth)[unl].double().mean()),
            float((own == truth)[unl].double().mean()))


def diagnose(run_dir: Path, images: int) -> dict:
    run = load_run(run_dir, progress=False, within_epoch=True)
    stored = label_bank_acc(run)
    gen = torch.Generator().manual_seed(0)
    nodes = run.data.nodes
    rows = nodes[torch.randperm(nodes.numel(), generator=gen)[:images]]
    recalibrate_batchnorm(run.model.eval_backbone, run.data.eval_tf,
                          run.data.train_set, rows, run.device,
                          run.cfg.eval.batch_size)
    clean = label_bank_acc(run)
    return {"run": "/".join(run_dir.parts[-3:]), "epoch": run.state["epoch"],
            "images": int(rows.numel()),
            "label_bank_acc": stored[0], "label_bank_acc_precise": clean[0],
            "self_acc": stored[1], "self_acc_precise": clean[1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--name", default="precise_bn")
    args = p.parse_args()
    rows = [diagnose(run, args.images) for run in args.runs]
    print_table(rows, ["run", "epoch", "images", "label_bank_acc",
                       "label_bank_acc_precise", "self_acc", "self_acc_precise"])
    write_json(args.name, {"args": {**vars(args), "runs": [str(r) for r in args.runs]},
                           "rows": rows}, ANALYSIS_RESULTS)


if __name__ == "__main__":
    main()
