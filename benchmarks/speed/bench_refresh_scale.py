"""Every stage of a refresh (bank extraction excluded: its cost is the
backbone's) from 50k nodes up, and how each grows with N: the kNN graph
(exact, ``faiss_ivf``, ``faiss_hnsw``), its density, the Label Bank over the
``k_sub`` graph and DPLP, beside faiss' own flat, IVF and HNSW search on the
same bank (the peer, run right after each graph, in the same process).

    python -m benchmarks.speed.bench_refresh_scale [--sizes 50000 100000 200000 300000]
        [--graphs exact faiss_ivf faiss_hnsw] [--exact-max 100000] [--force] [--quick]

Banks: ``benchmarks.common.clustered_features`` (d=128, 100 Gaussian classes
on the unit sphere, seed N: the banks of ``bench_knn_ivf``), k=64, 1 %
labelled (random), ``k_sub`` 8, a seeded untrained ``DNAHead`` (one hop),
DPLP with the default config. With 100 classes each class grows with N, and
the neighbours of a node lie in an isotropic 128-d cloud that grows with it:
the hardest case for an approximate index. ``--per-class 1281`` keeps the
classes at ImageNet's size instead (with ``--name`` for its own file);
``--max-classes 1000`` stops them at ImageNet's count (the Label Bank holds
N x classes logits: 12.5 GB at 2M nodes and 1,561 classes).

Each stage is the trainer's own call (``dag_pyg.train.refresh``):
``build_graph`` (the kNN search and the density), ``label_bank_logits`` (the
head over ``knn_subgraph``), and ``pseudo_labels`` (DPLP). Per stage: wall
seconds, CPU seconds of the process (``process_time``: with one thread it is
the wall time of an idle machine, and it is what the exponents are fitted
on, since the wall time of a shared machine depends on its load) and the
rise of the peak resident memory (VmHWM, reset at the stage's start: what
the stage needs beyond what is already held). ``density_s`` is part of
``graph_s``, timed again alone.

Recall: the share of the exact 64 neighbours found, on ``--recall-sample``
random rows (their exact lists found by a full scan; not the evenly spaced
rows the backends tune on); ``recall_full`` over every row where the exact
graph was built in the same run (N <= ``--exact-max``). Above
``--exact-max`` the exact graph is not built: faiss' flat search is timed on
the sample and scaled by N / sample (``estimated``).

The peers: ``IndexFlatIP`` (add, search), ``IndexIVFFlat`` with the same
``nlist`` and the tuned ``nprobe`` (train, add, search) and ``IndexHNSWFlat``
with the same ``M``, ``efConstruction`` and the tuned ``efSearch`` (add,
search), k + 1 neighbours (the row itself among them). Each is built whole
and searches every row, or with ``--peer-queries Q`` Q random rows, its
search time scaled by N / Q (``peer_estimated``; the ``peer_build_*`` and
``peer_search_*`` columns hold both parts). ``--peer-max N`` leaves the
peers out above N nodes (``peer_skipped``): an HNSW build costs as much as
ours, and doubles the time of the largest sizes.

Growth: the exponent b of t = a N^b by least squares on log-log over the
measured sizes from ``--fit-min`` up, the exponents between consecutive
sizes, and t at 1.28M (ImageNet) and 10M nodes from the fit. Target (issue
26): graph + Label Bank + DPLP grows no faster than N^1.3 from 100k to 2M
nodes at recall >= 0.99.

Each size runs in its own process (a clean memory baseline; one size
failing or running out of memory leaves the others), and its rows are
written to ``benchmarks/speed/results/bench_refresh_scale.json`` as soon as
it ends; a later run skips the (size, graph) pairs already there (``--force``
redoes them), so ``--sizes 1000000 2000000`` adds the large sizes to earlier
ones. The bank settings must match those of the rows already in the file
(else pass ``--name``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmarks.common import (
    ROOT,
    SPEED_RESULTS,
    clustered_features,
    peak_rss_rise_mib,
    print_table,
    start_peak_rss,
    write_json,
)
from dag_pyg.config import Config
from dag_pyg.graph import (
    compute_density,
    exact_neighbours,
    neighbour_recall,
    neighbour_table,
    normalize_rows,
)
from dag_pyg.graph.knn import ivf_index, train_ivf
from dag_pyg.nn import DNAHead
from dag_pyg.propagation import pseudo_labels
from dag_pyg.train.refresh import build_graph, label_bank_logits

GRAPHS = ("exact", "faiss_ivf", "faiss_ivf_hnsw", "faiss_hnsw")
# Settings that define the banks and the stages: rows measured with others
# cannot be fitted together.
BANK_KEYS = ("dim", "k", "k_sub", "classes", "per_class", "max_classes",
             "noise", "labelled", "threads")
EXTRAPOLATE_TO = (1_281_167, 10_000_000)
TARGET_EXPONENT = 1.3
TARGET_RECALL = 0.99
# Fitted: CPU seconds of each stage and of the refresh (graph + Label Bank +
# DPLP), its wall seconds, and the largest peak memory rise of a stage.
FITTED = ("graph_cpu_s", "peer_cpu_s", "density_cpu_s", "label_bank_cpu_s",
          "dplp_cpu_s", "total_cpu_s", "total_s", "peak_mb")


# --------------------------------------------------------------------------- #
# Growth fits
# --------------------------------------------------------------------------- #
def fit_growth(sizes: Sequence[float], values: Sequence[float]
               ) -> tuple[float, float]:
    """Least squares of ``log value = log a + b log size``: ``(b, a)``."""
    if len(sizes) != len(values) or len(sizes) < 2:
        raise ValueError("fit_growth needs two or more (size, value) pairs")
    xs = [math.log(s) for s in sizes]
    ys = [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        raise ValueError("fit_growth needs two or more distinct sizes")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    return b, math.exp(my - b * mx)


def pairwise_exponents(sizes: Sequence[float], values: Sequence[float]
                       ) -> list[float]:
    """The exponent between each pair of consecutive sizes (sorted)."""
    pts = sorted(zip(sizes, values, strict=True))
    return [math.log(v2 / v1) / math.log(n2 / n1)
            for (n1, v1), (n2, v2) in zip(pts, pts[1:], strict=False)
            if n2 != n1]


def growth_rows(rows: list[dict], fit_min: int) -> list[dict]:
    """One row per (graph, quantity): the fitted exponent over the sizes from
    ``fit_min`` up, the consecutive ones, and the extrapolations."""
    out = []
    for graph in GRAPHS:
        mine = sorted((r for r in rows if r["graph"] == graph and r["N"] >= fit_min),
                      key=lambda r: r["N"])
        for key in FITTED:
            pts = [(r["N"], r[key]) for r in mine
                   if isinstance(r.get(key), int | float) and r[key] > 0]
            if len({n for n, _ in pts}) < 2:
                continue
            sizes, values = zip(*pts, strict=True)
            b, a = fit_growth(sizes, values)
            row = {"graph": graph, "quantity": key,
                   "sizes": f"{min(sizes) // 1000}k-{max(sizes) // 1000}k "
                            f"({len(sizes)})",
                   "exponent": b,
                   "pairwise": " ".join(f"{e:.2f}" for e in
                                        pairwise_exponents(sizes, values))}
            for n in EXTRAPOLATE_TO:
                row[f"at_{n / 1e6:.2f}M"] = a * n ** b
            out.append(row)
    return out


def target_rows(rows: list[dict], lo: int = 100_000, hi: int = 2_000_000
                ) -> list[dict]:
    """Issue 26's target per approximate graph: the refresh's CPU time grows
    no faster than N^1.3 over the sizes in [lo, hi], at recall >= 0.99."""
    out = []
    for graph in GRAPHS[1:]:
        mine = [r for r in rows if r["graph"] == graph and lo <= r["N"] <= hi]
        if len({r["N"] for r in mine}) < 2:
            continue
        b, _ = fit_growth([r["N"] for r in mine], [r["total_cpu_s"] for r in mine])
        recall = min(r["recall"] for r in mine)
        out.append({"graph": graph,
                    "sizes": ", ".join(f"{r['N'] // 1000}k" for r in
                                       sorted(mine, key=lambda r: r["N"])),
                    "exponent": b, "min_recall": recall,
                    "met": b <= TARGET_EXPONENT and recall >= TARGET_RECALL,
                    "complete": max(r["N"] for r in mine) >= hi})
    return out


# --------------------------------------------------------------------------- #
# One size (run in its own process)
# --------------------------------------------------------------------------- #
def measure(fn: Callable[..., Any], *args: Any, **kwargs: Any
            ) -> tuple[Any, dict]:
    """``fn(*args, **kwargs)`` and its wall seconds, CPU seconds and peak
    memory rise (MiB)."""
    start = start_peak_rss()
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    stats = {"s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
             "mb": peak_rss_rise_mib(start)}
    return out, stats


def put(row: dict, name: str, stats: dict) -> None:
    row[f"{name}_s"], row[f"{name}_cpu_s"] = stats["s"], stats["cpu_s"]
    row[f"{name}_mb"] = stats["mb"]


def peer_search(graph: str, base: np.ndarray, queries: np.ndarray, k: int,
                params: dict) -> tuple[np.ndarray, dict, dict]:
    """faiss' own index for ``graph`` at ``params``, built over ``base`` and
    searched for the ``k + 1`` nearest rows of ``queries``: the ids, and the
    :func:`measure` of the build (train, add) and of the search."""
    import faiss

    def build():
        d = base.shape[1]
        if graph == "exact":
            index = faiss.IndexFlatIP(d)
        elif graph in ("faiss_ivf", "faiss_ivf_hnsw"):
            # The same faiss index as our graph's, searched by faiss alone.
            index = ivf_index(d, params["ivf_nlist"],
                              "hnsw" if graph == "faiss_ivf_hnsw" else "flat")
            train_ivf(index, base)
            index.nprobe = params["ivf_nprobe"]
        else:
            index = faiss.IndexHNSWFlat(d, params["hnsw_m"],
                                        faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = params["hnsw_ef_construction"]
            index.hnsw.efSearch = params["hnsw_ef_search"]
        index.add(base)
        return index

    index, built = measure(build)
    (_, ids), searched = measure(index.search, queries, k + 1)
    return ids, built, searched


def drop_own(found: np.ndarray, rows: Tensor, k: int) -> Tensor:
    """The first ``k`` ids of each row of ``found`` that are not the row's
    own (``rows``)."""
    found = torch.from_numpy(found)
    keep = found != rows.unsqueeze(1)
    keep &= keep.long().cumsum(1) <= k
    return found[keep].view(-1, k)


@dataclass
class Bank:
    """One size's bank, labels, head and exact sample."""
    x: Tensor                 # the bank [N, d], as the refresh gets it
    xn: Tensor                # its unit rows (what faiss' own indexes get)
    y: Tensor                 # classes [N]
    classes: int
    mask: Tensor              # labelled nodes [N]
    order: Tensor             # a random order of the rows
    rows: Tensor              # the recall sample's rows (first of order)
    exact: Tensor             # their exact neighbours [rows, k]
    cfg: Config               # the trainer's settings of each stage
    head: DNAHead
    full: Tensor | None = None  # the exact graph's neighbour table (if built)


def make_bank(n: int, args: argparse.Namespace) -> tuple[Bank, float]:
    """The bank of size ``n`` and the seconds its exact sample took."""
    classes = max(1, n // args.per_class) if args.per_class else args.classes
    if args.max_classes:
        classes = min(classes, args.max_classes)
    x, y = clustered_features(n, args.dim, num_classes=classes, noise=args.noise,
                              seed=n)
    gen = torch.Generator().manual_seed(n + 1)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen)[:max(1, round(args.labelled * n))]] = True
    cfg = Config()
    cfg.graph.k, cfg.dna.k = args.k, args.k_sub
    torch.manual_seed(0)
    d = cfg.dna
    head = DNAHead(args.dim, classes, hops=d.hops, aggregator=d.aggregator,
                   temperature=d.temperature)
    # The recall sample: random rows (not the tuning's evenly spaced ones),
    # their exact neighbours by a full scan.
    order = torch.randperm(n, generator=gen)
    rows = order[:min(args.recall_sample, n)].sort().values
    xn = normalize_rows(x).contiguous()
    exact, st = measure(exact_neighbours, xn, rows, args.k)
    return Bank(x, xn, y, classes, mask, order, rows, exact, cfg, head), st["s"]


def run_graph(name: str, bank: Bank, args: argparse.Namespace) -> dict:
    """One graph's row: its build, recall, the peer, and the stages after."""
    n, m, cfg = bank.x.size(0), bank.rows.numel(), bank.cfg
    cpu = torch.device("cpu")
    row: dict[str, Any] = {"N": n, "graph": name, "classes": bank.classes,
                           "recall_sample": m}
    built = name != "exact" or n <= args.exact_max
    g = None
    if built:
        cfg.graph.backend = "faiss" if name == "exact" else name
        g, st = measure(build_graph, bank.x, cfg, cpu)
        put(row, "graph", st)
        table = neighbour_table(g)
        row["recall"] = neighbour_recall(table[bank.rows], bank.exact)
        if name == "exact":
            bank.full = table
        elif bank.full is not None:
            row["recall_full"] = neighbour_recall(table, bank.full)
        for key in ("ivf_nlist", "ivf_nprobe", "hnsw_m", "hnsw_ef_construction",
                    "hnsw_ef_search"):
            if key in g:
                row[key] = int(g[key])
        for key in ("ivf_recall", "hnsw_recall"):
            if key in g:
                row["recall_tuning"] = float(g[key])
        ivf = f"nprobe {row.get('ivf_nprobe')}/{row.get('ivf_nlist')}"
        row["param"] = {"faiss_ivf": ivf, "faiss_ivf_hnsw": ivf,
                        "faiss_hnsw": f"ef {row.get('hnsw_ef_search')}"
                        }.get(name, "")
    # The peer at the same operating point, right after: built in full,
    # searched for every row or (beyond --exact-max, or --peer-queries) for
    # a random subset, its time scaled by N / subset. Above --peer-max it is
    # left out (its build costs as much as our graph's).
    if args.peer_max is not None and n > args.peer_max:
        row["peer_skipped"] = True
    else:
        peer_row(name, bank, args, row, built)
    if g is None:
        return row
    _, st = measure(compute_density, g.sim.view(n, -1), cfg.graph.density,
                    cfg.graph.density_threshold)
    put(row, "density", st)
    # As the refresh: the Label Bank (labelled nodes keep their labels),
    # then DPLP over it.
    logits, st = measure(label_bank_logits, bank.head, bank.x, g, cfg.dna.k, cpu)
    put(row, "label_bank", st)
    prior = logits.argmax(1)
    prior[bank.mask] = bank.y[bank.mask]
    _, st = measure(pseudo_labels, g, bank.y, bank.mask, prior, source="dplp",
                    sigma=cfg.dplp.sigma, mode=cfg.dplp.mode,
                    num_classes=bank.classes)
    put(row, "dplp", st)
    stages = ("graph", "label_bank", "dplp")
    for unit in ("s", "cpu_s"):
        row[f"total_{unit}"] = sum(row[f"{s}_{unit}"] for s in stages)
    row["peak_mb"] = max(row[f"{s}_mb"] or 0.0 for s in stages)
    return row


def peer_row(name: str, bank: Bank, args: argparse.Namespace, row: dict,
             built: bool) -> None:
    """faiss' own index at ``row``'s operating point: its columns."""
    n, m = bank.x.size(0), bank.rows.numel()
    count = n if built and not args.peer_queries else \
        min(n, max(args.peer_queries, m)) if built else m
    q = bank.order[:count].sort().values
    base = bank.xn.numpy()
    found, st_build, st_search = peer_search(name, base, base[q.numpy()], args.k,
                                             row)
    row["peer_build_s"], row["peer_build_cpu_s"] = st_build["s"], st_build["cpu_s"]
    row["peer_search_s"] = st_search["s"] * n / q.numel()
    row["peer_search_cpu_s"] = st_search["cpu_s"] * n / q.numel()
    row["peer_queries"] = q.numel()
    row["peer_s"] = row["peer_build_s"] + row["peer_search_s"]
    row["peer_cpu_s"] = row["peer_build_cpu_s"] + row["peer_search_cpu_s"]
    row["peer_mb"] = max(st_build["mb"] or 0.0, st_search["mb"] or 0.0)
    row["peer_estimated"] = q.numel() < n
    at = torch.searchsorted(q, bank.rows)  # the recall sample among q
    found = drop_own(found[at.numpy()], bank.rows, args.k)
    row["peer_recall"] = neighbour_recall(found, bank.exact)


def run_size(n: int, graphs: list[str], args: argparse.Namespace) -> list[dict]:
    """The rows of one bank size, one per graph."""
    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    bank, took = make_bank(n, args)
    print(f"N={n}: exact lists of {bank.rows.numel()} sampled rows in {took:.1f} s",
          file=sys.stderr, flush=True)
    out = []
    for name in sorted(graphs, key=GRAPHS.index):  # exact first: recall_full
        out.append({**run_graph(name, bank, args), "exact_sample_s": took})
        print(f"N={n} {name}: {json.dumps(out[-1])}", file=sys.stderr, flush=True)
    return out


# --------------------------------------------------------------------------- #
COLUMNS = ["N", "graph", "param", "recall", "recall_full", "peer_recall",
           "graph_s", "graph_cpu_s", "graph_mb", "peer_cpu_s", "density_cpu_s",
           "label_bank_cpu_s", "label_bank_mb", "dplp_cpu_s", "dplp_mb",
           "total_cpu_s", "total_s"]
GROWTH_COLUMNS = ["graph", "quantity", "sizes", "exponent", "pairwise",
                  "at_1.28M", "at_10.00M"]


def load(path: Path, settings: dict, force: bool) -> list[dict]:
    """The rows already measured with the same bank settings."""
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    theirs = {k: old.get("settings", {}).get(k) for k in BANK_KEYS}
    if theirs != settings:
        if force:
            return []
        raise SystemExit(f"{path} holds rows measured with {theirs}, not "
                         f"{settings}: pass --name for another file, or --force "
                         "to start it again")
    return old["rows"]


def save(name: str, folder: Path, settings: dict, rows: list[dict],
         fit_min: int) -> dict:
    rows = sorted(rows, key=lambda r: (r["N"], GRAPHS.index(r["graph"])))
    payload = {"settings": settings, "rows": rows,
               "growth": growth_rows(rows, fit_min),
               "targets": target_rows(rows),
               "notes": "exponents fitted on CPU seconds (process_time) and on "
                        "peak MiB; peer_* of rows with peer_estimated: the flat "
                        "search of the recall sample scaled by N / sample"}
    write_json(name, payload, folder)
    return payload


def spawn(n: int, graphs: list[str], args: argparse.Namespace) -> list[dict]:
    """``run_size`` in a fresh process; its rows."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-m", "benchmarks.speed.bench_refresh_scale",
               "--worker", str(n), str(out), "--graphs", *graphs,
               *[f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                 (*BANK_KEYS, "exact_max", "recall_sample", "peer_queries",
                  "peer_max")
                 if getattr(args, k) is not None]]
        # A fixed mmap threshold returns freed blocks to the OS, so the
        # high-water mark follows the live tensors (as bench_conv).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536",
               "OMP_NUM_THREADS": str(args.threads)}
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+",
                   default=[50_000, 100_000, 200_000, 300_000])
    p.add_argument("--graphs", nargs="+", default=list(GRAPHS), choices=GRAPHS)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--k-sub", type=int, default=8)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--per-class", type=int, default=None,
                   help="nodes per class instead (classes = N // per-class; "
                        "ImageNet: 1281): clusters that do not grow with N")
    p.add_argument("--max-classes", type=int, default=None,
                   help="at most this many classes (ImageNet: 1000; the Label "
                        "Bank holds N x classes logits)")
    p.add_argument("--noise", type=float, default=0.6)
    p.add_argument("--labelled", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=1,
                   help="torch and faiss threads (CPU time = wall time at 1)")
    p.add_argument("--exact-max", type=int, default=100_000,
                   help="largest N whose exact graph is built (above: timed on "
                        "the recall sample)")
    p.add_argument("--recall-sample", type=int, default=2000)
    p.add_argument("--peer-queries", type=int, default=0,
                   help="rows faiss' own index searches (its time scaled to "
                        "N); 0: all")
    p.add_argument("--peer-max", type=int, default=None,
                   help="leave faiss' own index out above this many nodes")
    p.add_argument("--fit-min", type=int, default=100_000,
                   help="smallest N of the exponent fits")
    p.add_argument("--force", action="store_true",
                   help="measure sizes already in the results again")
    p.add_argument("--name", default="bench_refresh_scale")
    p.add_argument("--out", type=Path, default=SPEED_RESULTS)
    p.add_argument("--quick", action="store_true",
                   help="smoke run (N 2000 and 4000) into <name>_quick.json")
    p.add_argument("--worker", nargs=2, metavar=("N", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for key in ("per_class", "max_classes"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.worker:
        n, path = int(args.worker[0]), Path(args.worker[1])
        path.write_text(json.dumps(run_size(n, args.graphs, args)))
        return None
    if args.quick:
        args.sizes, args.exact_max, args.fit_min = [2000, 4000], 4000, 0
        args.recall_sample, args.name = 500, f"{args.name}_quick"

    settings = {k: getattr(args, k) for k in BANK_KEYS}
    path = args.out / f"{args.name}.json"
    rows = load(path, settings, args.force or args.quick)
    payload = None
    for n in sorted(args.sizes):
        todo = [g for g in args.graphs if args.force or args.quick or not any(
            r["N"] == n and r["graph"] == g for r in rows)]
        if not todo:
            print(f"N={n}: {', '.join(args.graphs)} already in {path}, skipped "
                  "(--force measures them again)")
            continue
        new = spawn(n, todo, args)
        rows = [r for r in rows if not (r["N"] == n and r["graph"] in todo)] + new
        payload = save(args.name, args.out, settings, rows, args.fit_min)
    if payload is None:
        payload = {"rows": sorted(rows, key=lambda r: (r["N"], r["graph"])),
                   "growth": growth_rows(rows, args.fit_min),
                   "targets": target_rows(rows)}
    print()
    print_table(payload["rows"], COLUMNS)
    print(f"\nGrowth (t = a N^b, least squares from N >= {args.fit_min}; "
          "seconds, MiB):")
    if payload["growth"]:
        print_table(payload["growth"], GROWTH_COLUMNS)
    else:
        print("  (needs two or more sizes from --fit-min up)")
    print(f"\nTarget: graph + Label Bank + DPLP CPU time grows <= N^"
          f"{TARGET_EXPONENT} from 100k to 2M nodes at recall >= {TARGET_RECALL}:")
    if not payload["targets"]:
        print("  (needs two or more sizes between 100k and 2M)")
    for t in payload["targets"]:
        status = "PASS" if t["met"] else "MISS"
        part = "" if t["complete"] else " (partial: 2M not measured)"
        print(f"  {t['graph']:11s} N^{t['exponent']:.2f}, min recall "
              f"{t['min_recall']:.4f} over {t['sizes']}: {status}{part}")
    return payload


if __name__ == "__main__":
    main()
