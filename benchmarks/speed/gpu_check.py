"""Every CUDA path in one short run (``make gpu-check``); on a machine
without a GPU it says so and runs the CPU parts, then exits 0.

    python -m benchmarks.speed.gpu_check [--train-images N] [--skip-suite]

1. The fast test tier on the GPU (``DAG_PYG_TEST_DEVICE=cuda``).
2. ``build_density_graph`` with every backend on the device against the
   CPU's exact graph.
3. ``DensityAwareConv`` eager and ``torch.compile``-d on the device against
   the CPU.
4. ``configs/cifar10_4000.yaml``'s model and schedule on synthetic
   CIFAR-shaped data (50,000 random images on a GPU, 500 on a CPU; lr 0.01,
   as random labels can make lr 0.1 diverge), 2 epochs, in fp32 and under
   bf16 autocast with channels_last: images/s,
   peak GPU memory, and the share of the epoch spent outside the training
   steps (banks, graph, Label Bank, DPLP, evaluation).
5. The speed benchmarks' quick runs, on a GPU.

Prints a table and writes ``benchmarks/speed/results/gpu_check.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT, SPEED_RESULTS, print_table, write_json
from dag_pyg import DensityAwareConv, build_density_graph
from dag_pyg.config import load_config
from dag_pyg.graph.knn import has_faiss, has_torch_cluster
from dag_pyg.train import train


def check_suite(device: torch.device) -> dict:
    env = dict(os.environ, DAG_PYG_TEST_DEVICE=str(device))
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "not slow",
                          "tests"], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    tail = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    return {"part": "test suite (fast tier)", "ok": res.returncode == 0,
            "detail": tail, "seconds": time.perf_counter() - t}


def check_graphs(device: torch.device) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 64, generator=gen)
    ref = build_density_graph(x, 16, backend="exact")
    backends = ["exact"] + (["torch_cluster"] if has_torch_cluster() else []) + \
        (["faiss"] if has_faiss() else [])
    rows = []
    for backend in backends:
        t = time.perf_counter()
        try:
            g = build_density_graph(x.to(device), 16, backend=backend)
        except (ValueError, RuntimeError) as e:  # e.g. faiss without GPU support
            rows.append({"part": f"graph {backend}", "ok": None,
                         "detail": f"not run: {e}"[:120]})
            continue
        same = torch.equal(g.edge_index.cpu(), ref.edge_index)
        close = torch.allclose(g.density.cpu(), ref.density, atol=1e-5)
        rows.append({"part": f"graph {backend}", "ok": same and close,
                     "detail": f"same edges as CPU exact: {same}, densities "
                     f"within 1e-5: {close}", "seconds": time.perf_counter() - t})
    return rows


def check_conv(device: torch.device) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 32, generator=gen)
    g = build_density_graph(x, 8, backend="exact")
    conv = DensityAwareConv(32, 16)
    ref = conv(x, g.edge_index, g.density)
    dev_conv = conv.to(device)
    args = (x.to(device), g.edge_index.to(device), g.density.to(device))
    rows = []
    for name, fn in (("eager", dev_conv), ("compiled", torch.compile(dev_conv))):
        t = time.perf_counter()
        out = fn(*args)
        ok = torch.allclose(out.cpu(), ref, atol=1e-4)
        rows.append({"part": f"DensityAwareConv {name}", "ok": ok,
                     "detail": f"max |diff| to CPU eager "
                     f"{float((out.cpu() - ref).abs().max()):.2e}",
                     "seconds": time.perf_counter() - t})
    conv.cpu()
    return rows


def check_training(device: torch.device, images: int) -> list[dict]:
    rows = []
    for amp, channels_last in (("none", False), ("bf16", True)):
        overrides = ["data.name=synthetic", f"data.num_train={images}",
                     f"data.num_test={max(images // 5, 100)}",
                     f"data.num_labelled={min(4000, images // 10)}",
                     "optim.pretrain_epochs=1", "optim.epochs=1",
                     # Random labels: at the paper's lr 0.1 the loss can
                     # diverge to NaN; what is measured here is throughput.
                     "optim.lr=0.01",
                     f"optim.amp={amp}", f"model.channels_last={channels_last}",
                     f"device={device}", "log.progress=false",
                     "log.tensorboard=false", "log.plots=false"]
        cfg = load_config(ROOT / "configs" / "cifar10_4000.yaml", overrides)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            train(cfg, Path(tmp) / "run")
            wall = time.perf_counter() - t
            lines = (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(x) for x in lines]
        last, o = records[-1], cfg.optim
        # The main epoch's steps: every unlabelled node once, in full batches.
        steps = math.ceil((images - cfg.data.num_labelled)
                          / (o.batch_size - o.labelled_batch_size))
        rows.append({
            "part": f"train cifar10_4000 model, {images} synthetic images, "
                    f"amp {amp}{', channels_last' if channels_last else ''}",
            "ok": all(math.isfinite(r["loss"]) for r in records),
            "images_per_s": steps * o.batch_size / last["time_train"],
            "gpu_mem_gb": (torch.cuda.max_memory_allocated(device) / 2**30
                           if device.type == "cuda" else None),
            "outside_steps_share": 1.0 - last["time_train"] / last["time_epoch"],
            "seconds": wall})
    fp32, bf16 = rows[0]["images_per_s"], rows[1]["images_per_s"]
    rows[1]["detail"] = f"bf16 / fp32 throughput {bf16 / fp32:.2f}x"
    return rows


def run_benchmarks() -> list[dict]:
    rows = []
    for name in ("bench_knn", "bench_conv", "bench_dplp"):
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", f"benchmarks.speed.{name}",
                              "--quick"], cwd=ROOT, capture_output=True, text=True)
        rows.append({"part": f"{name} --quick", "ok": res.returncode == 0,
                     "seconds": time.perf_counter() - t})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-images", type=int, default=None,
                   help="synthetic training images (default: 50,000 on a GPU, "
                   "500 on a CPU)")
    p.add_argument("--skip-suite", action="store_true",
                   help="leave out the test suite on the GPU")
    args = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    if not gpu:
        print("no GPU: CUDA is not available on this machine; running the CPU "
              "parts (graph backends, DensityAwareConv eager/compiled, a short "
              "training run in fp32 and bf16) and exiting 0.", flush=True)
    rows: list[dict] = []
    if gpu and not args.skip_suite:
        rows.append(check_suite(device))
    rows += check_graphs(device)
    rows += check_conv(device)
    rows += check_training(device, args.train_images or (50_000 if gpu else 500))
    if gpu:
        rows += run_benchmarks()
    print_table(rows, ["part", "ok", "images_per_s", "gpu_mem_gb",
                       "outside_steps_share", "seconds", "detail"])
    write_json("gpu_check", {"device": str(device), "gpu": gpu, "rows": rows},
               SPEED_RESULTS)
    failed = [r["part"] for r in rows if r.get("ok") is False]
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
