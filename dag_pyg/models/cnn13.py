"""The 13-layer "conv-large" network of the Pi-model, Mean Teacher, ICT and
LP-DeepSSL, the standard CIFAR backbone of deep semi-supervised learning."""
from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm


def _scale(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class CNN13(nn.Module):
    r"""The 13-layer CNN ("conv-large") of Laine & Aila (2017).

    ``3 x conv3x3-128 -> max-pool 2 -> dropout -> 3 x conv3x3-256 -> max-pool
    2 -> dropout -> conv3x3-512 (valid) -> conv1x1-256 -> conv1x1-128 ->
    global average pool -> linear``, each convolution followed by batch
    normalisation and LeakyReLU(0.1). Its 13 layers are the 9 convolutions,
    the 2 max-pools, the global average pool and the linear classifier.
    Layer names (``conv1a``... ``conv3c``, ``fc``) follow Mean Teacher's code.

    Args:
        num_classes (int): number of classes.
        in_channels (int, optional): image channels. (default: ``3``)
        input_size (int, optional): image side; the network is size-agnostic
            (global pooling) but needs at least 18 px. (default: ``32``)
        width (float, optional): multiplier of every channel count, e.g.
            ``0.25`` for CPU runs. (default: ``1.0``)
        dropout (float, optional): dropout after each max-pool.
            (default: ``0.5``)
        weight_norm (bool, optional): weight-normalise the convolutions and
            the classifier, as Mean Teacher does. (default: :obj:`False`)
        negative_slope (float, optional): LeakyReLU slope. (default: ``0.1``)
    """

    def __init__(self, num_classes: int, in_channels: int = 3,
                 input_size: int = 32, width: float = 1.0, dropout: float = 0.5,
                 weight_norm: bool = False, negative_slope: float = 0.1):
        super().__init__()
        if width <= 0:
            raise ValueError(f"'width' must be positive (got {width}).")
        if input_size < 18:
            # Two pools and a valid 3x3 convolution need 18 px to leave 2x2.
            raise ValueError(f"CNN13 needs images of at least 18x18 (got "
                             f"input_size={input_size}); use 'cnn' or 'mlp' "
                             "for smaller images.")
        c1, c2, c3 = (_scale(c, width) for c in (128, 256, 512))
        c4, c5 = _scale(256, width), _scale(128, width)
        wn = _weight_norm if weight_norm else (lambda m: m)

        layers: list[tuple[str, nn.Module]] = []

        def conv(name: str, cin: int, cout: int, k: int, pad: int) -> None:
            layers.append((f"conv{name}", wn(nn.Conv2d(cin, cout, k, padding=pad))))
            layers.append((f"bn{name}", nn.BatchNorm2d(cout)))
            layers.append((f"act{name}", nn.LeakyReLU(negative_slope)))

        conv("1a", in_channels, c1, 3, 1)
        conv("1b", c1, c1, 3, 1)
        conv("1c", c1, c1, 3, 1)
        layers += [("pool1", nn.MaxPool2d(2, 2)), ("drop1", nn.Dropout(dropout))]
        conv("2a", c1, c2, 3, 1)
        conv("2b", c2, c2, 3, 1)
        conv("2c", c2, c2, 3, 1)
        layers += [("pool2", nn.MaxPool2d(2, 2)), ("drop2", nn.Dropout(dropout))]
        conv("3a", c2, c3, 3, 0)
        conv("3b", c3, c4, 1, 0)
        conv("3c", c4, c5, 1, 0)
        layers += [("pool3", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]
        self.body = nn.Sequential(OrderedDict(layers))
        self.feat_dim = c5
        self.classifier = wn(nn.Linear(c5, num_classes))

    def features(self, x: Tensor) -> Tensor:
        """The ``[B, feat_dim]`` embedding after global average pooling."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def cnn13(num_classes: int, in_channels: int = 3, input_size: int = 32,
          **kwargs) -> CNN13:
    """Builds :class:`CNN13`; see its arguments."""
    return CNN13(num_classes, in_channels, input_size, **kwargs)


__all__ = ["CNN13", "cnn13"]
