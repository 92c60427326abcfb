"""model.precise_bn: the evaluated backbone's batch-norm statistics recomputed
on clean training images (checked against statistics computed by hand)."""
import torch
from torch import nn

from dag_pyg.data import ArrayDataset, BatchTransform
from dag_pyg.train.features import recalibrate_batchnorm


class Tiny(nn.Module):
    """Linear -> dropout -> batch norm: with dropout on, the statistics
    would not be the hand-computed ones."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.5)
        self.bn = nn.BatchNorm1d(3, momentum=0.3)

    def features(self, x):
        return self.bn(self.drop(self.lin(x.flatten(1))))


def dataset(n=10):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 1, 2, 2), dtype=torch.uint8, generator=g)
    return ArrayDataset(images, torch.zeros(n, dtype=torch.long), ["a"])


def test_statistics_are_the_mean_of_the_batch_statistics():
    net, data = Tiny(), dataset()
    net.train()
    net.bn.running_mean.fill_(5.0)  # what training left: replaced, not blended
    rows = torch.tensor([9, 0, 3, 4, 7, 1, 2, 8, 6, 5])
    assert recalibrate_batchnorm(net, BatchTransform(), data, rows,
                                 torch.device("cpu"), batch_size=3) == 1
    # By hand: 10 // 3 = 3 batches, of 4, 3 and 3 rows (no small last one),
    # each batch's mean and unbiased variance, averaged with the weight of
    # its rows (4, 3 and 3 tenths).
    with torch.no_grad():
        h = net.lin(data.images[rows].double().div(255).flatten(1).float()).double()
    chunks = [h[:4], h[4:7], h[7:]]
    w = torch.tensor([0.4, 0.3, 0.3], dtype=torch.float64)[:, None]
    mean = (torch.stack([c.mean(0) for c in chunks]) * w).sum(0)
    var = (torch.stack([c.var(0, unbiased=True) for c in chunks]) * w).sum(0)
    torch.testing.assert_close(net.bn.running_mean.double(), mean)
    torch.testing.assert_close(net.bn.running_var.double(), var)
    assert int(net.bn.num_batches_tracked) == 3
    # Modes and momentum as they were (here: training).
    assert net.training and net.drop.training and net.bn.training
    assert net.bn.momentum == 0.3


def test_compiled_method_not_called_and_eval_mode_kept():
    net, data = Tiny(), dataset()
    net.eval()

    def compiled(x):  # what model.compile puts on the instance
        raise AssertionError("the compiled bound method was called")

    net.features = compiled
    recalibrate_batchnorm(net, BatchTransform(), data, torch.arange(10),
                          torch.device("cpu"), batch_size=10)
    assert not net.training and not net.bn.training and not net.drop.training
    # Recomputed on the same rows: the same statistics (they depend on the
    # weights and the rows alone).
    first = net.bn.running_mean.clone()
    recalibrate_batchnorm(net, BatchTransform(), data, torch.arange(10),
                          torch.device("cpu"), batch_size=10)
    torch.testing.assert_close(net.bn.running_mean, first, rtol=0, atol=0)


def test_statistics_under_autocast():
    """amp: the statistics of the activations as autocast computes them
    (bf16 linear layer), as the extraction they precede does."""
    net, data = Tiny(), dataset()
    recalibrate_batchnorm(net, BatchTransform(), data, torch.arange(10),
                          torch.device("cpu"), batch_size=10, amp="bf16")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        h = net.lin(data.images.double().div(255).flatten(1).float())
    assert h.dtype == torch.bfloat16
    h = h.double()
    torch.testing.assert_close(net.bn.running_mean.double(), h.mean(0))
    torch.testing.assert_close(net.bn.running_var.double(), h.var(0))
    fp32 = Tiny()
    recalibrate_batchnorm(fp32, BatchTransform(), data, torch.arange(10),
                          torch.device("cpu"), batch_size=10)
    assert not torch.equal(fp32.bn.running_mean, net.bn.running_mean)


def test_no_batch_of_one_image():
    """11 rows in batches of 10: one batch of 11, not 10 and 1 (a batch of
    one image has no variance; BatchNorm1d refuses it in training mode)."""
    net, data = Tiny(), dataset(11)
    rows = torch.arange(11)
    recalibrate_batchnorm(net, BatchTransform(), data, rows, torch.device("cpu"),
                          batch_size=10)
    with torch.no_grad():
        h = net.lin(data.images.double().div(255).flatten(1).float()).double()
    torch.testing.assert_close(net.bn.running_mean.double(), h.mean(0))
    torch.testing.assert_close(net.bn.running_var.double(), h.var(0))
    assert int(net.bn.num_batches_tracked) == 1


def test_nothing_to_do_without_batch_norm_or_rows():
    lin = nn.Linear(4, 3)
    lin.features = lambda x: lin(x.flatten(1))
    assert recalibrate_batchnorm(lin, BatchTransform(), dataset(), torch.arange(3),
                                 torch.device("cpu"), 2) == 0
    net = Tiny()
    before = net.bn.running_mean.clone()
    assert recalibrate_batchnorm(net, BatchTransform(), dataset(),
                                 torch.empty(0, dtype=torch.long),
                                 torch.device("cpu"), 2) == 0
    assert torch.equal(net.bn.running_mean, before)

