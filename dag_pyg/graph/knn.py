r"""k-nearest-neighbour search by cosine similarity, with several engines.

Every exact backend returns the same answer on tie-free data: candidates found
by the engine are re-scored with one formula (a row-wise dot product of
L2-normalised features) and ordered by descending similarity, ties by the
smaller index. Rows whose k-th and (k+1)-th candidates tie are re-solved by a
full stable sort, so the tie rule holds on every backend. The approximate
backends re-solve such rows by their own index, with longer lists: the rule
then holds among the points the index reaches.

``faiss_ivf`` is approximate (an inverted-file index: each query scans the
``nprobe`` nearest of ``nlist`` k-means cells), for Feature Banks too large
for exact search. With ``nlist`` growing as about :math:`4\sqrt{N}`, a fixed
``nprobe`` scans an ever smaller share of the cells and loses neighbours
silently (measured: recall 0.91 at 300k nodes, 0.65 at 1M with
``nprobe=16``), so by default ``nprobe`` is tuned at build time: starting
from ``ivf_nprobe`` it doubles until the neighbours of a fixed sample of
queries, found exactly, are recalled at ``ivf_recall`` (0.99), then halves
the last step :data:`TUNE_BISECTIONS` times (the search costs about in
proportion to ``nprobe``), and the measured recall is logged and
returned. The sample's recall must reach the target less
:data:`RECALL_Z` standard errors of its mean (the spread of the queries' own
recalls over the square root of their number): a sample just at the target
leaves the whole graph below it about half the time (measured:
``faiss_hnsw`` at 1M nodes, sample 0.991, 2,000 other random rows 0.986).
``benchmarks/speed/bench_knn_ivf.py`` measures the recall of whole graphs
against exact search. Its candidates get the same re-scoring and ordering.
Both approximate backends search their queries grouped by region
(:func:`search_local`): a bank in random order otherwise sends consecutive
queries to distant vectors and cells, and the search waits on memory.
``faiss_hnsw`` adds its nodes in the same grouped order, for the same reason.

``faiss_ivf_hnsw`` is ``faiss_ivf`` whose cells are found by an HNSW graph
over their centres (faiss' ``IndexIVFFlat`` over ``IndexHNSWFlat``, the
coarse quantizer faiss recommends for large banks) rather than by scanning
all of them: the cells then keep a fixed size as N grows
(:data:`IVF_HNSW_CELL` nodes), a query scans ``nprobe`` of them, and the
search grows as about N where the flat quantizer's grows as N^1.5.
``nprobe`` is tuned as ``faiss_ivf``'s. faiss-gpu has no HNSW: it runs on
the CPU, where ``auto`` picks it above :data:`IVF_AUTO_NODES` nodes.

``faiss_hnsw`` is approximate too: faiss' flat HNSW graph
(``IndexHNSWFlat``: no k-means, no cells). Its ``efSearch`` is tuned as
``nprobe`` is (to ``ivf_recall`` on the same sample of exact queries, steps
of 1.5x from ``hnsw_ef_search``, the last step halved as nprobe's), and
the tuned value and the measured recall are logged and returned. Measured by
``benchmarks/speed/bench_refresh_scale.py`` (one thread, 128-d banks of 100
Gaussian classes, k=64), it is 1.6x to 2.1x slower than ``faiss_ivf`` from
50k to 300k nodes at the same recall target, so ``auto`` does not pick it
(fitted from 100k to 300k it grows as about :math:`N^{1.45}` against
:math:`N^{1.57}`, three sizes and a tuned setting that jumps between them:
no evidence yet that it overtakes at larger N). With several OpenMP
threads faiss adds the nodes to the HNSW graph in an unspecified order (faiss
wiki, "Threads and asynchronous calls"; its search is deterministic): the
graph, and so a few neighbours of a few nodes, may differ between runs, or
between ranks that each build their own (``distributed.graph: replicate``
or ``sharded``, whose shards then come from different graphs), unless faiss
runs one thread.
"""
from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Callable

import torch
from torch import Tensor

BACKENDS = ("auto", "exact", "faiss", "faiss_ivf", "faiss_ivf_hnsw", "faiss_hnsw",
            "torch_cluster")
APPROXIMATE = ("faiss_ivf", "faiss_ivf_hnsw", "faiss_hnsw")
# Candidates fetched past k to settle near-ties at the k-th place.
EXTRA = 2
# Rows of candidate lists whose near-ties are settled per block (bounds the
# memory of the re-scoring at about RESCORE_ROWS * k * d floats).
RESCORE_ROWS = 2048
# Rows solved exactly (k-th place tied to the end of the list, or too few
# found) are scored against the whole base, this many scores at a time
# (512 MB): 3,584 such rows of a 2M-node HNSW graph asked for 28.7 GB at once.
REFINE_SCORES = 1 << 27
# The approximate backends solve such rows with their own index instead, its
# list doubled (up to this many candidates) until the tie clears: a scan of
# the whole base per row made it grow as N^2 (rows tied at the k-th place
# grow with the bank's density: 9 s of faiss_ivf_hnsw's 1M-node graph, 75 s
# of its 2M one). Rows still tied, or short of k, are solved exactly.
WIDEN_MAX = 1024
# faiss_ivf's default: the recall of exact neighbours its nprobe is tuned to,
# measured on this many queries (evenly spaced rows: deterministic).
IVF_RECALL = 0.99
IVF_SAMPLE = 1000
# The tuning's margin, in standard errors of the sample's mean recall: two
# put the whole graph's recall at the target with about 97.7 % confidence
# (one-sided, normal approximation) rather than 50 %.
RECALL_Z = 2.0
# backend "auto" on the CPU: above this many nodes exact search (N^2 d) takes
# minutes per graph (about 100 s at 200k, 128-d, 2 threads) and
# faiss_ivf_hnsw with a tuned nprobe is used. It overtook faiss_ivf (flat
# quantizer, ~4 sqrt(N) cells) by 1M nodes: 118.5 against 289.9 CPU s at
# recall 0.998 and 1.000 (bench_refresh_scale_imagenet_pc, same bank and
# run, one thread), and its search grows as about N, the flat one's as N^1.5.
IVF_AUTO_NODES = 200_000
# faiss_ivf_hnsw: IVF cells found by an HNSW graph over the centres, not a
# scan of all of them, so the cells can keep a fixed size as N grows (about
# this many nodes each): a query then scans nprobe cells of fixed size, not
# nprobe of N / (4 sqrt(N)), and the search grows as about N, not N^1.5.
# The centres are trained on this many points per cell (faiss' default 256
# makes the k-means the larger part at fixed cell size: it grows as N).
IVF_HNSW_CELL = 1024
IVF_HNSW_TRAIN_PER_CELL = 64
# The HNSW graph over the centres searches with this beam (faiss widens it
# to nprobe where that is larger): one thread, 1,281 nodes per class, the
# whole faiss_ivf_hnsw graph took 143.9 CPU s at 1M nodes with 16 against
# 191.3 s with faiss_hnsw's 64, at the same tuned nprobe (2) and recall
# (0.9976 and 0.9967 on 2,000 random rows); 34.5 against 42.7 s at 300k
# (8: 32.5 s, recall 0.9965 against 0.9970).
IVF_HNSW_QUANTIZER_EF = 16
# The tuning halves the step from the last nprobe / efSearch that missed the
# recall target to the first that reached it this many times (to an eighth
# of the step), keeping the smallest that reaches it.
TUNE_BISECTIONS = 3
# faiss_hnsw's defaults: links per node and build-time beam. A wider build
# beam makes a better graph that reaches the recall target at a smaller
# efSearch (measured at 100k nodes, 128-d, k=64: efConstruction 80 recalls
# 0.996 at efSearch 96, faiss' default 40 only 0.976).
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
# efSearch: where the tuning starts (faiss searches at least k), the factor
# of each step (finer than doubling: the search cost grows with efSearch,
# the tuning's sample costs little), and where it gives up.
HNSW_EF_SEARCH = 64
HNSW_EF_STEP = 1.5
HNSW_EF_MAX = 4096

# The approximate searches visit the queries grouped by region (the nearest
# of about sqrt(M) centres drawn from the M queries), in blocks of this many
# rows: consecutive queries then read the same vectors and links from cache.
# Each query's result is its own, so the graph is the same; the search of a
# random-order 300k bank ran 2.2x faster (bench_refresh_scale's banks).
LOCAL_ORDER_BLOCK = 65536
# faiss_hnsw adds the nodes to its graph in the same grouped order:
# measured on bench_refresh_scale's banks (one thread, efConstruction 80),
# the build 1.11x faster at 100k nodes and 1.20x at 300k, the search 1.4x,
# and the recall at a given efSearch within 0.002 of random-order insertion.

log = logging.getLogger(__name__)
# An approximate index's search of more candidates for given queries (ids).
Widen = Callable[[Tensor, int], Tensor]


def has_faiss() -> bool:
    return importlib.util.find_spec("faiss") is not None


def has_torch_cluster() -> bool:
    try:
        import torch_cluster  # noqa: F401
    except (ImportError, OSError):  # OSError: built against another torch
        return False
    return True


def resolve_backend(backend: str, device: torch.device,
                    num_nodes: int | None = None) -> str:
    r"""Maps ``backend`` (possibly ``"auto"``) to a concrete engine name.

    ``auto`` follows ``benchmarks/speed/bench_knn.py``: on the CPU faiss' flat
    inner-product index is the fastest exact engine (the blocked matmul comes
    next, ``torch_cluster`` is an order of magnitude slower), and above
    :data:`IVF_AUTO_NODES` nodes (``num_nodes``) faiss_ivf_hnsw with its
    recall tuned to :data:`IVF_RECALL` (logged); on CUDA the blocked cuBLAS matmul
    avoids a host round trip and is used unless faiss-gpu is installed.
    """
    if backend not in BACKENDS:
        raise ValueError(
            f"Unknown kNN backend '{backend}'. Choose one of {list(BACKENDS)}.")
    if backend != "auto":
        if backend in ("faiss", *APPROXIMATE) and not has_faiss():
            raise ValueError(f"kNN backend '{backend}' needs the faiss package: "
                             "`pip install faiss-cpu` (or faiss-gpu), or pick "
                             "backend='exact'.")
        if backend == "torch_cluster" and not has_torch_cluster():
            raise ValueError("kNN backend 'torch_cluster' needs a working "
                             "torch-cluster build for this torch: `pip install "
                             "--no-build-isolation torch-cluster`, or pick "
                             "backend='exact'.")
        return backend
    if device.type == "cpu":
        if not has_faiss():
            return "exact"
        if num_nodes is not None and num_nodes > IVF_AUTO_NODES:
            log.info("graph backend auto: faiss_ivf_hnsw for %d nodes (exact "
                     "search grows as N^2; above %d nodes its nprobe is tuned to "
                     "recall %.2f of the exact neighbours)", num_nodes,
                     IVF_AUTO_NODES, IVF_RECALL)
            return "faiss_ivf_hnsw"
        return "faiss"
    if has_faiss():
        import faiss

        if hasattr(faiss, "StandardGpuResources"):
            return "faiss"
    return "exact"


def normalize_rows(x: Tensor, name: str = "x", allow_zero: bool = False) -> Tensor:
    """L2-normalises rows after checking that they can be normalised; with
    ``allow_zero`` an all-zero row stays zero (cosine similarity 0 to every
    row, as ``F.normalize`` gives the layers), else it is an error."""
    if x.dim() != 2:
        raise ValueError(f"'{name}' must be a 2-D tensor [num_nodes, num_features]"
                         f" (got shape {tuple(x.shape)}); reshape it with "
                         f"{name}.view({name}.size(0), -1).")
    if not x.is_floating_point():
        raise ValueError(f"'{name}' must be a floating-point tensor (got "
                         f"{x.dtype}); convert it with {name}.float().")
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).any(dim=1).nonzero().view(-1)
        raise ValueError(f"'{name}' holds NaN or inf in {bad.numel()} rows (first: "
                         f"{bad[:5].tolist()}); clean the features before "
                         "building the graph.")
    norm = x.norm(dim=1)
    if allow_zero:
        return x / norm.clamp_min(torch.finfo(x.dtype).tiny).unsqueeze(1)
    if bool((norm == 0).any()):
        bad = (norm == 0).nonzero().view(-1)
        raise ValueError(f"'{name}' has {bad.numel()} all-zero rows (first: "
                         f"{bad[:5].tolist()}); cosine similarity is undefined "
                         "for them. Drop them or add a small offset.")
    return x / norm.unsqueeze(1)


def _default_chunk(num_base: int, device: torch.device) -> int:
    # Keep one similarity block near 256 MiB (float32) so memory stays bounded.
    budget = 64 * 2**20 if device.type == "cpu" else 256 * 2**20
    return max(1, min(4096, budget // max(num_base, 1)))


def _candidates_exact(q: Tensor, b: Tensor, kk: int, exclude_self: bool,
                      chunk_size: int | None, own: Tensor | None = None
                      ) -> tuple[Tensor, Tensor]:
    # exclude_self: leave out each query's own base row, ``own`` (default:
    # query i is base row i).
    chunk = chunk_size or _default_chunk(b.size(0), q.device)
    idx = torch.empty(q.size(0), kk, dtype=torch.long, device=q.device)
    sim = torch.empty(q.size(0), kk, dtype=q.dtype, device=q.device)
    for start in range(0, q.size(0), chunk):
        end = min(start + chunk, q.size(0))
        s = q[start:end] @ b.t()
        if exclude_self:
            rows = torch.arange(end - start, device=q.device)
            s[rows, rows + start if own is None else own[start:end]] = -math.inf
        sim[start:end], idx[start:end] = s.topk(kk, dim=1)
    return idx, sim


def _candidates_faiss(q: Tensor, b: Tensor, kk: int) -> tuple[Tensor, Tensor]:
    import faiss
    import numpy as np

    index = faiss.IndexFlatIP(b.size(1))
    if q.is_cuda and hasattr(faiss, "StandardGpuResources"):
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, q.device.index or 0, index)
    index.add(np.ascontiguousarray(b.detach().cpu().numpy()))
    sim, idx = index.search(np.ascontiguousarray(q.detach().cpu().numpy()), kk)
    return torch.from_numpy(idx).to(q.device), torch.from_numpy(sim).to(q.device)


def default_nlist(num_base: int, quantizer: str = "flat") -> int:
    """IVF cells: about 4 sqrt(N) for a flat quantizer, N /
    :data:`IVF_HNSW_CELL` for an HNSW one; with >= 39 training points per
    cell (what faiss' k-means asks for)."""
    cells = (math.ceil(num_base / IVF_HNSW_CELL) if quantizer == "hnsw"
             else int(4 * math.sqrt(num_base)))
    return max(1, min(cells, num_base // 39))


def neighbour_recall(found: Tensor, exact: Tensor, chunk: int = 4096) -> float:
    """Share of the ``exact`` neighbour lists' entries (rows ``[M, k]``) that
    the same rows of ``found`` hold (the mean of :func:`row_recalls`: every
    row has ``k`` entries)."""
    return float(row_recalls(found, exact, chunk).mean())


def row_recalls(found: Tensor, exact: Tensor, chunk: int = 4096) -> Tensor:
    """Per row, the share of its ``exact`` neighbour list (rows ``[M, k]``)
    that the same row of ``found`` holds: ``[M]``."""
    out = [(found[s:s + chunk].unsqueeze(2) == exact[s:s + chunk].unsqueeze(1)
            ).any(dim=2).sum(dim=1) for s in range(0, exact.size(0), chunk)]
    return torch.cat(out).double() / exact.size(1) if out \
        else torch.empty(0, dtype=torch.float64)


def recall_lower_bound(recalls: Tensor, z: float = RECALL_Z,
                       population: int | None = None) -> float:
    """The mean of the queries' ``recalls`` less ``z`` standard errors (their
    standard deviation over the square root of their number), for a sample
    drawn without replacement from ``population`` queries (the finite
    population correction: no margin when the sample is every query)."""
    m = recalls.numel()
    if m <= 1:
        return float(recalls.mean()) if m else math.nan
    se = float(recalls.std()) / math.sqrt(m)
    if population is not None:
        if population < m:
            raise ValueError(f"population ({population}) must be at least the "
                             f"sample's size ({m}).")
        se *= math.sqrt((population - m) / (population - 1))
    return float(recalls.mean()) - z * se


def sample_rows(num_rows: int, size: int = IVF_SAMPLE) -> Tensor:
    """At most ``size`` evenly spaced row indices of ``num_rows`` (sorted,
    deterministic): the queries the recall tuning measures."""
    return torch.linspace(0, num_rows - 1, min(size, num_rows)).round().long().unique()


def exact_neighbours(query: Tensor, rows: Tensor, k: int,
                     base: Tensor | None = None) -> Tensor:
    """The exact ``k`` most similar rows ``[len(rows), k]`` of ``base`` for
    the query rows ``rows``; with ``base=None`` the queries' own set without
    each query's own row (the graph case). Rows must be unit vectors; the
    order within a list is the engine's (enough for
    :func:`neighbour_recall`)."""
    self_search = base is None
    b = query if base is None else base
    idx, _ = _candidates_exact(query[rows], b, k, self_search, None, own=rows)
    return idx


def _tune(search, values: list[int], exact: Tensor, rows: Tensor, k: int,
          self_search: bool, target: float, population: int
          ) -> tuple[int, float, float]:
    """The first of ``values`` at which ``search(value)`` (the sampled
    queries' ``k + self_search`` candidates, an int64 array) recalls the
    neighbours ``exact`` so that the sample's recall less :data:`RECALL_Z`
    standard errors (:func:`recall_lower_bound`, the sample drawn from
    ``population`` queries) reaches ``target``, or the last; then
    :data:`TUNE_BISECTIONS` halvings of the interval from the value before
    (which missed) to it, keeping the smallest value that reaches it;
    ``(value, recall, its lower bound)``."""
    def measure(value: int) -> tuple[float, float]:
        found = torch.from_numpy(search(value))
        if self_search:
            found, _ = _drop_self(found, found, k, own=rows)
        per_row = row_recalls(found, exact)
        return (float(per_row.mean()),
                recall_lower_bound(per_row, population=population))

    missed = None
    for value in values:
        rec, lower = measure(value)
        if lower >= target:
            break
        missed = value
    else:
        return value, rec, lower
    # The search costs about in proportion to the value, and a ladder step
    # overshoots the smallest one that suffices by up to its factor.
    if missed is not None:
        lo = missed
        for _ in range(TUNE_BISECTIONS):
            mid = (lo + value) // 2
            if mid <= lo:
                break
            mid_rec, mid_lower = measure(mid)
            if mid_lower >= target:
                value, rec, lower = mid, mid_rec, mid_lower
            else:
                lo = mid
    return value, rec, lower


def _tune_nprobe(index, q: Tensor, b: Tensor, k: int, self_search: bool,
                 nlist: int, start: int, target: float
                 ) -> tuple[int, float, float]:
    """The smallest ``nprobe`` in ``start, 2 start, ...`` (at most ``nlist``:
    exact) at which :data:`IVF_SAMPLE` evenly spaced queries recall
    ``target`` of their exact ``k`` neighbours, refined between it and the
    one before (see :func:`_tune`); ``(nprobe, recall, its lower bound)``."""
    import numpy as np

    rows = sample_rows(q.size(0))
    exact = exact_neighbours(q, rows, k, None if self_search else b)
    sample = np.ascontiguousarray(q[rows].numpy())
    ladder = [min(start, nlist)]
    while ladder[-1] < nlist:
        ladder.append(min(2 * ladder[-1], nlist))

    def search(nprobe: int):
        index.nprobe = nprobe
        return index.search(sample, k + int(self_search))[1]

    return _tune(search, ladder, exact, rows, k, self_search, target, q.size(0))


def local_order(q: Tensor, seed: int = 0) -> Tensor:
    """A permutation of the rows of ``q`` [M, d] that groups nearby rows: by
    their most similar of ``ceil(sqrt(M))`` centres drawn from the rows
    (seeded: deterministic), stable within a centre."""
    m = q.size(0)
    if m == 0:
        return torch.empty(0, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    centres = q[torch.randperm(m, generator=gen)[:math.isqrt(m - 1) + 1]]
    nearest = torch.cat([(q[i:i + LOCAL_ORDER_BLOCK] @ centres.T).argmax(1)
                         for i in range(0, m, LOCAL_ORDER_BLOCK)])
    return torch.sort(nearest, stable=True).indices


def search_local(index, q: Tensor, kk: int, order: Tensor | None = None
                 ) -> tuple[Tensor, Tensor]:
    """``index.search`` of the rows of ``q`` (on the CPU) in
    :func:`local_order` (or the given ``order``), block by block: the same
    ``(sim, idx)`` as one search in the given order (faiss searches every
    query alone), faster where the queries come in no order of their own."""
    import numpy as np

    order = local_order(q) if order is None else order
    sim = np.empty((q.size(0), kk), dtype=np.float32)
    idx = np.empty((q.size(0), kk), dtype=np.int64)
    for i in range(0, q.size(0), LOCAL_ORDER_BLOCK):
        rows = order[i:i + LOCAL_ORDER_BLOCK].numpy()
        sim[rows], idx[rows] = index.search(np.ascontiguousarray(q[rows].numpy()), kk)
    return torch.from_numpy(sim), torch.from_numpy(idx)


def search_rows(index, q: Tensor, kk: int) -> Tensor:
    """The ``kk`` candidates ``index.search`` finds for each row of ``q`` (on
    the CPU), a few rows per call: below faiss'
    ``distance_compute_blas_threshold`` a flat (coarse) search scores each
    query alone, so a row's answer does not depend on the rows searched
    with it (nor on which process searches it)."""
    import faiss
    import numpy as np

    step = max(1, int(faiss.cvar.distance_compute_blas_threshold) - 1)
    x = np.ascontiguousarray(q.float().numpy())  # faiss reads float32 only
    return torch.from_numpy(np.concatenate(
        [index.search(x[i:i + step], kk)[1] for i in range(0, x.shape[0], step)]
        or [np.empty((0, kk), dtype=np.int64)]))


def ivf_index(d: int, nlist: int, quantizer: str = "flat"):
    """faiss' untrained inner-product ``IndexIVFFlat`` of ``nlist`` cells over
    a flat coarse quantizer, or (``"hnsw"``) an ``IndexHNSWFlat`` one with
    this module's HNSW settings (its beam :data:`IVF_HNSW_QUANTIZER_EF`),
    its centres trained on :data:`IVF_HNSW_TRAIN_PER_CELL` points each by
    exact assignment and then added to that graph. Train it with
    :func:`train_ivf`."""
    import faiss

    if quantizer == "hnsw":
        coarse = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        coarse.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        coarse.hnsw.efSearch = IVF_HNSW_QUANTIZER_EF
    else:
        coarse = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(coarse, d, nlist, faiss.METRIC_INNER_PRODUCT)
    if quantizer == "hnsw":
        index.cp.max_points_per_centroid = IVF_HNSW_TRAIN_PER_CELL
        # The k-means assigns by exact search (through an HNSW graph rebuilt
        # every iteration its centres would depend on the insertion order).
        index.clustering_index = faiss.IndexFlatIP(d)
    return index


def train_ivf(index, base) -> None:
    """Trains an :func:`ivf_index` on ``base`` (a float32 array): faiss'
    k-means with its fixed seed. With an HNSW quantizer on one faiss
    thread: with several, faiss adds the centres to the graph in an
    unspecified order, and the cells found, so the kNN graph, could differ
    between runs (or ranks); on one, the index is the same at any thread
    count."""
    import faiss

    if not isinstance(faiss.downcast_index(index.quantizer), faiss.IndexHNSW):
        index.train(base)
        return
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.train(base)
    finally:
        faiss.omp_set_num_threads(threads)


def _candidates_faiss_ivf(q: Tensor, b: Tensor, kk: int, k: int,
                          nlist: int | None, nprobe: int, recall: float | None,
                          self_search: bool, stats: dict | None,
                          quantizer_kind: str = "flat"
                          ) -> tuple[Tensor, Tensor, Widen | None]:
    import faiss
    import numpy as np

    base = np.ascontiguousarray(b.detach().cpu().numpy())
    d = base.shape[1]
    nlist = nlist or default_nlist(base.shape[0], quantizer_kind)
    index = ivf_index(d, nlist, quantizer_kind)
    # faiss-gpu has no HNSW: an HNSW quantizer keeps the index on the CPU.
    if quantizer_kind == "flat" and q.is_cuda and hasattr(faiss,
                                                          "StandardGpuResources"):
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, q.device.index or 0, index)
    train_ivf(index, base)
    index.add(base)
    nprobe, measured = min(nprobe, nlist), math.nan
    if recall is not None:
        # A self-search samples the whole bank (also when ``q`` is a shard of
        # it): every shard tunes to the same nprobe.
        tune = b if self_search else q
        # Cells of a fixed ~1,024 nodes: one or two may hold every neighbour,
        # and a start at faiss_ivf's 16 would scan 16,000 nodes a query.
        start = 1 if quantizer_kind == "hnsw" else nprobe
        nprobe, measured, lower = _tune_nprobe(
            index, tune.detach().cpu(), b.detach().cpu(), k, self_search, nlist,
            start, recall)
        log.info("faiss_ivf%s: nprobe %d of %d cells recalls %.4f (less %g "
                 "standard errors: %.4f) of the exact neighbours of %d sampled "
                 "queries (target %.2f)",
                 "_hnsw" if quantizer_kind == "hnsw" else "", nprobe, nlist,
                 measured, RECALL_Z, lower, min(IVF_SAMPLE, tune.size(0)), recall)
    if stats is not None:
        stats.update(ivf_nlist=nlist, ivf_nprobe=nprobe, ivf_recall=measured)
    index.nprobe = nprobe
    widen = None
    if q.is_cuda and quantizer_kind == "flat":
        sim, idx = (torch.from_numpy(a) for a in index.search(
            np.ascontiguousarray(q.detach().cpu().numpy()), kk))
    else:
        sim, idx = search_local(index, q.detach(), kk)

        def widen(rows_q: Tensor, width: int) -> Tensor:
            return search_rows(index, rows_q.detach().cpu(), width).to(q.device)
    idx, sim = idx.to(q.device), sim.to(q.device)
    return idx, sim.masked_fill(idx < 0, -math.inf), widen  # -1: cells ran out


def _candidates_faiss_hnsw(q: Tensor, b: Tensor, kk: int, k: int, m: int,
                           ef_construction: int, ef_search: int,
                           recall: float | None, self_search: bool,
                           stats: dict | None
                           ) -> tuple[Tensor, Tensor, Widen]:
    import faiss
    import numpy as np

    # faiss has no GPU HNSW: built and searched on the CPU.
    qc, bc = q.detach().cpu(), b.detach().cpu()
    index = faiss.IndexHNSWFlat(bc.size(1), m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    # Nodes added grouped by region: each insertion's beam search then reads
    # vectors and links its predecessors left in cache, and the index keeps
    # neighbours near each other in memory (see LOCAL_ORDER_BLOCK). The index
    # numbers nodes in that order; ``ids`` maps them back.
    order = local_order(bc)
    index.add(np.ascontiguousarray(bc[order].numpy()))
    ids = np.append(order.numpy(), -1)  # faiss' -1 (too few reached) stays

    def search_ids(found: np.ndarray) -> np.ndarray:
        return ids[found]
    # faiss searches with max(efSearch, k): start where that makes a
    # difference; the tuning stops at HNSW_EF_MAX (or N: every node reached).
    ef, measured = max(ef_search, kk), math.nan
    top = max(ef, min(HNSW_EF_MAX, bc.size(0)))
    if recall is not None:
        # As faiss_ivf: a self-search samples the whole bank (also when ``q``
        # is a shard of it), so every shard tunes to the same efSearch.
        tune = bc if self_search else qc
        rows = sample_rows(tune.size(0))
        exact = exact_neighbours(tune, rows, k, None if self_search else bc)
        sample = np.ascontiguousarray(tune[rows].numpy())
        ladder = [ef]
        while ladder[-1] < top:
            ladder.append(min(math.ceil(HNSW_EF_STEP * ladder[-1]), top))

        def search(value: int):
            index.hnsw.efSearch = value
            return search_ids(index.search(sample, k + int(self_search))[1])

        ef, measured, lower = _tune(search, ladder, exact, rows, k, self_search,
                                    recall, tune.size(0))
        log.info("faiss_hnsw: efSearch %d (M %d, efConstruction %d) recalls %.4f "
                 "(less %g standard errors: %.4f) of the exact neighbours of %d "
                 "sampled queries (target %.2f)", ef, m, ef_construction, measured,
                 RECALL_Z, lower, rows.numel(), recall)
        if lower < recall:
            log.warning("faiss_hnsw: efSearch %d, the most tried, recalls only %.4f "
                        "(less %g standard errors: %.4f; target %.2f): raise "
                        "hnsw_m or hnsw_ef_construction, or use an exact backend",
                        ef, measured, RECALL_Z, lower, recall)
    if stats is not None:
        stats.update(hnsw_m=m, hnsw_ef_construction=ef_construction,
                     hnsw_ef_search=ef, hnsw_recall=measured)
    index.hnsw.efSearch = ef
    # A whole self-search's queries are the nodes: grouped as they were added.
    sim, idx = search_local(index, qc, kk, order if q is b else None)
    idx = torch.from_numpy(search_ids(idx.numpy()))

    def widen(rows_q: Tensor, width: int) -> Tensor:
        found = search_rows(index, rows_q.detach().cpu(), width).numpy()
        return torch.from_numpy(search_ids(found)).to(q.device)
    idx, sim = idx.to(q.device), sim.to(q.device)
    return idx, sim.masked_fill(idx < 0, -math.inf), widen  # -1: too few reached


def _candidates_torch_cluster(q: Tensor, b: Tensor,
                              kk: int) -> tuple[Tensor, Tensor]:
    import torch_cluster

    # On unit vectors the Euclidean ranking equals the cosine ranking.
    assign = torch_cluster.knn(b, q, kk)
    idx = torch.full((q.size(0), kk), -1, dtype=torch.long, device=q.device)
    # torch_cluster returns pairs grouped by query: give each its slot.
    row, col = assign[0], assign[1]
    counts = torch.bincount(row, minlength=q.size(0))
    ptr = torch.cumsum(counts, 0) - counts
    slot = torch.arange(row.numel(), device=q.device) - ptr[row]
    idx[row, slot] = col
    return _sort_rows(idx, _rescore(q, b, idx))


def _rescore(q: Tensor, b: Tensor, cand: Tensor, chunk: int = 4096) -> Tensor:
    """Similarity of each query to its candidates by one fixed formula, so that
    every backend scores a pair identically (``-inf`` for missing slots)."""
    sim = torch.empty(cand.shape, dtype=q.dtype, device=q.device)
    for start in range(0, cand.size(0), chunk):
        c = cand[start:start + chunk]
        s = (q[start:start + chunk].unsqueeze(1) * b[c.clamp(min=0)]).sum(-1)
        sim[start:start + chunk] = s.masked_fill(c < 0, -math.inf)
    return sim


def _settle_near_ties(query: Tensor, base: Tensor, cand: Tensor, sim: Tensor,
                      tol: float) -> None:
    """Re-scores the candidates within ``tol`` of a neighbour in their list
    by :func:`_rescore`'s formula and re-orders those rows, in place
    (``cand``, ``sim``: rows of the lists, ``query``: their queries)."""
    near = (sim[:, :-1] - sim[:, 1:]) <= tol
    touched = torch.zeros_like(cand, dtype=torch.bool)
    touched[:, :-1] |= near
    touched[:, 1:] |= near
    r, c = touched.nonzero(as_tuple=True)
    if r.numel():
        sim[r, c] = (query[r] * base[cand[r, c].clamp(min=0)]).sum(-1)
        redo = touched.any(dim=1).nonzero().view(-1)
        cand[redo], sim[redo] = _sort_rows(cand[redo], sim[redo])


def _sort_rows(cand: Tensor, sim: Tensor) -> tuple[Tensor, Tensor]:
    """Orders each row by (similarity desc, index asc): two stable sorts."""
    perm = cand.masked_fill(cand < 0, torch.iinfo(cand.dtype).max).argsort(
        dim=1, stable=True)
    cand, sim = cand.gather(1, perm), sim.gather(1, perm)
    perm = sim.argsort(dim=1, descending=True, stable=True)
    return cand.gather(1, perm), sim.gather(1, perm)


def _drop_self(cand: Tensor, sim: Tensor, width: int,
               own: Tensor | None = None) -> tuple[Tensor, Tensor]:
    # Drop each row's own index (``own``; default: row i is index i); where
    # the engine did not return it (duplicate points tie with it), drop the
    # last candidate instead.
    n, kk = cand.shape
    own = torch.arange(n, device=cand.device) if own is None else own
    is_self = cand == own.to(cand.device).unsqueeze(1)
    is_self[~is_self.any(dim=1), kk - 1] = True
    keep = ~is_self
    return (cand[keep].view(n, kk - 1)[:, :width],
            sim[keep].view(n, kk - 1)[:, :width])


def check_rows(rows: tuple[int, int], n: int) -> tuple[int, int]:
    """Validates a node range ``(start, end)`` of ``n`` nodes (``0 <= start
    <= end <= n``, integers)."""
    ok = (isinstance(rows, tuple | list) and len(rows) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in rows))
    if not ok or not 0 <= rows[0] <= rows[1] <= n:
        raise ValueError(f"rows must be a range (start, end) with 0 <= start <= "
                         f"end <= {n} nodes (got {rows!r}).")
    return int(rows[0]), int(rows[1])


def query_blocks(backend: str, n: int, d: int, start: int, end: int,
                 chunk_size: int | None = None,
                 device: torch.device | str = "cpu") -> tuple[int, int]:
    r"""The query rows ``[lo, hi)`` to search so that rows ``start .. end - 1``
    of a self-search over ``n`` nodes of width ``d`` come out as in the whole
    search, bit for bit.

    An engine's float rounding of a query's scores can depend on the other
    queries of its block (BLAS kernels are chosen per matrix shape), so the
    range is widened to whole blocks of the whole search: ``exact`` computes
    query blocks of ``chunk_size`` rows (:func:`knn_search`'s default: a
    budget over ``n``), faiss (flat, and IVF's coarse quantizer) blocks of
    ``distance_compute_blas_query_bs`` rows, by BLAS only where a call has at
    least ``distance_compute_blas_threshold / d`` rows (a range is widened
    by whole blocks to as many where the whole search has them);
    ``torch_cluster``'s candidates are re-scored by one formula. Costs at
    most two extra blocks per range. The same engine on the same hardware and
    number of threads is assumed (faiss' IVF splits its queries by thread,
    and faiss-gpu tiles them its own way: there the rows agree up to ties
    within float rounding).

    Args:
        backend (str): The resolved engine (not ``"auto"``).
        n (int): Nodes of the self-search.
        d (int): Their width.
        start (int): First row asked for.
        end (int): One past the last row asked for.
        chunk_size (int, optional): ``exact``'s query block, as passed to
            :func:`knn_search`.
        device (torch.device or str): Where ``exact`` runs (its default
            block depends on it).
    """
    start, end = check_rows((start, end), n)
    min_rows = 1
    if backend == "exact":
        block = chunk_size or _default_chunk(n, torch.device(device))
    elif backend in ("faiss", "faiss_ivf"):
        import faiss

        block = int(faiss.cvar.distance_compute_blas_query_bs)
        min_rows = -(-int(faiss.cvar.distance_compute_blas_threshold) // max(d, 1))
        if n < min_rows:  # the whole search is query by query too
            min_rows = 1
    else:
        block = 1
    if start == end:
        return start, end
    lo, hi = start // block * block, min(n, -(-end // block) * block)
    while hi - lo < min_rows:
        lo, hi = (lo - block, hi) if lo > 0 else (lo, min(n, hi + block))
    return lo, hi


def _widen_rows(widen: Widen, q: Tensor, b: Tensor, cand: Tensor, sim: Tensor,
                rows: Tensor, k: int, width: int, exclude_self: bool, tol: float,
                own: Tensor | None = None) -> Tensor:
    """Re-solves ``rows`` whose k-th place ties to the end of their list of
    ``width`` with the index's own search (``widen(queries, width)``: ids),
    the list doubled until the tie clears or it holds :data:`WIDEN_MAX`;
    writes the settled rows into ``cand``/``sim`` and returns those left
    (still tied, or short of ``k``) for an exact solve."""
    short = (cand[rows, :k] < 0).any(dim=1)
    left, rows = rows[short], rows[~short]
    n_avail = b.size(0) - int(exclude_self)
    while rows.numel() and width < min(WIDEN_MAX, n_avail):
        width = min(2 * width, WIDEN_MAX, n_avail)
        idx = widen(q[rows], width + int(exclude_self))
        if exclude_self:
            idx, _ = _drop_self(idx, idx, width,
                                own=rows if own is None else own[rows])
        c, s = _sort_rows(idx, _rescore(q[rows], b, idx))
        cleared = (s[:, k - 1] - s[:, -1] > 2 * tol) | (width == n_avail)
        done = cleared & (c[:, :k] >= 0).all(dim=1)
        cand[rows[done]], sim[rows[done]] = c[done, :k], s[done, :k]
        rows = rows[~done]
    return torch.cat([left, rows])


def _refine_rows(q: Tensor, b: Tensor, rows: Tensor, k: int, exclude_self: bool,
                 tol: float, own: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Exact answer for rows whose k-th place is (nearly) tied: widen the
    candidate list until it clears the tie, re-score, apply the index rule
    (``own``: each query's base row, default query i is row i)."""
    s = q[rows].float() @ b.float().t()
    ar = torch.arange(rows.numel(), device=q.device)
    if exclude_self:
        rows_b = rows if own is None else own[rows]
        s[ar, rows_b] = -math.inf
    m = k + 2 * EXTRA
    while True:
        m = min(m, s.size(1))
        top, idx = s.topk(m, dim=1)
        if m == s.size(1) or bool((top[:, -1] < top[:, k - 1] - 2 * tol).all()):
            break
        m *= 2
    sim = _rescore(q[rows], b, idx)
    if exclude_self:
        sim = sim.masked_fill(idx == rows_b.unsqueeze(1), -math.inf)
    cand, sim = _sort_rows(idx, sim)
    return cand[:, :k], sim[:, :k]


def knn_search(query: Tensor, base: Tensor | None = None, k: int = 64, *,
               backend: str = "auto", chunk_size: int | None = None,
               normalized: bool = False, ivf_nlist: int | None = None,
               ivf_nprobe: int = 16, ivf_recall: float | None = IVF_RECALL,
               hnsw_m: int = HNSW_M,
               hnsw_ef_construction: int = HNSW_EF_CONSTRUCTION,
               hnsw_ef_search: int = HNSW_EF_SEARCH,
               stats: dict | None = None,
               rows: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    r"""Finds the ``k`` most cosine-similar rows of ``base`` for every query row.

    With ``base=None`` the query set is searched against itself and each row's
    own index is excluded (the graph case); ``rows`` then restricts the
    queries to a contiguous range of it (a shard of a multi-process graph).

    Args:
        query (torch.Tensor): Query features :math:`[M, d]`.
        base (torch.Tensor, optional): Base features :math:`[N, d]`.
        k (int): Number of neighbours.
        backend (str): ``"auto"``, ``"exact"``, ``"faiss"``,
            ``"faiss_ivf"``, ``"faiss_ivf_hnsw"`` (IVF whose cells an HNSW
            graph finds), ``"faiss_hnsw"`` (the three approximate) or
            ``"torch_cluster"``.
        chunk_size (int, optional): Query rows per similarity block of the
            ``exact`` backend (bounds its memory at ``chunk_size * N`` floats).
        normalized (bool): Skip the validation and normalisation (features are
            already unit rows).
        ivf_nlist (int, optional): ``faiss_ivf`` and ``faiss_ivf_hnsw``
            cells (default :func:`default_nlist`).
        ivf_nprobe (int): IVF cells scanned per query: more is
            slower and closer to exact; with ``ivf_recall`` where
            ``faiss_ivf``'s tuning starts (``faiss_ivf_hnsw``'s starts at one
            cell: its cells are large). (default: :obj:`16`)
        ivf_recall (float, optional): the IVF backends tune ``nprobe`` and
            ``faiss_hnsw`` tunes ``efSearch`` (see the module docstring) until
            a sample of queries recalls this share of its exact neighbours
            (less :data:`RECALL_Z` standard errors);
            :obj:`None` uses ``ivf_nprobe`` or ``hnsw_ef_search`` as given.
            (default: :data:`IVF_RECALL`)
        hnsw_m (int): ``faiss_hnsw`` links per node (memory grows as
            ``2 * hnsw_m`` ids per node). (default: :data:`HNSW_M`)
        hnsw_ef_construction (int): ``faiss_hnsw`` build beam.
            (default: :data:`HNSW_EF_CONSTRUCTION`)
        hnsw_ef_search (int): ``faiss_hnsw`` search beam (at least ``k``);
            with ``ivf_recall`` where the tuning starts.
            (default: :data:`HNSW_EF_SEARCH`)
        stats (dict, optional): Filled with ``ivf_nlist``, ``ivf_nprobe``
            and the measured ``ivf_recall`` (NaN where not tuned) by the IVF
            backends; with ``hnsw_m``, ``hnsw_ef_construction``,
            ``hnsw_ef_search`` and ``hnsw_recall`` by ``faiss_hnsw``.
        rows ((int, int), optional): With ``base=None``, search only the
            queries ``rows[0]`` to ``rows[1] - 1`` (against all rows). They
            get the very lists and similarities of the whole self-search,
            bit for bit: the engine's query blocks that the range touches
            (:func:`query_blocks`) are searched whole, as the whole search
            searches them, and ``faiss_ivf`` tunes ``nprobe`` on the whole
            bank's sample. (default: :obj:`None`: all rows)

    Returns:
        ``(index [M, k], sim [M, k])``, each row ordered by descending
        similarity with ties broken by the smaller index (``M`` the rows of
        ``rows`` where given).
    """
    self_search = base is None
    if rows is not None and not self_search:
        raise ValueError("rows selects queries of a self-search (base=None): "
                         "pass the query rows themselves with a base instead.")
    if not normalized:
        query = normalize_rows(query, "x" if self_search else "query")
        base = query if self_search else normalize_rows(base, "base")
    elif self_search:
        base = query
    assert base is not None
    if query.size(1) != base.size(1):
        raise ValueError(f"query has {query.size(1)} features but base has "
                         f"{base.size(1)}; both must come from the same encoder.")
    n_avail = base.size(0) - (1 if self_search else 0)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer (got {k!r}).")
    if k > n_avail:
        raise ValueError(f"k={k} needs at least {k + int(self_search)} points but "
                         f"there are {base.size(0)}; lower k below "
                         f"{n_avail + 1}.")
    if ivf_recall is not None and not 0 < ivf_recall <= 1:
        raise ValueError(f"ivf_recall must be in (0, 1] or None (got {ivf_recall}).")
    name = resolve_backend(backend, query.device, base.size(0))
    own = keep = None  # each query's base row; the rows of the range asked for
    if rows is not None:
        start, end = check_rows(rows, base.size(0))
        if start == end:
            return (torch.empty(0, k, dtype=torch.long, device=base.device),
                    base.new_empty(0, k))
        lo, hi = query_blocks(name, base.size(0), base.size(1), start, end,
                              chunk_size, base.device)
        query = base[lo:hi]
        own = torch.arange(lo, hi, device=base.device)
        keep = slice(start - lo, end - lo)
    # A few candidates past k show whether a (near) tie at the k-th place is
    # settled inside the list; one more covers the self match.
    kk = min(k + EXTRA, n_avail)
    widen = None  # an approximate index's search, for rows tied past the list
    q32, b32 = query.float(), base.float()
    if name == "exact":
        cand, sim = _candidates_exact(q32, b32, kk, self_search, chunk_size,
                                      own=own)
    else:
        if name in ("faiss_ivf", "faiss_ivf_hnsw"):
            if ivf_nprobe < 1 or (ivf_nlist is not None and ivf_nlist < 1):
                raise ValueError(f"{name} needs ivf_nlist >= 1 and ivf_nprobe "
                                 f">= 1 (got {ivf_nlist}, {ivf_nprobe}).")
            cand, sim, widen = _candidates_faiss_ivf(
                q32, b32, kk + int(self_search), k, ivf_nlist, ivf_nprobe,
                ivf_recall, self_search, stats,
                "hnsw" if name == "faiss_ivf_hnsw" else "flat")
        elif name == "faiss_hnsw":
            if hnsw_m < 2 or hnsw_ef_construction < 1 or hnsw_ef_search < 1:
                raise ValueError(f"faiss_hnsw needs hnsw_m >= 2, "
                                 f"hnsw_ef_construction >= 1 and hnsw_ef_search "
                                 f">= 1 (got {hnsw_m}, {hnsw_ef_construction}, "
                                 f"{hnsw_ef_search}).")
            cand, sim, widen = _candidates_faiss_hnsw(
                q32, b32, kk + int(self_search), k, hnsw_m, hnsw_ef_construction,
                hnsw_ef_search, ivf_recall, self_search, stats)
        else:
            engine = (_candidates_faiss if name == "faiss"
                      else _candidates_torch_cluster)
            cand, sim = engine(q32, b32, kk + int(self_search))
        if self_search:
            cand, sim = _drop_self(cand, sim, kk, own=own)
    sim = sim.to(query.dtype)
    if keep is not None:  # everything below is row by row
        assert own is not None
        cand, sim, query, own = cand[keep], sim[keep], query[keep], own[keep]

    # Engines rank by their own float32 scores, whose rounding differs by
    # engine. Candidates closer to a neighbour in the list than that rounding
    # error are re-scored by one formula and ordered (similarity, then smaller
    # index), so that every backend returns the same, deterministic lists.
    tol = 4 * query.size(1) ** 0.5 * torch.finfo(torch.float32).eps
    # In blocks of rows (all of it is row by row): a dense bank has near-ties
    # in most rows, and doing every row at once peaked at 14 GB at 1M nodes
    # (faiss_ivf) and ran out of 24 GB at 2M (faiss_hnsw).
    for lo in range(0, cand.size(0), RESCORE_ROWS):
        hi = lo + RESCORE_ROWS
        _settle_near_ties(query[lo:hi], base, cand[lo:hi], sim[lo:hi], tol)
    # Where the run of near-equal scores at the k-th place reaches the end of
    # the list, the list may miss tied points: solve those rows exactly.
    unsettled = (sim[:, k - 1] - sim[:, -1] <= 2 * tol) if kk > k else \
        torch.zeros(cand.size(0), dtype=torch.bool, device=cand.device)
    # An approximate index may find fewer than k points (its cells ran out).
    unsettled |= (cand[:, :k] < 0).any(dim=1)
    cand, sim = cand[:, :k].contiguous(), sim[:, :k].contiguous()
    if bool(unsettled.any()):
        redo = unsettled.nonzero().view(-1)
        if widen is not None:
            redo = _widen_rows(widen, query, base, cand, sim, redo, k, kk,
                               self_search, tol, own=own)
        step = max(1, REFINE_SCORES // base.size(0))
        for i in range(0, redo.numel(), step):
            rows = redo[i:i + step]
            cand[rows], sim[rows] = _refine_rows(query, base, rows, k,
                                                 self_search, tol, own=own)
    return cand, sim
