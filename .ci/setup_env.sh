#!/usr/bin/env bash
# Creates/updates the virtual environment for dag_pyg. Called by `make setup`
# (and so by `make test` / `make run`); safe to re-run.
# Usage: .ci/setup_env.sh VENV_DIR
set -euo pipefail
VENV=${1:-.venv}
PY="$VENV/bin/python"
PIP="$PY -m pip"
# torch 2.14.1 / torchvision 0.29.1 are what these machines carry on disk
# (PyPI's torchvision does not import beside torch 2.13.0+cpu).
TORCH=${TORCH:-"torch==2.14.1 torchvision==0.29.1"}

test -x "$PY" || "${PYTHON:-python3}" -m venv "$VENV"
$PIP install -q --upgrade pip setuptools wheel
$PIP install -q $TORCH
$PIP install -q torch-geometric faiss-cpu pyyaml numpy scipy scikit-learn \
  matplotlib tqdm pytest ruff ninja

# No wheels on PyPI for these: they compile against the installed torch
# (~15 min for all three on 2 cores). pip caches the built wheel by source
# package, not by torch, so a wheel built against another torch fails to load:
# then rebuild without the cache.
for ext in torch_scatter torch_cluster torch_sparse; do
  pkg=${ext//_/-}
  "$PY" -c "import $ext" 2>/dev/null && continue
  echo "building $pkg"
  MAX_JOBS=2 $PIP install -q --no-build-isolation "$pkg"
  if ! "$PY" -c "import $ext"; then
    echo "the cached $pkg wheel does not load against this torch: rebuilding"
    MAX_JOBS=2 $PIP install -q --no-build-isolation --no-cache-dir \
      --force-reinstall --no-deps "$pkg"
  fi
done

$PIP install -q --no-build-isolation -e '.[dev]'
"$PY" -c "import dag_pyg, torch_scatter, torch_cluster, torch_sparse, faiss"
