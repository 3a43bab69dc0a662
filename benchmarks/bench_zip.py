"""Greedy zip speed: fast `greedy_zip` vs the straightforward `greedy_zip_reference`, 2 parents of C units.

Usage: .venv/bin/python benchmarks/bench_zip.py [--sizes 128 256 512 1024] [--max-ref 512] [--threads 1]
           [--rounds-on cuda]

The similarity mimics activation correlation of two trained parents: parent 1 holds noisy, permuted
copies of parent 0's features, and a few shared factors correlate units within each parent. Prints a
markdown table (seconds; fast = best of --repeats, reference = one run) and checks that both versions
give the same clusters and score wherever both ran. ``--rounds-on DEVICE`` adds the zip in rounds
(:func:`~mudsc.diffinit.solvers.zip.zip_owners_in_rounds`, what a GPU runs from ``ROUNDS_FROM`` units) on
that device at every size, timed with the copy onto it, and checks it gives the same owners and values.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from mudsc.diffinit.solvers import greedy_zip, greedy_zip_reference
from mudsc.diffinit.solvers.zip import model_budget, zip_owners, zip_owners_in_rounds


def parent_similarity(c: int, *, samples: int, generator: torch.Generator) -> torch.Tensor:
    """[2c, 2c] float32 Pearson correlation of two parents' features.

    Parent 1 holds permuted noisy copies of parent 0's features; 8 shared factors correlate units,
    and in each parent a fifth of the units are near-duplicates of another unit of the same parent
    (redundant features, which zip may merge within a parent).
    """
    shared = torch.randn(8, samples, generator=generator)
    base = torch.randn(c, samples, generator=generator) + 0.5 * torch.randn(c, 8, generator=generator) @ shared
    parents = []
    for order in (torch.arange(c), torch.randperm(c, generator=generator)):
        x = base[order] + 0.8 * torch.randn(c, samples, generator=generator)
        dup = torch.randperm(c, generator=generator)[: c // 5]
        src = torch.randint(0, c, (len(dup),), generator=generator)
        x[dup] = x[src] + 0.3 * torch.randn(len(dup), samples, generator=generator)
        parents.append(x)
    return torch.corrcoef(torch.cat(parents))


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def in_rounds(sim: torch.Tensor, c: int, device: str, a: float, b: float) -> tuple[float, bool]:
    """Seconds of the zip in rounds on `device` (best of 3), and whether its owners and values equal
    the one-at-a-time zip's."""
    origin = np.repeat(np.arange(2), c)

    def run(zipper, s):
        budget = np.full(2, model_budget(2 * c, c, 2, b), dtype=np.int64)
        return zipper(s, origin, steps=c, a=a, budget=budget, killed=np.zeros(2, dtype=bool))

    def timed_rounds():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = run(zip_owners_in_rounds, sim.to(device, copy=True))
        return time.perf_counter() - start, out

    runs = [timed_rounds() for _ in range(3)]
    seconds, (owner, values) = min(runs, key=lambda r: r[0])
    ref_owner, ref_values = run(zip_owners, sim.numpy().copy())
    return seconds, bool(np.array_equal(owner, ref_owner) and np.array_equal(values, ref_values))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024])
    p.add_argument("--max-ref", type=int, default=512, help="largest C for which the reference runs")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--a", type=float, default=0.5)
    p.add_argument("--b", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 keeps the reference's timing stable on a shared 2-core machine")
    p.add_argument("--rounds-on", metavar="DEVICE", help="also time the zip in rounds on this device (e.g. cuda)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, a={args.a}, b={args.b}")
    greedy_zip_reference(parent_similarity(8, samples=16, generator=torch.Generator()), [8, 8])  # warm-up
    rounds_head = f" in rounds on {args.rounds_on} (s) | same owners and values |" if args.rounds_on else ""
    print(f"| C | O | fast (s) | reference (s) | speed-up | same clusters and score | within / across |{rounds_head}")
    print("|---|---|---|---|---|---|---|" + ("---|---|" if args.rounds_on else ""))
    for c in args.sizes:
        sim = parent_similarity(c, samples=512, generator=torch.Generator().manual_seed(args.seed + c))
        runs = [timed(greedy_zip, sim, [c, c], a=args.a, b=args.b) for _ in range(args.repeats)]
        fast_s, fast = min(runs, key=lambda r: r[0])
        ref_cell, speed, same = "-", "-", "-"
        if c <= args.max_ref:
            ref_s, ref = timed(greedy_zip_reference, sim, [c, c], a=args.a, b=args.b)
            ref_cell, speed = f"{ref_s:.2f}", f"{ref_s / fast_s:.0f}x"
            same = "yes" if ref.clusters() == fast.clusters() and ref.score == fast.score else "NO"
        rounds_cells = ""
        if args.rounds_on:
            seconds, equal = in_rounds(sim, c, args.rounds_on, args.a, args.b)
            rounds_cells = f" {seconds:.3f} | {'yes' if equal else 'NO'} |"
        print(f"| {c} | {2 * c} | {fast_s:.3f} | {ref_cell} | {speed} | {same} | {fast.n_within} / {fast.n_across} |"
              f"{rounds_cells}", flush=True)


if __name__ == "__main__":
    main()
