"""The sharded refresh (``distributed.graph: sharded``): its parts in one
process against the whole graph's (fast tier), and the whole refresh in 2
and 3 gloo processes against ``rank0``'s, bit for bit (slow tier)."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from dag_pyg.config import ConfigError, load_config
from dag_pyg.distributed import DistContext, Traffic
from dag_pyg.graph import build_density_graph, knn_search
from dag_pyg.graph.knn import has_faiss, query_blocks
from dag_pyg.nn import DNAHead
from dag_pyg.propagation import (
    density_ascending_parents,
    nearest_denser_rows,
    parent_step_distances,
    pseudo_labels,
    resolve_sigma,
    sigma_of_steps,
    step_distances,
)
from dag_pyg.sampler import knn_subgraph
from dag_pyg.train.features import extract_bank
from dag_pyg.train.logger import RunLogger
from dag_pyg.train.refresh import build_graph, label_bank_logits, refresh, shared_graph
from dag_pyg.train.setup import Run, build_model, load_data
from dag_pyg.train.sharded import (
    gather_parents,
    gather_subgraph,
    shard_label_bank_logits,
    shard_rows,
)

CPU = torch.device("cpu")


def clustered(n: int, d: int, classes: int = 5, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, d, generator=gen)
    x = centres[y] + 0.7 * torch.randn(n, d, generator=gen)
    x[3] = x[4]  # duplicate points: exact ties
    x[n // 2] = x[n // 2 + 1]
    return x, y


def shards(n: int, world: int) -> list[tuple[int, int]]:
    return [DistContext(r, world).shard_range(n) for r in range(world)]


@pytest.fixture
def small_faiss_blocks(monkeypatch):
    """faiss with query blocks of 64 rows, by BLAS from 4 rows on: the block
    rules at a size the fast tier can afford."""
    if not has_faiss():
        pytest.skip("faiss not installed")
    import faiss

    old = (faiss.cvar.distance_compute_blas_query_bs,
           faiss.cvar.distance_compute_blas_threshold)
    faiss.cvar.distance_compute_blas_query_bs = 64
    faiss.cvar.distance_compute_blas_threshold = 4 * 16
    yield
    faiss.cvar.distance_compute_blas_query_bs, \
        faiss.cvar.distance_compute_blas_threshold = old


# ------------------------------------------------------------- one process
@pytest.mark.parametrize("backend", ["exact", "faiss", "faiss_ivf",
                                     "faiss_ivf_hnsw"])
def test_graph_rows_equal_the_whole_graphs(backend, request):
    if backend != "exact":
        request.getfixturevalue("small_faiss_blocks")
    x, _ = clustered(700, 16)
    kw = {"chunk_size": 50} if backend == "exact" else {}
    if backend in ("faiss_ivf", "faiss_ivf_hnsw"):
        kw = {"ivf_nlist": 8, "ivf_nprobe": 2}
    whole = build_density_graph(x, 9, backend=backend, **kw)
    k = 9
    for world in (2, 3, 7):
        for start, end in shards(700, world):
            part = build_density_graph(x, k, backend=backend, rows=(start, end), **kw)
            assert part.rows == (start, end) and part.num_nodes == 700
            assert torch.equal(part.edge_index, whole.edge_index[:, start * k:end * k])
            assert torch.equal(part.sim, whole.sim[start * k:end * k])
            assert torch.equal(part.density, whole.density[start:end])
            if "ivf" in backend:  # tuned on the whole bank's sample
                assert part.ivf_nprobe == whole.ivf_nprobe
                assert part.ivf_recall == whole.ivf_recall
    empty = build_density_graph(x, k, backend=backend, rows=(5, 5), **kw)
    assert empty.edge_index.shape == (2, 0) and empty.density.numel() == 0


def test_query_blocks_cover_whole_blocks(small_faiss_blocks):
    # exact: blocks of chunk_size rows from 0.
    assert query_blocks("exact", 1000, 16, 120, 260, chunk_size=100) == (100, 300)
    assert query_blocks("exact", 1000, 16, 950, 1000, chunk_size=100) == (900, 1000)
    # faiss: blocks of 64, and at least 4 rows (64 / d=16) where N has them.
    assert query_blocks("faiss", 1000, 16, 70, 80) == (64, 128)
    assert query_blocks("faiss", 1000, 16, 990, 1000) == (960, 1000)
    assert query_blocks("faiss", 961, 16, 960, 961) == (896, 961)  # 1 row: widened
    assert query_blocks("faiss", 3, 16, 1, 2) == (0, 3)  # one block holds all
    assert query_blocks("torch_cluster", 1000, 16, 7, 9) == (7, 9)
    with pytest.raises(ValueError, match="0 <= start <= end <= 1000"):
        query_blocks("exact", 1000, 16, 5, 1001)


def test_knn_rows_bad_input():
    x, _ = clustered(50, 4)
    with pytest.raises(ValueError, match="self-search"):
        knn_search(x, x, 3, rows=(0, 10))
    for bad in ((3, 2), (0, 51), (-1, 5), (0.0, 5), (0, 5, 6), "0:5"):
        with pytest.raises(ValueError, match="rows must be a range"):
            knn_search(x, None, 3, rows=bad)
    with pytest.raises(ValueError, match="rows must be a range"):
        build_density_graph(x, 3, rows=(10, 60))


@pytest.mark.parametrize("sigma", [math.inf, 0.9, "q0.3"])
def test_parents_of_rows_equal_the_whole_graphs(sigma):
    x, _ = clustered(300, 6)
    whole = build_density_graph(x, 8, backend="exact")
    want = density_ascending_parents(whole, resolve_sigma(sigma, whole))
    steps = parent_step_distances(whole)
    for world in (1, 2, 3):
        parents, bests = [], []
        for start, end in shards(300, world):
            part = build_density_graph(x, 8, backend="exact", rows=(start, end))
            p, best = nearest_denser_rows(part.edge_index[0].view(-1, 8),
                                          part.sim.view(-1, 8), whole.density, start)
            parents.append(p)
            bests.append(best)
        got_steps = step_distances(torch.cat(bests))
        assert torch.equal(got_steps, steps)
        s = sigma_of_steps(sigma, got_steps)
        assert s == resolve_sigma(sigma, whole)
        got = torch.cat(parents).masked_fill(got_steps > s, -1)
        assert torch.equal(got, want)
    # Unsorted rows take the table path to the same parents.
    nbr, sim = whole.edge_index[0].view(-1, 8), whole.sim.view(-1, 8)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    p, _ = nearest_denser_rows(nbr[:, perm], sim[:, perm], whole.density)
    assert torch.equal(p, density_ascending_parents(whole))


def test_parents_of_rows_bad_input():
    x, _ = clustered(40, 4)
    g = build_density_graph(x, 5, backend="exact")
    nbr, sim = g.edge_index[0].view(-1, 5), g.sim.view(-1, 5)
    with pytest.raises(ValueError, match="one shape"):
        nearest_denser_rows(nbr, sim[:, :4], g.density)
    with pytest.raises(ValueError, match="lie in"):
        nearest_denser_rows(nbr[:10], sim[:10], g.density, start=35)
    with pytest.raises(ValueError, match="outside"):
        nearest_denser_rows(nbr + 100, sim, g.density)
    with pytest.raises(ValueError, match="sigma must be the distance"):
        zeros = torch.zeros(40, dtype=torch.long)
        pseudo_labels(g, zeros, zeros.bool(), zeros, sigma="q0.5",
                      parents=density_ascending_parents(g))
    with pytest.raises(ValueError, match="parents must have shape"):
        pseudo_labels(g, zeros, zeros.bool(), zeros, source="model",
                      parents=density_ascending_parents(g)[:30])


@pytest.mark.parametrize("hops,aggregator", [(0, "dna"), (1, "dna"), (2, "dna"),
                                             (1, "gat")])
def test_label_bank_of_rows_equals_the_whole_graphs(hops, aggregator):
    x, _ = clustered(400, 12)
    torch.manual_seed(0)
    head = DNAHead(12, 5, hops=hops, aggregator=aggregator)
    whole = build_density_graph(x, 10, backend="exact")
    sub = knn_subgraph(whole, 4)
    want = label_bank_logits(head, x, whole, 4, CPU)
    for world in (2, 3, 7):
        got = torch.cat([shard_label_bank_logits(head, x, sub, rows, CPU, batch=9)
                         for rows in shards(400, world)])
        assert torch.equal(got, want)  # bit for bit
    if hops:
        alone = shard_label_bank_logits(head, x, sub, (0, 400), CPU, neighbours=False)
        assert torch.equal(alone, head.forward_self(x))


def test_sharded_is_a_placement_and_steering_refuses_it():
    cfg = load_config("configs/digits.yaml", ["distributed.graph=sharded"])
    assert cfg.distributed.graph == "sharded"
    with pytest.raises(ConfigError, match="Did you mean 'sharded'"):
        load_config("configs/digits.yaml", ["distributed.graph=shard"])
    for method in ("steered", "auto"):
        with pytest.raises(ConfigError, match="rank0"):
            load_config("configs/digits.yaml", [f"method={method}",
                                                "distributed.graph=sharded"])


def test_one_process_context_counts_nothing_and_gathers_the_subgraph():
    ctx = DistContext(traffic=Traffic())
    x, _ = clustered(120, 6)
    cfg = load_config("configs/digits.yaml", ["graph.backend=exact"])
    part = shard_rows(ctx, x, cfg, CPU)
    whole = build_graph(x, cfg, CPU)
    sub = gather_subgraph(ctx, part, part.density, cfg.dna.k)
    _assert_same_graph(knn_subgraph(whole, cfg.dna.k), sub)
    parents, sigma = gather_parents(ctx, part, part.density, "q0.5")
    assert torch.equal(parents, density_ascending_parents(whole, sigma))
    assert ctx.traffic.calls == 0 and ctx.traffic.bytes == 0
    with pytest.raises(ValueError, match="k_sub=11"):
        gather_subgraph(ctx, part, part.density, 11)


# ----------------------------------------------------------- several ranks
def _assert_same_graph(want, got) -> None:
    assert set(want.keys()) == set(got.keys()), (want.keys(), got.keys())
    for key, value in want.items():
        other = got[key]
        if isinstance(value, Tensor):
            assert value.dtype == other.dtype and torch.equal(value, other), key
        elif isinstance(value, float) and math.isnan(value):
            assert math.isnan(other), key
        else:
            assert value == other, key


def _same(a, b) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


def _assert_same_refresh(ref, got, k_sub: int, rank: int) -> None:
    _assert_same_graph(knn_subgraph(ref.graph, k_sub), got.graph)
    for name in ("features", "prior", "targets", "weights"):
        a, b = getattr(ref.banks, name), getattr(got.banks, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and torch.equal(a, b), name
    assert ref.banks.neighbours == got.banks.neighbours
    keys = {k for k in ref.stats if not k.startswith("time_")}
    assert keys == {k for k in got.stats if not k.startswith("time_")}
    for key in keys:
        assert _same(ref.stats[key], got.stats[key]), (key, ref.stats[key],
                                                       got.stats[key])
    if rank == 0:  # rank0 keeps the path lengths on rank 0
        assert torch.equal(ref.path_lengths, got.path_lengths)


def _expected_bytes(n: int, world: int, k_sub: int, cfg) -> int:
    """The module docstring's formula: int32 ids and labels, float32 values,
    shards padded to the largest."""
    rows = world * max(DistContext(0, world).shard_sizes(n))
    pl = cfg.pseudo_label
    per_node = 4 + 8 * k_sub + 4 + 4
    per_node += 4 * isinstance(cfg.dplp.sigma, str)
    per_node += 4 * (pl.threshold > 0 or pl.admit != "all")
    per_node += 4 * (pl.source != "none" and (pl.weighting != "none" or pl.weight != 1))
    return rows * per_node


# Digits with its own backbone: one variant per code path of the refresh.
VARIANTS = [
    [],
    ["dplp.sigma=q0.5", "pseudo_label.weighting=certainty",
     "pseudo_label.threshold=0.2", "pseudo_label.admit=agree", "data.num_check=20"],
    ["dna.hops=2", "pseudo_label.source=model", "dplp.mode=L", "dplp.sigma=0.6"],
    ["dna.aggregator=none", "pseudo_label.weight=0.5"],
]


def _pair(ctx: DistContext, overrides: list[str], feats: Tensor | None = None,
          data=None):
    """The refresh of one model under rank0 and under sharded."""
    out, traffic = {}, {}
    for mode in ("rank0", "sharded"):
        cfg = load_config("configs/digits.yaml", ["log.progress=false", *overrides,
                                                  f"distributed.graph={mode}"])
        torch.manual_seed(0)
        own = load_data(cfg)
        model = build_model(cfg, own, CPU, DistContext())
        run = Run(cfg=cfg, model=model, data=own if data is None else data,
                  device=CPU, dist=ctx, log=RunLogger(), gen=torch.Generator())
        # The bank of the model, as training extracts it (all-gathered).
        bank = extract_bank(run)[0] if feats is None else feats
        ctx.traffic = traffic[mode] = Traffic()
        out[mode] = refresh(run, features=bank)
        ctx.traffic = None
        out[mode + "_graph"] = shared_graph(run, bank)
        out[mode + "_run"] = run
    return out, traffic, cfg


def _ranks(rank: int, world: int, store: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world)
    ctx = DistContext(rank, world, rank, "gloo", grad_group=dist.new_group())
    torch.set_num_threads(1)
    for overrides in VARIANTS:
        out, traffic, cfg = _pair(ctx, overrides)
        ref, got = out["rank0"], out["sharded"]
        _assert_same_refresh(ref, got, cfg.dna.k, rank)
        _assert_same_graph(knn_subgraph(out["rank0_graph"], cfg.dna.k),
                           out["sharded_graph"])
        # Parents and the graph's rows against the whole graph's.
        feats = got.banks.features
        whole = build_graph(feats, cfg, CPU)
        part = shard_rows(ctx, feats, cfg, CPU)
        start, end = ctx.shard_range(feats.size(0))
        k = cfg.graph.k
        assert torch.equal(part.edge_index, whole.edge_index[:, start * k:end * k])
        parents, sigma = gather_parents(ctx, part, whole.density, cfg.dplp.sigma)
        assert sigma == resolve_sigma(cfg.dplp.sigma, whole)
        assert torch.equal(parents, density_ascending_parents(whole, sigma))
        # O(N): exactly the formula's all-gathers, no broadcast.
        n = feats.size(0)
        assert traffic["sharded"].by_kind == {
            "all_gather": _expected_bytes(n, world, cfg.dna.k, cfg)}
        assert traffic["rank0"].by_kind["broadcast"] >= 20 * n * k

    # A larger bank of another width, by faiss in blocks of 64 queries.
    import faiss

    faiss.cvar.distance_compute_blas_query_bs = 64
    faiss.cvar.distance_compute_blas_threshold = 4 * 32
    _, y = clustered(2000, 32)
    mask = torch.zeros(2000, dtype=torch.bool)
    mask[::50] = True
    data = SimpleNamespace(labelled_mask=mask, true_y=y, num_classes=10,
                           check_mask=None)
    overrides = ["graph.backend=faiss", "graph.k=12", "dna.k=6",
                 "dplp.sigma=q0.7", "model.backbone=mlp"]
    cfg = load_config("configs/digits.yaml", overrides)
    torch.manual_seed(0)
    width = build_model(cfg, load_data(cfg), CPU, DistContext()).backbone.feat_dim
    feats, _ = clustered(2000, width)
    out, traffic, cfg = _pair(ctx, overrides, feats=feats, data=data)
    _assert_same_refresh(out["rank0"], out["sharded"], cfg.dna.k, rank)
    dist.destroy_process_group()


@pytest.mark.slow  # spawns processes
@pytest.mark.cpu_only
@pytest.mark.parametrize("world", [2, 3])  # 3: shards of unequal size
def test_sharded_refresh_equals_rank0(tmp_path: Path, world: int):
    if not has_faiss():
        pytest.skip("faiss not installed")
    mp.spawn(_ranks, args=(world, str(tmp_path / "store")), nprocs=world, join=True)
