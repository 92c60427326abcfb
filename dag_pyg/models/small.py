"""Small backbones for the 8x8 digits (and other tiny images)."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    r"""A multi-layer perceptron on flattened images.

    ``flatten -> [linear -> batch norm -> ReLU -> dropout] x len(hidden)``;
    the last hidden layer is the embedding.

    Args:
        num_classes (int): number of classes.
        in_channels (int, optional): image channels. (default: ``1``)
        input_size (int, optional): image side. (default: ``8``)
        hidden (Sequence[int], optional): hidden widths.
            (default: ``(128, 64)``)
        dropout (float, optional): dropout after each hidden layer.
            (default: ``0.0``)
    """

    def __init__(self, num_classes: int, in_channels: int = 1,
                 input_size: int = 8, hidden: Sequence[int] = (128, 64),
                 dropout: float = 0.0):
        super().__init__()
        if len(hidden) == 0:
            raise ValueError("'hidden' needs at least one width.")
        layers: list[nn.Module] = [nn.Flatten()]
        dim = in_channels * input_size * input_size
        for h in hidden:
            layers += [nn.Linear(dim, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            dim = h
        self.body = nn.Sequential(*layers)
        self.feat_dim = dim
        self.classifier = nn.Linear(dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The ``[B, hidden[-1]]`` embedding."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    r"""A four-convolution CNN for tiny images such as 8x8 digits.

    ``2 x conv3x3-w -> max-pool 2 -> 2 x conv3x3-2w -> global average pool``,
    each convolution followed by batch norm and LeakyReLU(0.1), then an
    optional dropout; the pooled ``2w``-d vector is the embedding.

    Args:
        num_classes (int): number of classes.
        in_channels (int, optional): image channels. (default: ``1``)
        input_size (int, optional): image side, at least 2. (default: ``8``)
        width (int, optional): channels of the first block ``w``.
            (default: ``32``)
        dropout (float, optional): dropout on the embedding before the
            classifier. (default: ``0.0``)
    """

    def __init__(self, num_classes: int, in_channels: int = 1,
                 input_size: int = 8, width: int = 32, dropout: float = 0.0):
        super().__init__()
        if input_size < 2:
            raise ValueError(f"SmallCNN needs images of at least 2x2 (got "
                             f"input_size={input_size}).")
        w = int(width)

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                    nn.BatchNorm2d(cout), nn.LeakyReLU(0.1)]

        self.body = nn.Sequential(
            *block(in_channels, w), *block(w, w), nn.MaxPool2d(2, 2),
            *block(w, 2 * w), *block(2 * w, 2 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.feat_dim = 2 * w
        self.classifier = nn.Linear(self.feat_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The ``[B, 2 * width]`` embedding after global average pooling."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.features(x)))


def mlp(num_classes: int, in_channels: int = 1, input_size: int = 8,
        **kwargs) -> MLP:
    """Builds :class:`MLP`; see its arguments."""
    return MLP(num_classes, in_channels, input_size, **kwargs)


def cnn(num_classes: int, in_channels: int = 1, input_size: int = 8,
        **kwargs) -> SmallCNN:
    """Builds :class:`SmallCNN`; see its arguments."""
    return SmallCNN(num_classes, in_channels, input_size, **kwargs)


__all__ = ["MLP", "SmallCNN", "mlp", "cnn"]
