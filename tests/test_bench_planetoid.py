"""benchmarks/speed/bench_planetoid.py on a tiny Planetoid-format folder
written here (nothing reads ../shared)."""
import json
import math
import pickle

import numpy as np
import pytest
import torch

from benchmarks.common import start_peak_rss
from benchmarks.speed import bench_planetoid as bench
from benchmarks.speed.planetoid_models import (
    ABLATIONS,
    MODELS,
    build_model,
    evaluate,
    train_step,
)
from dag_pyg import build_density_graph, graph_density

pytestmark = pytest.mark.cpu_only  # data files and a CLI: CPU by nature

NUM_TRAIN, NUM_VAL, NUM_EXTRA, NUM_TEST, DIM, CLASSES = 21, 500, 19, 40, 12, 3


def write_planetoid(folder, name="Cora", seed=0, missing=()):
    """The 8 ``ind.<name>.*`` files of a class-clustered toy graph: the
    public split's 21 training nodes, PyG's 500 validation nodes after them,
    a few unlabelled ones, and 40 test nodes (indices shuffled). ``missing``:
    test-range nodes without a row, which PyG's reader makes CiteSeer's
    isolated all-zero nodes (name "CiteSeer")."""
    rng = np.random.default_rng(seed)
    n_all = NUM_TRAIN + NUM_VAL + NUM_EXTRA
    n = n_all + NUM_TEST
    y = np.arange(n) % CLASSES
    x = (rng.random((n, DIM)) < 0.2).astype(np.float32)
    x[np.arange(n), y] = 1.0  # a class feature (and no all-zero row)
    onehot = np.eye(CLASSES, dtype=np.int64)[y]
    # The reader puts row i of tx (and ty) at node test_index[i].
    test_index = rng.permutation(np.arange(n_all, n))
    keep = ~np.isin(test_index, [n_all + m for m in missing])
    graph = {i: [] for i in range(n)}
    for i in range(n):
        for j in (i + CLASSES, i + 2 * CLASSES, i + 1):  # mostly same class
            if j < n:
                graph[i].append(j)
                graph[j].append(i)
    raw = folder / name / "raw"
    raw.mkdir(parents=True)
    prefix = f"ind.{name.lower()}."
    # Row i of tx/ty belongs to node test_index[i]; missing nodes have none.
    tx, ty = x[test_index[keep]], onehot[test_index[keep]]
    test_index = test_index[keep]
    arrays = {"x": x[:NUM_TRAIN], "allx": x[:n_all], "tx": tx,
              "y": onehot[:NUM_TRAIN], "ally": onehot[:n_all], "ty": ty}
    for key, arr in {**arrays, "graph": graph}.items():
        with open(raw / (prefix + key), "wb") as f:
            pickle.dump(arr, f)
    (raw / (prefix + "test.index")).write_text(
        "\n".join(str(i) for i in test_index) + "\n")
    return folder


@pytest.fixture(scope="module")
def planetoid(tmp_path_factory):
    root = write_planetoid(tmp_path_factory.mktemp("planetoid"))
    return root, root / "cache"


@pytest.fixture(scope="module")
def graphs(planetoid):
    root, cache = planetoid
    return {g: bench.load_graph(root, "Cora", cache, g, knn_k=4)
            for g in bench.GRAPHS}


def test_loader_applies_the_transforms(planetoid, graphs):
    root, cache = planetoid
    data, num_classes = graphs["citation"]
    n = NUM_TRAIN + NUM_VAL + NUM_EXTRA + NUM_TEST
    assert num_classes == CLASSES and data.num_nodes == n
    assert int(data.train_mask.sum()) == NUM_TRAIN
    assert int(data.val_mask.sum()) == NUM_VAL
    assert int(data.test_mask.sum()) == NUM_TEST
    torch.testing.assert_close(data.x.sum(dim=1), torch.ones(n))  # normalised
    dens, sim = graph_density(data.x, data.edge_index)
    assert torch.equal(data.density, dens) and torch.equal(data.sim, sim)
    # The data folder is only read; Planetoid processed under the cache.
    assert sorted(p.name for p in (root / "Cora").iterdir()) == ["raw"]
    assert (cache / "Cora" / "processed").is_dir()

    knn, _ = graphs["knn"]
    ref = build_density_graph(knn.x, 4)
    assert torch.equal(knn.edge_index, ref.edge_index)
    assert torch.equal(knn.density, ref.density)
    assert torch.equal(knn.y, data.y) and torch.equal(knn.test_mask, data.test_mask)


def test_missing_raw_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="Cora/raw"):
        bench.load_graph(tmp_path, "Cora", tmp_path / "cache", "citation", 4)
    with pytest.raises(ValueError, match="Unknown graph"):
        bench.graph_transform("full", 4)


@pytest.mark.parametrize("graph", bench.GRAPHS)
@pytest.mark.parametrize("name", MODELS + ABLATIONS)
def test_each_model_trains_one_epoch(graphs, graph, name):
    data, num_classes = graphs[graph]
    torch.manual_seed(0)
    model, optimizer = build_model(name, data.num_features, num_classes)
    before = [p.detach().clone() for p in model.parameters()]
    loss = train_step(model, optimizer, data)
    acc = evaluate(model, data)
    assert np.isfinite(loss)
    assert set(acc) == {"train", "val", "test"}
    assert all(0.0 <= a <= 100.0 for a in acc.values())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(),
                                                     strict=True))


def test_runs_are_seeded_and_summarised(graphs, capsys):
    data, num_classes = graphs["citation"]
    a = bench.run_interleaved(["DNA", "GCN"], data, num_classes, seeds=2,
                              epochs=3)
    b = bench.run_seed("GCN", data, num_classes, seed=1, epochs=3)
    assert a["GCN"]["test_acc"][1] == b["test_acc"]
    assert a["GCN"]["val_acc"][1] == b["val_acc"]
    assert len(a["DNA"]["test_acc"]) == 2 and "seed 1: DNA" in capsys.readouterr().out
    assert all(0 <= e < 3 for e in a["DNA"]["best_epoch"])
    assert a["DNA"]["epoch_s"] > 0 and len(a["DNA"]["epoch_s_per_seed"]) == 2
    s = bench.summarise([{"test_acc": 80.0, "val_acc": 79.0, "epoch": 1,
                          "epoch_times": [1.0, 3.0], "params": 5},
                         {"test_acc": 82.0, "val_acc": 81.0, "epoch": 2,
                          "epoch_times": [2.0, 9.0], "params": 5}])
    assert s["test_acc_mean"] == 81.0 and s["val_acc_mean"] == 80.0
    assert abs(s["test_acc_std"] - 2 ** 0.5) < 1e-12 and s["epoch_s"] == 2.5


def test_target_line():
    def res(acc, t, val=80.0):
        return {"test_acc_mean": acc, "test_acc_std": 0.5, "epoch_s": t,
                "val_acc_mean": val}

    met = bench.target_line({"citation/GAT": res(82.0, 0.02),
                             "citation/DNA": res(80.6, 0.01)})
    assert ": MET (" in met and "-1.4 points" in met
    slow = bench.target_line({"citation/GAT": res(82.0, 0.02),
                              "citation/DNA": res(82.5, 0.03)})
    assert ": MISSED (" in slow and "1.50x" in slow
    assert "MISSED" in bench.target_line({"citation/GAT": res(82.0, 0.02),
                                          "citation/DNA": res(80.4, 0.01)})
    assert "not run" in bench.target_line({})
    # Of two DNA variants, the one of the better validation accuracy counts.
    both = bench.target_line({"citation/GAT": res(82.0, 0.02),
                              "citation/DNA": res(80.4, 0.01, val=79.0),
                              "citation/DNA-T": res(81.0, 0.01, val=79.5)})
    assert ": MET (DNA-T 81.0" in both and "best DNA validation" in both


def test_main_without_memory(planetoid, tmp_path, capsys):
    root, cache = planetoid
    bench.main(["--root", str(root), "--cache", str(cache), "--seeds", "2",
                "--epochs", "2", "--knn-k", "4", "--memory-epochs", "0",
                "--results", str(tmp_path)])
    out = capsys.readouterr().out
    assert "DNA within 1.5 points of GAT's accuracy" in out
    payload = json.loads((tmp_path / "bench_planetoid.json").read_text())
    assert [(r["graph"], r["model"]) for r in payload["rows"]] == \
        [(g, m) for g in bench.GRAPHS for m in MODELS]
    assert payload["published"]["GAT"]["mean"] == 83.0
    gat = next(r for r in payload["rows"] if r["graph"] == "citation"
               and r["model"] == "GAT")
    assert gat["published"] == "83.0 ± 0.7"
    assert len(payload["results"]["knn/DNA"]["test_acc"]) == 2
    assert payload["results"]["citation/GCN"]["peak_mib"] is None


def test_quick_flag():
    args = bench.parse_args(["--root", "x", "--quick"])
    assert (args.seeds, args.epochs) == (2, 20)


@pytest.mark.slow
def test_main_measures_memory_in_a_subprocess(planetoid, tmp_path):
    root, cache = planetoid
    bench.main(["--root", str(root), "--cache", str(cache), "--seeds", "1",
                "--epochs", "2", "--memory-epochs", "2", "--models", "DNA",
                "--graphs", "citation", "--results", str(tmp_path)])
    payload = json.loads((tmp_path / "bench_planetoid.json").read_text())
    peak = payload["results"]["citation/DNA"]["peak_mib"]
    if start_peak_rss() is not None:  # Linux: VmHWM is resettable
        assert 0 <= peak < 1024
    assert "not run" in payload["target"]


def test_citeseer_with_featureless_isolated_nodes(tmp_path, capsys):
    """PyG's CiteSeer reader pads the test range's missing nodes with
    all-zero rows: every graph, model and the benchmark run on them."""
    root = write_planetoid(tmp_path / "data", "CiteSeer", missing=(3, 17))
    data, _ = bench.load_graph(root, "CiteSeer", tmp_path / "cache", "citation", 4)
    zero = (data.x == 0).all(dim=1)
    assert int(zero.sum()) == 2
    # A zero row has similarity 0 to every neighbour (and density 0).
    src, dst = data.edge_index
    assert bool((data.sim[zero[src] | zero[dst]] == 0).all())
    assert bool((data.density[zero] == 0).all())
    bench.main(["--root", str(root), "--name", "CiteSeer", "--cache",
                str(tmp_path / "cache"), "--seeds", "1", "--epochs", "2",
                "--knn-k", "4", "--memory-epochs", "0", "--results",
                str(tmp_path)])
    payload = json.loads((tmp_path / "bench_planetoid_citeseer.json").read_text())
    assert payload["dataset"] == "CiteSeer"
    assert [(r["graph"], r["model"]) for r in payload["rows"]] == \
        [(g, m) for g in bench.GRAPHS for m in MODELS]
    assert not (tmp_path / "bench_planetoid.json").exists()  # Cora's file


def test_ablations_are_what_they_say(graphs):
    data, num_classes = graphs["citation"]
    dna, _ = build_model("DNA-mean", data.num_features, num_classes)
    dna.eval()  # no attention dropout
    _, (ei, alpha) = dna.conv1(data.x, data.edge_index, data.density,
                               return_attention_weights=True)
    deg = torch.zeros(data.num_nodes).index_add_(0, ei[1], torch.ones(ei.size(1)))
    torch.testing.assert_close(alpha, 1.0 / deg[ei[1]], rtol=0, atol=1e-6)
    gat, _ = build_model("GAT-1", data.num_features, num_classes)
    assert (gat.conv1.heads, gat.conv1.out_channels) == (1, 64)


def test_same_class_mass_by_hand():
    from torch_geometric.data import Data

    # Node 0 receives from 1 (same class) and 2 (other); node 1 from 0 alone;
    # node 2 has no in-edges. Cosines 0.5 and 0; densities 0 and 1.
    x = torch.eye(3)
    edge_index = torch.tensor([[1, 2, 0], [0, 0, 1]])
    data = Data(x=x, edge_index=edge_index, y=torch.tensor([0, 0, 1]),
                density=torch.tensor([0.0, 0.0, 1.0]),
                sim=torch.tensor([0.5, 0.0, 0.2]))
    mass = bench.same_class_mass(data)
    # uniform: node 0 1/2, node 1 1; DNA: node 0 e^0.5 / (e^0.5 + e^1), node 1 1.
    a = math.exp(0.5) / (math.exp(0.5) + math.exp(1.0))
    assert mass["nodes"] == 2
    assert mass["uniform"] == pytest.approx((0.5 + 1.0) / 2)
    assert mass["dna_attention"] == pytest.approx((a + 1.0) / 2)


def test_bench_conv_reads_citeseer_with_featureless_nodes(tmp_path):
    from benchmarks.speed import bench_conv

    root = write_planetoid(tmp_path / "data", "CiteSeer", missing=(3, 17))
    out = tmp_path / "inputs"
    out.mkdir()
    # Only the Planetoid shape asked for: no 50k-node kNN graph is built.
    assert bench_conv.make_inputs(300, 4, out, root, ("citeseer",)) == ["citeseer"]
    x, edge_index, density, channels, sim = torch.load(out / "citeseer.pt")
    assert channels == (DIM, 64) and sorted(p.name for p in out.iterdir()) == [
        "citeseer.pt", "planetoid"]
    dens, ref_sim = graph_density(x, edge_index)
    assert torch.equal(density, dens) and torch.equal(sim, ref_sim)
    assert int((x.abs().sum(1) == 0).sum()) == 2  # the two missing test nodes


def test_bench_conv_refuses_planetoid_shapes_without_their_files(tmp_path):
    import subprocess
    import sys

    from benchmarks.common import ROOT

    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.speed.bench_conv", "--shapes",
         "citeseer", "--planetoid-root", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2
    assert f"skipping shape 'citeseer': no {tmp_path}/CiteSeer/raw" in res.stderr
    assert "none of --shapes citeseer can run" in res.stderr
