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

Two steps: :func:`collect` reads each grid file once (its declared ``kind``
says where the grid goes, :data:`benchmarks.common.GRID_KINDS`) and the result
JSON, and computes every number into tables whose rows are keyed by column
name; :func:`render` only formats them as markdown.
"""
from __future__ import annotations

import json
import os
import shlex
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from benchmarks.common import (
    ANALYSIS_RESULTS,
    EXPERIMENT_RESULTS,
    FIGURES,
    GRID_PRESETS,
    GRIDS,
    ROOT,
    SPEED_RESULTS,
    grid_kind,
)
from benchmarks.experiments.paper_rows import PAPER_ABLATION, PAPER_ROWS, TABLE4

HERE = Path(__file__).resolve().parent
RESULTS = EXPERIMENT_RESULTS
MAX_LINES = 150  # RESULTS.md stays one page of headline tables

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
# What separates our runs in that setting from the published ones; {recipe}
# is the grid's own (:func:`recipe_of`: backbone, width, epochs, minutes per
# run).
PUBLISHED_GAP = {"mnist_100": (
    "Ours: {recipe} (configs/mnist_100.yaml); the published "
    "models are larger networks trained for many more epochs, with an "
    "unsupervised cost of their own (the Ladder network's reconstruction "
    "at every layer, Improved GAN's generator)")}


def recipe_of(rows: dict[str, list[dict]], borrowed: dict[str, str]) -> str:
    """The backbone, width and epochs of a grid's own runs (the first
    run's), and the mean wall minutes of a run per row (of runs that were
    not resumed: a resumed run's ``wall_time_s`` is its last attempt's
    only). ``rows``: row -> its records; rows in ``borrowed`` are another
    grid's runs, of another recipe or machine load, and are left out."""
    own = {row: runs for row, runs in rows.items() if row not in borrowed and runs}
    if not own:
        return ""
    cfg = next(iter(own.values()))[0]["summary"]["config"]
    m, o = cfg["model"], cfg["optim"]
    by_row = {row: [r["wall_time_s"] / 60 for r in runs if not r.get("resumed")]
              for row, runs in own.items()}
    minutes = ", ".join(f"{row} {sum(v) / len(v):.0f}" if v else
                        f"{row} – (every run resumed)"
                        for row, v in sorted(by_row.items()))
    return (f"a `{m['backbone']}` backbone at width {m['width']:g} and "
            f"{o['pretrain_epochs']} + {o['epochs']} epochs, minutes of one CPU "
            f"core per run beside other jobs: {minutes}")

# Preset grids (``kind: preset``, by their ``preset:``): how the headline
# names each preset and says what it is.
PRESETS = {
    "dagplus": ("DAG+", "DAG+ is `configs/*_dagplus.yaml`"),
    "auto": ("auto", "auto is `method: auto` (experimental): the check-steered "
             "DAG and the labels alone, both with 20 % of each class's labels "
             "held out of training, the one of the two right on more of "
             "those labels chosen (per seed in the last column), then refit "
             "on every label (the steered arm's decisions replayed)"),
}
assert set(PRESETS) == set(GRID_PRESETS), "a declared preset without its text"

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
            "neighbour_purity_mnist_100_w05": "neighbour_purity",
            "neighbour_purity_mnist_100_k64": "neighbour_purity",
            "neighbour_purity_dagplus": "neighbour_purity",
            "dplp_diagnostics": "dplp_diagnostics"}

# The paired references, in column order: the paper's baseline (Label Bank
# pseudo labels) and training on the labels alone.
REFS = ("baseline", "labels_only")
PAPER_HEAD = "paper, C10-1000 (Δ vs its baseline)"
# The paper's claims, as (claim, row, reference row): row below reference.
CLAIMS = (("DNA < baseline", "dna", "baseline"),
          ("DPLP < baseline", "dplp", "baseline"),
          ("DAG < DNA", "dag", "dna"), ("DAG < DPLP", "dag", "dplp"),
          ("DAG < baseline", "dag", "baseline"),
          ("baseline < labels only", "baseline", "labels_only"),
          ("DAG < labels only", "dag", "labels_only"))
PL_KEYS = ["pl_coverage", "pl_acc", "model_acc_on_covered", "pl_acc_all", "model_acc",
           "path_len_q10", "path_len_q50", "path_len_q90"]


# --------------------------------------------------------------------------- #
# What collect computes: tables of cells keyed by column name
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Stat:
    """Mean and sample std of some values (over seeds, or seed-paired
    differences); ``digits``: the decimals they are read to."""
    mean: float | None = None  # None: no values
    std: float | None = None   # None: fewer than two values
    digits: int = 2


# A cell with nothing to show, read '–': a reference row's Δ against its own
# kind, a row the grid lacks.
NA = Stat()


def stat(values: Iterable[float | None], digits: int = 2) -> Stat:
    """The :class:`Stat` of the values that are there."""
    values = [v for v in values if v is not None]
    if not values:
        return Stat(digits=digits)
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(statistics.fmean(values), std, digits)


@dataclass(frozen=True)
class Mean:
    """A mean alone (the per-epoch tables); None where no value."""
    value: float | None
    digits: int = 3


def mean_of(values: Iterable[float | None], digits: int = 3) -> Mean:
    values = [v for v in values if v is not None]
    return Mean(statistics.fmean(values) if values else None, digits)


@dataclass(frozen=True)
class Pair:
    """Two means read side by side (DPLP's accuracy / the Label Bank's)."""
    left: Mean
    right: Mean


@dataclass(frozen=True)
class Counted:
    """A :class:`Stat` with the number of seeds it is over."""
    stat: Stat
    seeds: int


@dataclass(frozen=True)
class PaperError:
    """The paper's ablation error of a row and its Δ to the paper's baseline
    (None: the baseline itself)."""
    error: float
    delta: float | None


@dataclass(frozen=True)
class Table4Cell:
    """A row of one grid in the paper's Table 4: its error, its seed-paired
    Δ to each of :data:`REFS`, and its seeds where fewer than the most."""
    error: Stat
    deltas: tuple[Stat, ...]
    seeds: int
    most: int  # the most seeds of any of the grid's Table 4 rows


@dataclass(frozen=True)
class TestSet:
    """Where test errors were measured: every test image (``full_test``) or
    the runs' own test set of ``size`` images (None: the whole test set)."""
    full: bool
    size: int | None = None


@dataclass(frozen=True)
class Record:
    """A result JSON as the per-seed table names it."""
    grid: str
    row: str
    seed: int
    renamed_from: str | None = None


@dataclass(frozen=True)
class Listed:
    """Values shown as a list (seeds, the arms chosen per seed)."""
    items: tuple


@dataclass
class Table:
    """Rows of cells keyed by column name; ``columns``: their order."""
    columns: list[str]
    rows: list[dict[str, object]] = field(default_factory=list)


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims (:data:`CLAIMS`) read on a grid."""
    claim: str
    verdict: str
    diffs: Stat


@dataclass
class Grid:
    """A results folder with its grid file, each read once: the records by
    row, in display order, with the rows borrowed from other grids."""
    name: str
    dir: Path
    kind: str            # benchmarks.common.GRID_KINDS
    preset: str | None   # for kind: preset
    config: str | None   # the stem of the grid's ``config:`` (its setting)
    rows: dict[str, list[dict]]
    own: list[dict]      # the folder's own records, by file name
    borrowed: dict[str, str]
    pair_with: dict[str, str]
    compare: dict[str, str]
    legacy: tuple[str, ...]


@dataclass
class Headline:
    """A grid's table on RESULTS.md and what its note says."""
    grid: str
    full: bool                  # every record has full_test: read those
    full_sizes: list[int]       # their test sets' sizes
    own_sizes: list[int | None]  # else the runs' own test sets (None: whole)
    with_full: int              # records that have full_test
    records: int
    refs: list[str]
    table: Table
    claims: list[Claim] | None  # the paper's ordering, on ablation grids
    published: str | None       # the setting whose published errors it quotes
    recipe: str = ""            # recipe_of its runs


@dataclass
class GridTable:
    """A detail page's table of every column, with each row's command."""
    grid: str
    table: Table
    commands: list[tuple[str, str, str | None]]  # row, seed 0's, whole test set's
    sources: list[Path]  # the grid's folder, then the borrowed rows' stems


@dataclass
class GridPage:
    grid: str
    subset: bool  # some record reads a test subset or has full_test
    table: GridTable
    per_seed: Table
    label_bank: Table | None
    pseudo_labels: Table | None


@dataclass
class GridReport:
    grid: Grid
    headline: Headline
    page: GridPage


@dataclass
class Bench:
    """A speed benchmark's or analysis' result JSON: its tables as recorded."""
    name: str
    path: Path
    tables: list[tuple[str, Table]]  # (the JSON's key, its table)
    machine: dict
    module: str  # the script that wrote it
    args: object  # its recorded arguments


@dataclass
class Report:
    """Everything RESULTS.md and its detail pages show."""
    grids: list[GridReport]  # those with records, by name
    table4: Table | None
    presets: dict[str, Table]  # by preset, in PRESETS' order
    speed: list[Bench]
    speed_names: list[str]  # the speed JSONs there (with tables or not)
    speed_dir: Path
    analyses: list[Bench]
    analysis_dir: Path
    figures: list[Path]
    figures_dir: Path


# --------------------------------------------------------------------------- #
# collect: reading the grids and records
# --------------------------------------------------------------------------- #
def read_grid(grid_dir: Path, grids: Path = GRIDS) -> Grid:
    """A results folder and its grid file (where there is none: a
    ``headline`` grid of no known setting, its rows in the files' order)."""
    path = grids / f"{grid_dir.name}.yaml"
    spec = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    try:
        kind, preset = grid_kind(spec)
    except ValueError as e:
        raise SystemExit(f"grid '{path}': {e}") from None
    own = [json.loads(p.read_text()) for p in sorted(grid_dir.glob("*__seed*.json"))]
    rows, borrowed = _rows(grid_dir, spec, own)
    return Grid(name=grid_dir.name, dir=grid_dir, kind=kind, preset=preset,
                config=Path(spec["config"]).stem if spec.get("config") else None,
                rows=rows, own=own, borrowed=borrowed,
                # A row's Δ columns compare with "baseline" and "labels_only"
                # unless the grid pairs it with another row of the same kind
                # (``pair_with: {dag_e24: labels_only_e24}``: same schedule).
                pair_with=dict(spec.get("pair_with") or {}),
                compare=dict(spec.get("compare") or {}),
                legacy=tuple(spec.get("legacy") or ()))


def _rows(grid_dir: Path, spec: dict, own: list[dict]
          ) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Result records by row, in the paper's order (labels only, baseline,
    the module rows, DAG; :data:`paper_rows.TABLE4`) and then the grid file's,
    with the rows the grid borrows from another grid (``borrow: {row:
    grid/row}``: the same configuration, run there) filling the seeds not run
    here; and the borrowed rows' sources."""
    rows: dict[str, list[dict]] = {}
    for r in own:
        rows.setdefault(r["row"], []).append(r)
    borrowed: dict[str, str] = {}
    for row, source in (spec.get("borrow") or {}).items():
        seeds = {r["seed"] for r in rows.get(row, [])}
        extra = [json.loads(p.read_text()) for p in sorted(
            (grid_dir.parent / source).parent.glob(f"{Path(source).name}__seed*.json"))]
        extra = [r for r in extra if r["seed"] not in seeds]
        if extra:
            rows.setdefault(row, []).extend(extra)
            borrowed[row] = source
    if spec.get("borrow"):  # sweeps (h0 h1 h2, k2 k4 k8 k16): numeric order
        def key(name: str) -> tuple:
            digits = "".join(c for c in name if c.isdigit() or c == ".")
            first = ("labels_only", "baseline")  # TABLE4's order
            return (name not in first, first.index(name) if name in first else 0,
                    name.rstrip("0123456789."),
                    float(digits) if digits.strip(".") else 0.0)
        return dict(sorted(rows.items(), key=lambda kv: key(kv[0]))), borrowed
    if spec:
        order = [*TABLE4, *PAPER_ROWS, *spec["rows"]]
        rows = dict(sorted(rows.items(), key=lambda kv: order.index(kv[0])
                           if kv[0] in order else len(order)))
    return rows, borrowed


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
            key: Callable[[dict], float | None]) -> list[Stat]:
    """A row's seed-paired Δ of ``key`` to each reference (:data:`NA` for a
    reference row against its own kind)."""
    return [NA if row == ref or row in pair_with.values() else stat(_paired(
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


def _error(runs: list[dict]) -> Callable[[dict], float | None]:
    """The test error the runs are compared by: on the whole test set where
    every one has it, else on their own test sets."""
    return _full if all(_full(r) is not None for r in runs) else _own


def _paired(runs: list[dict], base: dict[int, float], key) -> list[float]:
    return [key(r) - base[r["seed"]] for r in runs
            if r["seed"] in base and key(r) is not None]


def _by_seed(runs: list[dict], key: Callable[[dict], float | None]
             ) -> dict[int, float]:
    return {r["seed"]: key(r) for r in runs if key(r) is not None}


def _num_test(run: dict) -> int | None:
    """The size of a run's own test set as its config gives it (None: all)."""
    return run["summary"].get("config", {}).get("data", {}).get("num_test")


def _row_name(row: str, borrowed: dict[str, str], pair_with: dict[str, str]) -> str:
    name = f"{row} (= {borrowed[row]})" if row in borrowed else row
    if row in PAPER_ROWS and PAPER_ROWS[row][0].lower().replace(" ", "_") != row:
        name += f" ({PAPER_ROWS[row][0]})"
    if row in pair_with:
        name += f" (Δ vs {pair_with[row]})"
    return name


def _paper_error(row: str) -> PaperError | None:
    """The paper's ablation error of a row (None: not quoted)."""
    errors = PAPER_ABLATION["errors"]
    if row not in errors:
        return None
    return PaperError(errors[row], None if row == "baseline"
                      else errors[row] - errors["baseline"])


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


def claims(rows: dict[str, list[dict]], err) -> list[Claim]:
    """Each of the paper's claims (:data:`CLAIMS`) whose rows the grid has."""
    out = []
    for claim, row, ref in CLAIMS:
        if row in rows and ref in rows:
            diffs = _paired(rows[row], _by_seed(rows[ref], err), err)
            out.append(Claim(claim, verdict(diffs), stat(diffs)))
    return out


# --------------------------------------------------------------------------- #
# collect: RESULTS.md's tables
# --------------------------------------------------------------------------- #
def collect_headline(grid: Grid) -> Headline | None:
    """A grid's rows (but its legacy ones), mean ± std over seeds, and their
    seed-paired Δ to the paper's baseline and to training on the labels
    alone: on the whole test set where every record has ``full_test``, else
    on the runs' own test set. A grid of the paper's ablation rows (labels
    only, baseline, DAG) also gets the paper's numbers beside and whether the
    paper's ordering holds. None: the grid has no records."""
    rows = {r: v for r, v in grid.rows.items() if r not in grid.legacy}
    runs_all = [r for runs in rows.values() for r in runs]
    if not runs_all:
        return None
    err = _error(runs_all)
    has_val = any(_val(r) is not None for r in runs_all)
    paper = {row: PAPER[grid.config] for row in rows
             if (row == "dag" or grid.borrowed.get(row, "").endswith("/dag"))
             and grid.config in PAPER}
    refs = [ref for ref in REFS if ref in rows]
    ablation = all(r in rows for r in ("labels_only", "baseline", "dag"))
    # A second reference (``compare: {dagplus: dag}``): Δ to it, by seed.
    compare = {row: other for row, other in grid.compare.items() if other in rows}
    others = sorted(set(compare.values()))
    delta_cols = [f"Δ vs {ref} (paired)" for ref in refs]
    other_cols = [f"Δ vs {other} (paired)" for other in others]
    val_cols = [f"Δ val vs {ref} (paired)" for ref in refs]
    table = Table(["row", "seeds", "test error %", *delta_cols, *other_cols]
                  + (["val error % (last)", *val_cols] if has_val else [])
                  + (["paper (400 epochs)"] if paper else [])
                  + ([PAPER_HEAD] if ablation else []))
    for row, runs in rows.items():
        cells = {"row": _row_name(row, grid.borrowed, grid.pair_with),
                 "seeds": len(runs), "test error %": stat(err(r) for r in runs)}
        cells.update(zip(delta_cols, _deltas(row, runs, refs, rows, grid.pair_with,
                                             err), strict=True))
        for other, col in zip(others, other_cols, strict=True):
            cells[col] = (stat(_paired(runs, _by_seed(rows[other], err), err))
                          if compare.get(row) == other else NA)
        if has_val:
            cells["val error % (last)"] = stat(_val(r) for r in runs)
            cells.update(zip(val_cols, _deltas(row, runs, refs, rows,
                                               grid.pair_with, _val), strict=True))
        if paper:
            cells["paper (400 epochs)"] = paper.get(row)
        if ablation:
            cells[PAPER_HEAD] = _paper_error(row)
        table.rows.append(cells)
    published = (grid.config if grid.config in PUBLISHED
                 and grid.kind != "validation" else None)
    return Headline(
        grid=grid.name, full=err is _full,
        full_sizes=(sorted({r["full_test"]["num_test"] for r in runs_all})
                    if err is _full else []),
        own_sizes=list(dict.fromkeys(_num_test(r) for r in runs_all)),
        with_full=sum(_full(r) is not None for r in runs_all),
        records=len(runs_all), refs=refs, table=table,
        claims=claims(rows, err) if ablation else None,
        published=published,
        recipe=recipe_of(rows, grid.borrowed) if published and runs_all else "")


def _grid_link(name: str) -> str:
    return f"[{name}](details/{name}.md)"


def collect_table4(grids: list[Grid]) -> Table | None:
    """The paper's Table 4 at our scale: one column per ablation grid (those
    with labels_only, baseline and dag rows), its rows labels only |
    baseline | DNA | DPLP | DAG; each cell the test error and its paired Δ
    to the paper's baseline and to the labels alone; the paper's own column
    beside."""
    cols = []
    for grid in grids:
        rows = grid.rows
        if all(r in rows for r in ("labels_only", "baseline", "dag")):
            err = _error([r for row in TABLE4 for r in rows.get(row, [])])
            cols.append((_grid_link(grid.name), rows, err))
    if not cols:
        return None
    table = Table(["row", *[col for col, _, _ in cols], PAPER_HEAD])
    for row in TABLE4:
        cells: dict[str, object] = {"row": PAPER_ROWS[row][0]}
        for col, rows, err in cols:
            if row not in rows:
                cells[col] = NA
                continue
            deltas = tuple(stat(_paired(rows[row], _by_seed(rows[ref], err), err))
                           if ref != row else NA for ref in REFS)
            cells[col] = Table4Cell(stat(err(r) for r in rows[row]), deltas,
                                    len(rows[row]),
                                    max(len(rows[r]) for r in TABLE4 if r in rows))
        cells[PAPER_HEAD] = _paper_error(row)
        table.rows.append(cells)
    return table


def collect_presets(grids: list[Grid]) -> dict[str, Table]:
    """One table per preset (:data:`PRESETS`) that has a line, one line per
    preset grid (``compare: {preset row: reference}``): labels only, the
    paper's baseline, the reference (the paper's DAG) and the preset, mean ±
    std over seeds, and the preset's seed-paired Δ to each."""
    out = {}
    for preset, (label, _) in PRESETS.items():
        table = Table(["grid", "seeds", "test set", "labels only", "baseline",
                       "DAG (paper)", label, f"Δ {label} vs baseline",
                       f"Δ {label} vs labels only", f"Δ {label} vs DAG",
                       "Δ DAG vs baseline",
                       *(["chosen arm (seeds)"] if preset == "auto" else [])])
        for grid in grids:
            if grid.preset == preset:
                table.rows += _preset_lines(grid, label)
        if table.rows:
            out[preset] = table
    return out


def _preset_lines(grid: Grid, label: str) -> list[dict[str, object]]:
    return [line for preset, ref in grid.compare.items()
            if (line := _preset_line(grid, label, preset, ref)) is not None]


def _preset_line(grid: Grid, label: str, preset: str, ref: str
                 ) -> dict[str, object] | None:
    """A preset row against its reference and :data:`REFS` (None: the grid
    lacks one of them)."""
    rows = grid.rows
    if any(r not in rows for r in (preset, ref, *REFS)):
        return None
    err = _error([r for row in (preset, ref, *REFS) for r in rows[row]])
    errors = {row: stat(err(r) for r in rows[row])
              for row in ("labels_only", "baseline", ref, preset)}
    by_seed = {row: _by_seed(rows[row], err) for row in (ref, *REFS)}
    line: dict[str, object] = {
        "grid": _grid_link(grid.name),
        "seeds": Listed(tuple(sorted(_by_seed(rows[preset], err)))),
        "test set": TestSet(err is _full, _num_test(rows[preset][0])),
        "labels only": errors["labels_only"], "baseline": errors["baseline"],
        "DAG (paper)": errors[ref], label: errors[preset],
        f"Δ {label} vs baseline": stat(_paired(rows[preset], by_seed["baseline"],
                                               err)),
        f"Δ {label} vs labels only": stat(_paired(rows[preset],
                                                  by_seed["labels_only"], err)),
        f"Δ {label} vs DAG": stat(_paired(rows[preset], by_seed[ref], err)),
        "Δ DAG vs baseline": stat(_paired(rows[ref], by_seed["baseline"], err))}
    arms = _choices(rows[preset])
    if arms is not None:
        line["chosen arm (seeds)"] = arms
    return line


def _choices(runs: list[dict]) -> Listed | None:
    """``method: auto``'s chosen arm per seed (None for other presets)."""
    chosen = [(r["seed"], r["summary"]["auto"]["arm"]) for r in runs
              if "auto" in r.get("summary", {})]
    return Listed(tuple(arm for _, arm in sorted(chosen))) if chosen else None


# --------------------------------------------------------------------------- #
# collect: details/<grid>.md
# --------------------------------------------------------------------------- #
def collect_grid_table(grid: Grid) -> GridTable:
    """Every row (the legacy ones marked) with every column the records
    have, and each row's command."""
    rows, pair_with = grid.rows, grid.pair_with
    runs_all = [r for runs in rows.values() for r in runs]
    has_val = any(_val(r) is not None for r in runs_all)
    has_drift = any(_last(r, "knn_kept") is not None for r in runs_all)
    has_live = any(_last(r, "live_bank_cos") is not None for r in runs_all)
    has_admit = any((_last(r, "pl_admitted") or 1.0) < 1.0 for r in runs_all)
    has_targets = any(_last(r, "pl_acc_all") is not None for r in runs_all)
    full = sorted({r["full_test"]["num_test"] for r in runs_all if "full_test" in r})
    refs = [ref for ref in REFS if ref in rows]
    own_cols = [f"Δ vs {ref} (paired by seed)" for ref in refs]
    # The grid's second reference (``compare: {row: other}``), as the headline.
    compare = {row: other for row, other in grid.compare.items() if other in rows}
    other_cols = {other: f"Δ vs {other} (paired by seed)"
                  for other in sorted(set(compare.values()))}
    n = "/".join(f"{v:,}" for v in full)
    full_col = f"test error % on all {n} (seeds)"
    full_cols = [f"Δ vs {ref} on all {n} (paired)" for ref in refs]
    val_cols = [f"Δ val vs {ref} (paired)" for ref in refs]
    table = Table(
        ["row", "seeds", "test error % (last)", "test error % at best val", *own_cols,
         *other_cols.values()]
        # eval_full_test.py: the same checkpoints, every test image
        + ([full_col, *full_cols] if full else [])
        + (["val error % (last)", *val_cols] if has_val else [])
        # Covered: reached by DPLP's paths or the diffusion (pseudo_label.source).
        + ["propagated coverage", "propagated acc. on covered",
           "model acc. on covered"]
        + (["targets right (last)"] if has_targets else [])
        + (["bank cos to previous (last)", "kNN kept (last)"] if has_drift else [])
        # the live-vs-bank gap
        + (["live-bank cos (mean of epochs)"] if has_live else [])
        + (["pseudo labels admitted (last)"] if has_admit else [])
        + ["s / epoch", "wall s / run"])
    for row, runs in rows.items():
        s = [r["summary"] for r in runs]
        cells: dict[str, object] = {
            "row": _row_name(row, grid.borrowed, pair_with)
            + (" (not a paper row)" if row in grid.legacy else ""),
            "seeds": len(runs),
            "test error % (last)": stat(x["test_error_last"] for x in s),
            "test error % at best val": stat((x.get("best_by_val") or {})
                                             .get("test_error") for x in s)}
        cells.update(zip(own_cols, _deltas(row, runs, refs, rows, pair_with, _own),
                         strict=True))
        for other, col in other_cols.items():
            cells[col] = (stat(_paired(runs, _by_seed(rows[other], _own), _own))
                          if compare.get(row) == other else NA)
        if full:
            have = [r for r in runs if _full(r) is not None]
            cells[full_col] = Counted(stat(_full(r) for r in have), len(have))
            cells.update(zip(full_cols, _deltas(row, have, refs, rows, pair_with,
                                                _full), strict=True))
        if has_val:
            cells["val error % (last)"] = stat(_val(r) for r in runs)
            cells.update(zip(val_cols, _deltas(row, runs, refs, rows, pair_with,
                                               _val), strict=True))
        cells["propagated coverage"] = stat((x.get("pl_coverage_last") for x in s), 3)
        cells["propagated acc. on covered"] = stat((x.get("pl_acc_last") for x in s),
                                                   3)
        cells["model acc. on covered"] = stat(
            (x.get("model_acc_on_covered_last") for x in s), 3)
        if has_drift:
            cells["bank cos to previous (last)"] = stat(
                (_last(r, "bank_cos_prev") for r in runs), 3)
            cells["kNN kept (last)"] = stat((_last(r, "knn_kept") for r in runs), 3)
        if has_live:
            cells["live-bank cos (mean of epochs)"] = stat(
                (_epoch_mean(r, "live_bank_cos") for r in runs), 3)
        if has_targets:
            cells["targets right (last)"] = stat(
                (_last(r, "pl_acc_all") for r in runs), 3)
        if has_admit:
            cells["pseudo labels admitted (last)"] = stat(
                (_last(r, "pl_admitted") for r in runs), 3)
        cells["s / epoch"] = stat((statistics.fmean(
            [m["time_epoch"] for m in r["metrics"] if m.get("phase") == "train"])
            for r in runs), 3)
        # A resumed run's wall_time_s is its last attempt's only.
        whole = [r for r in runs if not r.get("resumed")]
        wall = stat((r["wall_time_s"] for r in whole), 1)
        cells["wall s / run"] = wall if len(whole) == len(runs) \
            else Counted(wall, len(whole))
        table.rows.append(cells)
    commands = []
    for row, runs in rows.items():
        first = min(runs, key=lambda r: r["seed"])
        commands.append((row, first["command"],
                         (first.get("full_test") or {}).get("command")))
    sources = [grid.dir, *[grid.dir.parent / b
                           for b in sorted(set(grid.borrowed.values()))]]
    return GridTable(grid.name, table, commands, sources)


def collect_per_seed(grid: Grid) -> Table:
    """Every record the grid's tables average, one line each."""
    runs_all = [r for runs in grid.rows.values() for r in runs]
    has_full = any(_full(r) is not None for r in runs_all)
    has_val = any(_val(r) is not None for r in runs_all)
    table = Table(["row", "seed", "last epoch", "test error % (own test set)"]
                  + (["test error % (whole test set)"] if has_full else [])
                  + (["val error % (last)"] if has_val else []) + ["record"])
    for row, runs in grid.rows.items():
        source = (grid.borrowed[row].split("/")[0] if row in grid.borrowed
                  else grid.name)
        for r in sorted(runs, key=lambda r: r["seed"]):
            cells: dict[str, object] = {
                "row": row, "seed": r["seed"],
                "last epoch": r["summary"].get("last_epoch"),
                "test error % (own test set)": stat([_own(r)])}
            if has_full:
                cells["test error % (whole test set)"] = stat([_full(r)])
            if has_val:
                cells["val error % (last)"] = stat([_val(r)])
            cells["record"] = Record(r.get("grid", source), r["row"], r["seed"],
                                     r.get("renamed_from"))
            table.rows.append(cells)
    return table


def collect_pseudo_labels(grid: Grid) -> Table | None:
    """Per-epoch pseudo-label quality of the rows whose labels come from DPLP
    or the diffusion (mean over seeds; the grid's own records): coverage,
    accuracy on the covered nodes against the model's own accuracy on them,
    and DPLP's path-length quantiles (logged whatever the source)."""
    rows: dict[str, list[dict]] = {}
    for r in grid.own:
        if r["summary"]["config"]["pseudo_label"]["source"] in ("dplp", "diffusion"):
            rows.setdefault(r["row"], []).append(r)
    if not rows:
        return None
    table = Table(["row", "epoch", "seeds", *PL_KEYS])
    for row, runs in rows.items():
        epochs = sorted({m["epoch"] for r in runs for m in r["metrics"]
                         if m.get("pl_coverage") is not None})
        for e in epochs:
            recs = [m for r in runs for m in r["metrics"] if m["epoch"] == e]
            table.rows.append({"row": row, "epoch": e, "seeds": len(recs),
                               **{key: mean_of(m.get(key) for m in recs)
                                  for key in PL_KEYS}})
    return table


def collect_label_bank(grid: Grid) -> Table | None:
    """Per epoch, mean over seeds, for the paper's rows that train on pseudo
    labels: the accuracy of the targets on every unlabelled node
    (``pl_acc_all``: the Label Bank's own predictions for ``baseline`` and
    ``dna``, DPLP's labels where its paths reach for ``dplp`` and ``dag``)
    and, for the DPLP rows, DPLP's accuracy on the nodes it covers against
    the Label Bank's on the same nodes: what each row teaches, side by side."""
    rows = grid.rows
    shown_rows = [r for r in (*TABLE4, "na_no_density", "lp_l", "gat")
                  if r in rows and any(m.get("pl_acc_all") is not None
                                       for run in rows[r] for m in run["metrics"])]
    if not shown_rows:
        return None
    dplp_rows = [r for r in shown_rows if any(
        m.get("pl_acc") is not None for run in rows[r] for m in run["metrics"])]
    epochs = sorted({m["epoch"] for r in shown_rows for run in rows[r]
                     for m in run["metrics"] if m.get("pl_acc_all") is not None})

    def at(row: str, epoch: int, key: str) -> Mean:
        return mean_of(m.get(key) for run in rows[row] for m in run["metrics"]
                    if m["epoch"] == epoch)

    targets = {r: f"{r}: targets right" for r in shown_rows}
    covered = {r: f"{r}: DPLP / Label Bank on covered" for r in dplp_rows}
    table = Table(["epoch", *targets.values(), *covered.values()])
    for e in epochs:
        table.rows.append({
            "epoch": e, **{col: at(r, e, "pl_acc_all") for r, col in targets.items()},
            **{col: Pair(at(r, e, "pl_acc"), at(r, e, "model_acc_on_covered"))
               for r, col in covered.items()}})
    return table


def collect_grid_page(grid: Grid) -> GridPage:
    subset = any("full_test" in r or _num_test(r) is not None for r in grid.own)
    return GridPage(grid.name, subset, collect_grid_table(grid),
                    collect_per_seed(grid), collect_label_bank(grid),
                    collect_pseudo_labels(grid))


# --------------------------------------------------------------------------- #
# collect: speed benchmarks, analyses, figures; everything
# --------------------------------------------------------------------------- #
def collect_bench(name: str, results: Path = SPEED_RESULTS,
                  module: str | None = None) -> Bench | None:
    """A benchmark JSON's tables (None: no JSON, or no table in it)."""
    path = results / f"{name}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    tables = []
    for key in ("rows", "training", "collectives", "refresh", "sampling",
                "training_step"):
        rows = data.get(key)
        if rows:  # its columns: every key of a row but the nested ones
            tables.append((key, Table(list(dict.fromkeys(
                k for r in rows for k in r if not isinstance(r[k], dict))), rows)))
    if not tables:
        return None
    return Bench(name, path, tables, data.get("machine", {}),
                 module or f"benchmarks.speed.{SPEED_SCRIPTS.get(name, name)}",
                 data.get("args") or data.get("config"))


def collect(results: Path = RESULTS, grids: Path = GRIDS,
            speed: Path = SPEED_RESULTS, analysis: Path = ANALYSIS_RESULTS,
            figures: Path = FIGURES) -> Report:
    """Reads every grid (its file once) and result JSON and computes every
    number the pages show."""
    reports = []
    for grid_dir in sorted(d for d in results.iterdir() if d.is_dir()):
        grid = read_grid(grid_dir, grids)
        headline = collect_headline(grid)
        if headline is not None:
            reports.append(GridReport(grid, headline, collect_grid_page(grid)))
    of_kind = {kind: [g.grid for g in reports if g.grid.kind == kind]
               for kind in ("headline", "preset")}
    benches = [collect_bench(name, speed) for name in SPEED]
    analyses = [collect_bench(name, analysis, f"benchmarks.analysis.{script}")
                for name, script in ANALYSES.items()]
    return Report(
        grids=reports, table4=collect_table4(of_kind["headline"]),
        presets=collect_presets(of_kind["preset"]),
        speed=[b for b in benches if b is not None],
        speed_names=[n for n in SPEED if (speed / f"{n}.json").exists()],
        speed_dir=speed, analyses=[b for b in analyses if b is not None],
        analysis_dir=analysis, figures=sorted(figures.glob("*.png")),
        figures_dir=figures)


# --------------------------------------------------------------------------- #
# render: formatting only
# --------------------------------------------------------------------------- #
def shown(path: Path) -> str:
    """A path as the pages show it: from the repository root where inside."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _test_set(size: int | None) -> str:
    return "the whole test set" if size is None else f"a {size:,}-image test subset"


def cell(value: object) -> str:
    """A table cell's text."""
    if value is None:
        return ""
    if isinstance(value, Stat):
        if value.mean is None:
            return "–"
        text = f"{value.mean:.{value.digits}f}"
        return text if value.std is None else f"{text} ± {value.std:.{value.digits}f}"
    if isinstance(value, Mean):
        return "–" if value.value is None else f"{value.value:.{value.digits}f}"
    if isinstance(value, Pair):
        return f"{cell(value.left)} / {cell(value.right)}"
    if isinstance(value, Counted):
        return f"{cell(value.stat)} ({value.seeds})"
    if isinstance(value, PaperError):
        return (f"{value.error:.2f}" if value.delta is None
                else f"{value.error:.2f} ({value.delta:+.2f})")
    if isinstance(value, Table4Cell):
        short = (f", {value.seeds} of {value.most} seeds"
                 if value.seeds < value.most else "")
        return (f"{cell(value.error)} "
                f"({' / '.join(cell(d) for d in value.deltas)}{short})")
    if isinstance(value, TestSet):
        return "all test images (`full_test`)" if value.full else _test_set(value.size)
    if isinstance(value, Record):
        return f"`{value.grid}/{value.row}__seed{value.seed}.json`" + (
            f" (row `{value.renamed_from}` until the rows took the paper's names)"
            if value.renamed_from else "")
    if isinstance(value, Listed):
        return ", ".join(map(str, value.items))
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def render_table(table: Table, fmt: Callable[[object], str] = cell) -> list[str]:
    """A markdown table; a column a row lacks stays empty."""
    # Rows are keyed by column name: two columns of one name would be one.
    assert len(set(table.columns)) == len(table.columns), table.columns
    return (["| " + " | ".join(table.columns) + " |",
             "|" + "---|" * len(table.columns)]
            + ["| " + " | ".join(fmt(row[c]) if c in row else "" for c in table.columns)
               + " |" for row in table.rows])


def render_ordering(found: list[Claim]) -> str:
    """One line: each of the paper's claims on a grid."""
    parts = [f"{c.claim}: **{c.verdict}** ({cell(c.diffs)})" for c in found]
    return ("The paper's ordering, paired by seed (holds: mean + std of the "
            "paired Δ below 0; reversed: mean − std above 0): "
            + "; ".join(parts) + ".")


def render_headline(h: Headline, details: str | None = None) -> list[str]:
    if h.full:
        sizes = "/".join(f"{v:,}" for v in h.full_sizes)
        where = f"on all {sizes} test images (`full_test`)"
    else:
        kinds = sorted({_test_set(n) for n in h.own_sizes})
        where = f"on the runs' own test set ({' / '.join(kinds)}; no `full_test`)"
        if h.with_full:
            where += f"; {h.with_full} of {h.records} records have `full_test`"
    note = f"Test error % {where}"
    note += (f"; Δ: minus the {' / '.join(h.refs)} row, paired by seed (negative: "
             "better)" if h.refs else "; no reference row")
    if details:
        note += f". Details, per seed, commands: [{details}]({details})"
    lines = [f"### {h.grid}", note + ".", "", *render_table(h.table)]
    if h.claims is not None:
        lines += ["", render_ordering(h.claims)]
    if h.published:
        quoted = "; ".join(f"{m} {e} % ({w})" for m, e, w in PUBLISHED[h.published])
        lines += ["", f"Published in this setting (quoted from the papers, not "
                  f"re-run): {quoted}. "
                  f"{PUBLISHED_GAP[h.published].format(recipe=h.recipe)}."]
    return lines + [""]


def render_table4(table: Table | None) -> list[str]:
    if table is None:
        return []
    return ["### The paper's Table 4 at CPU scale",
            "Test error % (mean ± std over seeds; whole test sets), then in "
            "brackets the seed-paired Δ to the paper's baseline / to the "
            "labels alone (negative: better). The paper's baseline trains every "
            "unlabelled image on its Label Bank entry (the model's own "
            "prediction), with Eq. 2 and mixup; DNA and DPLP each add one module "
            "to it, DAG both (definitions: README, `paper_rows.py`). Each grid's "
            "own table below has the other rows and whether the paper's ordering "
            "holds.", "",
            # None only in the paper's column: a cell the paper's quote lacks
            *render_table(table, lambda v: "not quoted" if v is None else cell(v)),
            "", f"Paper's column: {PAPER_ABLATION['setting']}; "
            f"{PAPER_ABLATION['missing']}", ""]


def render_presets(tables: dict[str, Table]) -> list[str]:
    out = []
    for preset, table in tables.items():
        label, what = PRESETS[preset]
        out += [f"### {label} against the paper's DAG, its baseline and the "
                "labels alone",
                f"Test error %, mean ± std over seeds; Δ paired by seed "
                f"(negative: {label} better). Baseline: the paper's (Label Bank "
                f"pseudo labels, Eq. 2, mixup); {what}; the paper's DAG stays "
                "the default.", "", *render_table(table), ""]
    return out


def render_grid_table(t: GridTable) -> list[str]:
    lines = [f"### {t.grid}", "", *render_table(t.table)]
    lines += ["", "Commands (seed 0 of each row; the other seeds differ in "
              "`seed` and the run folder only):", ""]
    for row, command, full in t.commands:
        lines.append(f"- `{row}`: `{command}`"
                     + (f"; whole test set: `{full}`" if full else ""))
    own, *borrowed = t.sources
    sources = ", ".join([f"`{shown(own)}/*.json`"]
                        + [f"`{shown(b)}__seed*.json`" for b in borrowed])
    lines.append(f"\nSource: {sources}.\n")
    return lines


def render_per_seed(grid: str, table: Table) -> list[str]:
    return [f"#### {grid}: every seed", "", *render_table(table), ""]


def render_pseudo_labels(grid: str, table: Table | None) -> list[str]:
    if table is None:
        return []
    return [f"#### {grid}: propagated pseudo labels per epoch (mean over seeds)",
            "", *render_table(table),
            "", "pl_acc: the accuracy of DPLP's labels (the diffusion's, for rows "
            "with pseudo_label.source: diffusion) on the unlabelled nodes they "
            "cover; model_acc_on_covered: the Label Bank's (the model's) accuracy "
            "on the same nodes; *_all: on every unlabelled node; path_len_*: "
            "DPLP's paths, whatever the source.", ""]


def render_label_bank(grid: str, table: Table | None) -> list[str]:
    if table is None:
        return []
    return [f"#### {grid}: what each row teaches, per epoch (mean over seeds)", "",
            *render_table(table), "", "targets right: the share of unlabelled "
            "nodes whose training target (Label Bank prediction, or DPLP's label "
            "where it covers the node) is the true class (`pl_acc_all`).", ""]


TIMING_NOTE = (
    "Grid runs use 1 thread each and ran two at a time beside other jobs, some "
    "paused while benchmarks ran: their seconds per epoch and wall times are "
    "not comparable across rows; `bench_epoch` (speed benchmarks) measures the "
    "rows back to back on a quiet machine. A resumed run's wall time is its "
    "last attempt's only: `wall s / run` leaves resumed runs out (the number "
    "of runs it is over in brackets, where it left any out).")
SUBSET_NOTE = (
    "CIFAR-10 CPU runs train and report on a 1,000-image test subset (about "
    "±1.6 points of sampling noise per run at 50 % error). The columns 'on all "
    "10,000' classify every CIFAR-10 test image with the same final "
    "checkpoints (`python -m benchmarks.analysis.eval_full_test GRID`, i.e. "
    "`dag-pyg eval RUN --num-test all`; the number of seeds re-evaluated in "
    "brackets): the paired differences there are the ones to read.")


def render_grid_page(page: GridPage) -> list[str]:
    notes = [TIMING_NOTE, ""] + ([SUBSET_NOTE, ""] if page.subset else [])
    return [f"# {page.grid}: details", "",
            "Generated by `python -m benchmarks.experiments.make_results`; do not "
            "edit by hand. Headline: [RESULTS.md](../RESULTS.md).", "", *notes,
            *render_grid_table(page.table), *render_per_seed(page.grid, page.per_seed),
            *render_label_bank(page.grid, page.label_bank),
            *render_pseudo_labels(page.grid, page.pseudo_labels)]


def command(module: str, args: object) -> str:
    """The command that wrote a benchmark JSON, from its recorded arguments."""
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


def _bench_cell(v: object) -> str:
    if isinstance(v, list):
        v = "[" + ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x)
                            for x in v) + "]"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render_bench(bench: Bench | None) -> list[str]:
    if bench is None:
        return []
    lines = [f"### {bench.name}", ""]
    for key, table in bench.tables:
        if key != "rows":
            lines += [f"{key}:", ""]
        lines += [*render_table(table, _bench_cell), ""]
    m = bench.machine
    return lines + [f"Machine: {m.get('processor') or m.get('platform')}, "
                    f"{m.get('cpus')} CPUs, torch {m.get('torch')}. Command: "
                    f"{command(bench.module, bench.args)}. Source: "
                    f"`{shown(bench.path)}`.", ""]


def _page(title: str, body: list[str]) -> list[str]:
    return [f"# {title}", "", "Generated by `python -m "
            "benchmarks.experiments.make_results`; do not edit by hand. "
            "Headline: [RESULTS.md](../RESULTS.md).", "", *body]


def _link(target: Path, page_dir: Path) -> str:
    return Path(os.path.relpath(target.resolve(), page_dir.resolve())).as_posix()


def render(report: Report, details: Path) -> tuple[list[str], dict[str, list[str]]]:
    """RESULTS.md's lines and the detail pages' (by name; pages in
    ``details``, which figure links are relative to)."""
    pages = {g.grid.name: render_grid_page(g.page) for g in report.grids}
    # One line of links per kind: the page stays one page as grids accrue.
    joined = {kind: ", ".join(_grid_link(g.grid.name) for g in report.grids
                              if g.grid.kind == kind)
              for kind in ("sweep", "validation")}
    links = {kind: [line] if line else [] for kind, line in joined.items()}
    # Test-split grids of their own table; choices made on a validation split
    # and sweeps of one switch are linked, so the page stays one page.
    heads = [line for g in report.grids if g.grid.kind == "headline"
             for line in render_headline(g.headline, f"details/{g.grid.name}.md")]
    others: list[str] = []
    if report.speed:
        pages["speed"] = _page("Speed benchmarks", [
            line for bench in report.speed for line in render_bench(bench)])
        others.append(f"- [Speed benchmarks](details/speed.md): "
                      f"{', '.join(report.speed_names)} "
                      f"(`{shown(report.speed_dir)}/`).")
    for bench in report.analyses:
        pages[bench.name] = _page(bench.name, render_bench(bench))
        others.append(f"- [{bench.name}](details/{bench.name}.md) "
                      f"(`{shown(report.analysis_dir)}/{bench.name}.json`).")
    if report.figures:
        pages["figures"] = _page("Figures", [
            f"Written by `python -m benchmarks.analysis.figures`; "
            f"`{shown(report.figures_dir)}/`.", "",
            *[f"![{p.stem}]({_link(p, details)})\n" for p in report.figures]])
        others.append(f"- [Figures](details/figures.md): "
                      f"{', '.join(p.stem for p in report.figures)}.")
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
            "## Experiment grids", "", *render_table4(report.table4),
            *render_presets(report.presets), *heads,
            *(["## Sweeps of one switch (test split; tables on their pages)", "",
               *links["sweep"], ""] if links["sweep"] else []),
            *(["## Validation grids (settings chosen there, not test results)",
               "", *links["validation"], ""] if links["validation"] else []),
            "## Speed, analyses, figures", "", *others], pages


# --------------------------------------------------------------------------- #
# One table of one grid folder (collect, then render), as the tests read them
# --------------------------------------------------------------------------- #
def headline_table(grid_dir: Path, grids: Path = GRIDS,
                   details: str | None = None) -> list[str]:
    headline = collect_headline(read_grid(grid_dir, grids))
    return [] if headline is None else render_headline(headline, details)


def table4(grid_dirs: list[Path], grids: Path = GRIDS) -> list[str]:
    return render_table4(collect_table4([read_grid(d, grids) for d in grid_dirs]))


def preset_table(grid_dirs: list[Path], grids: Path = GRIDS) -> list[str]:
    return render_presets(collect_presets([read_grid(d, grids) for d in grid_dirs]))


def grid_table(grid_dir: Path, grids: Path = GRIDS) -> list[str]:
    return render_grid_table(collect_grid_table(read_grid(grid_dir, grids)))


def per_seed_table(grid_dir: Path, grids: Path = GRIDS) -> list[str]:
    return render_per_seed(grid_dir.name, collect_per_seed(read_grid(grid_dir, grids)))


def label_bank_table(grid_dir: Path, grids: Path = GRIDS) -> list[str]:
    return render_label_bank(grid_dir.name,
                             collect_label_bank(read_grid(grid_dir, grids)))


def write_pages(results: Path, out: Path, speed: Path = SPEED_RESULTS,
                analysis: Path = ANALYSIS_RESULTS, figures: Path = FIGURES,
                grids: Path = GRIDS) -> list[str]:
    """Writes the detail pages beside ``out`` and returns RESULTS.md's lines."""
    details = out.parent / "details"
    details.mkdir(parents=True, exist_ok=True)
    lines, pages = render(collect(results, grids, speed, analysis, figures), details)
    for name, page in pages.items():
        (details / f"{name}.md").write_text("\n".join(page) + "\n")
    return lines


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
