"""Interactive cost of the merge engine: the statistics pass against a plain forward pass over the same
images, and a re-merge at a new alpha from cached statistics (matching and fusion timed apart from
the BatchNorm reset and evaluation, which are forward passes over a configurable number of images).

    python benchmarks/bench_remerge.py --data-dir ../shared/data/mnist --width 4 [--parents A B] [--cut CUT]
    python benchmarks/bench_remerge.py --dataset digits --parents A B --cut layer1   # the studio's demo merge

Without --parents, two differently seeded untrained ResNet-20s are used (timing only).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mudsc.data import batches, load_dataset
from mudsc.diffinit.config import make_config
from mudsc.diffinit.session import MergeSession
from mudsc.diffinit.stats import activation_stats
from mudsc.models import create_model
from mudsc.models.checkpoint import load_model


def timed(fn, repeat: int = 3) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir")
    ap.add_argument("--cut", default="full", help="merge up to this cut (a partial zip builds a multi-head model)")
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--parents", nargs=2)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, args.data_dir)
    if args.parents:
        models = [load_model(p)[0] for p in args.parents]
    else:
        models = []
        for seed, task in ((0, (0, 1, 2, 3, 4)), (1, (5, 6, 7, 8, 9))):
            torch.manual_seed(seed)
            models.append(create_model("resnet20", classes=task, num_classes=10, in_chans=1, img_size=data.img_size,
                                       width=args.width).eval())
    session = MergeSession(models, data, stats_images=args.images, eval_images=args.images, device="cpu")
    x = session.train.x[: args.images]

    def forward():
        with torch.no_grad():
            for m in models:
                for xb, in ((b,) for b, _ in batches(session.train.head(args.images), 250)):
                    m(xb)

    t_fwd = timed(forward)
    t_stats = timed(lambda: activation_stats(models, session.graph, x, batch_size=250, device="cpu"))
    print(f"plain forward of both parents over {args.images} images: {t_fwd:.3f} s")
    print(f"statistics pass (all {len(session.graph.spaces)} unit spaces): {t_stats:.3f} s "
          f"(ratio {t_stats / t_fwd:.2f})")
    session.activation_stats()
    print(f"cut {args.cut}")
    print("| method | alpha | match s | fuse s | BN reset s | eval s | sweeps |")
    print("|---|---|---|---|---|---|---|")
    for method in ("zipit", "permute", "mudsc-zip", "mudsc-align"):
        for alpha in (0.3, 0.5, 0.7):
            if method in ("zipit", "permute") and alpha != 0.5:
                continue
            r = session.merge(make_config(method=method, alpha=alpha, reset_images=args.images, cut=args.cut))
            t = r.timings
            print(f"| {method} | {alpha if method.startswith('mudsc') else ''} | {t['match']:.3f} | {t['fuse']:.3f} | "
                  f"{t['bn_reset']:.3f} | {t['eval']:.3f} | {r.solution.sweeps} |", flush=True)


if __name__ == "__main__":
    main()
