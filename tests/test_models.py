import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from dag_pyg.models import BACKBONES, CNN13, build_backbone

# (name, in_channels, input_size, kwargs, feat_dim): small settings for speed.
CASES = [
    ("cnn13", 3, 32, {"width": 0.25}, 32),
    ("resnet18", 3, 32, {}, 512),
    ("resnet18", 3, 84, {}, 512),
    ("mlp", 1, 8, {}, 64),
    ("cnn", 1, 8, {"width": 8}, 16),
]


@pytest.mark.parametrize("name, c, size, kw, feat_dim", CASES)
def test_backbone_interface(name, c, size, kw, feat_dim, device):
    torch.manual_seed(0)
    model = build_backbone(name, num_classes=7, in_channels=c, input_size=size,
                           **kw).to(device)
    x = torch.randn(2, c, size, size).to(device)
    assert model.feat_dim == feat_dim
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.in_features == feat_dim
    assert model.classifier.out_features == 7
    model.eval()
    with torch.no_grad():
        feats, logits = model.features(x), model(x)
    assert feats.shape == (2, feat_dim) and logits.shape == (2, 7)
    assert torch.allclose(logits, model.classifier(feats), atol=1e-5)


@pytest.mark.parametrize("name, c, size, kw, feat_dim", CASES[:1] + CASES[3:])
def test_backward_reaches_every_parameter(name, c, size, kw, feat_dim, device):
    torch.manual_seed(0)
    model = build_backbone(name, 4, c, size, **kw).to(device).train()
    x = torch.randn(4, c, size, size).to(device)
    loss = nn.functional.cross_entropy(model(x),
                                       torch.tensor([0, 1, 2, 3], device=device))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def _convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_cnn13_structure():
    model = CNN13(num_classes=10)  # full width: built, not run
    convs = _convs(model)
    assert len(convs) == 9
    assert [m.out_channels for m in convs] == [128] * 3 + [256] * 3 + [512, 256, 128]
    assert [m.kernel_size[0] for m in convs] == [3] * 7 + [1, 1]
    assert [m.padding[0] for m in convs] == [1] * 6 + [0] * 3  # conv3a is valid
    kinds = [type(m).__name__ for m in model.body]
    assert kinds.count("BatchNorm2d") == 9 and kinds.count("LeakyReLU") == 9
    assert all(m.negative_slope == 0.1 for m in model.body
               if isinstance(m, nn.LeakyReLU))
    # conv, BN, LeakyReLU x3 -> pool -> dropout, twice, then the head.
    assert kinds[:11] == ["Conv2d", "BatchNorm2d", "LeakyReLU"] * 3 + [
        "MaxPool2d", "Dropout"]
    assert kinds[20:22] == ["MaxPool2d", "Dropout"]
    assert kinds[-2:] == ["AdaptiveAvgPool2d", "Flatten"]
    assert [m.p for m in model.body if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    assert model.classifier.in_features == model.feat_dim == 128
    assert hasattr(model.body, "conv3a") and hasattr(model.body, "pool2")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears == [model.classifier]
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(3.12e6, rel=0.01)


def test_cnn13_width_multiplier():
    model = CNN13(10, width=0.25)
    widths = [m.out_channels for m in _convs(model)]
    assert widths == [32] * 3 + [64] * 3 + [128, 64, 32]
    assert model.feat_dim == 32
    half = CNN13(10, width=0.5, in_channels=1)
    assert _convs(half)[0].in_channels == 1 and half.feat_dim == 64
    with pytest.raises(ValueError, match="width"):
        CNN13(10, width=0)
    with pytest.raises(ValueError, match="at least 18x18"):
        CNN13(10, input_size=8)


def test_cnn13_weight_norm():
    plain = CNN13(10, width=0.25)
    assert not any(parametrize.is_parametrized(m) for m in _convs(plain))
    torch.manual_seed(0)
    model = CNN13(10, width=0.25, weight_norm=True)
    convs = _convs(model)
    assert all(parametrize.is_parametrized(m, "weight") for m in convs)
    assert parametrize.is_parametrized(model.classifier, "weight")
    names = {n for n, _ in model.named_parameters()}
    assert "body.conv1a.parametrizations.weight.original0" in names  # g
    assert "body.conv1a.parametrizations.weight.original1" in names  # v
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    g = model.body.conv1a.parametrizations.weight.original0
    assert g.grad is not None


def test_resnet_stem_by_input_size():
    small = build_backbone("resnet18", 10, 3, 32)
    assert small.backbone.conv1.kernel_size == (3, 3)
    assert small.backbone.conv1.stride == (1, 1)
    assert isinstance(small.backbone.maxpool, nn.Identity)
    mini = build_backbone("resnet18", 10, 3, 84)
    assert mini.backbone.conv1.stride == (2, 2)
    big = build_backbone("resnet18", 10, 1, 224)
    assert isinstance(big.backbone.maxpool, nn.MaxPool2d)
    assert big.backbone.conv1.in_channels == 1


def test_registry_errors():
    assert set(BACKBONES) == {"cnn13", "resnet18", "mlp", "cnn"}
    with pytest.raises(ValueError, match=r"Unknown backbone 'cnn31'.*cnn13.*"
                                         r"Did you mean 'cnn13'"):
        build_backbone("cnn31", 10)
    with pytest.raises(TypeError, match="unknown option.*widht.*width"):
        build_backbone("cnn13", 10, widht=0.5)
    mlp = build_backbone("mlp", 3, 1, 8, hidden=(16,), dropout=0.1)
    assert mlp.feat_dim == 16
