"""Writes ``benchmarks/experiments/RESULTS.md`` (one page of headline tables)
and its detail pages ``benchmarks/experiments/details/*.md`` from the JSON
results.

    python -m benchmarks.experiments.make_results

RESULTS.md has, per grid, each row's test error (mean ± std over seeds) and
its seed-paired difference to the grid's baseline row, on the whole test set
where ``benchmarks/analysis/eval_full_test.py`` measured it; the detail page
of a grid (``details/<grid>.md``) has every column, every seed, the DPLP
pseudo-label quality per epoch and the command of each row. The speed
benchmarks (``benchmarks/speed/results/``), the analyses
(``benchmarks/analysis/results/``) and the figures get a detail page each.
Every number comes from a result JSON named next to it, written by
``reproduce.py``, ``eval_full_test.py``, a ``benchmarks/speed`` or a
``benchmarks/analysis`` script; nothing is typed by hand except the paper's
published numbers, marked as such.
"""
from __future__ import annotations

import json
import os
import shlex
import statistics
from collections.abc import Callable
from pathlib import Path

import yaml

from benchmarks.common import (
    ANALYSIS_RESULTS,
    EXPERIMENT_RESULTS,
    FIGURES,
    GRIDS,
    ROOT,
    SPEED_RESULTS,
)
from benchmarks.experiments.paper_rows import PAPER_ABLATION, PAPER_ROWS, TABLE4

HERE = Path(__file__).resolve().parent
RESULTS = EXPERIMENT_RESULTS
MAX_LINES = 150  # RESULTS.md stays one page of headline tables
# Grids sweeping one switch (their tables live on their detail pages).
SWEEPS = ("_hops", "_ksub", "_sigma")

# Published test errors (%) of Li et al., CVPR 2020 (final results, 400 epochs),
# by the config (configs/<key>.yaml) of the setting.
PAPER = {"cifar10_4000": 6.13, "cifar100_10000": 32.50, "miniimagenet_4000": 55.97}
# Other methods' published test errors (%) in a grid's setting, by config:
# (method, error, where it is published). Quoted from the papers' tables, not
# re-run; "PI": permutation-invariant MNIST (no convolutions), unlike ours.
PUBLISHED = {"mnist_100": [
    ("M1+M2 (Kingma et al., NeurIPS 2014)", "3.33 ± 0.14", "Table 1, PI"),
    ("CatGAN (Springenberg, ICLR 2016)", "1.91 ± 0.10", "PI"),
    ("Ladder, full (Rasmus et al., NeurIPS 2015)", "1.06 ± 0.37", "Table 1, PI"),
    ("Ladder, Conv-Small Γ-model (Rasmus et al., NeurIPS 2015)", "0.89 ± 0.50",
     "Table 3, convolutional"),
    ("Improved GAN, feature matching (Salimans et al., NeurIPS 2016)",
     "0.93 ± 0.07", "Table 1, PI: 93 ± 6.5 of 10,000 test images"),
]}
# What separates our runs in that setting from the published ones.
PUBLISHED_GAP = {"mnist_100": (
    "Ours: a `cnn` backbone at width 0.25 and 2 + 16 epochs, within 30 "
    "minutes of one CPU core (configs/mnist_100.yaml); the published "
    "models are larger networks trained for many more epochs, with an "
    "unsupervised cost of their own (the Ladder network's reconstruction "
    "at every layer, Improved GAN's generator)")}

SPEED = ("bench_epoch", "bench_epoch_dagplus", "bench_epoch_dagplus_confirm",
         "bench_knn", "bench_knn_ivf",
         "bench_conv", "bench_conv_cora", "bench_kernels", "bench_planetoid",
         "bench_planetoid_citeseer", "planetoid_gap/bench_planetoid", "bench_dplp",
         "bench_sampling", "bench_distributed", "gpu_check")
# result JSON -> the speed script that wrote it, where the names differ (--name)
SPEED_SCRIPTS = {"bench_epoch_dagplus": "bench_epoch",
                 "bench_conv_cora": "bench_conv",
                 "bench_planetoid_citeseer": "bench_planetoid",
                 "planetoid_gap/bench_planetoid": "bench_planetoid",
                 "bench_epoch_dagplus_confirm": "bench_epoch"}
# result JSON -> the analysis script that wrote it (its --name)
ANALYSES = {"neighbour_purity": "neighbour_purity",
            "neighbour_purity_mnist_100_val": "neighbour_purity",
            "neighbour_purity_mnist_100": "neighbour_purity",
            "neighbour_purity_dagplus": "neighbour_purity",
            "dplp_diagnostics": "dplp_diagnostics"}


def fmt(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def shown(path: Path) -> str:
    """A path as the pages show it: from the repository root where inside."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _load_rows(grid_dir: Path, grids: Path
               ) -> tuple[dict[str, list[dict]], dict[str, str], dict[str, str]]:
    """Result records by row, in the paper's order (labels only, baseline,
    the module rows, DAG; :data:`paper_rows.TABLE4`) and then the grid file's,
    with the rows the grid borrows from another grid (``borrow: {row:
    grid/row}``: the same configuration, run there) filling the seeds not run
    here."""
    rows: dict[str, list[dict]] = {}
    for path in sorted(grid_dir.glob("*__seed*.json")):
        r = json.loads(path.read_text())
        rows.setdefault(r["row"], []).append(r)
    grid = _grid(grid_dir, grids)
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
            first = ("labels_only", "baseline")  # TABLE4's order
            return (name not in first, first.index(name) if name in first else 0,
                    name.rstrip("0123456789."),
                    float(digits) if digits.strip(".") else 0.0)
        rows = dict(sorted(rows.items(), key=lambda kv: key(kv[0])))
    elif grid:
        order = [*TABLE4, *PAPER_ROWS, *grid["rows"]]
        rows = dict(sorted(rows.items(), key=lambda kv: order.index(kv[0])
                           if kv[0] in order else len(order)))
    # A row's Δ columns compare with "baseline" and "labels_only" unless the
    # grid pairs it with another row of the same kind (``pair_with: {dag_e24:
    # labels_only_e24}``: same schedule).
    return rows, borrowed, dict(grid.get("pair_with") or {})


def _grid(grid_dir: Path, grids: Path) -> dict:
    """A results folder's grid file (empty where there is none)."""
    path = grids / f"{grid_dir.name}.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


# The paired references, in column order: the paper's baseline (Label Bank
# pseudo labels) and training on the labels alone.
REFS = ("baseline", "labels_only")


def _ref(row: str, ref: str, pair_with: dict[str, str]) -> str:
    """The row that a row's Δ column of reference ``ref`` subtracts: the
    grid's ``pair_with`` row where it is of that kind (``labels_only_e24`` in
    the ``labels_only`` column) or of no reference's kind (every column),
    else ``ref``."""
    other = pair_with.get(row)
    if other is None or (not other.startswith(ref)
                         and any(other.startswith(r) for r in REFS)):
        return ref
    return other


def _deltas(row: str, runs: list[dict], refs: list[str],
            rows: dict[str, list[dict]], pair_with: dict[str, str],
            key: Callable[[dict], float | None]) -> list[str]:
    """A row's seed-paired Δ of ``key`` to each reference (``–`` for a
    reference row against its own kind)."""
    return ["–" if row == ref or row in pair_with.values() else fmt(_paired(
        runs, _by_seed(rows.get(_ref(row, ref, pair_with), []), key), key))
        for ref in refs]


def _last(run: dict, key: str) -> float | None:
    """The last epoch's value of a per-epoch metric."""
    vals = [m[key] for m in run["metrics"] if m.get(key) is not None]
    return vals[-1] if vals else None


def _epoch_mean(run: dict, key: str) -> float | None:
    """The mean over the main epochs of a per-epoch metric."""
    vals = [m[key] for m in run["metrics"]
            if m.get("phase") == "train" and m.get(key) is not None]
    return statistics.fmean(vals) if vals else None


def _full(run: dict) -> float | None:
    """Test error of the run's last checkpoint on the whole test set."""
    return (run.get("full_test") or {}).get("test_error")


def _own(run: dict) -> float | None:
    """Test error of the run's last epoch on its own test set."""
    return run["summary"]["test_error_last"]


def _val(run: dict) -> float | None:
    """The last epoch's validation error."""
    return _last(run, "val_error")


def _paired(runs: list[dict], base: dict[int, float], key) -> list[float]:
    return [key(r) - base[r["seed"]] for r in runs
            if r["seed"] in base and key(r) is not None]


def _by_seed(runs: list[dict], key: Callable[[dict], float | None]
             ) -> dict[int, float]:
    return {r["seed"]: key(r) for r in runs if key(r) is not None}


def _row_name(row: str, borrowed: dict[str, str], pair_with: dict[str, str]) -> str:
    name = f"{row} (= {borrowed[row]})" if row in borrowed else row
    if row in PAPER_ROWS and PAPER_ROWS[row][0].lower().replace(" ", "_") != row:
        name += f" ({PAPER_ROWS[row][0]})"
    if row in pair_with:
        name += f" (Δ vs {pair_with[row]})"
    return name


def _num_test(run: dict) -> str:
    """The size of a run's own test set as its config gives it."""
    n = run["summary"].get("config", {}).get("data", {}).get("num_test")
    return "the whole test set" if n is None else f"a {n:,}-image test subset"


def _sources(grid_dir: Path, borrowed: dict[str, str]) -> str:
    return ", ".join([f"`{shown(grid_dir)}/*.json`"]
                     + [f"`{shown(grid_dir.parent / b)}__seed*.json`"
                        for b in sorted(set(borrowed.values()))])


# --------------------------------------------------------------------------- #
# RESULTS.md: the headline of each grid
# --------------------------------------------------------------------------- #
def _config_stem(run: dict) -> str | None:
    """The config file a run's command trained (``configs/<stem>.yaml``)."""
    args = shlex.split(run.get("command", ""))
    return Path(args[2]).stem if len(args) > 2 and args[1] == "train" else None


def headline_table(grid_dir: Path, grids: Path = GRIDS,
                   details: str | None = None) -> list[str]:
    """A grid's rows, mean ± std over seeds, and their seed-paired Δ to the
    paper's baseline and to training on the labels alone: on the whole test
    set where every record has ``full_test``, else on the runs' own test set
    (the note says which). A grid of the paper's ablation rows (labels only,
    baseline, DAG) also gets the paper's numbers beside and, in one line,
    whether the paper's ordering holds (:func:`ordering`)."""
    rows, borrowed, pair_with = _load_rows(grid_dir, grids)
    grid = _grid(grid_dir, grids)
    rows = {r: v for r, v in rows.items() if r not in (grid.get("legacy") or ())}
    runs_all = [r for runs in rows.values() for r in runs]
    if not runs_all:
        return []
    full = all(_full(r) is not None for r in runs_all)
    err = _full if full else _own
    if full:
        sizes = "/".join(f"{v:,}" for v in sorted(
            {r["full_test"]["num_test"] for r in runs_all}))
        where = f"on all {sizes} test images (`full_test`)"
    else:
        kinds = sorted({_num_test(r) for r in runs_all})
        where = f"on the runs' own test set ({' / '.join(kinds)}; no `full_test`)"
        some = sum(_full(r) is not None for r in runs_all)
        if some:
            where += f"; {some} of {len(runs_all)} records have `full_test`"
    has_val = any(_last(r, "val_error") is not None for r in runs_all)
    paper = {row: PAPER[_config_stem(runs[0])] for row, runs in rows.items()
             if (row == "dag" or borrowed.get(row, "").endswith("/dag"))
             and _config_stem(runs[0]) in PAPER}
    refs = [ref for ref in REFS if ref in rows]
    ablation = all(r in rows for r in ("labels_only", "baseline", "dag"))
    note = f"Test error % {where}"
    note += (f"; Δ: minus the {' / '.join(refs)} row, paired by seed (negative: "
             "better)" if refs else "; no reference row")
    if details:
        note += f". Details, per seed, commands: [{details}]({details})"
    head = ["row", "seeds", "test error %"] + [f"Δ vs {ref} (paired)" for ref in refs]
    # A second reference (``compare: {dagplus: dag}``): Δ to it, by seed.
    compare = {row: other for row, other in (grid.get("compare") or {}).items()
               if other in rows}
    for other in sorted(set(compare.values())):
        head.append(f"Δ vs {other} (paired)")
    if has_val:
        head += ["val error % (last)"] + [f"Δ val vs {ref} (paired)" for ref in refs]
    if paper:
        head += ["paper (400 epochs)"]
    if ablation:
        head += [PAPER_HEAD]
    lines = [f"### {grid_dir.name}", note + ".", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    for row, runs in rows.items():
        cells = [_row_name(row, borrowed, pair_with), str(len(runs)),
                 fmt([err(r) for r in runs])]
        cells += _deltas(row, runs, refs, rows, pair_with, err)
        for other in sorted(set(compare.values())):
            cells.append(fmt(_paired(runs, _by_seed(rows[other], err), err))
                         if compare.get(row) == other else "–")
        if has_val:
            cells.append(fmt([_val(r) for r in runs]))
            cells += _deltas(row, runs, refs, rows, pair_with, _val)
        if paper:
            cells.append(f"{paper[row]:.2f}" if row in paper else "")
        if ablation:
            cells.append(_paper_cell(row))
        lines.append("| " + " | ".join(cells) + " |")
    if ablation:
        lines += ["", ordering(rows, err)]
    return lines + _published(grid_dir, runs_all) + [""]


PAPER_HEAD = "paper, C10-1000 (Δ vs its baseline)"


def _paper_cell(row: str) -> str:
    """The paper's ablation error of a row, with its Δ to the paper's
    baseline (the shape of the gain)."""
    errors = PAPER_ABLATION["errors"]
    if row not in errors:
        return ""
    if row == "baseline":
        return f"{errors[row]:.2f}"
    return f"{errors[row]:.2f} ({errors[row] - errors['baseline']:+.2f})"


def table4(grid_dirs: list[Path], grids: Path = GRIDS) -> list[str]:
    """The paper's Table 4 at our scale: one column per ablation grid (those
    with labels_only, baseline and dag rows), its rows labels only |
    baseline | DNA | DPLP | DAG; each cell the test error and its paired Δ
    to the paper's baseline and to the labels alone; the paper's own column
    beside."""
    cols = []
    for grid_dir in grid_dirs:
        rows, _, _ = _load_rows(grid_dir, grids)
        if all(r in rows for r in ("labels_only", "baseline", "dag")):
            runs = [r for row in TABLE4 for r in rows.get(row, [])]
            err = _full if all(_full(r) is not None for r in runs) else _own
            cols.append((grid_dir.name, rows, err))
    if not cols:
        return []
    head = ["row", *[f"[{name}](details/{name}.md)" for name, _, _ in cols],
            PAPER_HEAD]
    lines = ["### The paper's Table 4 at CPU scale",
             "Test error % (mean ± std over seeds; whole test sets), then in "
             "brackets the seed-paired Δ to the paper's baseline / to the "
             "labels alone (negative: better). The paper's baseline trains every "
             "unlabelled image on its Label Bank entry (the model's own "
             "prediction), with Eq. 2 and mixup; DNA and DPLP each add one module "
             "to it, DAG both (definitions: README, `paper_rows.py`). Each grid's "
             "own table below has the other rows and whether the paper's ordering "
             "holds.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in TABLE4:
        cells = [PAPER_ROWS[row][0]]
        for _, rows, err in cols:
            if row not in rows:
                cells.append("–")
                continue
            deltas = [fmt(_paired(rows[row], _by_seed(rows[ref], err), err))
                      if ref != row else "–" for ref in REFS]
            most = max(len(rows[r]) for r in TABLE4 if r in rows)
            short = (f", {len(rows[row])} of {most} seeds"
                     if len(rows[row]) < most else "")
            cells.append(f"{fmt([err(r) for r in rows[row]])} "
                         f"({' / '.join(deltas)}{short})")
        cells.append(_paper_cell(row) or "not quoted")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", f"Paper's column: {PAPER_ABLATION['setting']}; "
                    f"{PAPER_ABLATION['missing']}", ""]


# The paper's claims, as (claim, row, reference row): row below reference.
CLAIMS = (("DNA < baseline", "dna", "baseline"),
          ("DPLP < baseline", "dplp", "baseline"),
          ("DAG < DNA", "dag", "dna"), ("DAG < DPLP", "dag", "dplp"),
          ("DAG < baseline", "dag", "baseline"),
          ("baseline < labels only", "baseline", "labels_only"),
          ("DAG < labels only", "dag", "labels_only"))


def verdict(diffs: list[float]) -> str:
    """``holds`` where the seed-paired differences (row minus reference) are
    negative beyond their spread (mean + std < 0), ``reversed`` where positive
    beyond it (mean - std > 0), else ``within the spread``; ``one seed`` where
    there is no spread to judge by."""
    if len(diffs) < 2:
        return "one seed"
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    return ("holds" if mean + std < 0 else "reversed" if mean - std > 0
            else "within the spread")


def ordering(rows: dict[str, list[dict]], err) -> str:
    """One line: each of the paper's claims (:data:`CLAIMS`) on this grid."""
    parts = []
    for claim, row, ref in CLAIMS:
        if row in rows and ref in rows:
            diffs = _paired(rows[row], _by_seed(rows[ref], err), err)
            parts.append(f"{claim}: **{verdict(diffs)}** ({fmt(diffs)})")
    return ("The paper's ordering, paired by seed (holds: mean + std of the "
            "paired Δ below 0; reversed: mean − std above 0): "
            + "; ".join(parts) + ".")


def _published(grid_dir: Path, runs: list[dict]) -> list[str]:
    """Other methods' published errors in the setting of a test-split grid."""
    stem = _config_stem(runs[0]) or ""
    if stem not in PUBLISHED or grid_dir.name.endswith("_val"):
        return []
    quoted = "; ".join(f"{m} {e} % ({w})" for m, e, w in PUBLISHED[stem])
    return ["", f"Published in this setting (quoted from the papers, not "
            f"re-run): {quoted}. {PUBLISHED_GAP[stem]}."]


# Preset grids (name suffix: preset row): how the headline names each
# preset and says what it is.
PRESETS = {
    "_dagplus": ("DAG+", "DAG+ is `configs/*_dagplus.yaml`"),
    "_auto": ("auto", "auto is `method: auto` (experimental): the check-steered "
              "DAG and the labels alone, both with 20 % of each class's labels "
              "held out of training, and the one of the two right on more of "
              "those labels kept (its choice per seed in the last column)"),
}


def preset_kind(grid_dir: Path) -> str | None:
    """The preset suffix of a grid's name (``None``: not a preset grid)."""
    return next((k for k in PRESETS if grid_dir.name.endswith(k)), None)


def preset_table(grid_dirs: list[Path], grids: Path = GRIDS) -> list[str]:
    """One table per kind of preset (:data:`PRESETS`), one line per preset
    grid (``compare: {preset: reference}``): labels only, the paper's
    baseline, the reference (the paper's DAG) and the preset, mean ± std
    over seeds, and the preset's seed-paired Δ to each."""
    out = []
    for kind, (label, what) in PRESETS.items():
        lines = _preset_lines([d for d in grid_dirs if preset_kind(d) == kind],
                              grids)
        if not lines:
            continue
        head = ["grid", "seeds", "test set", "labels only", "baseline",
                "DAG (paper)", label, f"Δ {label} vs baseline",
                f"Δ {label} vs labels only", f"Δ {label} vs DAG",
                "Δ DAG vs baseline", *(["chosen arm (seeds)"] if kind == "_auto"
                                       else [])]
        out += [f"### {label} against the paper's DAG, its baseline and the "
                "labels alone",
                f"Test error %, mean ± std over seeds; Δ paired by seed "
                f"(negative: {label} better). Baseline: the paper's (Label Bank "
                f"pseudo labels, Eq. 2, mixup); {what}; the paper's DAG stays "
                "the default.", "",
                "| " + " | ".join(head) + " |", "|" + "---|" * len(head), *lines,
                ""]
    return out


def _preset_lines(grid_dirs: list[Path], grids: Path) -> list[str]:
    lines = []
    for grid_dir in grid_dirs:
        rows, _, _ = _load_rows(grid_dir, grids)
        for preset, ref in (_grid(grid_dir, grids).get("compare") or {}).items():
            if any(r not in rows for r in (preset, ref, *REFS)):
                continue
            runs_all = [r for row in (preset, ref, *REFS) for r in rows[row]]
            err = _full if all(_full(r) is not None for r in runs_all) else _own
            by_seed = {row: _by_seed(rows[row], err) for row in (ref, *REFS)}
            seeds = sorted(_by_seed(rows[preset], err))
            where = ("all test images (`full_test`)" if err is _full
                     else _num_test(rows[preset][0]))
            lines.append("| " + " | ".join([
                f"[{grid_dir.name}](details/{grid_dir.name}.md)",
                ", ".join(map(str, seeds)), where,
                *[fmt([err(r) for r in rows[row]])
                  for row in ("labels_only", "baseline", ref, preset)],
                *[fmt(_paired(rows[preset], by_seed[row], err))
                  for row in ("baseline", "labels_only", ref)],
                fmt(_paired(rows[ref], by_seed["baseline"], err)),
                *_choices(rows[preset])]) + " |")
    return lines


def _choices(runs: list[dict]) -> list[str]:
    """``method: auto``'s chosen arm per seed (nothing for other presets)."""
    chosen = [(r["seed"], r["summary"]["auto"]["arm"]) for r in runs
              if "auto" in r.get("summary", {})]
    return [", ".join(arm for _, arm in sorted(chosen))] if chosen else []


# --------------------------------------------------------------------------- #
# details/<grid>.md
# --------------------------------------------------------------------------- #
def grid_table(grid_dir: Path, grids: Path = GRIDS) -> list[str]:
    rows, borrowed, pair_with = _load_rows(grid_dir, grids)
    legacy = set(_grid(grid_dir, grids).get("legacy") or ())
    runs_all = [r for runs in rows.values() for r in runs]
    has_val = any(_last(r, "val_error") is not None for r in runs_all)
    has_drift = any(_last(r, "knn_kept") is not None for r in runs_all)
    has_live = any(_last(r, "live_bank_cos") is not None for r in runs_all)
    has_admit = any((_last(r, "pl_admitted") or 1.0) < 1.0 for r in runs_all)
    full = sorted({r["full_test"]["num_test"] for r in runs_all if "full_test" in r})
    refs = [ref for ref in REFS if ref in rows]
    head = ["row", "seeds", "test error % (last)", "test error % at best val",
            *[f"Δ vs {ref} (paired by seed)" for ref in refs]]
    if full:  # eval_full_test.py: the same checkpoints, every test image
        n = "/".join(f"{v:,}" for v in full)
        head += [f"test error % on all {n} (seeds)",
                 *[f"Δ vs {ref} on all {n} (paired)" for ref in refs]]
    if has_val:
        head += ["val error % (last)", *[f"Δ val vs {ref} (paired)" for ref in refs]]
    head += ["DPLP coverage", "DPLP acc. on covered", "model acc. on covered"]
    if has_drift:
        head += ["bank cos to previous (last)", "kNN kept (last)"]
    if has_live:  # the live-vs-bank gap
        head += ["live-bank cos (mean of epochs)"]
    if has_admit:
        head += ["pseudo labels admitted (last)", "pseudo-label acc. (last)"]
    head += ["s / epoch", "wall s / run"]
    lines = [f"### {grid_dir.name}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for row, runs in rows.items():
        s = [r["summary"] for r in runs]
        best = [(x.get("best_by_val") or {}).get("test_error") for x in s]
        per_epoch = [statistics.fmean([m["time_epoch"] for m in r["metrics"]
                                       if m.get("phase") == "train"]) for r in runs]
        cells = [_row_name(row, borrowed, pair_with)
                 + (" (not a paper row)" if row in legacy else ""), str(len(runs)),
                 fmt([x["test_error_last"] for x in s]), fmt(best),
                 *_deltas(row, runs, refs, rows, pair_with, _own)]
        if full:
            have = [r for r in runs if _full(r) is not None]
            cells += [fmt([_full(r) for r in have]) + f" ({len(have)})",
                      *_deltas(row, have, refs, rows, pair_with, _full)]
        if has_val:
            cells += [fmt([_val(r) for r in runs]),
                      *_deltas(row, runs, refs, rows, pair_with, _val)]
        cells += [fmt([x.get("pl_coverage_last") for x in s], 3),
                  fmt([x.get("pl_acc_last") for x in s], 3),
                  fmt([x.get("model_acc_on_covered_last") for x in s], 3)]
        if has_drift:
            cells += [fmt([_last(r, "bank_cos_prev") for r in runs], 3),
                      fmt([_last(r, "knn_kept") for r in runs], 3)]
        if has_live:
            cells.append(fmt([_epoch_mean(r, "live_bank_cos") for r in runs], 3))
        if has_admit:
            cells += [fmt([_last(r, "pl_admitted") for r in runs], 3),
                      fmt([_last(r, "pl_acc_all") for r in runs], 3)]
        cells += [fmt(per_epoch, 3), fmt([r["wall_time_s"] for r in runs], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Commands (seed 0 of each row; the other seeds differ in "
              "`seed` and the run folder only):", ""]
    for row, runs in rows.items():
        first = min(runs, key=lambda r: r["seed"])
        line = f"- `{row}`: `{first['command']}`"
        if (first.get("full_test") or {}).get("command"):
            line += f"; whole test set: `{first['full_test']['command']}`"
        lines.append(line)
    lines.append(f"\nSource: {_sources(grid_dir, borrowed)}.\n")
    return lines


def per_seed_table(grid_dir: Path, grids: Path = GRIDS) -> list[str]:
    """Every record the grid's tables average, one line each."""
    rows, borrowed, _ = _load_rows(grid_dir, grids)
    runs_all = [r for runs in rows.values() for r in runs]
    has_full = any(_full(r) is not None for r in runs_all)
    has_val = any(_last(r, "val_error") is not None for r in runs_all)
    head = ["row", "seed", "last epoch", "test error % (own test set)"]
    head += ["test error % (whole test set)"] if has_full else []
    head += ["val error % (last)"] if has_val else []
    head += ["record"]
    lines = [f"#### {grid_dir.name}: every seed", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, runs in rows.items():
        grid = borrowed[row].split("/")[0] if row in borrowed else grid_dir.name
        for r in sorted(runs, key=lambda r: r["seed"]):
            g = r.get("grid", grid)
            cells = [row, str(r["seed"]), str(r["summary"].get("last_epoch")),
                     fmt([_own(r)])]
            cells += [fmt([_full(r)])] if has_full else []
            cells += [fmt([_last(r, "val_error")])] if has_val else []
            cells.append(f"`{g}/{r['row']}__seed{r['seed']}.json`" + (
                f" (row `{r['renamed_from']}` until the rows took the paper's "
                "names)" if r.get("renamed_from") else ""))
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


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


def label_bank_table(grid_dir: Path, grids: Path = GRIDS) -> list[str]:
    """Per epoch, mean over seeds, for the paper's rows that train on pseudo
    labels: the accuracy of the targets on every unlabelled node
    (``pl_acc_all``: the Label Bank's own predictions for ``baseline`` and
    ``dna``, DPLP's labels where its paths reach for ``dplp`` and ``dag``)
    and, for the DPLP rows, DPLP's accuracy on the nodes it covers against
    the Label Bank's on the same nodes: what each row teaches, side by side."""
    rows, _, _ = _load_rows(grid_dir, grids)
    shown_rows = [r for r in (*TABLE4, "na_no_density", "lp_l", "gat")
                  if r in rows and any(m.get("pl_acc_all") is not None
                                       for run in rows[r] for m in run["metrics"])]
    if not shown_rows:
        return []
    dplp_rows = [r for r in shown_rows if any(
        m.get("pl_acc") is not None for run in rows[r] for m in run["metrics"])]
    epochs = sorted({m["epoch"] for r in shown_rows for run in rows[r]
                     for m in run["metrics"] if m.get("pl_acc_all") is not None})

    def mean(row: str, epoch: int, key: str) -> str:
        vals = [m[key] for run in rows[row] for m in run["metrics"]
                if m["epoch"] == epoch and m.get(key) is not None]
        return f"{statistics.fmean(vals):.3f}" if vals else "–"

    head = ["epoch", *[f"{r}: targets right" for r in shown_rows],
            *[f"{r}: DPLP / Label Bank on covered" for r in dplp_rows]]
    lines = [f"#### {grid_dir.name}: what each row teaches, per epoch (mean over "
             "seeds)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in epochs:
        cells = [str(e), *[mean(r, e, "pl_acc_all") for r in shown_rows],
                 *[f"{mean(r, e, 'pl_acc')} / {mean(r, e, 'model_acc_on_covered')}"
                   for r in dplp_rows]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", "targets right: the share of unlabelled nodes whose "
                    "training target (Label Bank prediction, or DPLP's label where "
                    "it covers the node) is the true class (`pl_acc_all`).", ""]


TIMING_NOTE = (
    "Grid runs use 1 thread each and ran two at a time beside other jobs, some "
    "paused while benchmarks ran: their seconds per epoch and wall times are "
    "not comparable across rows; `bench_epoch` (speed benchmarks) measures the "
    "rows back to back on a quiet machine.")
SUBSET_NOTE = (
    "CIFAR-10 CPU runs train and report on a 1,000-image test subset (about "
    "±1.6 points of sampling noise per run at 50 % error). The columns 'on all "
    "10,000' classify every CIFAR-10 test image with the same final "
    "checkpoints (`python -m benchmarks.analysis.eval_full_test GRID`, i.e. "
    "`dag-pyg eval RUN --num-test all`; the number of seeds re-evaluated in "
    "brackets): the paired differences there are the ones to read.")


def grid_page(grid_dir: Path, grids: Path = GRIDS) -> list[str]:
    records = [json.loads(p.read_text()) for p in grid_dir.glob("*__seed*.json")]
    subset = any("full_test" in r or _num_test(r) != "the whole test set"
                 for r in records)
    notes = [TIMING_NOTE, ""] + ([SUBSET_NOTE, ""] if subset else [])
    return [f"# {grid_dir.name}: details", "",
            "Generated by `python -m benchmarks.experiments.make_results`; do not "
            "edit by hand. Headline: [RESULTS.md](../RESULTS.md).", "", *notes,
            *grid_table(grid_dir, grids), *per_seed_table(grid_dir, grids),
            *label_bank_table(grid_dir, grids), *pseudo_label_table(grid_dir)]


# --------------------------------------------------------------------------- #
# details/speed.md, details/<analysis>.md, details/figures.md
# --------------------------------------------------------------------------- #
def command(module: str, data: dict) -> str:
    """The command that wrote a benchmark JSON, from its recorded arguments."""
    args = data.get("args") or data.get("config")
    if not isinstance(args, dict):
        return f"`python -m {module}` (arguments not recorded)"
    words = ["python", "-m", module, *(str(r) for r in args.get("runs") or [])]
    for key, v in args.items():
        if key == "runs" or v is None or v is False:
            continue
        words.append("--" + key.replace("_", "-"))
        if v is not True:
            words += [str(x) for x in v] if isinstance(v, list) else [str(v)]
    return f"`{shlex.join(words)}`"


def bench_section(name: str, results: Path = SPEED_RESULTS,
                  module: str | None = None) -> list[str]:
    path = results / f"{name}.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    tables = [(key, data[key]) for key in ("rows", "training", "collectives",
                                           "sampling", "training_step")
              if data.get(key)]
    if not tables:
        return []
    lines = [f"### {name}", ""]
    for key, rows in tables:
        if key != "rows":
            lines += [f"{key}:", ""]
        cols = list(dict.fromkeys(k for r in rows for k in r
                                  if not isinstance(r[k], dict)))
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            cells = []
            for k in cols:
                if k not in r:
                    cells.append("")
                    continue
                v = r[k]
                if isinstance(v, list):
                    v = "[" + ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x)
                                        for x in v) + "]"
                cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    m = data.get("machine", {})
    module = module or f"benchmarks.speed.{SPEED_SCRIPTS.get(name, name)}"
    lines += [f"Machine: {m.get('processor') or m.get('platform')}, "
              f"{m.get('cpus')} CPUs, torch {m.get('torch')}. Command: "
              f"{command(module, data)}. Source: `{shown(path)}`.", ""]
    return lines


def _page(title: str, body: list[str]) -> list[str]:
    return [f"# {title}", "", "Generated by `python -m "
            "benchmarks.experiments.make_results`; do not edit by hand. "
            "Headline: [RESULTS.md](../RESULTS.md).", "", *body]


def _link(target: Path, page_dir: Path) -> str:
    return Path(os.path.relpath(target.resolve(), page_dir.resolve())).as_posix()


def write_pages(results: Path, out: Path, speed: Path = SPEED_RESULTS,
                analysis: Path = ANALYSIS_RESULTS, figures: Path = FIGURES,
                grids: Path = GRIDS) -> list[str]:
    """Writes the detail pages beside ``out`` and returns RESULTS.md's lines."""
    details = out.parent / "details"
    details.mkdir(parents=True, exist_ok=True)
    pages: dict[str, list[str]] = {}
    heads: list[str] = []
    selections: list[str] = []
    presets: list[Path] = []
    sweeps: list[str] = []
    ablations: list[Path] = []
    for grid_dir in sorted(d for d in results.iterdir() if d.is_dir()):
        rel = f"details/{grid_dir.name}.md"
        table = headline_table(grid_dir, grids, rel)
        if not table:
            continue
        pages[grid_dir.name] = grid_page(grid_dir, grids)
        if grid_dir.name.endswith("_val"):
            # Choices made on a validation split: their tables are on the
            # detail page; the headline shows test-split grids.
            selections.append(f"- [{grid_dir.name}]({rel})")
        elif preset_kind(grid_dir):
            presets.append(grid_dir)  # one line each in its preset table
        elif grid_dir.name.endswith(SWEEPS):
            # One switch swept over values: linked, so the page stays one page.
            sweeps.append(f"- [{grid_dir.name}]({rel})")
        else:
            heads += table
            ablations.append(grid_dir)
    others: list[str] = []
    body = [line for name in SPEED for line in bench_section(name, speed)]
    if body:
        pages["speed"] = _page("Speed benchmarks", body)
        have = [n for n in SPEED if (speed / f"{n}.json").exists()]
        others.append(f"- [Speed benchmarks](details/speed.md): {', '.join(have)} "
                      f"(`{shown(speed)}/`).")
    for name, script in ANALYSES.items():
        body = bench_section(name, analysis, f"benchmarks.analysis.{script}")
        if body:
            pages[name] = _page(name, body)
            others.append(f"- [{name}](details/{name}.md) (`{shown(analysis)}/"
                          f"{name}.json`).")
    pngs = sorted(figures.glob("*.png"))
    if pngs:
        pages["figures"] = _page("Figures", [
            f"Written by `python -m benchmarks.analysis.figures`; "
            f"`{shown(figures)}/`.", "",
            *[f"![{p.stem}]({_link(p, details)})\n" for p in pngs]])
        others.append(f"- [Figures](details/figures.md): "
                      f"{', '.join(p.stem for p in pngs)}.")
    for name, lines in pages.items():
        (details / f"{name}.md").write_text("\n".join(lines) + "\n")
    paper = ", ".join(f"{k} {v:.2f}" for k, v in PAPER.items())
    return ["# Results", "",
            "Generated by `python -m benchmarks.experiments.make_results` from the "
            "JSON in `benchmarks/*/results/`; do not edit by hand. One table per "
            "grid (`benchmarks/experiments/grids/`): mean ± std over seeds; each "
            "grid's detail page has every column, every seed and the commands.", "",
            f"The paper's published test errors (%, 400 epochs on a GPU): {paper}; "
            "shown beside the `dag` row of a grid run in that setting. CPU-scale "
            "grids (subsets, few epochs, narrow backbones) are not comparable to "
            "them in absolute terms: they compare rows. CIFAR-10 CPU runs report "
            "on a 1,000-image test subset while training; `eval_full_test` "
            "re-classifies the whole test set with the final checkpoints, and "
            "the tables use that where it exists.", "",
            "## Experiment grids", "", *table4(ablations, grids),
            *preset_table(presets, grids), *heads,
            *(["## Sweeps of one switch (test split; tables on their pages)", "",
               *sweeps, ""] if sweeps else []),
            *(["## Validation grids (settings chosen there, not test results)",
               "", *selections, ""] if selections else []),
            "## Speed, analyses, figures", "", *others]


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS,
                   help="the grids' result folders")
    p.add_argument("--out", type=Path, default=HERE / "RESULTS.md",
                   help="the headline page; detail pages go to details/ beside it")
    p.add_argument("--speed", type=Path, default=SPEED_RESULTS, help=argparse.SUPPRESS)
    p.add_argument("--analysis", type=Path, default=ANALYSIS_RESULTS,
                   help=argparse.SUPPRESS)
    p.add_argument("--figures", type=Path, default=FIGURES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    lines = write_pages(args.results, args.out, args.speed, args.analysis,
                        args.figures)
    args.out.write_text("\n".join(lines) + "\n")
    n = len(lines)
    print(f"wrote {args.out} ({n} lines) and {args.out.parent / 'details'}/")
    if n > MAX_LINES:
        print(f"warning: {args.out.name} has {n} lines, more than {MAX_LINES}: "
              "move a section to a detail page.")


if __name__ == "__main__":
    main()
