"""MuDSC's stopping rule: what fewer non-improving sweeps (``--patience``, default 5 as published) cost
in merge quality and save in match time, over trained parent pairs.

Run by hand (results go to benchmarks/RESULTS.md with machine, date and command):

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_patience.py --threads 1 \
        --parents-dir runs/mnist_parents --dataset mnist --data-dir ../shared/data/mnist --patience 1 2 3 5

Pairs are the parents of the directory on tasks 0-4 (seed 2p) and 5-9 (seed 2p + 1), as
bench_merge.py and bench_demo_pairs.py name them. Every patience runs the same seeded sweep order,
so a smaller patience stops the published loop earlier on the same path; the table gives, per
method, cut and patience, the mean and std over pairs of joint and per-task accuracy, sweeps and
match seconds.
"""
from __future__ import annotations

import argparse
import re
import statistics
from collections import defaultdict
from pathlib import Path

import torch

from mudsc.diffinit.config import make_config
from mudsc.diffinit.session import MergeSession


def pairs(root: Path) -> list[tuple[Path, Path]]:
    """(task 0-4 seed 2p, task 5-9 seed 2p + 1) checkpoint pairs of `root`, by p."""
    found: dict[tuple[str, int], Path] = {}
    for p in sorted(root.glob("*.safetensors")):
        m = re.search(r"_(04|59)_s(\d+)\.safetensors$", p.name)
        if m:
            found[(m[1], int(m[2]))] = p
    return [(found[("04", s)], found[("59", s + 1)]) for t, s in sorted(found) if t == "04" and ("59", s + 1) in found]


def _mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parents-dir", required=True)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir")
    ap.add_argument("--methods", nargs="+", default=["mudsc-zip"])
    ap.add_argument("--cuts", nargs="+", default=["full"])
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--patience", type=int, nargs="+", default=[1, 2, 3, 5])
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    found = pairs(Path(args.parents_dir))
    if not found:
        raise SystemExit(f"no (0-4 seed 2p, 5-9 seed 2p+1) parent pairs in {args.parents_dir}")
    rows: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for a, b in found:
        session = MergeSession.from_paths([str(a), str(b)], args.dataset, args.data_dir)
        for method in args.methods:
            for cut in args.cuts:
                for k in args.patience:
                    r = session.merge(make_config(method=method, cut=cut, alpha=args.alpha, patience=k))
                    row = rows[(method, cut, k)]
                    row["joint"].append(100 * r.metrics.joint)
                    row["per-task"].append(100 * r.metrics.per_task)
                    row["sweeps"].append(r.solution.sweeps)
                    row["match s"].append(r.timings["match"])
                    print(f"{a.name} + {b.name}: {method} cut {cut} patience {k}: joint {100 * r.metrics.joint:.2f}, "
                          f"{r.solution.sweeps} sweeps, match {r.timings['match']:.2f} s", flush=True)
    print(f"\n{len(found)} pairs of {args.parents_dir}, alpha {args.alpha:g}; mean ± std over pairs\n")
    top = max(args.patience)
    print(f"| method | cut | patience | joint % | joint pp vs patience {top} (paired) | per-task % | sweeps | match s |")
    print("|---|---|---|---|---|---|---|---|")
    for (method, cut, k), row in rows.items():
        diff = [x - y for x, y in zip(row["joint"], rows[(method, cut, top)]["joint"])]
        print(f"| {method} | {cut} | {k} | {_mean_std(row['joint'])} | {_mean_std(diff)} | "
              + " | ".join(_mean_std(row[c]) for c in ("per-task", "sweeps", "match s")) + " |")


if __name__ == "__main__":
    main()
