import math

import torch
import torch.nn.functional as F

from dag_pyg.train.losses import (
    balance_loss,
    dag_loss,
    entropy_loss,
    soft_cross_entropy,
)


def test_one_hot_targets_give_cross_entropy(device):
    torch.manual_seed(0)
    logits, y = torch.randn(6, 4), torch.tensor([0, 3, 1, 1, 2, 0])
    out = soft_cross_entropy(logits.to(device), F.one_hot(y, 4).float().to(device))
    assert torch.allclose(out.cpu(), F.cross_entropy(logits, y))


def test_mixed_targets_weight_each_component():
    torch.manual_seed(1)
    logits = torch.randn(3, 3, dtype=torch.float64)
    y_a, y_b = torch.tensor([0, 1, 2]), torch.tensor([2, 2, 0])
    w_a, w_b = torch.tensor([1., 0., 1.]), torch.tensor([1., 1., 0.])
    lam = 0.7
    target = (lam * w_a[:, None] * F.one_hot(y_a, 3)
              + (1 - lam) * w_b[:, None] * F.one_hot(y_b, 3)).double()
    ce = lambda y: F.cross_entropy(logits, y, reduction="none")  # noqa: E731
    num = (lam * w_a * ce(y_a) + (1 - lam) * w_b * ce(y_b)).sum()
    den = (lam * w_a + (1 - lam) * w_b).sum()
    assert torch.allclose(soft_cross_entropy(logits, target), num / den)
    # No target at all: zero loss that still backpropagates.
    zero = soft_cross_entropy(logits.requires_grad_(), torch.zeros(3, 3).double())
    assert float(zero) == 0.0
    zero.backward()


def test_entropy_and_balance_by_hand(device):
    p = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    logits = p.log().to(device)
    h = -(0.5 * math.log(0.5) + 0.5 * math.log(0.25)
          + 0.2 * math.log(0.1) + 0.8 * math.log(0.8)) / 2
    assert math.isclose(float(entropy_loss(logits)), h, rel_tol=1e-6)
    mean_p = [0.3, 0.175, 0.525]
    kl = sum(1 / 3 * math.log((1 / 3) / m) for m in mean_p)
    assert math.isclose(float(balance_loss(logits)), kl, rel_tol=1e-6)
    assert abs(float(balance_loss(torch.zeros(4, 5, device=device)))) < 1e-7


def test_dag_loss_sums_the_terms(device):
    torch.manual_seed(2)
    logits = torch.randn(5, 3)
    target = F.one_hot(torch.tensor([0, 1, 2, 0, 1]), 3).float()
    out = dag_loss(logits.to(device), target.to(device), entropy_weight=0.4,
                   balance_weight=0.8)
    out = {k: v.cpu() for k, v in out.items()}
    assert torch.allclose(out["loss"], out["loss_ce"] + 0.4 * out["loss_entropy"]
                          + 0.8 * out["loss_balance"])
    ref = dag_loss(logits, target, entropy_weight=0.4, balance_weight=0.8)
    assert torch.allclose(out["loss"], ref["loss"], atol=1e-6)
