r"""PNG plots of a run: training curves from ``metrics.jsonl`` records and the
histogram of DPLP path lengths (the paper's Fig. 5).

Matplotlib is imported inside the functions, so importing this module costs
nothing. Figures are drawn on an Agg canvas through
:class:`matplotlib.figure.Figure` rather than :mod:`matplotlib.pyplot`: no
global backend switch (a notebook's backend stays as it is) and no figure
kept alive in pyplot's registry.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Panels of plot_curves: (title, y label, explicit keys, key prefix).
_PANELS: list[tuple[str, str, tuple[str, ...], str | None]] = [
    ("Error", "error (%)", ("test_error", "val_error"), None),
    ("Training losses", "loss", (), "loss"),
    ("Pseudo-labels on the unlabelled set", "fraction",
     ("pl_acc", "pl_coverage", "model_acc_on_covered", "pl_acc_all",
      "model_acc"), None),
    ("DPLP path length (nodes)", "nodes", (), "path_len_"),
    ("Time per phase", "seconds", (), "time_"),
]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _number(value: Any) -> float | None:
    # None (a non-finite value in metrics.jsonl), strings and bools are gaps.
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _series(records: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        x, y = _number(r.get("epoch")), _number(r.get(key))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def plot_curves(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    r"""Plots a run's per-epoch curves into one PNG.

    Panels, each drawn only if at least one of its keys has a finite value:
    error (``test_error``, ``val_error``, plotted as given, i.e. in percent),
    training losses (keys starting with ``loss``), pseudo-labels on the
    unlabelled set (``pl_acc``, ``pl_coverage``, ``model_acc_on_covered``,
    ``pl_acc_all``, ``model_acc``), DPLP path length (keys starting with
    ``path_len_``) and time per phase (keys starting with ``time_``). Records
    without a numeric ``epoch`` are ignored; :obj:`None` and non-finite values
    are gaps. With nothing to draw, the PNG says so.

    Args:
        records (Sequence[dict]): Metrics records, e.g. from
            :func:`dag_pyg.train.logger.read_metrics`.
        path (str or os.PathLike): The PNG file; parents are created.

    Returns:
        Path: :obj:`path`.
    """
    all_keys: list[str] = []
    for r in records:
        all_keys.extend(k for k in r if k not in all_keys)

    panels = []
    for title, ylabel, keys, prefix in _PANELS:
        chosen = [k for k in keys if k in all_keys]
        if prefix is not None:
            chosen += sorted(k for k in all_keys if k.startswith(prefix))
        lines = [(k, *_series(records, k)) for k in chosen]
        lines = [line for line in lines if line[1]]
        if lines:
            panels.append((title, ylabel, lines))

    if not panels:
        fig = _figure(6, 3)
        fig.text(0.5, 0.5, "no metrics to plot", ha="center", va="center")
        return _save(fig, path)

    ncols = 1 if len(panels) == 1 else 2
    nrows = math.ceil(len(panels) / ncols)
    fig = _figure(6.0 * ncols, 3.6 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (title, ylabel, lines) in zip(axes, panels, strict=False):
        for key, xs, ys in lines:
            # Markers keep single-epoch series (e.g. a short run) visible.
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None,
                    markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return _save(fig, path)


def plot_path_lengths(lengths: torch.Tensor | np.ndarray | Sequence[int] | None,
                      path: str | os.PathLike, title: str | None = None) -> Path:
    r"""Plots the histogram of DPLP path lengths (the paper's Fig. 5): the
    number of nodes on each density-ascending path, one bar per integer
    length, with the mean and median marked.

    Args:
        lengths (torch.Tensor or np.ndarray or Sequence[int]): One length per
            path (any shape; flattened). :obj:`None` or empty draws a note.
        path (str or os.PathLike): The PNG file; parents are created.
        title (str, optional): The figure title. (default: :obj:`None`)

    Returns:
        Path: :obj:`path`.
    """
    if isinstance(lengths, torch.Tensor):
        lengths = lengths.detach().cpu().numpy()
    values = np.asarray([] if lengths is None else lengths).reshape(-1)
    values = values[np.isfinite(values)].astype(np.int64) if values.size else values

    fig = _figure(6.4, 4.0)
    ax = fig.subplots()
    ax.set_title(title or "DPLP path lengths")
    ax.set_xlabel("nodes on the path")
    ax.set_ylabel("paths")
    if values.size == 0:
        ax.text(0.5, 0.5, "no paths", ha="center", va="center",
                transform=ax.transAxes)
        return _save(fig, path)

    from matplotlib.ticker import MaxNLocator

    lo, hi = int(values.min()), int(values.max())
    counts = np.bincount(values - lo, minlength=hi - lo + 1)
    ax.bar(np.arange(lo, hi + 1), counts, width=0.9, color="tab:blue")
    mean, median = float(values.mean()), float(np.median(values))
    ax.axvline(mean, color="tab:red", linestyle="--", label=f"mean {mean:.2f}")
    ax.axvline(median, color="tab:green", linestyle=":",
               label=f"median {median:g}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(lo - 0.75, hi + 0.75)
    ax.legend(title=f"{values.size} paths", fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)
