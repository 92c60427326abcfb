import json
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dag_pyg.data import (
    ArrayDataset,
    BatchTransform,
    DatasetNotFoundError,
    Split,
    affine,
    channel_stats,
    load_dataset,
    make_split,
    mixup,
    normalize,
    random_affine,
    random_flip,
    random_translate,
    to_float,
)
from dag_pyg.data import datasets as ds_mod

pytestmark = pytest.mark.cpu_only  # files, configs, logs: CPU by nature

# --------------------------------------------------------------------- splits


def _targets(per_class=(20, 20, 20, 20)):
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    return y[torch.randperm(y.numel(), generator=torch.Generator().manual_seed(1))]


def test_split_balanced_disjoint_and_covering():
    y = _targets()
    s = make_split(y, num_labelled=8, num_val=12, seed=0)
    assert torch.bincount(y[s.labelled], minlength=4).tolist() == [2, 2, 2, 2]
    assert torch.bincount(y[s.val], minlength=4).tolist() == [3, 3, 3, 3]
    parts = torch.cat([s.labelled, s.unlabelled, s.val])
    assert parts.unique().numel() == parts.numel() == y.numel()
    assert torch.equal(s.train, torch.cat([s.labelled, s.unlabelled]).sort().values)
    for idx in (s.labelled, s.unlabelled, s.val):
        assert torch.equal(idx, idx.sort().values)


def test_split_per_class_and_determinism():
    y = _targets()
    a = make_split(y, 3, per_class=True, seed=5)
    b = make_split(y, 3, per_class=True, seed=5)
    c = make_split(y, 3, per_class=True, seed=6)
    assert torch.bincount(y[a.labelled]).tolist() == [3, 3, 3, 3]
    assert torch.equal(a.labelled, b.labelled)
    assert torch.equal(a.unlabelled, b.unlabelled)
    assert not torch.equal(a.labelled, c.labelled)
    assert a.val.numel() == 0
    # Asking for a validation set must not change which samples are labelled.
    d = make_split(y, 3, per_class=True, num_val=8, seed=5)
    assert torch.equal(a.labelled, d.labelled)
    assert not set(d.val.tolist()) & set(d.labelled.tolist())


def test_split_errors():
    y = _targets((5, 5, 5))
    with pytest.raises(ValueError, match="spread evenly over 3 classes.*per_class"):
        make_split(y, 10)
    with pytest.raises(ValueError, match="num_val=4 cannot be spread"):
        make_split(y, 3, num_val=4)
    with pytest.raises(ValueError, match="Class 0 has 5 samples, too few"):
        make_split(y, 5, per_class=True)
    with pytest.raises(ValueError, match="too few"):
        make_split(y, 2, per_class=True, num_val=9)
    with pytest.raises(ValueError, match="positive integer"):
        make_split(y, 0)
    with pytest.raises(ValueError, match="non-negative"):
        make_split(y, 3, num_val=-3)
    with pytest.raises(ValueError, match="1-D integer"):
        make_split(torch.rand(10), 2)


def test_split_save_load_round_trip(tmp_path):
    y = _targets()
    s = make_split(y, 8, num_val=4, seed=3)
    path = tmp_path / "run" / "split.json"
    s.save(str(path))
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no tmp
    t = Split.load(str(path), num_samples=y.numel())
    for a, b in ((s.labelled, t.labelled), (s.unlabelled, t.unlabelled),
                 (s.val, t.val)):
        assert torch.equal(a, b) and b.dtype == torch.long
    assert t.num_samples == y.numel() and t.meta["seed"] == 3
    with pytest.raises(ValueError, match="made for a training set of 80"):
        Split.load(str(path), num_samples=50)


@pytest.mark.parametrize("edit, msg", [
    (lambda o: o["labelled"].append(10_000), "outside"),
    (lambda o: o["val"].append(o["labelled"][0]), "overlap"),
    (lambda o: o["unlabelled"].pop(), "leaves 1 of 80"),
    (lambda o: o["labelled"].append(o["labelled"][0]), "repeats"),
    (lambda o: o.pop("val"), "lacks"),
    (lambda o: o.update(format="other"), "not a dag_pyg split"),
    (lambda o: o.update(labelled=[0.5]), "integer indices"),
])
def test_split_load_rejects_bad_files(tmp_path, edit, msg):
    s = make_split(_targets(), 8, seed=0)
    path = tmp_path / "split.json"
    s.save(str(path))
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))
    with pytest.raises(ValueError, match=msg):
        Split.load(str(path))


def test_split_load_rejects_non_json(tmp_path):
    path = tmp_path / "split.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid split file"):
        Split.load(str(path))


# ------------------------------------------------------------------- datasets


def test_array_dataset_and_stats():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8, generator=g)
    d = ArrayDataset(x, torch.tensor([0, 1, 2, 0, 1, 2]), ["a", "b", "c"],
                     name="toy")
    ref = x.double().div(255)
    assert np.allclose(d.mean, ref.mean(dim=(0, 2, 3)).tolist())
    assert np.allclose(d.std, ref.permute(1, 0, 2, 3).reshape(3, -1)
                       .std(dim=1, unbiased=False).tolist())
    assert np.allclose(channel_stats(x.float() / 255, chunk=4), channel_stats(x))
    assert len(d) == 6 and d.num_classes == 3 and d.image_shape == (3, 4, 4)
    img, t = d[1]
    assert torch.equal(img, x[1]) and int(t) == 1
    sub = d.subset([5, 0])
    assert torch.equal(sub.images, x[[5, 0]]) and sub.mean == d.mean
    with pytest.raises(ValueError, match="targets"):
        ArrayDataset(x, torch.tensor([0, 1]), ["a"])
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        ArrayDataset(x[:2], torch.tensor([0, 2]), ["a", "b"])


def test_digits():
    train, test = load_dataset("digits")
    assert train.images.shape == (1500, 1, 8, 8)
    assert test.images.shape == (297, 1, 8, 8)
    assert train.images.dtype == torch.float32 and train.targets.dtype == torch.long
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    assert train.num_classes == 10 and train.classes == [str(i) for i in range(10)]
    assert torch.bincount(train.targets).min() >= 140
    assert torch.bincount(test.targets, minlength=10).min() >= 25
    assert test.mean == train.mean
    again, _ = load_dataset("digits")
    assert torch.equal(again.images, train.images)
    small, rest = load_dataset("digits", num_train=1000)
    assert len(small) == 1000 and len(rest) == 797


def test_load_dataset_bad_name_and_option():
    with pytest.raises(ValueError, match="Unknown dataset 'emnist'.*cifar10"):
        load_dataset("emnist")
    with pytest.raises(TypeError, match="unknown option.*image_size"):
        load_dataset("digits", image_size=8)


def test_cifar10_missing_files_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", root=str(tmp_path), download=False)
    msg = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg
    assert "download: true" in msg and "imagefolder" in msg
    with pytest.raises(DatasetNotFoundError, match="CIFAR-100"):
        load_dataset("cifar100", root=str(tmp_path))


def _make_tree(root, sizes=None, fmt="png"):
    """3 classes x 3 train images, 2 x 2 test images, distinct pixel values."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, classes, n in (("train", "abc", 3), ("test", "ab", 2)):
        for c in classes:
            os.makedirs(root / split / c, exist_ok=True)
            for i in range(n):
                h, w = (sizes or {}).get((split, c, i), (5, 5))
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.{fmt}")
                arrays[(split, c, i)] = arr
    return arrays


def _no_decode(*args, **kwargs):
    raise AssertionError("decoded although a cache exists")


def test_imagefolder_decode_and_cache(tmp_path, monkeypatch):
    root = tmp_path / "tiny"
    arrays = _make_tree(root)
    train, test = load_dataset("imagefolder", root=str(root), progress=False)
    assert train.classes == ["a", "b", "c"] and train.name == "tiny"
    assert train.images.shape == (9, 3, 5, 5) and train.images.dtype == torch.uint8
    assert train.targets.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert test.targets.tolist() == [0, 0, 1, 1] and test.mean == train.mean
    # PNG is lossless: decoded pixels equal what was written.
    assert np.array_equal(train.images[4].permute(1, 2, 0).numpy(),
                          arrays[("train", "b", 1)])
    caches = sorted(p.name for p in root.glob(".dag_pyg_cache_*.npz"))
    assert len(caches) == 2 and not list(root.glob(".tmp_*"))

    # A second load reads the cache and decodes nothing.
    monkeypatch.setattr(ds_mod, "_decode_image", _no_decode)
    train2, test2 = load_dataset("imagefolder", root=str(root), progress=False)
    assert torch.equal(train2.images, train.images)
    assert torch.equal(test2.targets, test.targets)

    # A changed file list (new image) changes the key: decode again.
    monkeypatch.undo()
    Image.fromarray(arrays[("train", "a", 0)]).save(root / "train" / "c" / "9.png")
    train3, _ = load_dataset("imagefolder", root=str(root), progress=False)
    assert len(train3) == 10
    assert len(list(root.glob(".dag_pyg_cache_*_train_*.npz"))) == 2


def test_imagefolder_cache_dir_resize_and_jpeg(tmp_path, monkeypatch):
    root, cache = tmp_path / "data", tmp_path / "cache"
    _make_tree(root, fmt="jpg")
    train, test = load_dataset("imagefolder", root=str(root), cache_dir=str(cache),
                               image_size=4, progress=False)
    assert train.images.shape == (9, 3, 4, 4) and test.images.shape == (4, 3, 4, 4)
    assert not list(root.glob(".dag_pyg_cache_*"))
    assert len(list(cache.glob(".dag_pyg_cache_*_4px_*.npz"))) == 2
    monkeypatch.setattr(ds_mod, "_decode_image", _no_decode)
    again, _ = load_dataset("imagefolder", root=str(root), cache_dir=str(cache),
                            image_size=4, progress=False)
    assert torch.equal(again.images, train.images)
    with pytest.raises(AssertionError, match="decoded"):  # other size, other key
        load_dataset("imagefolder", root=str(root), cache_dir=str(cache),
                     progress=False)


def test_imagefolder_read_only_root_falls_back(tmp_path, monkeypatch):
    root, home_cache = tmp_path / "data", tmp_path / "home_cache"
    _make_tree(root)
    write = ds_mod._write_cache

    def read_only_root(path, *args):
        if path.startswith(str(root)):
            return False  # as os.makedirs/mkstemp failing on a read-only mount
        return write(path, *args)

    monkeypatch.setattr(ds_mod, "_write_cache", read_only_root)
    monkeypatch.setattr(ds_mod, "_DEFAULT_CACHE_DIR", str(home_cache))
    load_dataset("imagefolder", root=str(root), progress=False)
    assert not list(root.glob(".dag_pyg_cache_*"))
    assert len(list(home_cache.glob(".dag_pyg_cache_*.npz"))) == 2
    monkeypatch.setattr(ds_mod, "_decode_image", _no_decode)
    load_dataset("imagefolder", root=str(root), progress=False)


def test_imagefolder_cache_write_is_atomic(tmp_path, monkeypatch):
    root = tmp_path / "data"
    _make_tree(root)

    def failing_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ds_mod.np, "savez", failing_savez)
    monkeypatch.setattr(ds_mod, "_DEFAULT_CACHE_DIR", str(tmp_path / "home"))
    with pytest.warns(UserWarning, match="Could not write"):
        train, _ = load_dataset("imagefolder", root=str(root), progress=False)
    assert len(train) == 9
    leftovers = list(root.iterdir()) + list((tmp_path / "home").iterdir())
    assert sorted(p.name for p in leftovers) == ["test", "train"]


def test_imagefolder_corrupt_cache_is_rebuilt(tmp_path):
    root = tmp_path / "data"
    _make_tree(root)
    train, _ = load_dataset("imagefolder", root=str(root), progress=False)
    cache = next(root.glob(".dag_pyg_cache_*_train_*.npz"))
    cache.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable image cache"):
        again, _ = load_dataset("imagefolder", root=str(root), progress=False)
    assert torch.equal(again.images, train.images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("imagefolder", root=str(root), progress=False)


def test_imagefolder_errors(tmp_path):
    root = tmp_path / "data"
    _make_tree(root, sizes={("train", "b", 0): (6, 5)})
    with pytest.raises(ValueError, match="pass 'image_size'"):
        load_dataset("imagefolder", root=str(root), progress=False)
    with pytest.raises(DatasetNotFoundError, match="test"):
        load_dataset("imagefolder", root=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="needs 'root'"):
        load_dataset("imagefolder")
    os.makedirs(root / "test" / "zebra")
    Image.new("RGB", (5, 5)).save(root / "test" / "zebra" / "0.png")
    with pytest.raises(ValueError, match="zebra"):
        load_dataset("imagefolder", root=str(root), image_size=5)


def test_imagefolder_plain_progress(tmp_path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    root = tmp_path / "data"
    _make_tree(root)
    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    load_dataset("imagefolder", root=str(root), progress=True)
    err = capsys.readouterr().err
    assert "Decoding data/train: 9/9" in err


# ------------------------------------------------------------------ transforms


def _batch(b=6, c=2, h=7, w=7, dtype=torch.uint8):
    # Distinct values so any shift is identifiable.
    x = torch.arange(b * c * h * w).view(b, c, h, w) % 251 + 1
    return x.to(dtype)


def test_flip_exactly_mirrors():
    x = _batch()
    assert torch.equal(random_flip(x, p=1.0), x.flip(-1))
    assert torch.equal(random_flip(x, p=0.0), x)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [bool(torch.equal(out[i], x[i].flip(-1))) for i in range(len(x))]
    kept = [bool(torch.equal(out[i], x[i])) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert any(flipped) and any(kept)


@pytest.mark.parametrize("mode, fpad", [("reflect", "reflect"), ("zero", "constant")])
def test_translate_is_a_crop_of_the_padded_image(mode, fpad):
    pad, x = 2, _batch(b=16)
    out = random_translate(x, pad, torch.Generator().manual_seed(0), mode)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = F.pad(x.float(), (pad,) * 4, mode=fpad).to(x.dtype)
    offsets = set()
    for i in range(x.size(0)):
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if torch.equal(out[i], padded[i, :, dy:dy + 7, dx:dx + 7])]
        assert len(hits) == 1  # shifted by at most pad pixels
        offsets.add(hits[0])
    assert len(offsets) > 3  # offsets vary between images


def test_translate_determinism_and_errors():
    x = _batch()
    a = random_translate(x, 2, torch.Generator().manual_seed(3))
    b = random_translate(x, 2, torch.Generator().manual_seed(3))
    c = random_translate(x, 2, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(random_translate(x, 0), x)
    with pytest.raises(ValueError, match="padding_mode"):
        random_translate(x, 2, padding_mode="edge")
    with pytest.raises(ValueError, match="pad"):
        random_translate(x, 7)


def test_affine_matches_torchvision_per_image():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    torch.manual_seed(0)
    x = torch.rand(4, 2, 28, 20)  # not square: the grid's aspect matters
    angle = torch.tensor([10.0, -25.0, 90.0, 0.0])
    scale = torch.tensor([1.0, 1.1, 0.9, 1.0])
    shear = torch.tensor([0.0, 5.0, -8.0, 0.0])
    out = affine(x, angle, scale, shear, padding_mode="zero")
    for i in range(4):
        ref = TF.affine(x[i], angle=float(angle[i]), translate=[0, 0],
                        scale=float(scale[i]), shear=[float(shear[i]), 0.0],
                        interpolation=InterpolationMode.BILINEAR)
        assert torch.allclose(out[i], ref, atol=1e-5)
    assert torch.allclose(out[3], x[3], atol=1e-6)  # the identity
    # 90 degrees on a square image: exactly a quarter turn, clockwise.
    sq = torch.rand(1, 1, 7, 7)
    turned = affine(sq, torch.tensor([90.0]), torch.ones(1), torch.zeros(1))
    assert torch.allclose(turned, torch.rot90(sq, -1, (2, 3)), atol=1e-5)
    with pytest.raises(TypeError, match="float images"):
        affine(_batch(), angle, scale, shear)
    with pytest.raises(ValueError, match="Unknown padding_mode 'edge'"):
        affine(x, angle, scale, shear, padding_mode="edge")


def test_random_affine_ranges_and_seeding():
    x = torch.rand(64, 1, 9, 9)
    g = torch.Generator().manual_seed(0)
    a = random_affine(x, 15, 0.1, 10, g)
    assert torch.equal(a, random_affine(x, 15, 0.1, 10,
                                        torch.Generator().manual_seed(0)))
    assert not torch.allclose(a, x)
    assert torch.equal(random_affine(x, 0, 0, 0, g), x)
    # Rotation alone of a centred disc's radial image changes nothing
    # (bilinear error aside); a scale does.
    yy, xx = torch.meshgrid(torch.arange(9.0), torch.arange(9.0), indexing="ij")
    disc = (-((yy - 4) ** 2 + (xx - 4) ** 2) / 8).exp().expand(8, 1, 9, 9)
    for deg, sc in ((180, 0), (0, 0.3)):
        out = random_affine(disc, deg, sc, 0, g, padding_mode="zero")
        assert torch.allclose(out, disc, atol=0.05) == (sc == 0)
    with pytest.raises(ValueError, match="scale in \\[0, 1\\)"):
        random_affine(x, 10, 1.5, 0)
    tf = BatchTransform(affine=(15, 0.1, 10), padding_mode="zero")
    assert torch.equal(tf(x, torch.Generator().manual_seed(1)),
                       random_affine(x, 15, 0.1, 10, torch.Generator().manual_seed(1),
                                     padding_mode="zero"))


def test_batch_transform():
    x = _batch(c=3)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    ev = BatchTransform(mean, std)
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std).view(1, 3, 1, 1)
    assert torch.allclose(ev(x), ref)
    assert torch.allclose(normalize(to_float(x), mean, std), ref)
    tr = BatchTransform(mean, std, pad=2, flip=True)
    a = tr(x, torch.Generator().manual_seed(0))
    b = tr(x, torch.Generator().manual_seed(0))
    assert a.dtype == torch.float32 and torch.equal(a, b)
    assert not torch.allclose(a, ref)
    with pytest.raises(ValueError, match="both"):
        BatchTransform(mean=mean)
    digits, _ = load_dataset("digits")
    dt = BatchTransform.for_dataset(digits)
    assert (dt.pad, dt.flip, dt.padding_mode) == (1, False, "zero")
    cif = ArrayDataset(torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
                       torch.zeros(2), ["x"], name="cifar10")
    ct = BatchTransform.for_dataset(cif)
    assert (ct.pad, ct.flip, ct.padding_mode) == (2, True, "reflect")
    assert BatchTransform.for_dataset(cif, train=False).pad == 0


def test_mixup_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 3, 3, generator=g)
    y = F.one_hot(torch.tensor([0, 1, 2, 1, 0]), 3).float()
    xm, ym, lam, perm = mixup(x, y, 0.75, torch.Generator().manual_seed(7),
                              return_perm=True)
    # The same draws by hand: a numpy Beta seeded from the generator, then
    # a permutation.
    h = torch.Generator().manual_seed(7)
    seed = int(torch.randint(0, 2**62, (1,), generator=h))
    lam_ref = float(np.random.default_rng(seed).beta(0.75, 0.75))
    perm_ref = torch.randperm(5, generator=h)
    assert lam == lam_ref and 0 < lam < 1 and torch.equal(perm, perm_ref)
    for i in range(5):
        j = int(perm_ref[i])
        assert torch.allclose(xm[i], lam_ref * x[i] + (1 - lam_ref) * x[j])
        assert torch.allclose(ym[i], lam_ref * y[i] + (1 - lam_ref) * y[j])
    assert torch.allclose(ym.sum(1), torch.ones(5))
    x0, y0, lam0 = mixup(x, y, 0.0)
    assert lam0 == 1.0 and x0 is x and y0 is y
    with pytest.raises(ValueError, match="batch size"):
        mixup(x, y[:3], 1.0)
