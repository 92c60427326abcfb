r"""Atomic, checksummed training checkpoints and RNG state capture.

A checkpoint file is a :func:`torch.save` archive of a small envelope

.. code-block:: python

    {"format": "dag_pyg-checkpoint", "version": 1,
     "sha256": "<hex digest of state_bytes>", "num_bytes": len(state_bytes),
     "state_bytes": <torch.save(state) as bytes>}

The envelope holds only strings, ints and bytes, so it is read with
``weights_only=True``; the inner state is unpickled only after its checksum
matched. :func:`save_checkpoint` writes to a temporary file in the target
directory, fsyncs it and renames it over the old file, so a crash at any point
leaves either the previous checkpoint or the new one, never a mix.
:func:`load_checkpoint` turns every way a file can be wrong into a
:class:`CheckpointError` that names the file: a damaged checkpoint stops the
run, it never restarts it silently.

.. note::
    The inner state is unpickled with ``weights_only=False`` (it may hold
    arbitrary Python objects such as configs), so only load checkpoints you
    trust; the checksum detects damage, not tampering.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dag_pyg.train.atomic import atomic_write

FORMAT = "dag_pyg-checkpoint"
VERSION = 1

_ADVICE = ("Delete it to start over, or restore it from a copy; the run will "
           "not restart silently.")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, damaged or not a dag_pyg checkpoint."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    r"""Writes :obj:`state` to :obj:`path` atomically.

    The state is serialised with :func:`torch.save`, wrapped in an envelope
    with its SHA-256 digest, written to a temporary file next to :obj:`path`,
    flushed and fsynced, then renamed over :obj:`path`. If anything fails, the
    temporary file is removed and a previous checkpoint at :obj:`path` is left
    untouched.

    Args:
        path (str or os.PathLike): The checkpoint file. Missing parent
            directories are created.
        state (dict): Anything :func:`torch.save` can serialise (state dicts,
            tensors, RNG states, numbers, strings, ...).
    """
    path = Path(path)
    if not isinstance(state, dict):
        raise TypeError(f"'state' must be a dict (got {type(state).__name__})")
    buf = io.BytesIO()
    torch.save(state, buf)
    state_bytes = buf.getvalue()
    envelope = {
        "format": FORMAT,
        "version": VERSION,
        "sha256": hashlib.sha256(state_bytes).hexdigest(),
        "num_bytes": len(state_bytes),
        "state_bytes": state_bytes,
    }

    with atomic_write(path, "wb") as f:
        torch.save(envelope, f)


def load_checkpoint(path: str | os.PathLike,
                    map_location: Any = "cpu") -> dict[str, Any]:
    r"""Reads a checkpoint written by :func:`save_checkpoint`.

    Args:
        path (str or os.PathLike): The checkpoint file.
        map_location: Passed to :func:`torch.load` for the inner state.
            (default: :obj:`"cpu"`)

    Returns:
        dict: The state given to :func:`save_checkpoint`.

    Raises:
        CheckpointError: If the file is missing, empty, truncated or otherwise
            unreadable, fails its checksum, is not a dag_pyg checkpoint, or was
            written by a newer format version. The message names the file.
    """
    path = Path(path)
    where = f"Checkpoint '{path}'"
    if not path.exists():
        raise CheckpointError(f"{where} does not exist. Start without resuming, "
                              "or point to the run folder that holds it.")
    if not path.is_file():
        raise CheckpointError(f"{where} is not a file.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{where} is empty (an interrupted copy?). "
                              f"{_ADVICE}")

    try:
        # A damaged file makes torch warn (e.g. "pickle protocol 88") before it
        # raises; the CheckpointError below says it better.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            envelope = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle, unicode errors: all mean unreadable
        raise CheckpointError(
            f"{where} cannot be read: it is truncated, damaged, or not a "
            f"dag_pyg checkpoint ({type(e).__name__}: {_short(e)}). {_ADVICE}"
        ) from e

    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise CheckpointError(
            f"{where} is not a dag_pyg checkpoint (it is a readable torch file "
            "without the dag_pyg checkpoint header). Point to the checkpoint "
            "written by 'dag-pyg train', or delete this file to start over.")
    version = envelope.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{where} has an invalid format version "
                              f"{version!r}. {_ADVICE}")
    if version > VERSION:
        raise CheckpointError(
            f"{where} was written by a newer dag_pyg (checkpoint format "
            f"version {version}, this one reads up to {VERSION}). Upgrade "
            "dag_pyg to resume it.")

    state_bytes = envelope.get("state_bytes")
    digest = envelope.get("sha256")
    if not isinstance(state_bytes, bytes) or not isinstance(digest, str):
        raise CheckpointError(f"{where} has a damaged header (no state bytes "
                              f"or checksum). {_ADVICE}")
    num_bytes = envelope.get("num_bytes")
    if num_bytes is not None and num_bytes != len(state_bytes):
        raise CheckpointError(
            f"{where} is damaged: its state holds {len(state_bytes)} bytes, "
            f"{num_bytes} were written. {_ADVICE}")
    if hashlib.sha256(state_bytes).hexdigest() != digest:
        raise CheckpointError(f"{where} is damaged: checksum mismatch (SHA-256 "
                              f"of the stored state differs). {_ADVICE}")

    try:
        state = torch.load(io.BytesIO(state_bytes), map_location=map_location,
                           weights_only=False)
    except Exception as e:
        # Checksum passed, so the bytes are what was written: a class the
        # state refers to is probably missing or changed in this environment.
        raise CheckpointError(
            f"{where} passed its checksum but its state cannot be unpickled "
            f"({type(e).__name__}: {_short(e)}); was it written by a different "
            "version of dag_pyg or its dependencies?") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{where} holds a {type(state).__name__}, not a "
                              "state dict.")
    return state


def _short(e: BaseException, limit: int = 200) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return msg if len(msg) <= limit else msg[:limit] + "..."


def capture_rng_state(
    generators: dict[str, torch.Generator] | None = None,
) -> dict[str, Any]:
    r"""Captures every random number generator a training run draws from.

    Covers Python's :mod:`random`, NumPy's global generator, torch's CPU
    generator, every CUDA device's default generator (when CUDA is available)
    and each generator in :obj:`generators`. The result holds only tensors,
    ints, floats, strings, tuples and dicts, so it also loads with
    ``weights_only=True``.

    Args:
        generators (dict[str, torch.Generator], optional): Extra named
            generators (e.g. a sampler's or a data loader's).

    Returns:
        dict: A state for :func:`restore_rng_state`.
    """
    name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        # The MT19937 key as a tensor instead of an ndarray: no numpy pickles.
        "numpy": {"bit_generator": str(name),
                  "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": (torch.cuda.get_rng_state_all()
                 if torch.cuda.is_available() else []),
        "generators": {},
    }
    for gname, gen in (generators or {}).items():
        state["generators"][gname] = gen.get_state()
    return state


def restore_rng_state(
    state: dict[str, Any],
    generators: dict[str, torch.Generator] | None = None,
) -> None:
    r"""Restores the generators captured by :func:`capture_rng_state`.

    CUDA states are restored for the devices present; a checkpoint written on
    a GPU machine resumed on a CPU-only one (or with fewer devices) warns,
    since exact reproduction is then impossible anyway.

    Args:
        state (dict): The result of :func:`capture_rng_state`.
        generators (dict[str, torch.Generator], optional): Generators to
            restore by name; each name must be in the captured state.

    Raises:
        KeyError: If a generator in :obj:`generators` was not captured.
    """
    random.setstate(_as_tuple(state["python"]))

    np_state = state["numpy"]
    if isinstance(np_state, dict):
        key = np_state["key"]
        key = key.cpu().numpy() if isinstance(key, torch.Tensor) else key
        np.random.set_state((np_state["bit_generator"],
                             np.asarray(key, dtype=np.uint32),
                             int(np_state["pos"]), int(np_state["has_gauss"]),
                             float(np_state["gauss"])))
    else:  # a raw np.random.get_state() tuple
        np.random.set_state(tuple(np_state))

    torch.set_rng_state(state["torch"].cpu())

    cuda_states = list(state.get("cuda") or [])
    if cuda_states:
        n_dev = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n_dev < len(cuda_states):
            warnings.warn(f"The checkpoint holds RNG states for "
                          f"{len(cuda_states)} CUDA devices but {n_dev} are "
                          "available; the resumed run will not reproduce the "
                          "uninterrupted one exactly.", stacklevel=2)
        for i, s in enumerate(cuda_states[:n_dev]):
            torch.cuda.set_rng_state(s.cpu(), device=i)

    saved = state.get("generators") or {}
    for gname, gen in (generators or {}).items():
        if gname not in saved:
            raise KeyError(f"No RNG state for generator '{gname}' in the "
                           f"checkpoint (it holds {sorted(saved)}).")
        gen.set_state(saved[gname].cpu())


def _as_tuple(obj: Any) -> Any:
    # random.setstate needs tuples; a state that went through JSON or YAML
    # would come back as lists.
    if isinstance(obj, list | tuple):
        return tuple(_as_tuple(x) for x in obj)
    return obj
