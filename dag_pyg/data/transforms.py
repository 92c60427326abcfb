"""Batched augmentation on image tensors, seeded with a ``torch.Generator``.

The images already sit in memory as one tensor, so augmenting a whole batch
with a few tensor operations is much faster than torchvision's per-image PIL
transforms, and a ``torch.Generator`` makes it reproducible (and resumable)
independently of the global RNG.

Random numbers are drawn on the generator's device (the CPU for the default
generator) and moved to the images' device.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

PADDING_MODES = ("reflect", "zero")
# Data sets whose images a horizontal flip turns into other symbols.
NO_FLIP = frozenset({"digits", "mnist", "kmnist", "svhn"})
# Grey data sets on a black background: translation pads with zeros.
ZERO_PAD = frozenset({"digits", "mnist", "fashion_mnist", "kmnist"})


def to_float(x: Tensor) -> Tensor:
    """``uint8`` images to ``float32`` in ``[0, 1]``; float images unchanged."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    if not x.is_floating_point():
        raise ValueError(f"Images must be uint8 or floating point (got {x.dtype}).")
    return x


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-channel ``(x - mean) / std`` on a float ``[B, C, H, W]`` batch."""
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    if mean_t.numel() != x.size(1) or std_t.numel() != x.size(1):
        raise ValueError(f"mean/std have {mean_t.numel()}/{std_t.numel()} "
                         f"entries but the images have {x.size(1)} channels.")
    return (x - mean_t.view(1, -1, 1, 1)) / std_t.view(1, -1, 1, 1)


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def random_flip(x: Tensor, generator: torch.Generator | None = None,
                p: float = 0.5) -> Tensor:
    """Mirrors each image left-right with probability ``p``."""
    flip = torch.rand(x.size(0), generator=generator,
                      device=_gen_device(generator)) < p
    flip = flip.to(x.device).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(flip, x.flip(-1), x)


def _reflect(i: Tensor, n: int) -> Tensor:
    # Index map of reflect padding without repeating the edge (numpy's and
    # torch's "reflect"): -1 -> 1, n -> n - 2. Valid for |shift| < n.
    i = i.abs()
    return torch.where(i >= n, 2 * (n - 1) - i, i)


def random_translate(x: Tensor, pad: int, generator: torch.Generator | None = None,
                     padding_mode: str = "reflect") -> Tensor:
    r"""Random crop of the padded image: shifts each image by up to ``pad`` px.

    Equivalent to torchvision's ``RandomCrop(size, padding=pad)`` applied per
    image: an offset in ``[-pad, pad]`` is drawn per image and axis. Works on
    any dtype (``uint8`` included) by gathering indices instead of padding.

    Args:
        x (Tensor): ``[B, C, H, W]`` images.
        pad (int): largest shift in pixels.
        generator (torch.Generator, optional): source of randomness.
        padding_mode (str, optional): ``"reflect"`` (mirror the border) or
            ``"zero"``. (default: ``"reflect"``)
    """
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"Unknown padding_mode '{padding_mode}'. Choose one "
                         f"of {list(PADDING_MODES)}.")
    if pad == 0:
        return x
    b, c, h, w = x.shape
    if pad < 0 or (padding_mode == "reflect" and pad >= min(h, w)):
        raise ValueError(f"'pad' must lie in [0, {min(h, w) - 1}] for reflect "
                         f"padding of {h}x{w} images (got {pad}).")
    dev = _gen_device(generator)
    shift = torch.randint(-pad, pad + 1, (2, b), generator=generator, device=dev)
    shift = shift.to(x.device)
    rows = torch.arange(h, device=x.device) + shift[0].view(-1, 1)  # [B, H]
    cols = torch.arange(w, device=x.device) + shift[1].view(-1, 1)  # [B, W]
    if padding_mode == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
    else:
        valid = (((rows >= 0) & (rows < h)).view(b, 1, h, 1)
                 & ((cols >= 0) & (cols < w)).view(b, 1, 1, w))
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    out = x.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w))
    out = out.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))
    if padding_mode == "zero":
        out = out.masked_fill(~valid, 0)
    return out


def affine(x: Tensor, angle: Tensor, scale: Tensor, shear: Tensor,
           padding_mode: str = "reflect") -> Tensor:
    r"""Rotates, scales and shears each image about its centre, bilinearly.

    The same map as torchvision's ``functional.affine(img, angle, [0, 0],
    scale, [shear, 0])`` per image (clockwise angles in degrees, a shear
    parallel to the x-axis), as one ``affine_grid``/``grid_sample`` call for
    the batch. Outside the image it samples zeros (``"zero"``, torchvision's
    fill) or the border mirrored (``"reflect"``: ``grid_sample``'s
    ``"reflection"``, which repeats the edge pixel, unlike
    :func:`random_translate`'s).

    Args:
        x (Tensor): ``[B, C, H, W]`` float images.
        angle (Tensor): ``[B]`` rotations in degrees.
        scale (Tensor): ``[B]`` scale factors (> 0).
        shear (Tensor): ``[B]`` shears in degrees.
        padding_mode (str, optional): ``"reflect"`` or ``"zero"``.
            (default: ``"reflect"``)
    """
    if not x.is_floating_point():
        raise TypeError(f"affine needs float images (got {x.dtype}); call "
                        "to_float first.")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"Unknown padding_mode '{padding_mode}'. Choose one "
                         f"of {list(PADDING_MODES)}.")
    b, _, h, w = x.shape
    a, t = torch.deg2rad(angle.double()), torch.tan(torch.deg2rad(shear.double()))
    s, cos, sin = scale.double(), torch.cos(a), torch.sin(a)
    # The forward map in pixel coordinates (x right, y down) about the
    # centre: rotation * scale * shear; the grid samples its inverse.
    fwd = torch.stack([torch.stack([s * cos, s * (-cos * t - sin)], 1),
                       torch.stack([s * sin, s * (-sin * t + cos)], 1)], 1)
    half = torch.tensor([w / 2, h / 2], dtype=torch.float64, device=fwd.device)
    # In affine_grid's coordinates, [-1, 1] along each axis.
    inv = torch.linalg.inv(fwd) * half.view(1, 1, 2) / half.view(1, 2, 1)
    theta = torch.cat([inv, inv.new_zeros(b, 2, 1)], 2).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    mode = "reflection" if padding_mode == "reflect" else "zeros"
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=mode,
                         align_corners=False)


def random_affine(x: Tensor, degrees: float, scale: float, shear: float,
                  generator: torch.Generator | None = None,
                  padding_mode: str = "reflect") -> Tensor:
    r"""Random :func:`affine` per image: a rotation in ``[-degrees,
    degrees]``, a scale in ``[1 - scale, 1 + scale]`` and a shear in
    ``[-shear, shear]`` degrees, uniform (torchvision's ``RandomAffine``
    with these ranges, drawn per image rather than per batch)."""
    if not (0 <= degrees <= 180 and 0 <= scale < 1 and 0 <= shear < 90):
        raise ValueError("random_affine: degrees in [0, 180], scale in [0, 1) "
                         f"and shear in [0, 90) (got {degrees}, {scale}, {shear}).")
    if degrees == scale == shear == 0:
        return x
    u = torch.rand(3, x.shape[0], generator=generator, device=_gen_device(generator),
                   dtype=torch.float64).cpu() * 2 - 1
    return affine(x, u[0] * degrees, 1 + u[1] * scale, u[2] * shear, padding_mode)


class BatchTransform:
    r"""Augments (optionally) and normalises a batch of images.

    Order: random translate, random horizontal flip (both on the raw dtype),
    conversion to float in ``[0, 1]``, a random affine map (rotation, scale,
    shear; :func:`random_affine`), per-channel normalisation. With ``pad=0``,
    ``flip=False`` and no affine map it is the evaluation transform.

    Args:
        mean (Sequence[float], optional): per-channel mean on the ``[0, 1]``
            scale; no normalisation when omitted.
        std (Sequence[float], optional): per-channel standard deviation.
        pad (int, optional): largest random translation in pixels.
            (default: ``0``)
        flip (bool, optional): random horizontal flips. (default: :obj:`False`)
        padding_mode (str, optional): ``"reflect"`` or ``"zero"``.
            (default: ``"reflect"``)
        affine (tuple[float, float, float], optional): the ranges of
            :func:`random_affine`: degrees, scale, shear. (default: no map)
    """

    def __init__(self, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, pad: int = 0,
                 flip: bool = False, padding_mode: str = "reflect",
                 affine: tuple[float, float, float] = (0.0, 0.0, 0.0)):
        if (mean is None) != (std is None):
            raise ValueError("Give both 'mean' and 'std', or neither.")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"Unknown padding_mode '{padding_mode}'. Choose "
                             f"one of {list(PADDING_MODES)}.")
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.pad = int(pad)
        self.flip = bool(flip)
        self.padding_mode = padding_mode
        self.affine = tuple(float(v) for v in affine)

    @classmethod
    def for_dataset(cls, dataset, train: bool = True) -> BatchTransform:
        r"""The default transform for an :class:`ArrayDataset`.

        Training: translate by ``max(1, size // 16)`` px (2 px for 32x32, as
        Mean Teacher / LP-DeepSSL; 1 px for 28x28, 5 px for 84x84) and
        random flips. Sets of digits and characters (:data:`NO_FLIP`:
        ``digits``, ``mnist``, ``kmnist``, ``svhn``) are not flipped
        (mirrored digits are other symbols); grey sets on a black background
        (:data:`ZERO_PAD`) are padded with zeros, the others by reflection.
        Evaluation: normalisation only.
        """
        mean, std = dataset.mean, dataset.std
        if not train:
            return cls(mean, std)
        size = min(dataset.image_shape[1:])
        return cls(mean, std, pad=max(1, size // 16),
                   flip=dataset.name not in NO_FLIP,
                   padding_mode="zero" if dataset.name in ZERO_PAD else "reflect")

    def __call__(self, x: Tensor, generator: torch.Generator | None = None
                 ) -> Tensor:
        if self.pad:
            x = random_translate(x, self.pad, generator, self.padding_mode)
        if self.flip:
            x = random_flip(x, generator)
        x = to_float(x)
        if any(self.affine):
            x = random_affine(x, *self.affine, generator=generator,
                              padding_mode=self.padding_mode)
        if self.mean is not None:
            x = normalize(x, self.mean, self.std)
        return x

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(pad={self.pad}, flip={self.flip}, "
                f"padding_mode='{self.padding_mode}', affine={self.affine}, "
                f"normalize={self.mean is not None})")


def mixup_draw(batch_size: int, alpha: float,
               generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> tuple[float, Tensor]:
    r"""The random part of :func:`mixup`: :math:`\lambda \sim
    \mathrm{Beta}(\alpha, \alpha)` and a permutation :math:`\pi` of the batch
    (on ``device``); ``alpha <= 0`` gives :math:`\lambda = 1` and the
    identity without drawing."""
    if alpha <= 0:
        return 1.0, torch.arange(batch_size, device=device)
    dev = _gen_device(generator)
    # torch's Beta sampler takes no generator: seed numpy from the generator.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=dev))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(batch_size, generator=generator, device=dev)
    return lam, perm.to(device) if device is not None else perm


def mix(x: Tensor, lam: float, perm: Tensor) -> Tensor:
    r""":math:`\lambda x + (1 - \lambda) x_{\pi}` (identity for
    :math:`\lambda = 1`)."""
    if lam == 1.0:
        return x
    return lam * x + (1.0 - lam) * x[perm.to(x.device)]


def mixup(x: Tensor, y_onehot: Tensor, alpha: float,
          generator: torch.Generator | None = None, return_perm: bool = False):
    r"""Mixup (Zhang et al., 2018): convex combinations of a batch with itself.

    Draws :math:`\lambda \sim \mathrm{Beta}(\alpha, \alpha)` and a random
    permutation :math:`\pi` of the batch (:func:`mixup_draw`) and returns
    :math:`\lambda x + (1 - \lambda) x_{\pi}` and the same for the targets
    (:func:`mix`).

    Args:
        x (Tensor): float inputs ``[B, ...]``.
        y_onehot (Tensor): soft or one-hot targets ``[B, num_classes]``.
        alpha (float): Beta parameter; ``alpha <= 0`` turns mixup off
            (:math:`\lambda = 1`, identity permutation).
        generator (torch.Generator, optional): source of randomness for both
            :math:`\lambda` and :math:`\pi`.
        return_perm (bool, optional): also return :math:`\pi`, e.g. to mix
            per-sample loss weights. (default: :obj:`False`)

    Returns:
        ``(x_mixed, y_mixed, lam)`` or ``(x_mixed, y_mixed, lam, perm)``.
    """
    if x.size(0) != y_onehot.size(0):
        raise ValueError(f"x and y_onehot disagree on the batch size "
                         f"({x.size(0)} vs {y_onehot.size(0)}).")
    lam, perm = mixup_draw(x.size(0), alpha, generator, x.device)
    out = (mix(x, lam, perm), mix(y_onehot, lam, perm), lam)
    return (*out, perm) if return_perm else out
