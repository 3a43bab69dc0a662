"""The statistics pass against the parents' plain forward passes over the same images, in one process.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_stats.py --threads 1 [--arch timm:resnet50]
        [--img-size 64] [--images 256] [--batch-size 64] [--repeats 2] [--device cuda]

Two random-init parents (as in bench_scale.py); each repeat times both parents' forward passes, then
`activation_stats` over the same images, so the ratio of a repeat compares the two under the same load.
To compare two versions of the code, run it with each tree first on PYTHONPATH, alternating.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_scale import forward_time, sync

from mudsc.diffinit.stats import activation_stats
from mudsc.models import create_model
from mudsc.unitgraph import trace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="timm:resnet50")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)

    if args.threads:
        torch.set_num_threads(args.threads)
    parents = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        parents.append(create_model(args.arch, classes=(0, 1, 2, 3, 4), num_classes=10, in_chans=3,
                                    img_size=args.img_size).eval())
    graph = trace(parents[0])
    x = torch.from_numpy(np.random.default_rng(0).random((args.images, 3, args.img_size, args.img_size),
                                                         dtype=np.float32))
    for _ in range(args.repeats):
        forward = forward_time(parents, x, args.batch_size, device)
        t0 = time.perf_counter()
        activation_stats(parents, graph, x, batch_size=args.batch_size, device=device)
        sync(device)
        stats = time.perf_counter() - t0
        print(f"{args.arch} {args.img_size}px, {len(x)} images: forward {forward:.2f} s, "
              f"statistics {stats:.2f} s ({stats / forward:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
