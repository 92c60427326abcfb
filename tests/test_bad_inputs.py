"""Bad data files and impossible settings stop a run with one line naming
the problem and the fix, before any training (issue 17); --debug shows the
traceback."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dag_pyg.cli import main
from dag_pyg.config import load_config
from dag_pyg.data import BadImageError, load_dataset
from dag_pyg.train.setup import load_data

pytestmark = pytest.mark.cpu_only  # files, configs, logs: CPU by nature


def image_tree(root, corrupt="train/b/1.jpg"):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for c in "ab":
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                                ).save(root / split / c / f"{i}.jpg")
    path = root / corrupt
    path.write_bytes(path.read_bytes()[:40])  # a truncated JPEG
    return path


def test_corrupt_image_is_named_or_skipped(tmp_path):
    bad = image_tree(tmp_path / "d")
    with pytest.raises(BadImageError, match=rf"'{bad}' cannot be decoded.*"
                       "data.skip_bad_files: true"):
        load_dataset("imagefolder", root=str(tmp_path / "d"), progress=False)
    train, test = load_dataset("imagefolder", root=str(tmp_path / "d"),
                               progress=False, skip_bad_files=True)
    assert len(train) == 5 and train.skipped == [str(bad)] and test.skipped == []
    assert train.targets.tolist() == [0, 0, 0, 1, 1]
    # The decoded cache remembers the skipped file: without skipping it is
    # still an error, not a silent smaller set.
    with pytest.raises(BadImageError, match=str(bad)):
        load_dataset("imagefolder", root=str(tmp_path / "d"), progress=False)


def cli(capsys, *args):
    rc = main(list(args))
    return rc, capsys.readouterr().err.strip()


def test_cli_gives_one_line_errors(tmp_path, capsys):
    bad = image_tree(tmp_path / "d")
    folder = ["--set", "data.name=imagefolder", "--set", f"data.root={tmp_path / 'd'}",
              "--set", "log.progress=false", "--set", "data.num_labelled=2"]
    rc, err = cli(capsys, "train", "configs/digits.yaml", "--out",
                  str(tmp_path / "r"), *folder)
    assert rc == 2 and err.count("\n") == 0 and str(bad) in err
    # More labels per class than the class holds: the split says so.
    rc, err = cli(capsys, "train", "configs/digits.yaml", "--out", str(tmp_path / "s"),
                  "--set", "data.num_labelled=500")
    assert rc == 2 and err.startswith("error:") and err.count("\n") == 0
    with pytest.raises(ValueError):
        main(["train", "configs/digits.yaml", "--out", str(tmp_path / "t"),
              "--set", "data.num_labelled=500", "--debug"])
    assert not (tmp_path / "s" / "checkpoint.pt").exists()


def test_split_file_of_another_training_set(tmp_path):
    cfg = load_config("configs/digits.yaml", ["data.num_train=1000"])
    load_data(cfg).split.save(str(tmp_path / "split.json"))
    meta = json.loads((tmp_path / "split.json").read_text())["meta"]
    assert meta["dataset"] == "digits" and len(meta["targets_sha1"]) == 40
    # The same split file for its own data loads; another subset of the same
    # size (another seed draws it) is refused.
    same = load_config("configs/digits.yaml", ["data.num_train=1000",
                                               f"data.split_file={tmp_path}/split.json"])
    assert load_data(same).split.labelled.numel() == 50
    other = load_config("configs/digits.yaml", ["data.num_train=1000", "seed=1",
                                                f"data.split_file={tmp_path}/split.json"])
    with pytest.raises(ValueError, match="made for another training set.*targets_sha1"):
        load_data(other)


def test_malformed_yaml_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("dna: [1, 2\n")
    rc, err = cli(capsys, "train", str(tmp_path / "bad.yaml"))
    assert rc == 2 and err.count("\n") == 0 and "is not valid YAML" in err
