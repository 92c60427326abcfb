import importlib
import math
import struct
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from dag_pyg.train.plots import plot_curves, plot_path_lengths  # noqa: E402

pytestmark = pytest.mark.cpu_only  # files, configs, logs: CPU by nature

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _records(epochs=6):
    out = [{"epoch": -1, "phase": "pretrain", "loss": 2.0, "time_train": 0.5}]
    for e in range(epochs):
        out.append({
            "epoch": e, "phase": "train", "loss": 1.0 / (e + 1),
            "loss_ce": 0.8 / (e + 1), "loss_ent": 0.1, "lr": 0.1,
            "test_error": 30.0 - e, "val_error": None if e == 2 else 31.0 - e,
            "pl_acc": 0.8 + 0.01 * e, "pl_coverage": 0.5,
            "model_acc_on_covered": math.nan, "path_len_mean": 3.2,
            "time_train": 1.0, "time_graph": 0.2, "time_dplp": 0.1,
        })
    return out


def test_plot_curves_all_panels(tmp_path):
    path = plot_curves(_records(), tmp_path / "plots" / "curves.png")
    assert path == tmp_path / "plots" / "curves.png"
    w, h = _png_size(path)
    assert 800 <= w <= 2000 and 600 <= h <= 2000  # 2 columns x 3 rows


def test_plot_curves_missing_keys(tmp_path):
    # Only losses: one panel; no errors, pseudo-labels or times.
    recs = [{"epoch": e, "loss": 1.0 / (e + 1), "note": "x"} for e in range(3)]
    w, h = _png_size(plot_curves(recs, tmp_path / "loss.png"))
    assert 300 <= w <= 1000 and 200 <= h <= 600
    # A key present only as gaps does not get a panel; nothing at all still
    # gives an image.
    recs = [{"epoch": 0, "test_error": None}, {"phase": "x"}]
    _png_size(plot_curves(recs, tmp_path / "empty.png"))
    _png_size(plot_curves([], tmp_path / "none.png"))


def test_plot_path_lengths(tmp_path):
    lengths = torch.tensor([1, 2, 2, 3, 3, 3, 4, 7])
    w, h = _png_size(plot_path_lengths(lengths, tmp_path / "pl.png",
                                       title="digits"))
    assert 300 <= w <= 1500 and 200 <= h <= 1000
    _png_size(plot_path_lengths(np.array([5, 5, 6]), tmp_path / "np.png"))
    _png_size(plot_path_lengths([2], tmp_path / "one.png"))
    _png_size(plot_path_lengths(torch.empty(0, dtype=torch.long),
                                tmp_path / "empty.png"))
    _png_size(plot_path_lengths(None, tmp_path / "none.png"))


def test_import_is_lazy(monkeypatch, tmp_path):
    # With matplotlib unimportable, re-executing the module must still work.
    # Its submodules are blocked too: already loaded (by the tests above), a
    # top-level `from matplotlib.figure import Figure` would take them from
    # sys.modules and pass with the package alone blocked.
    import dag_pyg.train.plots as plots

    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert importlib.reload(plots) is plots
    # The import happens when plotting, and the block holds: plotting is
    # what fails, naming matplotlib, and writes nothing.
    with pytest.raises(ImportError, match="matplotlib"):
        plots.plot_curves(_records(), tmp_path / "curves.png")
    with pytest.raises(ImportError, match="matplotlib"):
        plots.plot_path_lengths([1, 2], tmp_path / "pl.png")
    assert not any(tmp_path.iterdir())


def test_drift_figure_from_metrics(tmp_path):
    import json

    figures = importlib.import_module("benchmarks.analysis.figures")
    runs = []
    for i in range(2):
        run = tmp_path / "g" / f"row{i}" / "seed0"
        run.mkdir(parents=True)
        recs = [{"epoch": 0, "phase": "pretrain"}] + [
            {"epoch": e, "knn_kept": 0.2 + 0.1 * e, "bank_cos_prev": 0.9}
            for e in range(1, 5)]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
        runs.append(run)
    out = figures.drift(runs, "t", tmp_path / "fig")
    assert out.name == "drift_t.png" and _png_size(out)[0] > 500
    (runs[0] / "metrics.jsonl").write_text(json.dumps({"epoch": 0}))
    with pytest.raises(SystemExit, match="knn_kept"):
        figures.drift(runs, "t", tmp_path / "fig")


def test_gap_figure_from_metrics(tmp_path):
    import json

    figures = importlib.import_module("benchmarks.analysis.figures")
    run = tmp_path / "g" / "row" / "seed0"
    run.mkdir(parents=True)
    recs = [{"epoch": 0, "phase": "pretrain"}] + [
        {"epoch": e, "phase": "train", "live_bank_cos": 0.5 + 0.1 * e}
        for e in range(1, 4)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    out = figures.gap([run], "t", tmp_path / "fig")
    assert out.name == "gap_t.png" and _png_size(out)[0] > 500
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 0}))
    with pytest.raises(SystemExit, match="live_bank_cos"):
        figures.gap([run], "t", tmp_path / "fig")


def test_schedule_figure_from_results(tmp_path):
    import json

    figures = importlib.import_module("benchmarks.analysis.figures")
    res = tmp_path / "res"

    def write(grid, row, seed, epochs, own, full=None):
        rec = {"row": row, "seed": seed, "summary": {
            "test_error_last": own, "config": {"optim": {"epochs": epochs}}}}
        if full is not None:
            rec["full_test"] = {"num_test": 10000, "test_error": full}
        (res / grid).mkdir(parents=True, exist_ok=True)
        (res / grid / f"{row}__seed{seed}.json").write_text(json.dumps(rec))

    write("short", "labels_only", 0, 8, 50.0, 49.0)
    write("short", "dag", 0, 8, 52.0, 51.0)
    write("short", "dna", 0, 8, 40.0, 40.0)  # other rows are not read
    write("long", "labels_only", 0, 24, 47.0, 46.5)
    write("long", "dag", 0, 24, 46.0, 45.0)
    write("long", "dag", 1, 24, 48.0, 47.0)
    pts, n = figures.schedule_points(["short", "long"], res)
    assert n == 10000
    assert pts == {"labels_only": {8: {0: 49.0}, 24: {0: 46.5}},
                   "dag": {8: {0: 51.0}, 24: {0: 45.0, 1: 47.0}}}
    write("long", "dag", 1, 24, 48.0)  # not re-evaluated: every row falls back
    pts, n = figures.schedule_points(["short", "long"], res)
    assert n is None and pts["dag"][24] == {0: 46.0, 1: 48.0}
    out = figures.schedule(["short", "long"], "t", tmp_path / "fig", res)
    assert out.name == "schedule_t.png" and _png_size(out)[0] > 500
    with pytest.raises(SystemExit, match="no labels_only/dag results"):
        figures.schedule_points(["missing"], res)
