import json
import sys
import types

import numpy as np
import pytest
import torch

from dag_pyg.train.logger import RunLogger, read_metrics, write_json_atomic

pytestmark = pytest.mark.cpu_only  # files, configs, logs: CPU by nature


def test_info_and_metrics_are_flushed(tmp_path, capsys):
    log = RunLogger(tmp_path / "run", tensorboard=False, progress=False)
    log.info("hello world")
    log.metrics({"epoch": 0, "test_error": 12.5, "loss": torch.tensor(0.25),
                 "n": np.int64(3), "hist": torch.arange(3),
                 "path_len": {"mean": np.float32(2.5)}})
    # Read while the logger is still open: nothing may wait in a buffer.
    assert "hello world" in (tmp_path / "run" / "train.log").read_text()
    assert "hello world" in capsys.readouterr().out
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"epoch": 0, "test_error": 12.5, "loss": 0.25,
                                    "n": 3, "hist": [0, 1, 2],
                                    "path_len": {"mean": 2.5}}
    log.close()
    log.close()  # idempotent
    assert log.closed
    with pytest.raises(RuntimeError, match="closed"):
        log.info("late")


def test_log_file_appends_and_line_format(tmp_path, capsys):
    with RunLogger(tmp_path, tensorboard=False, progress=False) as log:
        log.info("first")
    with RunLogger(tmp_path, tensorboard=False, progress=False) as log:
        log.warning("second")
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[") and lines[0].endswith("] first")
    assert lines[1].endswith("WARNING: second")


def test_several_loggers_do_not_duplicate(tmp_path, capsys):
    a = RunLogger(tmp_path / "a", tensorboard=False, progress=False)
    b = RunLogger(tmp_path / "b", tensorboard=False, progress=False)
    a.info("to a")
    b.info("to b")
    a.close()
    b.close()
    assert (tmp_path / "a" / "train.log").read_text().count("\n") == 1
    assert "to b" not in (tmp_path / "a" / "train.log").read_text()
    out = capsys.readouterr().out
    assert out.count("to a") == 1 and out.count("to b") == 1


def test_metrics_needs_epoch(tmp_path):
    with RunLogger(tmp_path, tensorboard=False, progress=False) as log:
        with pytest.raises(ValueError, match="epoch"):
            log.metrics({"loss": 1.0})
        with pytest.raises(TypeError, match="object"):
            log.metrics({"epoch": 0, "bad": object()})


def test_nan_and_inf_are_null(tmp_path):
    with RunLogger(tmp_path, tensorboard=False, progress=False) as log:
        log.metrics({"epoch": 0, "a": float("nan"), "b": float("inf"),
                     "c": -np.inf, "d": torch.tensor(float("nan")),
                     "e": [1.0, float("nan")], "f": None})
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict {c}"))
    assert read_metrics(tmp_path) == [{"epoch": 0, "a": None, "b": None,
                                       "c": None, "d": None, "e": [1.0, None],
                                       "f": None}]


def _uninterrupted(run_dir, epochs):
    with RunLogger(run_dir, tensorboard=False, progress=False) as log:
        log.metrics({"epoch": -1, "phase": "pretrain"})
        for e in range(epochs):
            log.metrics({"epoch": e, "loss": 1.0 / (e + 1), "x": float("nan")})


def test_resume_truncates_to_uninterrupted(tmp_path):
    _uninterrupted(tmp_path / "full", 5)
    # Interrupted after writing epoch 3's record, but its checkpoint is from
    # epoch 2; the last line was cut short by the kill.
    _uninterrupted(tmp_path / "resumed", 4)
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "lo')
    with RunLogger(tmp_path / "resumed", tensorboard=False, progress=False,
                   resume_epoch=3) as log:
        assert [r["epoch"] for r in read_metrics(log.metrics_path)] == [-1, 0, 1, 2]
        for e in range(3, 5):
            log.metrics({"epoch": e, "loss": 1.0 / (e + 1), "x": float("nan")})
    assert ((tmp_path / "resumed" / "metrics.jsonl").read_bytes()
            == (tmp_path / "full" / "metrics.jsonl").read_bytes())
    assert not [p for p in (tmp_path / "resumed").iterdir()
                if p.name.endswith(".tmp")]


def test_resume_without_metrics_file_and_fresh_start(tmp_path):
    with RunLogger(tmp_path / "new", tensorboard=False, progress=False,
                   resume_epoch=2) as log:
        log.metrics({"epoch": 2})
    assert read_metrics(tmp_path / "new") == [{"epoch": 2}]
    with RunLogger(tmp_path / "new", tensorboard=False, progress=False,
                   resume_epoch=0):
        pass
    assert read_metrics(tmp_path / "new") == []


def test_read_metrics_rejects_damage_in_the_middle(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}\n{"epo\n{"epoch": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(path)


def test_no_tensorboard_does_not_fail(tmp_path, monkeypatch):
    # None in sys.modules makes the import raise ImportError, as without
    # tensorboard installed.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with RunLogger(tmp_path, tensorboard=True, progress=False) as log:
        assert not log.tensorboard_enabled
        log.metrics({"epoch": 0, "loss": 1.0})
    assert read_metrics(tmp_path) == [{"epoch": 0, "loss": 1.0}]
    assert "TensorBoard is not installed" in (tmp_path / "train.log").read_text()


def test_tensorboard_scalars(tmp_path, monkeypatch):
    calls = {}

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            calls.update(log_dir=log_dir, purge_step=purge_step, scalars=[],
                         closed=False)

        def add_scalar(self, tag, value, global_step):
            calls["scalars"].append((tag, value, global_step))

        def flush(self):
            pass

        def close(self):
            calls["closed"] = True

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    with RunLogger(tmp_path, progress=False, resume_epoch=4) as log:
        assert log.tensorboard_enabled
        log.metrics({"epoch": 4, "loss": 0.5, "ok": True, "name": "x",
                     "bad": float("nan"), "pl": {"acc": 0.9}})
    assert calls["log_dir"].endswith("tensorboard") and calls["purge_step"] == 4
    assert calls["scalars"] == [("loss", 0.5, 4), ("pl/acc", 0.9, 4)]
    assert calls["closed"]


def test_progress_with_tqdm(tmp_path, capsys):
    tqdm = pytest.importorskip("tqdm").tqdm
    with RunLogger(tmp_path, tensorboard=False, progress=True) as log:
        bar = log.progress(range(3), "epochs")
        assert isinstance(bar, tqdm)
        assert list(bar) == [0, 1, 2]
        log.info("between bars")
    captured = capsys.readouterr()
    assert "epochs" in captured.err and "between bars" in captured.out


def test_progress_without_tqdm(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    items = [1, 2, 3]
    with RunLogger(tmp_path, tensorboard=False, progress=True) as log:
        assert log.progress(items, "epochs") is items
        log.info("still prints")
    assert "still prints" in capsys.readouterr().out


def test_progress_disabled(tmp_path):
    items = iter([1, 2])
    with RunLogger(tmp_path, tensorboard=False, progress=False) as log:
        assert log.progress(items, "x") is items


def test_context_manager_closes_on_error(tmp_path):
    with pytest.raises(KeyError):
        with RunLogger(tmp_path, tensorboard=False, progress=False) as log:
            log.info("before")
            raise KeyError("boom")
    assert log.closed and log._metrics_file.closed
    # Its handlers are gone (train.log closed): later lines reach no file.
    assert log._logger.handlers == []
    assert (tmp_path / "train.log").read_text().count("before") == 1


def test_other_ranks_write_nothing_and_print_warnings(tmp_path, capsys):
    with RunLogger(tmp_path / "r1", rank=1, tensorboard=False) as log:
        log.info("hidden")
        log.warning("careful")
        log.metrics({"epoch": 0, "loss": 1.0})
    assert not (tmp_path / "r1").exists()
    out = capsys.readouterr()
    assert out.out == "" and out.err == "[rank 1] WARNING: careful\n"
    # Two loggers in one process share no handlers.
    with RunLogger(tmp_path / "a", tensorboard=False, progress=False) as a, \
            RunLogger(tmp_path / "b", tensorboard=False, progress=False) as b:
        a.info("to a")
        b.warning("to b")
    assert "to b" not in (tmp_path / "a" / "train.log").read_text()
    assert (tmp_path / "b" / "train.log").read_text().endswith("] WARNING: to b\n")


def test_write_json_atomic(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "summary.json"
    write_json_atomic(path, {"best": {"test_error": np.float64(3.5)},
                             "last": float("nan"), "t": torch.tensor([1, 2])})
    assert json.loads(path.read_text()) == {"best": {"test_error": 3.5},
                                            "last": None, "t": [1, 2]}

    def crash(*args, **kwargs):
        raise OSError("killed")

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(OSError):
        write_json_atomic(path, {"other": 1})
    monkeypatch.undo()
    assert json.loads(path.read_text())["best"] == {"test_error": 3.5}
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_progress_bars_only_on_a_terminal_by_default(monkeypatch):
    import io

    from dag_pyg.config import ConfigError, load_config
    from dag_pyg.train.logger import show_progress

    assert load_config(None).log.progress == "auto"
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a file: no bars
    assert show_progress("auto") is False and show_progress(None) is False
    assert show_progress(True) is True and show_progress(False) is False

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    assert show_progress("auto") is True
    assert load_config(None, ["log.progress=false"]).log.progress is False
    with pytest.raises(ConfigError, match="true, false or auto"):
        load_config(None, ["log.progress=sometimes"])
