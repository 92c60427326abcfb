"""The experiment-grid runner and the RESULTS.md generator, on a tiny grid.

The scripts are modules of the ``benchmarks`` package: run the tests from the
repository root (``python -m pytest``), as ``make test`` does."""
import importlib
import json

import pytest
import yaml

pytestmark = pytest.mark.cpu_only  # files, configs, logs: CPU by nature

TINY = {"name": "tiny", "config": "configs/digits.yaml", "seeds": [0],
        "set": ["optim.epochs=1", "optim.pretrain_epochs=1", "log.progress=false",
                "log.tensorboard=false", "log.plots=false"],
        "rows": {"labels_only": ["dna.aggregator=none", "pseudo_label.source=none"],
                 "dag": []}}


def load(name):
    """A benchmark script: ``reproduce`` and ``make_results`` from
    ``benchmarks.experiments``, the others from ``benchmarks.analysis``."""
    kind = "experiments" if name in ("reproduce", "make_results") else "analysis"
    return importlib.import_module(f"benchmarks.{kind}.{name}")


@pytest.mark.slow  # whole (tiny) training runs
def test_grid_runs_skips_and_tabulates(tmp_path, capsys):
    reproduce, make_results = load("reproduce"), load("make_results")
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(TINY))
    args = [str(grid), "--results", str(tmp_path / "res"), "--runs",
            str(tmp_path / "runs")]
    # A run that died before its first checkpoint: cleared, run again.
    stale = tmp_path / "runs" / "tiny" / "labels_only" / "seed0"
    stale.mkdir(parents=True)
    (stale / "metrics.jsonl").write_text('{"epoch": 0, "phase": "stale"}\n')
    reproduce.main(args)
    assert all(m["phase"] != "stale" for m in
               json.loads((tmp_path / "res" / "tiny" / "labels_only__seed0.json")
                          .read_text())["metrics"])
    files = sorted((tmp_path / "res" / "tiny").glob("*.json"))
    assert [f.name for f in files] == ["dag__seed0.json", "labels_only__seed0.json"]
    result = json.loads(files[0].read_text())
    assert result["row"] == "dag" and "--set seed=0" in result["command"]
    assert result["summary"]["test_error_last"] == result["metrics"][-1]["test_error"]
    capsys.readouterr()
    reproduce.main(args)  # second time: nothing to run
    assert capsys.readouterr().out.count("[skip]") == 2
    # Re-evaluation on the whole test set: digits' runs already use all of
    # it, so the last checkpoint must give the run's own last test error.
    full_test = load("eval_full_test")
    eargs = ["tiny", "--results", str(tmp_path / "res"),
             "--runs", str(tmp_path / "runs")]
    full_test.main(eargs)
    rec = json.loads(files[0].read_text())
    assert rec["full_test"]["test_error"] == result["summary"]["test_error_last"]
    assert rec["full_test"]["epoch"] == result["summary"]["last_epoch"]
    assert rec["metrics"] == result["metrics"]  # the record is otherwise kept
    capsys.readouterr()
    full_test.main(eargs)
    assert capsys.readouterr().out.count("(done)") == 2
    out = tmp_path / "RESULTS.md"
    make_results.main(["--results", str(tmp_path / "res"), "--out", str(out)])
    text = out.read_text()
    err = result["summary"]["test_error_last"]
    assert "| dag | 1 |" in text and f"{err:.2f}" in text
    n = rec["full_test"]["num_test"]
    detail = (tmp_path / "details" / "tiny.md").read_text()
    assert f"test error % on all {n:,} (seeds)" in detail
    # The headline stays one page and points to the grid's detail page, which
    # holds the per-epoch tables and the command of each row.
    assert len(text.splitlines()) <= make_results.MAX_LINES == 150
    assert "](details/tiny.md)" in text
    assert f"on all {n:,} test images" in text  # full_test is the headline's
    assert "propagated pseudo labels per epoch" in detail
    assert "propagated pseudo labels per epoch" not in text
    assert f"- `dag`: `{result['command']}`" in detail
    assert "`tiny/dag__seed0.json`" in detail
    assert "(../RESULTS.md)" in detail


def test_borrowed_rows_are_not_run_here(tmp_path, monkeypatch, capsys):
    reproduce = load("reproduce")
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({**TINY, "borrow": {"labels_only":
                                                       "other/labels_only"}}))
    ran = []
    monkeypatch.setattr(reproduce, "run_one", lambda g, row, seed, *a: ran.append(
        (row, seed)))
    args = ["--results", str(tmp_path / "res"), "--runs", str(tmp_path / "runs")]
    reproduce.main([str(grid), *args])
    assert ran == [("dag", 0)]
    assert "[borrowed] tiny/labels_only: other/labels_only's runs" in \
        capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"borrowed \('labels_only' from "
                       r"other/labels_only\)"):
        reproduce.main([str(grid), "--rows", "labels_only", "dag", *args])
    assert ran == [("dag", 0)]


def test_a_row_may_name_its_own_config():
    reproduce = load("reproduce")
    grid = {**TINY, "rows": {**TINY["rows"], "plus": {
        "config": "configs/other.yaml", "set": ["dna.k=3"]}, "bare": {
        "config": "configs/other.yaml"}, "bad": {"set": []}}}
    assert reproduce.row_spec(grid, "dag") == ("configs/digits.yaml", [])
    assert reproduce.row_spec(grid, "labels_only")[1] == TINY["rows"]["labels_only"]
    assert reproduce.row_spec(grid, "plus") == ("configs/other.yaml", ["dna.k=3"])
    assert reproduce.row_spec(grid, "bare") == ("configs/other.yaml", [])
    with pytest.raises(SystemExit, match="mapping of 'config' and 'set'"):
        reproduce.row_spec(grid, "bad")


def _comparable(records):
    return [{k: v for k, v in m.items() if not k.startswith(("time_", "mem_"))}
            for m in records]


@pytest.mark.slow  # whole (tiny) training runs
def test_interrupted_run_resumes(tmp_path, monkeypatch, capsys):
    import dag_pyg.train.loop as loop

    reproduce = load("reproduce")
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({**TINY, "set": [*TINY["set"], "optim.epochs=2"]}))

    def run(name):
        reproduce.main([str(grid), "--rows", "dag", "--results",
                        str(tmp_path / name / "res"), "--runs",
                        str(tmp_path / name / "runs")])
        return json.loads((tmp_path / name / "res" / "tiny" / "dag__seed0.json")
                          .read_text())

    whole = run("whole")
    saves = []
    save = loop.save_checkpoint

    def save_then_stop(*a, **kw):  # Ctrl-C right after epoch 0's checkpoint
        save(*a, **kw)
        saves.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run("cut")
    monkeypatch.undo()
    run_dir = tmp_path / "cut" / "runs" / "tiny" / "dag" / "seed0"
    assert saves == [1] and (run_dir / "checkpoint.pt").is_file()
    assert not (tmp_path / "cut" / "res" / "tiny" / "dag__seed0.json").exists()
    capsys.readouterr()
    resumed = run("cut")
    assert "[resume]" in capsys.readouterr().out
    assert resumed["resumed"] is True and "resumed" not in whole
    assert resumed["command"].replace("/cut/", "/whole/") == whole["command"]
    assert len(whole["metrics"]) == 3  # epoch 0 (pre-training), 1-2 (main)
    assert _comparable(resumed["metrics"]) == _comparable(whole["metrics"])
    for key in ("last_epoch", "test_error_last", "pl_acc_last", "pl_coverage_last",
                "model_acc_on_covered_last", "best_by_val"):
        assert resumed["summary"][key] == whole["summary"][key]


def _record(row, seed, test, val=None, kept=None, full=None):
    metric = {"epoch": 1, "phase": "train", "time_epoch": 1.0, "test_error": test}
    if val is not None:
        metric["val_error"] = val
    if kept is not None:
        metric.update(knn_kept=kept, bank_cos_prev=0.9)
    rec = {"row": row, "seed": seed, "command": f"cmd {row} {seed}",
           "wall_time_s": 2.0, "metrics": [metric],
           "summary": {"test_error_last": test, "best_by_val": None}}
    if full is not None:
        rec["full_test"] = {"num_test": 10000, "test_error": full}
    return rec


def _write_records(res, by_grid):
    """Result JSONs as reproduce.py names them, ``{grid: [record, ...]}``."""
    for grid, recs in by_grid.items():
        for r in recs:
            (res / grid / f"{r['row']}__seed{r['seed']}.json").write_text(
                json.dumps(r))


def _tables(lines):
    """The markdown tables in ``lines``, each a list of its rows keyed by the
    header's column names (a row of another width fails the zip)."""
    tables, head = [], None
    for line in lines:
        if line.startswith("|---"):  # the rule under a header
            continue
        if not line.startswith("| "):  # between tables
            head = None
            continue
        cells = line[2:-2].split(" | ")
        if head is None:
            head = cells
            tables.append([])
        else:
            tables[-1].append(dict(zip(head, cells, strict=True)))
    return tables


def test_grid_table_borrows_rows_and_pairs_seeds(tmp_path):
    make_results = load("make_results")
    res, grids = tmp_path / "res", tmp_path / "grids"
    for d in (res / "main", res / "sweep", grids):
        d.mkdir(parents=True)
    records = {"main": [_record("baseline", 0, 50.0, 40.0),
                        _record("baseline", 1, 52.0, 42.0),
                        _record("dag", 0, 53.0), _record("dag", 1, 52.0)],
               "sweep": [_record("h2", 0, 55.0, 41.0, 0.5),
                         _record("h2", 1, 56.0, 45.0, 0.7),
                         _record("h1", 0, 60.0),  # its own seed 0 wins
                         _record("long", 0, 45.0), _record("dag_long", 0, 44.0)]}
    _write_records(res, records)
    (grids / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "sweep", "kind": "sweep", "config": "c.yaml", "rows": {"h2": []},
        "borrow": {"baseline": "main/baseline", "h1": "main/dag"},
        "pair_with": {"dag_long": "long"}}))
    lines = make_results.grid_table(res / "sweep", grids)
    (rows,) = _tables(lines)
    assert "val error % (last)" in rows[0]
    assert [r["row"] for r in rows] == ["baseline (= main/baseline)",
                                        "dag_long (Δ vs long)", "h1 (= main/dag)",
                                        "h2", "long"]
    by = {r["row"]: r for r in rows}
    delta = "Δ vs baseline (paired by seed)"
    assert by["baseline (= main/baseline)"]["test error % (last)"] == "51.00 ± 1.41"
    h1 = by["h1 (= main/dag)"]
    assert h1["test error % (last)"] == "56.00 ± 5.66" and h1[delta] == "5.00 ± 7.07"
    assert by["h2"][delta] == "4.50 ± 0.71"          # paired: 55-50, 56-52
    assert by["h2"]["Δ val vs baseline (paired)"] == "2.00 ± 1.41"  # 41-40, 45-42
    assert by["h2"]["kNN kept (last)"] == "0.600 ± 0.141"
    assert any("main/dag__seed*.json" in line for line in lines)
    assert by["long"][delta] == "–"                       # a reference row
    assert by["dag_long (Δ vs long)"][delta] == "-1.00"   # 44 - 45, not - 50


def test_grid_table_full_test_columns(tmp_path):
    make_results = load("make_results")
    res = tmp_path / "res" / "g"
    res.mkdir(parents=True)
    for r in [_record("baseline", 0, 50.0, full=49.0),
              _record("baseline", 1, 52.0, full=51.5),
              _record("dag", 0, 53.0, full=47.0), _record("dag", 1, 52.0, full=50.0),
              _record("dag", 2, 51.0)]:  # seed 2 not re-evaluated yet
        (res / f"{r['row']}__seed{r['seed']}.json").write_text(json.dumps(r))
    (rows,) = _tables(make_results.grid_table(res, tmp_path))
    full, full_delta = ("test error % on all 10,000 (seeds)",
                        "Δ vs baseline on all 10,000 (paired)")
    by = {r["row"]: r for r in rows}
    assert by["baseline"][full] == "50.25 ± 1.77 (2)"
    assert by["baseline"][full_delta] == "–"
    assert by["dag"][full] == "48.50 ± 2.12 (2)"
    assert by["dag"][full_delta] == "-1.75 ± 0.35"      # paired: 47-49, 50-51.5
    # subset: 53-50, 52-52; seed 2 unpaired
    assert by["dag"]["Δ vs baseline (paired by seed)"] == "1.50 ± 2.12"


def test_grid_table_wall_time_leaves_resumed_runs_out(tmp_path):
    make_results = load("make_results")
    res = tmp_path / "res" / "g"
    res.mkdir(parents=True)
    recs = [_record("dag", 0, 50.0), _record("dag", 1, 51.0),
            _record("dag", 2, 52.0), _record("baseline", 0, 53.0),
            _record("baseline", 1, 54.0)]
    recs[0]["wall_time_s"], recs[1]["wall_time_s"] = 100.0, 300.0
    recs[2].update(wall_time_s=7.0, resumed=True)  # its last attempt only
    for r in recs:
        (res / f"{r['row']}__seed{r['seed']}.json").write_text(json.dumps(r))
    (rows,) = _tables(make_results.grid_table(res, tmp_path))
    by = {r["row"]: r for r in rows}
    assert by["dag"]["wall s / run"] == "200.0 ± 141.4 (2)"
    assert by["baseline"]["wall s / run"] == "2.0 ± 0.0"


def test_headline_table(tmp_path):
    make_results = load("make_results")
    res = tmp_path / "res" / "g"
    res.mkdir(parents=True)
    recs = [_record("baseline", 0, 50.0, full=49.0), _record("baseline", 1, 52.0),
            _record("dag", 0, 47.0, full=46.0), _record("dag", 1, 51.0, full=50.0)]
    for r in recs:
        (res / f"{r['row']}__seed{r['seed']}.json").write_text(json.dumps(r))
    # The paper's setting is the grid's config (its published error beside
    # `dag`), whatever the records' commands say.
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({
        "name": "g", "config": "configs/cifar10_4000.yaml",
        "rows": {"baseline": [], "dag": []}}))
    lines = make_results.headline_table(res, tmp_path, "details/g.md")
    assert lines[0] == "### g" and "(details/g.md)" in lines[1]
    # One record lacks full_test: the whole grid reads its own test set.
    assert "own test set" in lines[1] and "3 of 4 records have `full_test`" in lines[1]
    assert _tables(lines) == [[
        {"row": "baseline", "seeds": "2", "test error %": "51.00 ± 1.41",
         "Δ vs baseline (paired)": "–", "paper (400 epochs)": ""},
        {"row": "dag", "seeds": "2", "test error %": "49.00 ± 2.83",
         "Δ vs baseline (paired)": "-2.00 ± 1.41", "paper (400 epochs)": "6.13"}]]
    (res / "baseline__seed1.json").unlink()  # now all have it: whole test set
    (res / "baseline__seed0.json").unlink()
    lines = make_results.headline_table(res, tmp_path)
    assert "on all 10,000 test images" in lines[1] and "no reference row" in lines[1]
    assert _tables(lines) == [[{"row": "dag", "seeds": "2",
                                "test error %": "48.00 ± 2.83",
                                "paper (400 epochs)": "6.13"}]]


def test_headline_table_compares_with_a_second_row(tmp_path):
    make_results = load("make_results")
    res, grids = tmp_path / "res", tmp_path / "grids"
    for d in (res / "main", res / "x_dagplus", grids):
        d.mkdir(parents=True)
    recs = {"main": [_record("baseline", 0, 50.0), _record("baseline", 1, 52.0),
                     _record("labels_only", 0, 49.0), _record("labels_only", 1, 55.0),
                     _record("dag", 0, 47.0), _record("dag", 1, 53.0)],
            "x_dagplus": [_record("dagplus", 0, 46.0), _record("dagplus", 1, 50.0)]}
    _write_records(res, recs)
    (grids / "x_dagplus.yaml").write_text(yaml.safe_dump({
        "name": "x_dagplus", "kind": "preset", "preset": "dagplus",
        "config": "c.yaml", "rows": {"dagplus": []},
        "borrow": {"baseline": "main/baseline", "labels_only": "main/labels_only",
                   "dag": "main/dag"},
        "compare": {"dagplus": "dag"}}))
    (rows,) = _tables(make_results.headline_table(res / "x_dagplus", grids))
    assert list(rows[0]) == ["row", "seeds", "test error %", "Δ vs baseline (paired)",
                             "Δ vs labels_only (paired)", "Δ vs dag (paired)",
                             "paper, C10-1000 (Δ vs its baseline)"]
    assert [r["row"] for r in rows] == [
        "labels_only (= main/labels_only)", "baseline (= main/baseline)",
        "dag (= main/dag)", "dagplus"]
    by = {r["row"]: r for r in rows}
    assert by["dagplus"]["Δ vs baseline (paired)"] == "-3.00 ± 1.41"  # 46-50, 50-52
    assert by["dagplus"]["Δ vs labels_only (paired)"] == "-4.00 ± 1.41"  # 46-49, 50-55
    assert by["dagplus"]["Δ vs dag (paired)"] == "-2.00 ± 1.41"       # 46-47, 50-53
    assert by["dag (= main/dag)"]["Δ vs dag (paired)"] == "–"
    # The baseline against the labels alone, and the labels alone against it.
    base = by["baseline (= main/baseline)"]
    labels = by["labels_only (= main/labels_only)"]
    assert base["Δ vs baseline (paired)"] == "–"
    assert base["Δ vs labels_only (paired)"] == "-1.00 ± 2.83"
    assert labels["Δ vs baseline (paired)"] == "1.00 ± 2.83"
    assert labels["Δ vs labels_only (paired)"] == "–"
    # The headline's one line per preset grid.
    lines = make_results.preset_table([res / "x_dagplus"], grids)
    assert lines[0].startswith("### DAG+ against") and "Δ DAG+ vs DAG" in lines[3]
    assert _tables(lines) == [[{
        "grid": "[x_dagplus](details/x_dagplus.md)", "seeds": "0, 1",
        "test set": "the whole test set", "labels only": "52.00 ± 4.24",
        "baseline": "51.00 ± 1.41", "DAG (paper)": "50.00 ± 4.24",
        "DAG+": "48.00 ± 2.83", "Δ DAG+ vs baseline": "-3.00 ± 1.41",
        "Δ DAG+ vs labels only": "-4.00 ± 1.41", "Δ DAG+ vs DAG": "-2.00 ± 1.41",
        "Δ DAG vs baseline": "-1.00 ± 2.83"}]]   # dag - baseline: -3, +1
    # An `auto` preset grid gets its own table, named as its preset.
    (grids / "x_auto.yaml").write_text(yaml.safe_dump({
        "name": "x_auto", "kind": "preset", "preset": "auto", "config": "c.yaml",
        "rows": {"auto": []},
        "borrow": {"baseline": "main/baseline", "labels_only": "main/labels_only",
                   "dag": "main/dag"},
        "compare": {"auto": "dag"}}))
    (res / "x_auto").mkdir()
    autos = [_record("auto", 0, 49.0), _record("auto", 1, 51.0)]
    for rec, arm in zip(autos, ("labels_only", "steered"), strict=True):
        rec["summary"]["auto"] = {"arm": arm}
    _write_records(res, {"x_auto": autos[::-1]})
    lines = make_results.preset_table([res / "x_dagplus", res / "x_auto"], grids)
    titles = [x for x in lines if x.startswith("### ")]
    assert titles == ["### DAG+ against the paper's DAG, its baseline and the "
                      "labels alone", "### auto against the paper's DAG, its "
                      "baseline and the labels alone"]
    (dagplus,), (auto,) = _tables(lines)
    assert "chosen arm (seeds)" not in dagplus
    # auto 49, 51 against baseline 50, 52 / labels 49, 55 / DAG 47, 53.
    assert auto["auto"] == "50.00 ± 1.41"
    assert auto["Δ auto vs baseline"] == "-1.00 ± 0.00"
    assert auto["Δ auto vs labels only"] == "-2.00 ± 2.83"
    assert auto["Δ auto vs DAG"] == "0.00 ± 2.83"
    # Its choice per seed, in seed order.
    assert auto["chosen arm (seeds)"] == "labels_only, steered"


def test_a_grid_goes_where_its_kind_says(tmp_path):
    """RESULTS.md places a grid by the ``kind`` its file declares, not by its
    name; the runner refuses a kind, or a preset, it does not know."""
    make_results, reproduce = load("make_results"), load("reproduce")
    res, grids = tmp_path / "res", tmp_path / "grids"
    grids.mkdir()
    kinds = {"a_val": "headline", "b": "validation", "c_dagplus": "sweep"}
    for name, kind in kinds.items():
        (res / name).mkdir(parents=True)
        rec = _record("dag", 0, 50.0)
        rec["summary"]["config"] = {"pseudo_label": {"source": "model"}}
        _write_records(res, {name: [rec]})
        (grids / f"{name}.yaml").write_text(yaml.safe_dump({
            "name": name, "kind": kind, "config": "c.yaml", "rows": {"dag": []}}))
    none = tmp_path / "none"
    report = make_results.collect(res, grids, none, none, none)
    assert {g.grid.name: g.grid.kind for g in report.grids} == kinds
    assert report.table4 is None and report.presets == {}
    lines, pages = make_results.render(report, tmp_path / "details")
    assert "### a_val" in lines and "### b" not in lines
    sweeps = lines.index("## Sweeps of one switch (test split; tables on their "
                         "pages)")
    assert lines[sweeps + 2] == "[c_dagplus](details/c_dagplus.md)"
    val = lines.index("## Validation grids (settings chosen there, not test "
                      "results)")
    assert lines[val + 2] == "[b](details/b.md)"
    assert sorted(pages) == ["a_val", "b", "c_dagplus"]
    for bad, match in (({"kind": "ablation"}, "kind 'ablation' is not one of"),
                       ({"kind": "preset", "preset": "dag++"}, "preset 'dag[+][+]'"),
                       ({"preset": "auto"}, "go together")):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({**TINY, **bad}))
        with pytest.raises(SystemExit, match=match):
            reproduce.load_grid(path)


def test_neighbour_purity_hand_computed():
    import math

    import torch
    from torch_geometric.data import Data

    purity = load("neighbour_purity").neighbour_purity
    # Edges v -> u, two per centre: 0 <- {1, 2}, 1 <- {0, 2}, 2 <- {0, 1}.
    g = Data(edge_index=torch.tensor([[1, 2, 0, 2, 0, 1], [0, 0, 1, 1, 2, 2]]),
             sim=torch.tensor([0.9, 0.5, 0.9, 0.2, 0.5, 0.2]),
             density=torch.tensor([0.7, 0.55, 0.35]), num_nodes=3)
    out = purity(g, torch.tensor([0, 0, 1]), num_classes=2)
    sig = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    # alpha of the same-class neighbour: softmax of (sim + density of v).
    expected = [sig((0.9 + 0.55) - (0.5 + 0.35)), sig((0.9 + 0.7) - (0.2 + 0.35)), 0.0]
    torch.testing.assert_close(out["alpha_purity"], torch.tensor(expected,
                                                                 dtype=torch.float64))
    torch.testing.assert_close(out["purity"], torch.tensor([0.5, 0.5, 0.0],
                                                           dtype=torch.float64))
    torch.testing.assert_close(out["alpha_max"], torch.tensor(
        [*expected[:2], sig((0.5 + 0.7) - (0.2 + 0.55))], dtype=torch.float64))
    # Ties in the vote go to the smaller class (0 for nodes 0, 1).
    assert out["vote"].tolist() == [1.0, 1.0, 0.0]
    # Another attention (e.g. a trained GAT's) replaces DNA's.
    out = purity(g, torch.tensor([0, 0, 1]), 2,
                 alpha=torch.tensor([0.1, 0.9, 1.0, 0.0, 0.5, 0.5]))
    torch.testing.assert_close(out["alpha_purity"], torch.tensor(
        [0.1, 1.0, 0.0], dtype=torch.float64))


def test_label_diffusion_by_hand():
    # neighbour_purity's diffusion_acc: LP-DeepSSL's diffusion from the
    # labelled nodes alone. A chain 0 - 1 - 2 - 3 - 4 (every edge both ways,
    # similarity 1), class 0 labelled at node 0, class 1 at node 4: each
    # node goes to the nearer label, the middle one to the smaller class.
    import torch
    from torch_geometric.data import Data

    run_cg = importlib.import_module("benchmarks.speed.bench_dplp").run_cg
    src = torch.tensor([0, 1, 1, 2, 2, 3, 3, 4])
    dst = torch.tensor([1, 0, 2, 1, 3, 2, 4, 3])
    g = Data(edge_index=torch.stack([src, dst]), sim=torch.ones(8), num_nodes=5)
    y = torch.tensor([0, -1, -1, -1, 1])
    mask = torch.tensor([True, False, False, False, True])
    pred, reached = run_cg(g, y, mask, num_classes=2)
    assert pred.tolist()[:2] == [0, 0] and pred.tolist()[3:] == [1, 1]
    assert reached.all()
    # Without node 4's label, class 0 reaches every node.
    pred, _ = run_cg(g, y, torch.tensor([True, False, False, False, False]), 2)
    assert pred.tolist() == [0] * 5


def test_neighbour_purity_reads_the_heads_attention():
    import torch
    from torch_geometric.utils import softmax

    from dag_pyg import build_density_graph
    from dag_pyg.nn import DNAHead

    attention = load("neighbour_purity").first_layer_attention
    torch.manual_seed(0)
    x = torch.randn(30, 6)
    g = build_density_graph(x, 4, backend="exact")
    src, dst = g.edge_index
    # DNA's layer gives Eqs. 4-7 (softmax of cos + density of the source);
    # without density, softmax of cos; no aggregation layers, nothing.
    torch.testing.assert_close(attention(DNAHead(6, 3), x, g),
                               softmax(g.sim + g.density[src], dst, num_nodes=30))
    torch.testing.assert_close(attention(DNAHead(6, 3, aggregator="dna_no_density"),
                                         x, g), softmax(g.sim, dst, num_nodes=30))
    assert attention(DNAHead(6, 3, aggregator="none"), x, g) is None
    alpha = attention(DNAHead(6, 3, aggregator="gat"), x, g).view(-1)
    torch.testing.assert_close(torch.zeros(30).scatter_add(0, dst, alpha),
                               torch.ones(30))  # a softmax per centre node


@pytest.mark.slow  # a whole (tiny) training run
def test_a_renamed_rows_run_folder_moves_and_still_evaluates(tmp_path, capsys):
    """A run made under a row's old name (``pseudo_label``) moves to the new
    name with its result; the moved folder still resumes nothing, evaluates,
    and the runner skips the row."""
    reproduce = load("reproduce")
    old = {**TINY, "rows": {"pseudo_label": ["dna.aggregator=none",
                                             "pseudo_label.source=model"]}}
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(old))
    args = [str(grid), "--results", str(tmp_path / "res"), "--runs",
            str(tmp_path / "runs")]
    reproduce.main(args)
    before = json.loads((tmp_path / "res" / "tiny" / "pseudo_label__seed0.json")
                        .read_text())
    grid.write_text(yaml.safe_dump({
        **TINY, "rows": {"baseline": old["rows"]["pseudo_label"]},
        "renamed": {"pseudo_label": "baseline"}}))
    capsys.readouterr()
    reproduce.main(args)
    out = capsys.readouterr().out
    assert "[renamed] tiny: pseudo_label -> baseline seed 0" in out
    assert "[skip] tiny/baseline seed 0" in out and "[run" not in out
    after = json.loads((tmp_path / "res" / "tiny" / "baseline__seed0.json").read_text())
    assert after["renamed_from"] == "pseudo_label"
    assert after["summary"] == before["summary"]
    run_dir = tmp_path / "runs" / "tiny" / "baseline" / "seed0"
    assert not (tmp_path / "runs" / "tiny" / "pseudo_label").exists()
    from dag_pyg.train import evaluate_run
    assert evaluate_run(run_dir)["test_error"] == before["summary"]["test_error_last"]


def test_recipe_of_reads_the_grids_own_runs():
    make_results = load("make_results")

    def record(row, minutes):
        cfg = {"model": {"backbone": "cnn", "width": 0.5},
               "optim": {"pretrain_epochs": 2, "epochs": 16}}
        return {"row": row, "wall_time_s": 60.0 * minutes,
                "summary": {"config": cfg}}

    def resumed(row, minutes):  # wall_time_s: its last attempt's only
        return {**record(row, minutes), "resumed": True}

    rows = {"dag": [record("dag", 30), record("dag", 40)],
            "baseline": [record("baseline", 20), resumed("baseline", 5)],
            "dna": [resumed("dna", 7)],
            # Borrowed: another grid's runs (its own row name), left out.
            "dag_before": [record("dag", 90)]}
    want = ("a `cnn` backbone at width 0.5 and 2 + 16 epochs, minutes of one CPU "
            "core per run beside other jobs: baseline 20, dag 35, dna – (every "
            "run resumed)")
    assert make_results.recipe_of(rows, {"dag_before": "other/dag"}) == want
    assert make_results.recipe_of({"dag_before": rows["dag_before"]},
                                  {"dag_before": "other/dag"}) == ""
