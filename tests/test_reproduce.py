"""The experiment-grid runner and the RESULTS.md generator, on a tiny grid."""
import importlib.util
import json
import sys
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_grid_runs_skips_and_tabulates(tmp_path, capsys):
    reproduce, make_results = load("reproduce"), load("make_results")
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "tiny", "config": "configs/digits.yaml", "seeds": [0],
        "set": ["optim.epochs=1", "optim.pretrain_epochs=1", "log.progress=false",
                "log.tensorboard=false", "log.plots=false"],
        "rows": {"baseline": ["dna.enabled=false", "pseudo_label.source=none"],
                 "dag": []}}))
    args = [str(grid), "--results", str(tmp_path / "res"), "--runs",
            str(tmp_path / "runs")]
    reproduce.main(args)
    files = sorted((tmp_path / "res" / "tiny").glob("*.json"))
    assert [f.name for f in files] == ["baseline__seed0.json", "dag__seed0.json"]
    result = json.loads(files[1].read_text())
    assert result["row"] == "dag" and "--set seed=0" in result["command"]
    assert result["summary"]["test_error_last"] == result["metrics"][-1]["test_error"]
    capsys.readouterr()
    reproduce.main(args)  # second time: nothing to run
    assert capsys.readouterr().out.count("[skip]") == 2
    out = tmp_path / "RESULTS.md"
    make_results.main(["--results", str(tmp_path / "res"), "--out", str(out)])
    text = out.read_text()
    err = result["summary"]["test_error_last"]
    assert "| dag | 1 |" in text and f"{err:.2f}" in text
