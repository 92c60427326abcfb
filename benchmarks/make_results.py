"""Writes ``benchmarks/RESULTS.md`` from the JSON in ``benchmarks/results/``.

    python benchmarks/make_results.py

Every number in the file comes from a result JSON (named next to it) that
``benchmarks/reproduce.py`` or a ``benchmarks/bench_*.py`` script wrote; the
commands that made them are listed. Nothing here is typed by hand except the
paper's published numbers, marked as such.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"

# Published test errors (%) of Li et al., CVPR 2020 (final results, 400 epochs).
PAPER = {"cifar10_4000": 6.13, "cifar100_10000": 32.50, "miniimagenet_4000": 55.97}


def fmt(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _load_rows(grid_dir: Path, grids: Path
               ) -> tuple[dict[str, list[dict]], dict[str, str], dict[str, str]]:
    """Result records by row, in the grid file's order (baseline first), with
    the rows the grid borrows from another grid (``borrow: {row: grid/row}``:
    the same configuration, run there) filling the seeds not run here."""
    rows: dict[str, list[dict]] = {}
    for path in sorted(grid_dir.glob("*__seed*.json")):
        r = json.loads(path.read_text())
        rows.setdefault(r["row"], []).append(r)
    grid_file = grids / f"{grid_dir.name}.yaml"
    grid = yaml.safe_load(grid_file.read_text()) if grid_file.exists() else {}
    borrowed: dict[str, str] = {}
    for row, source in (grid.get("borrow") or {}).items():
        own = {r["seed"] for r in rows.get(row, [])}
        extra = [json.loads(p.read_text()) for p in sorted(
            (grid_dir.parent / source).parent.glob(f"{Path(source).name}__seed*.json"))]
        extra = [r for r in extra if r["seed"] not in own]
        if extra:
            rows.setdefault(row, []).extend(extra)
            borrowed[row] = source
    if grid.get("borrow"):  # sweeps (h0 h1 h2, k2 k4 k8 k16): numeric order
        def key(name: str) -> tuple:
            digits = "".join(c for c in name if c.isdigit() or c == ".")
            return (name != "baseline", name.rstrip("0123456789."),
                    float(digits) if digits.strip(".") else 0.0)
        rows = dict(sorted(rows.items(), key=lambda kv: key(kv[0])))
    elif grid:
        order = ["baseline", *grid["rows"]]
        rows = dict(sorted(rows.items(), key=lambda kv: order.index(kv[0])
                           if kv[0] in order else len(order)))
    # A row's Δ columns compare with "baseline" unless the grid pairs it with
    # another row (``pair_with: {dag_e24: baseline_e24}``: same schedule).
    return rows, borrowed, dict(grid.get("pair_with") or {})


def _last(run: dict, key: str) -> float | None:
    """The last epoch's value of a per-epoch metric."""
    vals = [m[key] for m in run["metrics"] if m.get(key) is not None]
    return vals[-1] if vals else None


def _full(run: dict) -> float | None:
    """Test error of the run's last checkpoint on the whole test set."""
    return (run.get("full_test") or {}).get("test_error")


def _paired(runs: list[dict], base: dict[int, float], key) -> list[float]:
    return [key(r) - base[r["seed"]] for r in runs
            if r["seed"] in base and key(r) is not None]


def grid_table(grid_dir: Path, grids: Path = ROOT / "grids") -> list[str]:
    rows, borrowed, pair_with = _load_rows(grid_dir, grids)
    runs_all = [r for runs in rows.values() for r in runs]
    has_val = any(_last(r, "val_error") is not None for r in runs_all)
    has_drift = any(_last(r, "knn_kept") is not None for r in runs_all)
    full = sorted({r["full_test"]["num_test"] for r in runs_all if "full_test" in r})
    head = ["row", "seeds", "test error % (last)", "test error % at best val",
            "Δ vs baseline (paired by seed)"]
    if full:  # benchmarks/eval_full_test.py: the same checkpoints, every test image
        n = "/".join(f"{v:,}" for v in full)
        head += [f"test error % on all {n} (seeds)", f"Δ on all {n} (paired)"]
    if has_val:
        head += ["val error % (last)", "Δ val vs baseline (paired)"]
    head += ["DPLP coverage", "DPLP acc. on covered", "model acc. on covered"]
    if has_drift:
        head += ["bank cos to previous (last)", "kNN kept (last)"]
    head += ["s / epoch", "wall s / run"]
    lines = [f"### {grid_dir.name}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    def reference(row: str) -> tuple[dict, dict, dict]:
        ref = rows.get(pair_with.get(row, "baseline"), [])
        return ({r["seed"]: r["summary"]["test_error_last"] for r in ref},
                {r["seed"]: _last(r, "val_error") for r in ref
                 if _last(r, "val_error") is not None},
                {r["seed"]: _full(r) for r in ref if _full(r) is not None})

    for row, runs in rows.items():
        base, base_val, base_full = reference(row)
        s = [r["summary"] for r in runs]
        best = [(x.get("best_by_val") or {}).get("test_error") for x in s]
        per_epoch = [statistics.fmean([m["time_epoch"] for m in r["metrics"]
                                       if m.get("phase") == "train"]) for r in runs]
        is_base = row == "baseline" or row in pair_with.values()
        name = f"{row} (= {borrowed[row]})" if row in borrowed else row
        if row in pair_with:
            name += f" (Δ vs {pair_with[row]})"
        cells = [name, str(len(runs)), fmt([x["test_error_last"] for x in s]),
                 fmt(best), fmt([] if is_base else _paired(
                     runs, base, lambda r: r["summary"]["test_error_last"]))]
        if full:
            have = [r for r in runs if _full(r) is not None]
            cells += [fmt([_full(r) for r in have]) + f" ({len(have)})",
                      fmt([] if is_base else _paired(have, base_full, _full))]
        if has_val:
            cells += [fmt([_last(r, "val_error") for r in runs]),
                      fmt([] if is_base else _paired(
                          runs, base_val, lambda r: _last(r, "val_error")))]
        cells += [fmt([x.get("pl_coverage_last") for x in s], 3),
                  fmt([x.get("pl_acc_last") for x in s], 3),
                  fmt([x.get("model_acc_on_covered_last") for x in s], 3)]
        if has_drift:
            cells += [fmt([_last(r, "bank_cos_prev") for r in runs], 3),
                      fmt([_last(r, "knn_kept") for r in runs], 3)]
        cells += [fmt(per_epoch, 3), fmt([r["wall_time_s"] for r in runs], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Commands (seed 0 of each row):", ""]
    for row, runs in rows.items():
        first = min(runs, key=lambda r: r["seed"])
        lines.append(f"- `{row}`: `{first['command']}`")
    sources = "".join(f", `benchmarks/results/{b}__seed*.json`"
                      for b in sorted(set(borrowed.values())))
    lines.append(f"\nSource: `benchmarks/results/{grid_dir.name}/*.json`{sources}.\n")
    return lines


PL_KEYS = ["pl_coverage", "pl_acc", "model_acc_on_covered", "pl_acc_all", "model_acc",
           "path_len_q10", "path_len_q50", "path_len_q90"]


def pseudo_label_table(grid_dir: Path) -> list[str]:
    """Per-epoch pseudo-label quality of the rows whose labels come from DPLP
    (mean over seeds): coverage, accuracy on the covered nodes against the
    model's own accuracy on them, and path-length quantiles."""
    rows: dict[str, list[dict]] = {}
    for path in sorted(grid_dir.glob("*__seed*.json")):
        r = json.loads(path.read_text())
        cfg = r["summary"]["config"]
        if cfg["pseudo_label"]["source"] == "dplp":
            rows.setdefault(r["row"], []).append(r)
    if not rows:
        return []
    lines = [f"#### {grid_dir.name}: DPLP pseudo labels per epoch (mean over seeds)",
             "", "| row | epoch | seeds | " + " | ".join(PL_KEYS) + " |",
             "|---|---|---|" + "---|" * len(PL_KEYS)]
    for row, runs in rows.items():
        epochs = sorted({m["epoch"] for r in runs for m in r["metrics"]
                         if m.get("pl_coverage") is not None})
        for e in epochs:
            recs = [m for r in runs for m in r["metrics"] if m["epoch"] == e]
            cells = []
            for key in PL_KEYS:
                vals = [m[key] for m in recs if m.get(key) is not None]
                cells.append(f"{statistics.fmean(vals):.3f}" if vals else "–")
            lines.append(f"| {row} | {e} | {len(recs)} | " + " | ".join(cells) + " |")
    lines += ["", "pl_acc: DPLP label accuracy on the unlabelled nodes it covers; "
              "model_acc_on_covered: the Label Bank's (the model's) accuracy on "
              "the same nodes; *_all: on every unlabelled node.", ""]
    return lines


def bench_section(name: str, results: Path = RESULTS) -> list[str]:
    path = results / f"{name}.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    tables = [(key, data[key]) for key in ("rows", "training", "collectives")
              if data.get(key)]
    if not tables:
        return []
    lines = [f"### {name}", ""]
    for key, rows in tables:
        if key != "rows":
            lines += [f"{key}:", ""]
        cols = [k for k in rows[0] if not isinstance(rows[0][k], dict)]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            cells = []
            for k in cols:
                v = r.get(k)
                if isinstance(v, list):
                    v = "[" + ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x)
                                        for x in v) + "]"
                cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    m = data.get("machine", {})
    lines += [f"Machine: {m.get('processor') or m.get('platform')}, "
              f"{m.get('cpus')} CPUs, torch {m.get('torch')}. Command: "
              f"`python benchmarks/{name}.py`. "
              f"Source: `benchmarks/results/{name}.json`.",
              ""]
    return lines


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--out", type=Path, default=ROOT / "RESULTS.md")
    args = p.parse_args(argv)
    out = ["# Results", "",
           "Generated by `python benchmarks/make_results.py` from the JSON files in "
           "`benchmarks/results/`; do not edit by hand.", "",
           "Published numbers of the paper (test error %, 400 epochs on a GPU): "
           + ", ".join(f"{k} {v:.2f}" for k, v in PAPER.items())
           + ". The CPU-scale runs below are not comparable to them in absolute "
           "terms (subsets, few epochs, narrow backbones); they compare rows.", "",
           "## Experiment grids", "",
           "Machine: 2-core x86-64 CPU, no GPU, torch 2.14.1 (CPU use). Grid runs "
           "use 1 thread each and ran two at a time beside other jobs, some "
           "paused while benchmarks ran: their seconds per epoch and wall times "
           "are not comparable across rows. Per-epoch cost of the rows measured "
           "back to back on a quiet machine is in `bench_epoch` below.", "",
           "CIFAR-10 CPU runs train and report on a 1,000-image test subset "
           "(about ±1.6 points of sampling noise per run at 50 % error). The "
           "columns 'on all 10,000' classify every CIFAR-10 test image with the "
           "same final checkpoints (`python benchmarks/eval_full_test.py GRID`, "
           "i.e. `dag-pyg eval RUN --num-test all`; the number of seeds "
           "re-evaluated in brackets): the paired differences there are the "
           "ones to read.", ""]
    for grid_dir in sorted(d for d in args.results.iterdir() if d.is_dir()):
        out += grid_table(grid_dir)
        out += pseudo_label_table(grid_dir)
    out += ["## Benchmarks", ""]
    for name in ("bench_epoch", "dplp_diagnostics", "neighbour_purity", "bench_knn",
                 "bench_knn_ivf", "bench_conv", "bench_dplp", "bench_sampling",
                 "bench_distributed"):
        out += bench_section(name, args.results)
    for png in sorted(ROOT.glob("figures/*.png")):
        out.append(f"![{png.stem}](figures/{png.name})")
    args.out.write_text("\n".join(out) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
