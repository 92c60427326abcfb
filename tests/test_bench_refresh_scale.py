"""benchmarks/speed/bench_refresh_scale.py: its growth fits against
hand-computed examples, its skip/resume bookkeeping (the measuring worker
replaced by a stub) and its ``--quick`` run."""
import argparse
import json
import math

import pytest
import torch

from benchmarks.speed import bench_refresh_scale as bench


def test_fit_growth_by_hand():
    # log v = log a + b log N on (1, 1), (2, 2), (4, 8): with x = log2 N and
    # y = log2 v, x - mean = (-1, 0, 1), y - mean = (-4/3, -1/3, 5/3), so
    # b = (4/3 + 5/3) / 2 = 3/2 and log2 a = 4/3 - 3/2 = -1/6.
    b, a = bench.fit_growth([1, 2, 4], [1, 2, 8])
    assert b == pytest.approx(1.5)
    assert a == pytest.approx(2 ** (-1 / 6))
    assert bench.pairwise_exponents([4, 1, 2], [8, 1, 2]) == pytest.approx([1, 2])
    # An exact power law is recovered, and extrapolates as itself.
    b, a = bench.fit_growth([1e5, 2e5, 4e5], [3.0, 12.0, 48.0])
    assert b == pytest.approx(2.0) and a * 8e5 ** b == pytest.approx(192.0)
    with pytest.raises(ValueError, match="two or more"):
        bench.fit_growth([1e5], [1.0])
    with pytest.raises(ValueError, match="distinct"):
        bench.fit_growth([1e5, 1e5], [1.0, 2.0])


def _row(n: int, graph: str, t: float, recall: float = 0.995) -> dict:
    return {"N": n, "graph": graph, "total_cpu_s": t, "total_s": t,
            "graph_cpu_s": t, "recall": recall}


def test_growth_and_target_rows():
    # total = 1e-6 N^1.25 for faiss_hnsw; faiss_ivf grows as N^2.
    rows = [_row(n, "faiss_hnsw", 1e-6 * n ** 1.25) for n in (50_000, 100_000,
                                                              200_000, 400_000)]
    rows += [_row(n, "faiss_ivf", 1e-9 * n ** 2) for n in (100_000, 300_000)]
    growth = {(r["graph"], r["quantity"]): r for r in bench.growth_rows(rows,
                                                                       100_000)}
    hnsw = growth["faiss_hnsw", "total_cpu_s"]
    assert hnsw["exponent"] == pytest.approx(1.25)
    assert hnsw["sizes"] == "100k-400k (3)"  # 50k below fit_min
    assert hnsw["pairwise"] == "1.25 1.25"
    assert hnsw["at_1.28M"] == pytest.approx(1e-6 * 1_281_167 ** 1.25)
    assert hnsw["at_10.00M"] == pytest.approx(1e-6 * 1e7 ** 1.25)
    assert growth["faiss_ivf", "graph_cpu_s"]["exponent"] == pytest.approx(2.0)
    assert ("faiss_ivf", "peak_mb") not in growth  # not measured: not fitted
    targets = {t["graph"]: t for t in bench.target_rows(rows)}
    assert targets["faiss_hnsw"]["met"] and not targets["faiss_ivf"]["met"]
    assert not targets["faiss_hnsw"]["complete"]  # 2M not measured
    low = rows[:3] + [_row(400_000, "faiss_hnsw", 1e-6 * 4e5 ** 1.25, 0.98)]
    assert not bench.target_rows(low)[0]["met"]  # recall below 0.99


def test_drop_own():
    import numpy as np

    found = np.array([[3, 1, 2], [5, 6, 7]])  # row 1 (id 6) found itself
    assert bench.drop_own(found, torch.tensor([3, 6]), 2).tolist() == [[1, 2],
                                                                      [5, 7]]


def test_sizes_already_measured_are_skipped(tmp_path, monkeypatch):
    calls = []

    def fake_spawn(n, graphs, args):
        calls.append((n, tuple(graphs)))
        return [{**_row(n, g, n / 1e4), "graph_cpu_s": n / 1e4} for g in graphs]

    monkeypatch.setattr(bench, "spawn", fake_spawn)
    common = ["--out", str(tmp_path), "--graphs", "faiss_ivf", "faiss_hnsw"]
    one = bench.main(["--sizes", "100000", *common])
    assert one["growth"] == [] and one["targets"] == []  # one size: no fit
    bench.main(["--sizes", "100000", "200000", *common])
    assert calls == [(100_000, ("faiss_ivf", "faiss_hnsw")),
                     (200_000, ("faiss_ivf", "faiss_hnsw"))]  # 100k skipped
    path = tmp_path / "bench_refresh_scale.json"
    saved = json.loads(path.read_text())
    assert len(saved["rows"]) == 4 and saved["settings"]["k"] == 64
    # A later run measures only what is missing, and fits over everything.
    calls.clear()
    out = bench.main(["--sizes", "200000", "400000", *common, "--graphs", "exact",
                      "faiss_hnsw"])
    assert calls == [(200_000, ("exact",)), (400_000, ("exact", "faiss_hnsw"))]
    assert len(out["rows"]) == 7
    fit = next(r for r in out["growth"] if r["graph"] == "faiss_hnsw"
               and r["quantity"] == "total_cpu_s")
    assert fit["exponent"] == pytest.approx(1.0) and fit["sizes"] == "100k-400k (3)"
    # --force measures again; other bank settings need another file.
    calls.clear()
    bench.main(["--sizes", "100000", *common, "--force"])
    assert calls == [(100_000, ("faiss_ivf", "faiss_hnsw"))]
    assert len(json.loads(path.read_text())["rows"]) == 7
    with pytest.raises(SystemExit, match="--name"):
        bench.main(["--sizes", "100000", *common, "--k", "32"])


@pytest.mark.slow  # two worker processes, each importing torch and faiss
def test_quick_run(tmp_path):
    out = bench.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "bench_refresh_scale_quick.json").read_text())
    assert saved["rows"] == out["rows"]
    assert {(r["N"], r["graph"]) for r in out["rows"]} == {
        (n, g) for n in (2000, 4000) for g in bench.GRAPHS}
    for r in out["rows"]:
        assert r["recall"] >= 0.99 and r["peer_recall"] >= 0.99
        assert r["total_cpu_s"] == pytest.approx(
            r["graph_cpu_s"] + r["label_bank_cpu_s"] + r["dplp_cpu_s"])
        assert not r["peer_estimated"]
    assert all(math.isfinite(g["exponent"]) for g in out["growth"])


@pytest.mark.slow  # two worker processes, each importing torch and faiss
def test_peer_max_leaves_the_peer_out_above_it(tmp_path):
    out = bench.main(["--quick", "--graphs", "faiss_ivf", "--peer-max", "3000",
                      "--out", str(tmp_path)])
    small, large = sorted(out["rows"], key=lambda r: r["N"])
    assert "peer_cpu_s" in small and not small.get("peer_skipped")
    assert large["peer_skipped"] and "peer_cpu_s" not in large
    assert large["total_cpu_s"] > 0  # the stages after the peer still ran
    quantities = {g["quantity"] for g in out["growth"]}
    assert "total_cpu_s" in quantities and "peer_cpu_s" not in quantities


def test_max_classes_caps_the_bank_classes():
    args = argparse.Namespace(dim=8, k=4, k_sub=2, classes=100, per_class=100,
                              max_classes=4, noise=0.6, labelled=0.1,
                              recall_sample=10)
    bank, _ = bench.make_bank(600, args)  # 600 // 100 = 6 classes, capped at 4
    assert bank.classes == 4 and bank.y.unique().tolist() == [0, 1, 2, 3]
    assert bank.head.num_classes == 4
    args.max_classes = None
    assert bench.make_bank(600, args)[0].classes == 6
    with pytest.raises(SystemExit):
        bench.main(["--max-classes", "0"])
