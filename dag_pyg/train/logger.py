r"""Run logging: console and log file through :mod:`logging`, per-epoch
``metrics.jsonl``, optional TensorBoard scalars and tqdm progress bars.

Files in the run folder (rank 0's :class:`RunLogger` writes them; other
ranks' write nothing and print only warnings):

* ``train.log``: timestamped :meth:`RunLogger.info` lines, appended across
  resumes.
* ``metrics.jsonl``: one JSON object per :meth:`RunLogger.metrics` call. Every
  record has an ``epoch``. Non-finite floats (``nan``, ``inf``, ``-inf``) are
  written as ``null`` so that every line is strict JSON (``jq``, pandas and
  browsers read it); :func:`read_metrics` returns them as :obj:`None`.
  Tensors and NumPy values become numbers or lists.
* ``tensorboard/``: event files, only where :mod:`tensorboard` is installed.

Neither TensorBoard nor tqdm is required: without them the logger just skips
the scalars and the bars.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dag_pyg.train.atomic import atomic_write


def _jsonable(obj: Any, where: str = "record") -> Any:
    r"""Converts :obj:`obj` to plain JSON types; non-finite floats become
    :obj:`None`."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):  # also np.float64, a float subclass
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return _jsonable(obj.item(), where)
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu()
        return _jsonable(obj.item() if obj.numel() == 1 and obj.dim() == 0
                         else obj.tolist(), where)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist(), where)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{where} is a {type(obj).__name__}, which cannot be "
                    "written as JSON")


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any, *,
                      indent: int | None = 2) -> None:
    r"""Writes :obj:`obj` as JSON to :obj:`path` atomically (e.g.
    ``summary.json``).

    Non-finite floats are written as ``null``; tensors and NumPy values
    become numbers or lists.

    Args:
        path (str or os.PathLike): The target file; parents are created.
        obj: A JSON-like object.
        indent (int, optional): Indentation of the output. (default: :obj:`2`)
    """
    text = json.dumps(_jsonable(obj, "obj"), indent=indent, allow_nan=False)
    _write_text_atomic(Path(path), text + "\n")


def _parse_jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break  # a line cut short by a crash mid-write: drop it
            raise ValueError(f"{path}, line {i + 1}: not valid JSON ({e}); "
                             "the metrics file is damaged") from e
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {i + 1}: not a JSON object")
        out.append((line, record))
    return out


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    r"""Reads a ``metrics.jsonl`` file.

    A last line cut short (a run killed while writing it) is dropped; damage
    anywhere else raises.

    Args:
        path (str or os.PathLike): The file, or the run folder holding
            ``metrics.jsonl``.

    Returns:
        list[dict]: The records in file order; non-finite floats come back as
        :obj:`None`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [record for _, record in _parse_jsonl(path)]


def _import_tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def _flatten(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in record.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", value


def show_progress(setting: bool | str | None) -> bool:
    """Whether to draw progress bars: ``setting`` itself, or for ``"auto"``
    (and :obj:`None`) whether stderr is a terminal."""
    if setting is None or setting == "auto":
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(setting)


class _LevelPrefix(logging.Filter):
    """``record.prefix``: ``"WARNING: "`` (and so on) above INFO, else empty."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.prefix = ("" if record.levelno <= logging.INFO
                         else f"{record.levelname}: ")
        return True


class _Console(logging.Handler):
    """stdout (read when a line is written, so redirections apply), through
    tqdm while bars are drawn so that they stay intact."""

    def __init__(self, bars: bool) -> None:
        super().__init__(logging.INFO)
        self.bars = bars

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        tqdm = _import_tqdm() if self.bars else None
        if tqdm is not None:
            tqdm.write(line, file=sys.stdout)
        else:
            print(line, file=sys.stdout, flush=True)


class _Stderr(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr, flush=True)


_LINE = "[%(asctime)s] %(prefix)s%(message)s"
_DATE = "%Y-%m-%d %H:%M:%S"
_ids = itertools.count()


class RunLogger:
    r"""Logs a training run into :obj:`run_dir` (see the module docstring for
    the files). Use it as a context manager, or call :meth:`close`.

    Lines go through a :mod:`logging` logger of its own
    (``dag_pyg.run.<n>``, not propagated, so that two runs in one process
    never share handlers): to stdout and ``train.log`` on rank 0; on other
    ranks (or without a ``run_dir``) warnings alone, to stderr, prefixed
    with the rank, and no files or bars.

    .. code-block:: python

        with RunLogger(out, resume_epoch=start) as log:
            for epoch in log.progress(range(start, epochs), "epochs"):
                ...
                log.metrics({"epoch": epoch, "test_error": err})
                log.info(f"epoch {epoch}: test error {err:.2f}%")

    Args:
        run_dir (str or os.PathLike, optional): The run folder; created if
            missing. :obj:`None`: write no files.
        rank (int, optional): This process's rank; only rank 0 writes.
            (default: :obj:`0`)
        tensorboard (bool, optional): Also write numeric metrics as TensorBoard
            scalars (in ``run_dir/tensorboard``) when
            :class:`torch.utils.tensorboard.SummaryWriter` can be imported.
            (default: :obj:`True`)
        progress (bool or str, optional): Show tqdm progress bars on stderr
            where tqdm is installed; ``"auto"`` (or :obj:`None`) only when
            stderr is a terminal, so that a log redirected to a file gets no
            bars (:func:`show_progress`). (default: :obj:`"auto"`)
        resume_epoch (int, optional): The first epoch a resumed run will
            execute. ``metrics.jsonl`` is rewritten (atomically) without the
            records of this epoch and later ones, so that a resumed run's file
            equals an uninterrupted run's; TensorBoard events from this step
            on are purged. Pass :obj:`0` to start a fresh run in a folder that
            holds an old ``metrics.jsonl``. :obj:`None` keeps the file as it
            is and appends. (default: :obj:`None`)
    """

    def __init__(self, run_dir: str | os.PathLike | None = None, *, rank: int = 0,
                 tensorboard: bool = True, progress: bool | str | None = "auto",
                 resume_epoch: int | None = None) -> None:
        self.rank = rank
        self.writes = run_dir is not None and rank == 0
        self.run_dir = None if run_dir is None else Path(run_dir)
        self._closed = False
        self._progress = self.writes and show_progress(progress)
        self._writer = self._metrics_file = None
        self._logger = logging.getLogger(f"dag_pyg.run.{next(_ids)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.DEBUG)
        if not self.writes:
            quiet = _Stderr(logging.WARNING)
            quiet.setFormatter(logging.Formatter(
                f"[rank {rank}] %(levelname)s: %(message)s"))
            self._logger.addHandler(quiet)
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.run_dir / "train.log"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if resume_epoch is not None:
            self._truncate_metrics(int(resume_epoch))
        line = logging.Formatter(_LINE, _DATE)
        for handler in (_Console(self._progress),
                        logging.FileHandler(self.log_path, encoding="utf-8")):
            handler.addFilter(_LevelPrefix())
            handler.setFormatter(line)
            self._logger.addHandler(handler)
        self._logger.handlers[1].setLevel(logging.DEBUG)  # the file: all
        self._metrics_file = open(self.metrics_path, "a", encoding="utf-8")
        if tensorboard:
            try:
                self._writer = self._make_writer(resume_epoch)
            except BaseException:
                self.close()
                raise

    @property
    def tensorboard_enabled(self) -> bool:
        """Whether TensorBoard scalars are being written."""
        return self._writer is not None

    @property
    def closed(self) -> bool:
        return self._closed

    def _make_writer(self, resume_epoch: int | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # ImportError, or a broken tensorboard/protobuf
            self._logger.debug("TensorBoard is not installed: metrics go to "
                               "metrics.jsonl only.")
            return None
        return SummaryWriter(log_dir=str(self.run_dir / "tensorboard"),
                             purge_step=resume_epoch)

    def _truncate_metrics(self, resume_epoch: int) -> None:
        if not self.metrics_path.exists():
            return
        kept = [line for line, record in _parse_jsonl(self.metrics_path)
                if isinstance(record.get("epoch"), int | float)
                and record["epoch"] < resume_epoch]
        _write_text_atomic(self.metrics_path, "".join(f"{x}\n" for x in kept))

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"RunLogger for '{self.run_dir}' is closed")

    def info(self, msg: str) -> None:
        r"""Writes a timestamped line to stdout and ``train.log`` (rank 0).

        Args:
            msg (str): The message.
        """
        self._check_open()
        self._logger.info(msg)

    def warning(self, msg: str) -> None:
        r"""Like :meth:`info`, prefixed with ``WARNING:``; every rank prints
        its warnings."""
        self._check_open()
        self._logger.warning(msg)

    def metrics(self, record: dict[str, Any]) -> None:
        r"""Appends :obj:`record` as one line of ``metrics.jsonl`` (flushed
        and fsynced at once) and its numeric entries as TensorBoard scalars
        at step ``record["epoch"]`` (nested dicts as ``outer/inner`` tags);
        nothing where the logger writes no files.

        Non-finite floats are written as ``null``.

        Args:
            record (dict): The metrics; must contain ``epoch``.
        """
        self._check_open()
        if not isinstance(record, dict) or "epoch" not in record:
            raise ValueError("A metrics record must be a dict with an 'epoch' "
                             f"entry (got {record!r:.200})")
        if not self.writes:
            return
        clean = _jsonable(record)
        self._metrics_file.write(json.dumps(clean, allow_nan=False) + "\n")
        self._metrics_file.flush()
        # One fsync per epoch is cheap and keeps the file in step with the
        # checkpoint written after it, even on power loss.
        os.fsync(self._metrics_file.fileno())

        if self._writer is not None:
            step = int(clean["epoch"])
            for tag, value in _flatten(clean):
                if (tag != "epoch" and isinstance(value, int | float)
                        and not isinstance(value, bool)):
                    self._writer.add_scalar(tag, value, global_step=step)
            self._writer.flush()

    def progress(self, iterable: Iterable, desc: str, total: int | None = None,
                 leave: bool = False) -> Iterable:
        r"""Wraps :obj:`iterable` in a tqdm bar on stderr, or returns it
        unchanged where bars are disabled or tqdm is not installed.

        Args:
            iterable (Iterable): What to iterate over.
            desc (str): The bar's label.
            total (int, optional): The number of items, for iterables without
                :obj:`len`. (default: :obj:`None`)
            leave (bool, optional): Keep the bar on screen when it finishes.
                (default: :obj:`False`)
        """
        tqdm = _import_tqdm() if self._progress else None
        if tqdm is None:
            return iterable
        return tqdm(iterable, desc=desc, total=total, leave=leave,
                    file=sys.stderr, dynamic_ncols=True)

    def close(self) -> None:
        r"""Flushes and closes the files, the handlers and the TensorBoard
        writer. Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            for handler in list(self._logger.handlers):
                self._logger.removeHandler(handler)
                handler.close()
            if self._metrics_file is not None:
                self._metrics_file.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}('{self.run_dir}', rank={self.rank}, "
                f"tensorboard={self.tensorboard_enabled}, "
                f"progress={self._progress})")
