"""Shared helpers of the benchmark scripts: where each kind writes, timing,
tables, JSON output."""
from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
# Where each kind of script reads and writes; all committed but RUNS.
SPEED_RESULTS = BENCHMARKS / "speed" / "results"             # bench_*.json
GRIDS = BENCHMARKS / "experiments" / "grids"                 # <grid>.yaml
EXPERIMENT_RESULTS = BENCHMARKS / "experiments" / "results"  # <grid>/*.json
ANALYSIS_RESULTS = BENCHMARKS / "analysis" / "results"       # <script>.json
FIGURES = BENCHMARKS / "analysis" / "figures"                # *.png
RUNS = BENCHMARKS / "runs"                                   # run folders (ignored)

# Where RESULTS.md shows a grid, as its YAML declares it (``kind:``; default
# ``headline``): its own headline table, one line in its preset's table
# (``kind: preset`` with ``preset: NAME``), a link among the sweeps of one
# switch, or a link among the grids whose choices are made on a validation
# split. Declared, not read from the grid's name.
GRID_KINDS = ("headline", "preset", "sweep", "validation")
GRID_PRESETS = ("dagplus", "auto")


def grid_kind(grid: dict) -> tuple[str, str | None]:
    """A grid's declared kind and, for ``kind: preset``, its preset; raises
    ``ValueError`` where either is unknown or ``preset`` comes without
    ``kind: preset``."""
    kind, preset = grid.get("kind", "headline"), grid.get("preset")
    if kind not in GRID_KINDS:
        raise ValueError(f"kind '{kind}' is not one of {', '.join(GRID_KINDS)}")
    if (kind == "preset") != (preset is not None):
        raise ValueError("'kind: preset' and 'preset: NAME' go together")
    if kind == "preset" and preset not in GRID_PRESETS:
        raise ValueError(f"preset '{preset}' is not one of "
                         f"{', '.join(GRID_PRESETS)}")
    return kind, preset


def clustered_features(n: int, d: int, num_classes: int = 10, noise: float = 0.6,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters around random unit centres (a stand-in Feature Bank)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_classes, d, generator=gen),
                                            dim=1)
    y = torch.randint(num_classes, (n,), generator=gen)
    x = centres[y] + noise * torch.randn(n, d, generator=gen) / d**0.5
    return x, y


def timeit(fn: Callable[[], object], repeat: int = 3, warmup: int = 2,
           min_time_s: float = 0.0) -> float:
    """Best wall time of ``repeat`` runs after ``warmup`` runs, in seconds;
    with ``min_time_s``, more runs until the timed ones take that long (a
    call of a few milliseconds needs many tries to find its best on a busy
    machine)."""
    for _ in range(warmup):
        fn()
    best, spent, runs = float("inf"), 0.0, 0
    while runs < repeat or spent < min_time_s:
        t = time.perf_counter()
        fn()
        took = time.perf_counter() - t
        best, spent, runs = min(best, took), spent + took, runs + 1
    return best


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available()
            else None}


def print_table(rows: list[dict], columns: list[str]) -> None:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells))
              for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def write_json(name: str, payload: dict, folder: Path) -> Path:
    """Writes ``folder/<name>.json`` (atomically) with the machine's
    description first; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    payload = {"machine": machine(), **payload}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path


def load_planetoid(root: Path, name: str, cache: Path):
    """``Planetoid(name)``'s graph (public split, row-normalised features) from
    the raw files in ``root/<name>/raw``, processed under ``cache`` so that a
    read-only data folder stays untouched."""
    import shutil

    import torch_geometric.transforms as T
    from torch_geometric.datasets import Planetoid

    raw = Path(root) / name / "raw"
    if not raw.is_dir():
        raise FileNotFoundError(f"no Planetoid raw folder {raw}: pass the folder "
                                f"holding {name}/raw/ind.{name.lower()}.* files")
    shutil.copytree(raw, Path(cache) / name / "raw", dirs_exist_ok=True)
    return Planetoid(str(cache), name, transform=T.NormalizeFeatures())[0]


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def start_peak_rss() -> int | None:
    """Resets this process' resident high-water mark (Linux) and returns the
    resident size it starts from, in KiB; ``None`` where it cannot.

    VmHWM after this reset, not ``ru_maxrss``: the latter keeps the parent's
    peak across fork and exec, so a subprocess would hide its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak RSS (VmHWM), Linux >= 4.0
    except OSError:
        return None
    return _proc_status_kib("VmRSS")


def peak_rss_rise_mib(start: int | None) -> float | None:
    """The rise of the resident high-water mark since :func:`start_peak_rss`,
    in MiB."""
    peak = _proc_status_kib("VmHWM")
    return None if start is None or peak is None else (peak - start) / 1024
