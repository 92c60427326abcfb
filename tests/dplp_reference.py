"""Plain sequential DPLP (Alg. 1), written loop by loop from the semantics of
issue 3. It is the reference that ``dag_pyg.propagation.dplp`` is tested
against and timed against in ``benchmarks/speed/bench_dplp.py``."""
from __future__ import annotations

import math

import torch


def distance(s):
    """Euclidean distance of L2-normalised vectors with cosine similarity s.

    Evaluated with torch's float64 ``sqrt`` (as the tensor code does): on some
    CPUs it differs from ``math.sqrt`` in the last bit, and the ``sigma``
    boundary is inclusive, so both sides must use the same formula."""
    t = torch.tensor(2.0 - 2.0 * s, dtype=torch.float64)
    return float(t.clamp_min(0.0).sqrt())


def reference_parents(edge_index, sim, density, num_nodes, sigma=math.inf):
    """Nearest strictly denser neighbour (ties: smaller index), -1 if none or
    farther than sigma. Inputs are tensors or lists."""
    src = _list(edge_index[0])
    dst = _list(edge_index[1])
    sim = _list(sim)
    density = _list(density)
    best_sim = [None] * num_nodes
    parent = [-1] * num_nodes
    for v, u, s in zip(src, dst, sim, strict=True):
        if not density[v] > density[u]:
            continue
        if (best_sim[u] is None or s > best_sim[u]
                or (s == best_sim[u] and v < parent[u])):
            best_sim[u] = s
            parent[u] = v
    for u in range(num_nodes):
        if parent[u] >= 0 and distance(best_sim[u]) > sigma:
            parent[u] = -1
    return parent


def reference_step_distances(edge_index, sim, density, num_nodes):
    src, dst = _list(edge_index[0]), _list(edge_index[1])
    sim, density = _list(sim), _list(density)
    best = [None] * num_nodes
    for v, u, s in zip(src, dst, sim, strict=True):
        if density[v] > density[u] and (best[u] is None or s > best[u]):
            best[u] = s
    return [math.inf if b is None else distance(b) for b in best]


def reference_path(parent, u):
    path = [u]
    while parent[path[-1]] != -1:
        path.append(parent[path[-1]])
    return path


def reference_path_lengths(parent):
    return [len(reference_path(parent, u)) for u in range(len(parent))]


def reference_dplp(edge_index, sim, density, y, labelled, prior=None,
                   sigma=math.inf, mode="LU"):
    """Returns ``(labels, source, phase, parents)`` as Python lists."""
    density = _list(density)
    y = _list(y)
    labelled = [bool(b) for b in _list(labelled)]
    n = len(density)
    parent = reference_parents(edge_index, sim, density, n, sigma)
    labels = list(_list(prior)) if prior is not None else [-1] * n
    source = [-1] * n
    phase = [-1] * n
    for i in range(n):
        if labelled[i]:
            labels[i], source[i], phase[i] = y[i], i, 0
    # Labelled nodes, densest first, ties by the smaller index.
    ordered = sorted((i for i in range(n) if labelled[i]),
                     key=lambda i: (-density[i], i))
    assigned = [False] * n
    # Phase 1 (LP-L): walk each labelled node's path.
    for i in ordered:
        for u in reference_path(parent, i):
            if not labelled[u] and not assigned[u]:
                labels[u], source[u], phase[u] = y[i], i, 1
                assigned[u] = True
    # Phase 2 (LP-LU): the densest labelled node on an unassigned node's path.
    if mode == "LU":
        for u in range(n):
            if labelled[u] or assigned[u]:
                continue
            on_path = [j for j in reference_path(parent, u) if labelled[j]]
            if on_path:
                j = min(on_path, key=lambda j: (-density[j], j))
                labels[u], source[u], phase[u] = y[j], j, 2
    return labels, source, phase, parent


def _list(x):
    return x.tolist() if hasattr(x, "tolist") else list(x)
