"""torchvision's standard sets by name (issue 14): tiny synthetic files in
torchvision's layouts, written here; nothing reads ../shared or downloads."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from dag_pyg.data import (
    ArrayDataset,
    BatchTransform,
    DatasetNotFoundError,
    IdxFormatError,
    load_dataset,
    read_idx,
)

pytestmark = pytest.mark.cpu_only  # files, configs, logs: CPU by nature

IDX_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding of a uint8 array, written by hand from the format's
    definition (two zero bytes, type 0x08, ndim, big-endian dims, data)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(root, folder="MNIST", n_train=12, n_test=5, gz=False, size=28):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    gen = np.random.default_rng(0)
    arrays = {}
    for part, n in (("train", n_train), ("t10k", n_test)):
        images = gen.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        arrays[part] = (images, labels)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{part}-{kind}-ubyte"
            data = idx_bytes(arr)
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (raw / name).write_bytes(data)
    return raw, arrays


@pytest.mark.parametrize("name", list(IDX_FOLDERS))
@pytest.mark.parametrize("gz", [False, True])
def test_idx_sets_load_plain_and_gzipped(tmp_path, name, gz):
    _, arrays = write_idx_set(tmp_path, IDX_FOLDERS[name], gz=gz)
    train, test = load_dataset(name, root=str(tmp_path))
    assert isinstance(train, ArrayDataset) and train.name == name
    assert train.images.shape == (12, 1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], torch.from_numpy(arrays["train"][0]))
    assert train.targets.tolist() == arrays["train"][1].tolist()
    assert torch.equal(test.images[:, 0], torch.from_numpy(arrays["t10k"][0]))
    assert train.num_classes == 10 and test.mean == train.mean
    assert train.mean[0] == pytest.approx(arrays["train"][0].mean() / 255, rel=1e-6)
    # Names with dashes or another case mean the same set.
    assert load_dataset(name.replace("_", "-").upper(), root=str(tmp_path))[0].name \
        == name


def test_idx_reader_types_and_errors(tmp_path):
    p = tmp_path / "a-idx2-ubyte"
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    p.write_bytes(idx_bytes(arr))
    assert read_idx(p).tolist() == arr.tolist()
    # int32, big-endian on disk (type 0x0C): read in native order.
    q = tmp_path / "b-idx1-int"
    q.write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) +
                  struct.pack(">ii", -5, 70000))
    assert read_idx(q).tolist() == [-5, 70000]
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(IdxFormatError, match="bad magic number 12340801"):
        read_idx(bad)
    cut = tmp_path / "cut"
    cut.write_bytes(idx_bytes(arr)[:-3])
    with pytest.raises(IdxFormatError, match=r"truncated: 21 bytes .*\(24 expected\)"):
        read_idx(cut)
    long = tmp_path / "long"
    long.write_bytes(idx_bytes(arr) + b"\x00")
    with pytest.raises(IdxFormatError, match="longer than its header"):
        read_idx(long)
    gz = tmp_path / "x.gz"
    gz.write_bytes(gzip.compress(idx_bytes(arr))[:-6])
    with pytest.raises(IdxFormatError, match="not a readable gzip file"):
        read_idx(gz)
    with pytest.raises(IdxFormatError, match="empty file"):
        (tmp_path / "empty").write_bytes(b"")
        read_idx(tmp_path / "empty")


def test_idx_set_missing_and_mismatched_files(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", root=str(tmp_path))
    msg = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte[.gz]" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "download: true" in msg and "network" in msg
    raw, _ = write_idx_set(tmp_path)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing: t10k-labels-idx1-ubyte"):
        load_dataset("mnist", root=str(tmp_path))
    # Labels of another length than the images: never a partial load.
    (raw / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        load_dataset("mnist", root=str(tmp_path))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(IdxFormatError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", root=str(tmp_path))


def test_svhn_through_torchvision(tmp_path, monkeypatch):
    scipy_io = pytest.importorskip("scipy.io")
    from torchvision.datasets import SVHN

    gen = np.random.default_rng(1)
    for split, n in (("train", 6), ("test", 3)):
        x = gen.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(n, 1)   # SVHN stores digit 0 as 10
        y[0] = 10
        scipy_io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        if split == "train":
            ref_x, ref_y = x, y
    # The synthetic files cannot match torchvision's checksums of the real ones.
    monkeypatch.setattr(SVHN, "_check_integrity", lambda self: True)
    train, test = load_dataset("svhn", root=str(tmp_path))
    assert train.images.shape == (6, 3, 32, 32) and len(test) == 3
    assert torch.equal(train.images, torch.from_numpy(ref_x.transpose(3, 2, 0, 1)))
    assert train.targets.tolist() == [0, 2, 3, 4, 5, 6] == [
        0 if v == 10 else int(v) for v in ref_y[:, 0]]
    monkeypatch.undo()
    with pytest.raises(DatasetNotFoundError, match="train_32x32.mat.*download: true"):
        load_dataset("svhn", root=str(tmp_path / "none"))


def test_stl10_through_torchvision(tmp_path, monkeypatch):
    from torchvision.datasets import STL10

    base = tmp_path / "stl10_binary"
    base.mkdir()
    gen = np.random.default_rng(2)
    for split, n in (("train", 4), ("test", 2)):
        x = gen.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        # STL-10's binary layout: each image column-major, labels 1..10.
        (base / f"{split}_X.bin").write_bytes(x.transpose(0, 1, 3, 2).tobytes())
        (base / f"{split}_y.bin").write_bytes((np.arange(n) + 1).astype(np.uint8)
                                              .tobytes())
        if split == "train":
            ref = x
    (base / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    monkeypatch.setattr(STL10, "_check_integrity", lambda self: True)
    train, test = load_dataset("stl10", root=str(tmp_path))
    assert torch.equal(train.images, torch.from_numpy(ref))
    assert train.targets.tolist() == [0, 1, 2, 3] and train.classes[0] == "c0"
    assert len(test) == 2 and train.image_shape == (3, 96, 96)
    monkeypatch.undo()
    with pytest.raises(DatasetNotFoundError, match="train_X.bin.*stl10_binary"):
        load_dataset("stl10", root=str(tmp_path / "none"))


@pytest.mark.parametrize("name,size,pad,flip,mode", [
    ("mnist", 28, 1, False, "zero"), ("kmnist", 28, 1, False, "zero"),
    ("fashion_mnist", 28, 1, True, "zero"), ("svhn", 32, 2, False, "reflect"),
    ("stl10", 96, 6, True, "reflect"), ("cifar10", 32, 2, True, "reflect"),
    ("digits", 8, 1, False, "zero")])
def test_per_dataset_augmentation_defaults(name, size, pad, flip, mode):
    c = 3 if name in ("svhn", "stl10", "cifar10") else 1
    ds = ArrayDataset(torch.zeros(2, c, size, size, dtype=torch.uint8),
                      torch.zeros(2), ["x"], name=name)
    t = BatchTransform.for_dataset(ds)
    assert (t.pad, t.flip, t.padding_mode) == (pad, flip, mode)
