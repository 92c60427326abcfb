"""Multi-process training with torch.distributed (gloo, 2 CPU processes).

The collectives and the cross-rank batch norm and loss are checked against
one-process references in spawned workers; whole runs are launched with
``torchrun`` (as users launch them) and compared with the single-process run.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dag_pyg.distributed import DistContext, DistributedBatchNorm
from dag_pyg.train.checkpoint import load_checkpoint
from dag_pyg.train.losses import dag_loss

# gloo processes on the CPU (a GPU machine's runs pick CUDA by device: auto).
pytestmark = pytest.mark.cpu_only
ROOT = Path(__file__).resolve().parent.parent
WORLD = 2
# 1 pre-training epoch + 1 main epoch ("2 epochs"); a validation split too.
RUN = ["--set", "optim.pretrain_epochs=1", "--set", "optim.epochs=1",
       "--set", "data.num_val=50", "--set", "log.progress=false",
       "--set", "log.tensorboard=false", "--set", "log.plots=false"]
THREE = ["--set", "optim.epochs=2"]  # overrides RUN's optim.epochs: 3 epochs


# ------------------------------------------------------------ spawned units
def _units(rank: int, store: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=WORLD)
    ctx = DistContext(rank, WORLD, rank, "gloo", grad_group=dist.new_group())
    g = torch.Generator().manual_seed(0)

    # all_gather_rows inverts shard, with shards of unequal size (4 and 3).
    rows = torch.arange(21.0).view(7, 3)
    assert torch.equal(ctx.all_gather_rows(ctx.shard(rows)), rows)
    mine = ctx.shard(torch.arange(7))
    assert mine.numel() == (4 if rank == 0 else 3)

    # Gradients through the gather: every rank's loss reads every row, so
    # each row's gradient is the sum over ranks.
    w = torch.randn(7, 3, generator=g)
    x = ctx.shard(rows).clone().requires_grad_()
    (ctx.all_gather_rows_grad(x) * w).sum().backward()
    torch.testing.assert_close(x.grad, WORLD * w[mine])

    # Batch norm over the ranks = batch norm over the whole batch.
    xb = torch.randn(7, 4, 5, generator=g, dtype=torch.float64)
    wb = torch.randn(7, 4, 5, generator=g, dtype=torch.float64)
    ref = torch.nn.BatchNorm1d(4).double()
    ref.weight.data.uniform_(0.5, 1.5, generator=g)
    xr = xb.clone().requires_grad_()
    (ref(xr) * wb).sum().backward()
    bn = DistributedBatchNorm(4, ctx).double()
    bn.load_state_dict({**ref.state_dict(), "running_mean": torch.zeros(4),
                        "running_var": torch.ones(4),
                        "num_batches_tracked": torch.tensor(0)})
    xd = xb[mine].clone().requires_grad_()
    out = bn(xd)
    (out * wb[mine]).sum().backward()
    ref_out = torch.nn.functional.batch_norm(
        xb, None, None, ref.weight.detach(), ref.bias.detach(), training=True)
    torch.testing.assert_close(out.detach(), ref_out[mine])
    torch.testing.assert_close(xd.grad, xr.grad[mine])
    for name in ("weight", "bias"):
        total = ctx.all_reduce_sum(getattr(bn, name).grad)
        torch.testing.assert_close(total, getattr(ref, name).grad)
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    bn.eval()
    torch.testing.assert_close(bn(xb), ref.eval()(xb))

    # Eq. 2 per rank: the ranks' mean loss and DDP-averaged gradient equal
    # the whole batch's (targets with zero rows, as unlabelled samples have).
    logits = torch.randn(7, 5, generator=g, dtype=torch.float64)
    target = torch.rand(7, 5, generator=g, dtype=torch.float64)
    target[2] = 0.0
    lr_ = logits.clone().requires_grad_()
    full = dag_loss(lr_, target, 0.4, 0.8)
    full["loss"].backward()
    ll = logits[mine].clone().requires_grad_()
    part = dag_loss(ll, target[mine], 0.4, 0.8, ctx=ctx)
    part["loss"].backward()
    for key in ("loss", "loss_ce", "loss_entropy", "loss_balance"):
        mean = ctx.all_reduce_sum(part[key].detach()) / WORLD
        torch.testing.assert_close(mean, full[key].detach())
    torch.testing.assert_close(ll.grad / WORLD, lr_.grad[mine])
    dist.destroy_process_group()


@pytest.mark.slow  # spawns processes
def test_collectives_batchnorm_and_loss_match_one_process(tmp_path):
    mp.spawn(_units, args=(str(tmp_path / "store"),), nprocs=WORLD, join=True)


def test_single_process_context_is_identity():
    ctx = DistContext()
    x = torch.randn(5, 2)
    assert not ctx.enabled and ctx.is_main
    assert ctx.shard(x) is x and ctx.all_gather_rows(x) is x
    assert ctx.on_main(lambda: 3) == 3


# --------------------------------------------------------------- whole runs
def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _train(out: Path, procs: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = ["-m", "dag_pyg", "train", "configs/digits.yaml", "--out", str(out),
           *RUN, *extra]
    if procs > 1:
        cmd = ["-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={procs}", *cmd]
    res = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _records(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items()
             if not k.startswith(("time_", "mem_"))}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(a: Path, b: Path) -> None:
    ra, rb = _records(a), _records(b)
    assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if key.endswith("_error"):  # one flipped test sample is 0.34 %
                assert abs(x[key] - y[key]) <= 0.7, (key, x[key], y[key])
            elif isinstance(x[key], float):
                assert y[key] == pytest.approx(x[key], rel=1e-4, abs=2e-3), key
            else:
                assert x[key] == y[key], key
    sa, sb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    parts = ("backbone", "head") + (("averaged",) if sa.get("averaged") else ())
    for part in parts:
        for key, value in sa[part].items():
            if value.is_floating_point():
                torch.testing.assert_close(sb[part][key], value, rtol=1e-3,
                                           atol=1e-4, msg=f"{part}.{key}")
    torch.testing.assert_close(sb["banks"]["features"], sa["banks"]["features"],
                               rtol=1e-3, atol=1e-3)
    if sa["banks"].get("weights") is not None:
        torch.testing.assert_close(sb["banks"]["weights"], sa["banks"]["weights"],
                                   rtol=1e-3, atol=1e-3)


@pytest.mark.slow  # spawns processes
def test_two_processes_equal_one(tmp_path):
    # Certainty-weighted pseudo labels: the weights travel with the labels.
    # Averaged weights: the copy of a model whose batch norm is synchronised.
    cert = ["--set", "pseudo_label.weighting=certainty",
            "--set", "optim.ema_decay=0.9"]
    _train(tmp_path / "one", 1, *cert)
    res = _train(tmp_path / "two", WORLD, *cert)
    assert "2 processes (gloo)" in (tmp_path / "two" / "train.log").read_text()
    assert res.stdout.count("final test error") == 1  # rank 0 speaks for all
    _assert_same_run(tmp_path / "one", tmp_path / "two")
    # Only rank 0 wrote: one checkpoint, no stray temporary files.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.slow  # spawns processes
def test_two_processes_equal_one_under_method_auto(tmp_path):
    # Both arms train under torchrun; rank 0 checks them and chooses.
    auto = ["--set", "method=auto"]
    _train(tmp_path / "one", 1, *auto)
    res = _train(tmp_path / "two", WORLD, *auto)
    assert res.stdout.count("method auto chose") == 1
    _assert_same_run(tmp_path / "one" / "arms" / "steered",
                     tmp_path / "two" / "arms" / "steered")
    ra, rb = (_records(d / "arms" / "labels_only") for d in (tmp_path / "one",
                                                            tmp_path / "two"))
    assert [r["loss"] for r in rb] == pytest.approx([r["loss"] for r in ra],
                                                    rel=1e-4)
    ca, cb = (json.loads((d / "choice.json").read_text())
              for d in (tmp_path / "one", tmp_path / "two"))
    assert ca["arm"] == cb["arm"] and ca["check_n"] == cb["check_n"] == 10
    for arm in ("steered", "labels_only"):  # one node is 0.1
        assert abs(ca["arms"][arm]["acc"] - cb["arms"][arm]["acc"]) <= 0.1
    # The refit on every label, as one process trains it.
    _assert_same_run(tmp_path / "one" / "refit", tmp_path / "two" / "refit")
    assert sorted(p.name for p in (tmp_path / "two").rglob("*")) == sorted(
        p.name for p in (tmp_path / "one").rglob("*"))


@pytest.mark.slow  # spawns processes
def test_two_processes_equal_one_with_the_levers(tmp_path):
    # Mixing partners and online-bank rows cross the ranks' slices.
    levers = [a for o in ("loss.mixup_at=feature", "graph.bank=online",
                          "dna.temperature=0.1", "dna.learn_beta=true",
                          "pseudo_label.threshold=0.3") for a in ("--set", o)]
    _train(tmp_path / "one", 1, *levers)
    _train(tmp_path / "two", WORLD, *levers)
    _assert_same_run(tmp_path / "one", tmp_path / "two")
    assert 0 < _records(tmp_path / "one")[-1]["pl_admitted"] < 1


def _assert_identical_run(a: Path, b: Path) -> None:
    """Two runs that must agree bit for bit: the same records (times and
    memory aside) and the same checkpoint tensors."""
    assert _records(a) == _records(b)
    sa, sb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    for part in ("backbone", "head", "banks"):
        assert sa[part].keys() == sb[part].keys()
        for key, value in sa[part].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, sb[part][key]), f"{part}.{key}"
            else:
                assert value == sb[part][key], f"{part}.{key}"


@pytest.mark.slow  # spawns processes
def test_sharded_refresh_trains_like_rank0(tmp_path):
    # The same banks and the same k_sub-graph rows: the same training, bit
    # for bit (sigma's quantile and the weights cross the shards too).
    extra = ["--set", "dplp.sigma=q0.5", "--set", "pseudo_label.weighting=certainty"]
    _train(tmp_path / "rank0", WORLD, *extra)
    _train(tmp_path / "sharded", WORLD, *extra, "--set", "distributed.graph=sharded")
    _assert_identical_run(tmp_path / "rank0", tmp_path / "sharded")
    assert 0 < _records(tmp_path / "sharded")[-1]["pl_coverage"] <= 1
    # Rank 0 broadcast its graph; the shards broadcast nothing.
    raw = [[json.loads(line) for line in (tmp_path / d / "metrics.jsonl")
            .read_text().splitlines()] for d in ("rank0", "sharded")]
    assert all("time_broadcast" in r for r in raw[0] if "time_graph" in r)
    assert not any("time_broadcast" in r for r in raw[1])


@pytest.mark.slow  # spawns processes
def test_resume_across_world_sizes(tmp_path):
    _train(tmp_path / "ref", 1, *THREE)
    # Two processes stop after epoch 1; one process finishes the run...
    _train(tmp_path / "a", WORLD, *THREE, "--stop-after", "1")
    assert load_checkpoint(tmp_path / "a" / "checkpoint.pt")["world_size"] == WORLD
    _train(tmp_path / "a", 1, *THREE, "--resume")
    _assert_same_run(tmp_path / "ref", tmp_path / "a")
    assert "resuming a run of 2 process(es) with 1" in (
        tmp_path / "a" / "train.log").read_text()
    # ... and the other way round.
    _train(tmp_path / "b", 1, *THREE, "--stop-after", "1")
    _train(tmp_path / "b", WORLD, *THREE, "--resume")
    _assert_same_run(tmp_path / "ref", tmp_path / "b")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(out: Path, rank: int, port: int, *extra: str) -> subprocess.Popen:
    env = dict(_env(), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return subprocess.Popen(
        [sys.executable, "-m", "dag_pyg", "train", "configs/digits.yaml", "--out",
         str(out), "--set", "log.progress=false", "--set", "log.tensorboard=false",
         "--set", "distributed.timeout_s=30", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow  # spawns processes
def test_a_dying_rank_ends_the_others_with_a_clear_error(tmp_path):
    port = _free_port()
    procs = [_rank(tmp_path / "run", r, port) for r in range(WORLD)]
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.stat().st_size) and time.time() < deadline:
        time.sleep(0.1)
    assert metrics.exists(), "the run never finished its first epoch"
    procs[1].send_signal(signal.SIGKILL)
    start = time.time()
    _, err = procs[0].communicate(timeout=120)
    assert procs[0].returncode == 2
    assert time.time() - start < 60  # far below a hang
    assert "[rank 0] error: rank 0/2: a collective failed" in err
    assert "Another process probably stopped" in err
    assert "Traceback" not in err


@pytest.mark.slow  # spawns processes
def test_missing_ranks_time_out_with_a_clear_error(tmp_path):
    proc = _rank(tmp_path / "run", 0, _free_port(), "--set", "distributed.timeout_s=3")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "joining the process group of 2 failed" in err
    assert "Check that all 2 processes were started" in err


@pytest.mark.slow  # spawns processes
def test_sigterm_to_one_rank_stops_every_rank_with_one_checkpoint(tmp_path):
    _train(tmp_path / "full", WORLD, *THREE)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={WORLD}", "tests/signal_worker.py", "train",
           "configs/digits.yaml", "--out", str(tmp_path / "cut"), *RUN, *THREE]
    env = dict(_env(), DAG_PYG_KILL_RANK="1", DAG_PYG_KILL_STEP="40")
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode != 0
    # Each rank ended by the CLI (rank 0 says how), none by an abort.
    assert res.stderr.count("stopped: interrupted by SIGTERM") == 1
    assert "exitcode  : 143" in res.stderr and "Abort" not in res.stderr
    log = (tmp_path / "cut" / "train.log").read_text()
    assert log.count("interrupted by SIGTERM in epoch") == 1  # rank 0 writes
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert state["progress"] is not None and state["world_size"] == WORLD
    assert not [p for p in (tmp_path / "cut").iterdir() if p.name.startswith(".tmp")]
    _train(tmp_path / "cut", WORLD, *THREE, "--resume")
    assert _records(tmp_path / "cut") == _records(tmp_path / "full")
