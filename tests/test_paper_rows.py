"""The grids' rows named as the paper's: every grid's ``baseline`` is the
paper's (Label Bank pseudo labels), results of renamed rows move to their new
names only where the configuration matches, and the headline reads the
paper's ordering from seed-paired differences.

Run from the repository root (``python -m pytest``), as ``make test`` does."""
import importlib
import json

import pytest
import yaml

from benchmarks.common import GRIDS

pytestmark = pytest.mark.cpu_only  # files and configs

reproduce = importlib.import_module("benchmarks.experiments.reproduce")
make_results = importlib.import_module("benchmarks.experiments.make_results")
paper_rows = importlib.import_module("benchmarks.experiments.paper_rows")

GRID_FILES = sorted(GRIDS.glob("*.yaml"))


def test_every_grid_loads_with_rows_of_the_paper_meaning():
    assert len(GRID_FILES) >= 18
    for path in GRID_FILES:
        reproduce.load_grid(path)  # raises where a paper row is something else


WITH_BASELINE = [p for p in GRID_FILES
                 if "baseline" in yaml.safe_load(p.read_text())["rows"]]


@pytest.mark.parametrize("path", WITH_BASELINE, ids=lambda p: p.stem)
def test_a_grids_baseline_is_self_training_on_the_label_bank(path):
    grid = reproduce.load_grid(path)
    cfg = reproduce.row_config(grid, "baseline", 0)
    # The paper's Baseline: every unlabelled image trains on its Label Bank
    # entry (the model's own prediction), with Eq. 2 and mixup; no DNA.
    assert cfg.pseudo_label.source == "model"
    assert cfg.dna.aggregator == "none"
    assert cfg.loss.mixup_alpha > 0
    assert cfg.loss.entropy_weight > 0 and cfg.loss.balance_weight > 0
    assert cfg.pseudo_label.weight == 1.0 and cfg.pseudo_label.threshold == 0.0
    if "labels_only" in grid["rows"]:
        ref = reproduce.row_config(grid, "labels_only", 0)
        assert ref.pseudo_label.source == "none" and ref.dna.aggregator == "none"


def test_the_ablation_grids_have_the_papers_rows():
    want = {"labels_only": ("none", "none", "LU"), "baseline": ("none", "model", "LU"),
            "na_no_density": ("dna_no_density", "model", "LU"),
            "dna": ("dna", "model", "LU"), "lp_l": ("none", "dplp", "L"),
            "dplp": ("none", "dplp", "LU"), "dag": ("dna", "dplp", "LU"),
            "gat": ("gat", "dplp", "LU")}
    for name in ("digits_table1", "cifar10_cpu_table1", "mnist_100"):
        grid = reproduce.load_grid(GRIDS / f"{name}.yaml")
        for row, (agg, source, mode) in want.items():
            cfg = reproduce.row_config(grid, row, 0)
            assert (cfg.dna.aggregator, cfg.pseudo_label.source, cfg.dplp.mode) == (
                agg, source, mode), (name, row)
        # The old rows' configurations are kept, out of the default run.
        assert set(grid["legacy"]) == {"labels_only_dna", "labels_only_na_no_density",
                                       "dag_lp_l"}


def test_a_paper_row_of_another_configuration_is_refused(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({
        "name": "g", "config": "configs/digits.yaml",
        "rows": {"baseline": ["dna.aggregator=none", "pseudo_label.source=none"]}}))
    with pytest.raises(SystemExit, match="'baseline' is the paper's baseline row"
                       ".*pseudo_label.source=none"):
        reproduce.load_grid(path)


GRID = {"name": "g", "config": "configs/digits.yaml", "seeds": [0, 1],
        "set": ["optim.epochs=1"],
        "rows": {"labels_only": ["dna.aggregator=none", "pseudo_label.source=none"],
                 "baseline": ["dna.aggregator=none", "pseudo_label.source=model"],
                 "dna": ["pseudo_label.source=model"],
                 "labels_only_dna": ["pseudo_label.source=none"]},
        "renamed": {"baseline": "labels_only", "pseudo_label": "baseline",
                    "dna": "labels_only_dna"}}


def _old_record(grid, old_row, new_row, seed, error):
    """A result as an earlier commit wrote it: named ``old_row``, trained as
    today's ``new_row``."""
    cfg = reproduce.row_config(grid, new_row, seed).to_dict()
    cfg["name"] = f"g_{old_row}"
    del cfg["dna"]["learn_beta"]  # a key the record predates: its default
    return {"grid": "g", "row": old_row, "seed": seed, "command": f"old {old_row}",
            "wall_time_s": 1.0, "metrics": [],
            "summary": {"test_error_last": error, "config": cfg}}


def test_migrate_moves_results_to_the_rows_of_their_configuration(tmp_path, capsys):
    res, runs = tmp_path / "res", tmp_path / "runs"
    (res / "g").mkdir(parents=True)
    olds = [("baseline", "labels_only", 50.0), ("pseudo_label", "baseline", 40.0),
            ("dna", "labels_only_dna", 45.0)]
    for old, new, err in olds:
        for seed in (0, 1):
            (res / "g" / f"{old}__seed{seed}.json").write_text(
                json.dumps(_old_record(GRID, old, new, seed, err + seed)))
            (runs / "g" / old / f"seed{seed}").mkdir(parents=True)
            (runs / "g" / old / f"seed{seed}" / "mark").write_text(old)
    # A record of no row's configuration stays where it is.
    odd = _old_record(GRID, "pseudo_label", "baseline", 2, 1.0)
    odd["summary"]["config"]["optim"]["lr"] = 0.5
    (res / "g" / "pseudo_label__seed2.json").write_text(json.dumps(odd))
    moved = reproduce.migrate(GRID, res, runs)
    assert len(moved) == 6
    names = sorted(p.name for p in (res / "g").glob("*.json"))
    assert names == ["baseline__seed0.json", "baseline__seed1.json",
                     "labels_only__seed0.json", "labels_only__seed1.json",
                     "labels_only_dna__seed0.json", "labels_only_dna__seed1.json",
                     "pseudo_label__seed2.json"]
    for old, new, err in olds:
        for seed in (0, 1):
            rec = json.loads((res / "g" / f"{new}__seed{seed}.json").read_text())
            assert (rec["row"], rec["renamed_from"]) == (new, old)
            assert rec["command"] == f"old {old}"  # what it ran, as it was
            assert rec["summary"]["test_error_last"] == err + seed
            assert (runs / "g" / new / f"seed{seed}" / "mark").read_text() == old
    assert "[keep] g/pseudo_label__seed2.json: not row 'baseline' (differs in " \
        "optim.lr)" in capsys.readouterr().out
    assert not any(p.name.startswith(".") for p in (runs / "g").iterdir())
    assert reproduce.migrate(GRID, res, runs) == []  # done once
    # The runner reuses a result only where its configuration is the row's.
    rec = reproduce.run_one(GRID, "baseline", 0, [], False, res, runs)
    assert rec["renamed_from"] == "pseudo_label"
    (res / "g" / "dna__seed0.json").write_text(
        json.dumps(_old_record(GRID, "dna", "labels_only_dna", 0, 45.0)
                   | {"renamed_from": "x"}))
    with pytest.raises(SystemExit, match="another configuration than row 'dna' "
                       r"\(differs in pseudo_label.source\)"):
        reproduce.run_one(GRID, "dna", 0, [], False, res, runs)


def test_an_old_row_name_says_its_new_one(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(GRID))
    with pytest.raises(SystemExit, match="'pseudo_label' is now 'baseline'"):
        reproduce.main([str(path), "--rows", "pseudo_label", "--results",
                        str(tmp_path / "res"), "--runs", str(tmp_path / "runs")])


def test_verdict_reads_the_paired_spread():
    assert make_results.verdict([-2.0, -1.0]) == "holds"        # -1.5 + 0.71 < 0
    assert make_results.verdict([-2.0, 1.0]) == "within the spread"
    assert make_results.verdict([3.0, 1.0]) == "reversed"       # 2 - 1.41 > 0
    assert make_results.verdict([-5.0]) == "one seed"


def _rec(row, seed, err):
    return {"row": row, "seed": seed, "command": f"cmd {row}", "wall_time_s": 1.0,
            "metrics": [{"epoch": 1, "phase": "train", "time_epoch": 1.0}],
            "summary": {"test_error_last": err, "best_by_val": None}}


def test_the_headline_is_the_papers_table4(tmp_path):
    res = tmp_path / "res" / "g"
    res.mkdir(parents=True)
    errors = {"dag": (10.0, 12.0), "dplp": (14.0, 13.0), "dna": (13.0, 16.0),
              "baseline": (15.0, 17.0), "labels_only": (14.0, 18.0),
              "dag_lp_l": (1.0, 1.0)}
    for row, errs in errors.items():
        for seed, e in enumerate(errs):
            (res / f"{row}__seed{seed}.json").write_text(json.dumps(_rec(row, seed, e)))
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(
        {"name": "g", "config": "c.yaml", "rows": {r: [] for r in errors},
         "legacy": ["dag_lp_l"]}))
    lines = make_results.headline_table(res, tmp_path)
    table = [line[2:-2].split(" | ") for line in lines if line.startswith("| ")]
    assert table[0] == ["row", "seeds", "test error %", "Δ vs baseline (paired)",
                        "Δ vs labels_only (paired)",
                        "paper, C10-1000 (Δ vs its baseline)"]
    # The paper's order; the legacy row is left out of the headline.
    assert table[1:] == [
        ["labels_only", "2", "16.00 ± 2.83", "0.00 ± 1.41", "–", ""],
        ["baseline", "2", "16.00 ± 1.41", "–", "0.00 ± 1.41", "10.96"],
        ["dna", "2", "14.50 ± 2.12", "-1.50 ± 0.71", "-1.50 ± 0.71", ""],
        ["dplp (DPLP = LP-LU)", "2", "13.50 ± 0.71", "-2.50 ± 2.12",
         "-2.50 ± 3.54", "9.14 (-1.82)"],
        ["dag", "2", "11.00 ± 1.41", "-5.00 ± 0.00", "-5.00 ± 1.41", ""]]
    (line,) = [x for x in lines if x.startswith("The paper's ordering")]
    assert "DNA < baseline: **holds** (-1.50 ± 0.71)" in line
    assert "DPLP < baseline: **holds** (-2.50 ± 2.12)" in line  # -0.38 < 0
    assert "DAG < DNA: **holds** (-3.50 ± 0.71)" in line       # 10-13, 12-16
    assert "DAG < DPLP: **holds** (-2.50 ± 2.12)" in line  # -4, -1
    assert "baseline < labels only: **within the spread** (0.00 ± 1.41)" in line
    assert "DAG < baseline: **holds** (-5.00 ± 0.00)" in line
    # One column of the paper's Table 4 layout for this grid.
    table = [x[2:-2].split(" | ") for x in make_results.table4([res], tmp_path)
             if x.startswith("| ")]
    assert table[0] == ["row", "[g](details/g.md)",
                        "paper, C10-1000 (Δ vs its baseline)"]
    assert table[1:] == [
        ["labels only", "16.00 ± 2.83 (0.00 ± 1.41 / –)", "not quoted"],
        ["baseline", "16.00 ± 1.41 (– / 0.00 ± 1.41)", "10.96"],
        ["DNA", "14.50 ± 2.12 (-1.50 ± 0.71 / -1.50 ± 0.71)", "not quoted"],
        ["DPLP = LP-LU", "13.50 ± 0.71 (-2.50 ± 2.12 / -2.50 ± 3.54)", "9.14 (-1.82)"],
        ["DAG", "11.00 ± 1.41 (-5.00 ± 0.00 / -5.00 ± 1.41)", "not quoted"]]
    # The detail page keeps the legacy row, marked.
    detail = make_results.grid_table(res, tmp_path)
    assert any(x.startswith("| dag_lp_l (not a paper row) | 2 |") for x in detail)


def test_the_per_seed_table_says_a_records_old_name(tmp_path):
    res = tmp_path / "res" / "g"
    res.mkdir(parents=True)
    rec = _rec("baseline", 0, 15.0) | {"renamed_from": "pseudo_label"}
    (res / "baseline__seed0.json").write_text(json.dumps(rec))
    lines = make_results.per_seed_table(res, tmp_path)
    assert any("`g/baseline__seed0.json` (row `pseudo_label` until" in x for x in lines)


def test_what_each_row_teaches_per_epoch(tmp_path):
    res = tmp_path / "res" / "g"
    res.mkdir(parents=True)
    def rec(row, seed, accs, dplp=None):
        r = _rec(row, seed, 10.0)
        r["metrics"] = [{"epoch": e, "phase": "train", "time_epoch": 1.0,
                         "pl_acc_all": a} for e, a in enumerate(accs, 1)]
        for m, (pl, model) in zip(r["metrics"], dplp or [], strict=False):
            m.update(pl_acc=pl, model_acc_on_covered=model)
        return r
    recs = [rec("labels_only", 0, []), rec("baseline", 0, [0.5, 0.6]),
            rec("baseline", 1, [0.7, 0.8]),
            rec("dag", 0, [0.6, 0.9], dplp=[(0.8, 0.7), (0.95, 0.85)])]
    for r in recs:
        (res / f"{r['row']}__seed{r['seed']}.json").write_text(json.dumps(r))
    lines = make_results.label_bank_table(res, tmp_path)
    table = [line[2:-2].split(" | ") for line in lines if line.startswith("| ")]
    assert table == [["epoch", "baseline: targets right", "dag: targets right",
                      "dag: DPLP / Label Bank on covered"],
                     ["1", "0.600", "0.600", "0.800 / 0.700"],
                     ["2", "0.700", "0.900", "0.950 / 0.850"]]


def test_migrate_moves_nothing_where_a_destination_is_taken(tmp_path):
    res, runs = tmp_path / "res", tmp_path / "runs"
    (res / "g").mkdir(parents=True)
    (res / "g" / "pseudo_label__seed0.json").write_text(
        json.dumps(_old_record(GRID, "pseudo_label", "baseline", 0, 40.0)))
    # Today's baseline already ran (the labels-only one was never renamed).
    taken = _old_record(GRID, "baseline", "baseline", 0, 41.0)
    (res / "g" / "baseline__seed0.json").write_text(json.dumps(taken))
    with pytest.raises(SystemExit, match="nothing was moved"):
        reproduce.migrate(GRID, res, runs)
    assert sorted(p.name for p in (res / "g").iterdir()) == [
        "baseline__seed0.json", "pseudo_label__seed0.json"]
