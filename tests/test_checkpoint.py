import os
import random

import numpy as np
import pytest
import torch

from dag_pyg.train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

pytestmark = pytest.mark.cpu_only  # files, configs, logs: CPU by nature


def _realistic_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16),
                                torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                          nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.1)
    for _ in range(3):
        loss = model(torch.randn(10, 8)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return {
        "epoch": 3,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "feature_bank": torch.randn(20, 4),
        "label_bank": torch.randint(0, 3, (20,)),
        "best": {"val_error": 12.5, "epoch": 2},
        "history": [0.5, float("nan"), 1.0],
        "config": {"name": "digits", "seed": seed},
        "rng": capture_rng_state({"sampler": torch.Generator().manual_seed(7)}),
    }


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype
        assert torch.equal(a, b) or (a.is_floating_point()
                                     and torch.equal(a.isnan(), b.isnan()))
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    elif isinstance(a, float) and a != a:
        assert b != b
    else:
        assert a == b


def test_round_trip(tmp_path):
    state = _realistic_state()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    _assert_same(state, loaded)
    # The loaded state dicts plug back into fresh objects.
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16),
                                torch.nn.ReLU(), torch.nn.Linear(16, 3))
    model.load_state_dict(loaded["model"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.load_state_dict(loaded["optimizer"])
    assert opt.state_dict()["param_groups"][0]["nesterov"]
    # Overwriting keeps one file and no temporaries.
    save_checkpoint(path, {"epoch": 4})
    assert load_checkpoint(path) == {"epoch": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_creates_parent_dirs(tmp_path):
    path = tmp_path / "a" / "b" / "last.pt"
    save_checkpoint(path, {"epoch": 0})
    assert load_checkpoint(path)["epoch"] == 0


def _draws(gen):
    return (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(),
            torch.rand(3, generator=gen).tolist(), np.random.randn())


def test_rng_capture_restore(tmp_path):
    gen = torch.Generator().manual_seed(123)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's legacy state
    state = capture_rng_state({"sampler": gen})
    first = _draws(gen)
    # Through a checkpoint, as a resumed run would see it.
    save_checkpoint(tmp_path / "rng.pt", {"rng": state})
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    gen.manual_seed(99)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"], {"sampler": gen})
    assert _draws(gen) == first


def test_rng_state_is_weights_only_safe(tmp_path):
    gen = torch.Generator().manual_seed(5)
    torch.rand(4, generator=gen)  # a state no fresh seed gives
    state = capture_rng_state({"g": gen})
    torch.save(state, tmp_path / "r.pt")
    loaded = torch.load(tmp_path / "r.pt", weights_only=True)
    # Every part comes back as it was saved (types included: Python's state
    # stays a tuple, NumPy's key a tensor)...
    _assert_same(state, loaded)
    # ...and restores: the generator continues where it was captured.
    expect = torch.rand(3, generator=gen)
    gen.manual_seed(0)
    restore_rng_state(loaded, {"g": gen})
    assert torch.equal(torch.rand(3, generator=gen), expect)


def test_restore_unknown_generator():
    state = capture_rng_state()
    with pytest.raises(KeyError, match="sampler"):
        restore_rng_state(state, {"sampler": torch.Generator()})


@pytest.mark.parametrize("where", ["torch.save", "os.replace"])
def test_crash_keeps_previous_checkpoint(tmp_path, monkeypatch, where):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    real_save = torch.save

    def partial_save(obj, f, *args, **kwargs):
        if isinstance(f, str | os.PathLike) or not hasattr(f, "fileno"):
            return real_save(obj, f, *args, **kwargs)  # in-memory state bytes
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    def failing_replace(*args, **kwargs):
        raise OSError("killed before rename")

    if where == "torch.save":
        monkeypatch.setattr(torch, "save", partial_save)
    else:
        monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()

    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncated_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _realistic_state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="last.pt") as info:
        load_checkpoint(path)
    assert "Delete it" in str(info.value)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(path)


def test_flipped_bytes(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _realistic_state())
    data = path.read_bytes()
    # Every position in the middle third: each flip must be caught, whether
    # it hits the zip structure, the pickle or the state bytes.
    n = len(data)
    for pos in range(n // 3, 2 * n // 3, max(1, n // 97)):
        damaged = bytearray(data)
        damaged[pos] ^= 0x5A
        path.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match=str(path).replace("\\", "\\\\")):
            load_checkpoint(path)


def test_checksum_mismatch_message(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.arange(1000)})
    env = torch.load(path, weights_only=True)
    b = bytearray(env["state_bytes"])
    b[len(b) // 2] ^= 1
    env["state_bytes"] = bytes(b)
    torch.save(env, path)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "random.bin"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="random.bin"):
        load_checkpoint(path)
    # A readable torch file, but not one of ours.
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="not a dag_pyg checkpoint"):
        load_checkpoint(path)
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(CheckpointError, match="notes.txt"):
        load_checkpoint(tmp_path / "notes.txt")


def test_newer_version(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 0})
    env = torch.load(path, weights_only=True)
    env["version"] = 99
    torch.save(env, path)
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)
