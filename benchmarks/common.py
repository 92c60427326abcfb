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


def clustered_features(n: int, d: int, num_classes: int = 10, noise: float = 0.6,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters around random unit centres (a stand-in Feature Bank)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(num_classes, d, generator=gen),
                                            dim=1)
    y = torch.randint(num_classes, (n,), generator=gen)
    x = centres[y] + noise * torch.randn(n, d, generator=gen) / d**0.5
    return x, y


def timeit(fn: Callable[[], object], repeat: int = 3, warmup: int = 2) -> float:
    """Best wall time of ``repeat`` runs after ``warmup`` runs, in seconds."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
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
