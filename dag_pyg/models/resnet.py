"""torchvision's ResNet-18 with a stem sized for small images."""
from __future__ import annotations

from torch import Tensor, nn


class ResNet18(nn.Module):
    r"""ResNet-18 (He et al., 2016) from torchvision, for small inputs.

    The stem depends on ``input_size`` so that the last stage still sees a
    few pixels:

    * ``input_size <= 64`` (CIFAR, 32x32): 3x3 stride-1 first convolution and
      no max-pool, the usual CIFAR ResNet stem (final map 4x4).
    * ``64 < input_size < 128`` (Mini-ImageNet, 84x84): torchvision's 7x7
      stride-2 convolution, no max-pool (final map 6x6).
    * ``input_size >= 128``: torchvision's stem unchanged.

    Weights are randomly initialised (nothing is downloaded).

    Args:
        num_classes (int): number of classes.
        in_channels (int, optional): image channels. (default: ``3``)
        input_size (int, optional): image side. (default: ``32``)
    """

    def __init__(self, num_classes: int, in_channels: int = 3,
                 input_size: int = 32):
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        # (kernel, stride, keep max-pool) of the stem, by image size.
        if input_size <= 64:
            kernel, stride, pool = 3, 1, False
        elif input_size < 128:
            kernel, stride, pool = 7, 2, False
        else:
            kernel, stride, pool = 7, 2, True
        net.conv1 = nn.Conv2d(in_channels, 64, kernel, stride=stride,
                              padding=kernel // 2, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out",
                                nonlinearity="relu")  # torchvision's init
        if not pool:
            net.maxpool = nn.Identity()
        self.feat_dim = net.fc.in_features
        # torchvision's forward ends with flatten -> fc; with fc an identity it
        # returns the pooled 512-d embedding.
        net.fc = nn.Identity()
        self.backbone = net
        self.classifier = nn.Linear(self.feat_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The ``[B, 512]`` embedding after global average pooling."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def resnet18(num_classes: int, in_channels: int = 3, input_size: int = 32,
             **kwargs) -> ResNet18:
    """Builds :class:`ResNet18`; see its arguments."""
    return ResNet18(num_classes, in_channels, input_size, **kwargs)


__all__ = ["ResNet18", "resnet18"]
