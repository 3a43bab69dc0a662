"""Merging at paper scale: two random-init parents of ResNet-50 and ViT-B/16 (timing only), per method the
statistics pass against its floor, match, fuse, BatchNorm reset and peak memory.

    python benchmarks/bench_scale.py [--device cuda] [--images 256] [--models resnet50 vitb16] [--methods zipit mudsc-zip]
        [--remerge-alpha 0.3]

The floor of the statistics pass is the parents' plain forward passes over the same images plus the
correlation products it needs (sum over spaces and taps of positions * (N C)^2 multiply-adds) at the
float32 matrix-product rate measured on the same device. Each (model, method) runs in its own process,
so its peak memory (RSS; CUDA: max allocated) is its own.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MODELS = {  # registry name, options, input size
    "resnet50": ("timm:resnet50", {}, 64),
    "vitb16": ("timm:vit_base_patch16_224", {}, 64),
}


def gemm_rate(device: torch.device) -> float:
    """Float32 multiply-adds per second of a 2048 x 2048 x 2048 product on `device`."""
    a = torch.randn(2048, 2048, device=device)
    a @ a
    best = float("inf")
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ a
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2048 ** 3 / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def forward_time(parents: list, x: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Seconds for the parents' plain forward passes over `x` in batches (after a warm-up)."""
    for p in parents:
        p.to(device)(x[:2].to(device))
    sync(device)
    t0 = time.perf_counter()
    for p in parents:
        for s in range(0, len(x), batch_size):
            p(x[s:s + batch_size].to(device))
    sync(device)
    return time.perf_counter() - t0


def one(args) -> dict:
    from mudsc.data import load_dataset
    from mudsc.diffinit.config import make_config
    from mudsc.diffinit.memory import merge_memory, peak_bytes, tap_bytes_per_image
    from mudsc.diffinit.session import MergeSession
    from mudsc.models import create_model

    arch, kw, img = MODELS[args.one[0]]
    img = args.img_size or img
    method = args.one[1]
    device = torch.device(args.device)
    data = load_dataset(str(Path(args.data) / f"rand{img}.npz"))
    parents = []
    for seed, task in ((0, (0, 1, 2, 3, 4)), (1, (5, 6, 7, 8, 9))):
        torch.manual_seed(seed)
        parents.append(create_model(arch, classes=task, num_classes=10, in_chans=3, img_size=img, **kw).eval())
    session = MergeSession(parents, data, stats_images=args.images, eval_images=args.eval_images,
                           batch_size=args.batch_size, device=device)
    x = session.train.x[: args.images]
    forward = forward_time(parents, x, args.batch_size, device)
    with torch.no_grad():
        _, _, positions = tap_bytes_per_image(parents[0], session.graph, x[:1].to(device))
    macs = len(x) * sum(positions[s.name] * (2 * s.size) ** 2 for s in session.graph.spaces)
    products = macs / gemm_rate(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    session.activation_stats()
    sync(device)
    stats = time.perf_counter() - t0
    config = make_config(method=method, reset_images=args.images)
    need = merge_memory(parents, session.graph, session.spaces_for(config.cut), config, image=x[:1].to(device),
                        batch_size=args.batch_size, stats_needed=True)
    estimate = peak_bytes(need)
    result = session.merge(config)
    t = result.timings
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    remerge = None
    if args.remerge_alpha is not None and make_config(method=method).iterative:
        # what a step of the alpha slider costs: the whole merge at a new alpha, statistics cached
        t0 = time.perf_counter()
        session.merge(config.model_copy(update={"alpha": args.remerge_alpha}))
        sync(device)
        remerge = time.perf_counter() - t0
    return {"model": args.one[0], "method": method, "device": str(device), "images": len(x),
            "forward_s": forward, "products_s": products, "floor_s": forward + products, "stats_s": stats,
            "match_s": t["match"], "fuse_s": t["fuse"], "bn_reset_s": t.get("bn_reset", 0.0),
            "sweeps": result.solution.sweeps if result.solution else 0, "peak_gib": peak / 2 ** 30,
            "estimate_gib": estimate / 2 ** 30, "img": img, "remerge_s": remerge,
            "spaces": len(session.graph.spaces)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--eval-images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--methods", nargs="+", default=["zipit", "mudsc-zip"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--img-size", type=int, default=0, help="input size for every model (0: each model's own)")
    ap.add_argument("--remerge-alpha", type=float, default=None,
                    help="also time an iterative method's whole merge again at this alpha (statistics cached)")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one(args)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            img = args.img_size or MODELS[name][2]
            g = np.random.default_rng(0)
            n = 2 * (args.images + args.eval_images)  # both tasks' classes are drawn from the union
            np.savez(Path(tmp) / f"rand{img}.npz", x=g.random((n, 3, img, img), dtype=np.float32),
                     y=g.integers(0, 10, n))
            for method in args.methods:
                cmd = [sys.executable, __file__, "--one", name, method, "--data", tmp, "--device", args.device,
                       "--images", str(args.images), "--eval-images", str(args.eval_images),
                       "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                       "--img-size", str(img)]
                if args.remerge_alpha is not None:
                    cmd += ["--remerge-alpha", str(args.remerge_alpha)]
                run = subprocess.run(cmd, capture_output=True, text=True)
                if run.returncode:
                    sys.exit(f"{name} {method} failed:\n{run.stderr}")
                out = run.stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"device {args.device}, {args.images} statistics and BN-reset images, batch {args.batch_size}")
    print("| model | method | forward s | + products s = floor s | statistics s (x forward, x floor) | "
          "match s | fuse s | BN reset s | sweeps | peak GiB (estimate) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} {r['img']}px | {r['method']} | {r['forward_s']:.1f} | {r['products_s']:.1f} = {r['floor_s']:.1f} | "
              f"{r['stats_s']:.1f} ({r['stats_s'] / r['forward_s']:.2f}x, {r['stats_s'] / r['floor_s']:.2f}x) | "
              f"{r['match_s']:.2f} | {r['fuse_s']:.2f} | {r['bn_reset_s']:.2f} | {r['sweeps']} | {r['peak_gib']:.2f} ({r['estimate_gib']:.2f}) |")
    for name in args.models:
        by = {r["method"]: r for r in rows if r["model"] == name}
        if "zipit" in by and "mudsc-zip" in by:
            mz, z = by["mudsc-zip"], by["zipit"]
            print(f"{name}: mudsc-zip match / zipit match = {mz['match_s'] / z['match_s']:.1f}x "
                  f"({mz['match_s'] / max(mz['sweeps'], 1) / z['match_s']:.1f}x per sweep, {mz['sweeps']} sweeps)")
        for r in by.values():
            if r["remerge_s"] is not None:
                print(f"{name}: {r['method']} re-merge at alpha {args.remerge_alpha} from cached statistics "
                      f"{r['remerge_s']:.2f} s")


if __name__ == "__main__":
    main()
