import math
from pathlib import Path

import pytest

from dag_pyg.config import Config, ConfigError, choices, load_config, valid_keys

pytestmark = pytest.mark.cpu_only  # files, configs, logs: CPU by nature

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_every_shipped_config_loads():
    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    for needed in ["digits.yaml", "cifar10_cpu.yaml", "cifar10_500.yaml",
                   "cifar10_1000.yaml", "cifar10_2000.yaml", "cifar10_4000.yaml",
                   "cifar100_4000.yaml", "cifar100_10000.yaml",
                   "miniimagenet_4000.yaml", "miniimagenet_10000.yaml"]:
        assert needed in names
    for name in names:
        load_config(CONFIGS / name)


def test_paper_settings_come_through_inheritance():
    cfg = load_config(CONFIGS / "cifar10_4000.yaml")
    assert cfg.name == "cifar10_4000" and cfg.data.num_labelled == 4000
    assert cfg.model.backbone == "cnn13" and cfg.graph.k == 64
    assert cfg.optim.epochs == 400 and cfg.optim.lr == 0.1
    assert cfg.optim.milestones == [250, 350]
    mini = load_config(CONFIGS / "miniimagenet_4000.yaml")
    assert mini.optim.lr == 0.2 and mini.model.backbone == "resnet18"
    assert mini.data.image_size == 84
    assert load_config(CONFIGS / "digits.yaml").dplp.sigma == math.inf


def test_base_chain_and_overrides(tmp_path):
    write(tmp_path, "a.yaml", "graph:\n  k: 20\n  backend: exact\nseed: 3\n")
    write(tmp_path, "b.yaml", "base: a.yaml\ngraph:\n  k: 30\n")
    cfg = load_config(tmp_path / "b.yaml", ["dna.hops=2", "dplp.sigma=q0.5",
                                            "optim.milestones=[5, 7]",
                                            "optim.lr=1"])
    assert cfg.graph.k == 30 and cfg.graph.backend == "exact" and cfg.seed == 3
    assert cfg.dna.hops == 2 and cfg.dplp.sigma == "q0.5"
    assert cfg.optim.milestones == [5, 7]
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


def test_unknown_key_names_closest_and_valid_keys(tmp_path):
    p = write(tmp_path, "c.yaml", "dna:\n  hopz: 2\n")
    with pytest.raises(ConfigError, match=r"Unknown config key 'dna.hopz'.*"
                       r"Did you mean 'dna.hops'\?.*Valid keys: .*graph.k"):
        load_config(p)
    with pytest.raises(ConfigError, match="Did you mean 'graph.backend'"):
        load_config(None, ["graph.bakend=exact"])


@pytest.mark.parametrize("override,match", [
    ("dna.hops=two", "'dna.hops' must be int"),
    ("dna.enabled=3", "'dna.enabled' must be bool"),
    ("optim.milestones=5", "'optim.milestones' must be list"),
    ("dna.aggregator=gcn", r"'dna.aggregator' must be one of"),
    ("pseudo_label.source=dplpp", "Did you mean 'dplp'"),
    ("dplp.sigma=q1.5", "quantile"),
    ("dplp.sigma=-1", ">= 0"),
    ("dna.k=100", "cannot exceed graph.k"),
    ("dna.hops=-1", "'dna.hops' must be >= 0"),
    ("optim.labelled_batch_size=1000", "labelled_batch_size"),
    ("graph.ivf_nlist=0", "'graph.ivf_nlist' must be >= 1"),
    ("graph.ivf_nprobe=0", "'graph.ivf_nprobe' must be >= 1"),
    ("graph.ivf_recall=1.5", "'graph.ivf_recall' must be in"),
    ("graph.refresh_per_epoch=0", "'graph.refresh_per_epoch' must be >= 1"),
    ("distributed.timeout_s=0", "'distributed.timeout_s' must be > 0"),
    ("distributed.graph=rank1", "Did you mean 'rank0'"),
    ("pseudo_label.weighting=certain", "Did you mean 'certainty'"),
    ("pseudo_label.weight=-0.5", "'pseudo_label.weight' must be a finite number >= 0"),
    ("pseudo_label.weight=.inf", "'pseudo_label.weight' must be a finite number >= 0"),
    ("optim.ema_decay=1.0", r"'optim.ema_decay' must be in \[0, 1\)"),
    ("optim.ema_decay=-0.1", r"'optim.ema_decay' must be in \[0, 1\)"),
    ("graph.bank=online loss.mixup_at=feature optim.ema_decay=0.99",
     "graph.bank=online writes the live model's features"),
    ("model.precise_bn=-1", "'model.precise_bn' must be >= 0"),
    ("graph.freeze_lr=1.0", r"'graph.freeze_lr' must be in \[0, 1\)"),
    ("graph.freeze_lr=-0.1", r"'graph.freeze_lr' must be in \[0, 1\)"),
    ("graph.freeze_lr=0.1 graph.bank=online loss.mixup_at=feature",
     "graph.freeze_lr keeps the Feature Bank"),
])
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(CONFIGS / "digits.yaml", override.split())


def test_section_given_a_value(tmp_path):
    with pytest.raises(ConfigError, match="'graph' is a section"):
        load_config(write(tmp_path, "s.yaml", "graph: 3\n"))


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    write(tmp_path, "x.yaml", "base: y.yaml\n")
    write(tmp_path, "y.yaml", "base: x.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["dna.hops"])


def test_ablation_switches_are_keys():
    keys = set(valid_keys())
    for key in ["dna.aggregator", "dna.hops", "dna.k",
                "pseudo_label.source", "dplp.mode", "dplp.sigma", "graph.k",
                "graph.backend"]:
        assert key in keys


def test_allowed_values_match_the_modules_that_validate_them():
    # The config's Literal types and the library's own checks agree.
    from dag_pyg.data import DATASETS
    from dag_pyg.graph.density import DENSITIES
    from dag_pyg.graph.knn import BACKENDS
    from dag_pyg.models import BACKBONES
    from dag_pyg.nn import AGGREGATORS
    from dag_pyg.propagation import ADMISSIONS, MODES, SOURCES, WEIGHTINGS
    from dag_pyg.sampler import SAMPLERS

    allowed = choices()
    for key, owner in {"data.name": tuple(DATASETS), "graph.density": DENSITIES,
                       "graph.backend": BACKENDS, "model.backbone": tuple(BACKBONES),
                       "dna.aggregator": AGGREGATORS, "pseudo_label.admit": ADMISSIONS,
                       "dplp.mode": MODES, "pseudo_label.source": SOURCES,
                       "pseudo_label.weighting": WEIGHTINGS,
                       "dna.sampler": SAMPLERS}.items():
        assert allowed[key] == tuple(owner), key
    assert allowed["method"] == ("dag", "steered", "auto")
    assert allowed["graph.bank_amp"] == allowed["optim.amp"] == ("none", "bf16", "fp16")
    assert len(allowed) == 18


def test_config_is_a_leaf_module():
    # config.py imports no other dag_pyg module, and no trainer module
    # imports one inside a function (a sign of a dodged import circle).
    import ast

    def dag_imports(tree, in_functions):
        nodes = [n for f in ast.walk(tree)
                 if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                 for n in ast.walk(f)] if in_functions else list(ast.walk(tree))
        return [n.module for n in nodes if isinstance(n, ast.ImportFrom)
                and (n.module or "").startswith("dag_pyg")] + [
            a.name for n in nodes if isinstance(n, ast.Import)
            for a in n.names if a.name.startswith("dag_pyg")]

    pkg = CONFIGS.parent / "dag_pyg"
    assert dag_imports(ast.parse((pkg / "config.py").read_text()), False) == []
    for path in sorted((pkg / "train").glob("*.py")):
        assert dag_imports(ast.parse(path.read_text()), True) == [], path.name


def test_one_set_of_defaults():
    # The experiment files say only what differs from the dataclasses.
    assert Config().optim.pretrain_epochs == 20 and Config().eval.batch_size == 500
    assert not (CONFIGS / "base.yaml").exists()


def test_dna_enabled_of_earlier_releases_is_translated(tmp_path):
    with pytest.warns(FutureWarning, match="dna.aggregator: none"):
        cfg = load_config(CONFIGS / "digits.yaml", ["dna.enabled=false"])
    assert cfg.dna.aggregator == "none" and "enabled" not in cfg.to_dict()["dna"]
    old = write(tmp_path, "old.yaml", "dna:\n  enabled: true\n  aggregator: gat\n")
    with pytest.warns(FutureWarning):
        assert load_config(old).dna.aggregator == "gat"


def test_affine_augmentation_keys():
    from dag_pyg.train.setup import load_data

    cfg = load_config("configs/digits.yaml", ["data.affine_degrees=15",
                                              "data.affine_scale=0.1",
                                              "data.affine_shear=5"])
    assert load_data(cfg).train_tf.affine == (15.0, 0.1, 5.0)
    assert load_data(load_config("configs/digits.yaml")).train_tf.affine == (0, 0, 0)
    for bad in ("data.affine_degrees=200", "data.affine_scale=1.0",
                "data.affine_shear=-1"):
        with pytest.raises(ConfigError, match="must lie in \\[0, 180\\], \\[0, 1\\)"):
            load_config("configs/digits.yaml", [bad])
