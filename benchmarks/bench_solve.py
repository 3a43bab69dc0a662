"""The match step alone on a paper-scale pair: zipit's one pass and MuDSC's iterative solve from the same
cached statistics, with the solve's sweeps and score history, and the final matches saved so that two
versions of the code can be compared space by space (``--compare``).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_solve.py --threads 1 --save runs/solve_new.pt \
        [--compare runs/solve_old.pt] [--profile] [--patience 1 2 3 5]

Two random-init ``timm:resnet50`` parents (as in bench_scale.py), 64x64 random images.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import time

import numpy as np
import torch

from mudsc.data import Dataset, Split
from mudsc.diffinit.config import make_config
from mudsc.diffinit.session import MergeSession
from mudsc.diffinit.solve import solve
from mudsc.models import create_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="timm:resnet50")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--methods", nargs="+", default=["zipit", "mudsc-zip"])
    ap.add_argument("--patience", type=int, nargs="+", default=[5],
                    help="the iterative solve's stopping patience(s) (published: 5); one solve per value")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--save", help="write the final matches (per method, per space: the assignment) here")
    ap.add_argument("--compare", help="a file --save wrote, from another version of the code")
    ap.add_argument("--profile", action="store_true", help="print the 20 most expensive calls of each solve")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = np.random.default_rng(0)
    n, img = 2 * (args.images + 64), args.img_size
    x = torch.from_numpy(g.random((n, 3, img, img), dtype=np.float32))
    y = torch.from_numpy(g.integers(0, 10, n))
    data = Dataset(name="random", train=Split(x[: n // 2], y[: n // 2]), eval=Split(x[n // 2:], y[n // 2:]),
                   num_classes=10, mean=(0.0,) * 3, std=(1.0,) * 3, fingerprint="random")
    parents = []
    for seed, task in ((0, (0, 1, 2, 3, 4)), (1, (5, 6, 7, 8, 9))):
        torch.manual_seed(seed)
        parents.append(create_model(args.arch, classes=task, num_classes=10, in_chans=3, img_size=img).eval())
    session = MergeSession(parents, data, stats_images=args.images, eval_images=64, batch_size=64, device="cpu")
    t0 = time.perf_counter()
    act = session.activation_stats().corr
    print(f"{args.arch} {img}px, {args.images} statistics images: statistics {time.perf_counter() - t0:.1f} s")
    spaces = session.spaces_for("full")
    saved, times = {}, {}
    published = make_config().patience
    runs = [(m, k) for m in args.methods for k in (args.patience if make_config(method=m).iterative else [published])]
    for method, k in runs:
        prof = cProfile.Profile() if args.profile else None
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        sol = solve(session.sds, session.graph, spaces, make_config(method=method, patience=k), act_corr=act,
                    device="cpu")
        if prof:
            prof.disable()
        name = method if k == published else f"{method} (patience {k})"
        times[name] = time.perf_counter() - t0
        print(f"{name}: match {times[name]:.2f} s, {sol.sweeps} sweeps, "
              f"history {[round(h, 5) for h in sol.history]}")
        if prof:
            pstats.Stats(prof).sort_stats("tottime").print_stats(20)
        saved[name] = {s: m.assignment() for s, m in sol.matches.items()}
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB")
    for name in [n for n in times if n.startswith("mudsc-zip")] if "zipit" in times else []:
        print(f"{name} match / zipit match = {times[name] / times['zipit']:.1f}x")
    if args.save:
        torch.save(saved, args.save)
    if args.compare:
        other = torch.load(args.compare, weights_only=True)
        for method, by_space in saved.items():
            if method in other:
                same = sum(torch.equal(a, other[method].get(s, torch.empty(0))) for s, a in by_space.items())
                print(f"{method}: {same} of {len(by_space)} spaces match {args.compare} exactly")


if __name__ == "__main__":
    main()
