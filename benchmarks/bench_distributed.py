"""``mudsc landscape`` as a torchrun job with 1, 2, ... ranks: wall time, grid time and parallel efficiency.

Run by hand:  .venv/bin/python benchmarks/bench_distributed.py --models A.safetensors B.safetensors \
                  --dataset mnist --data-dir DIR [--ranks 1 2] [--threads 2] [--grid 21] [--device cpu]
Each run starts in a fresh process (cache off, so every number is computed); K ranks get
``threads // K`` threads each, so every run uses the same cores. Prints one markdown row per run
with its largest task-loss difference to the first run; the numbers go to benchmarks/RESULTS.md
under "## More than one process: torchrun jobs".
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from landscape.result import LandscapeResult  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs=2, required=True)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir")
    ap.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--threads", type=int, default=2, help="threads in all, shared out over the ranks")
    ap.add_argument("--grid", type=int, default=21)
    ap.add_argument("--plane", default="pca")
    ap.add_argument("--methods", nargs="+", default=["zipit", "wzip", "mudsc-zip"])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    rows, first = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.ranks:
            out = Path(tmp) / f"ls{k}.npz"
            launcher = ([sys.executable, "-m", "mudsc"] if k == 1 else
                        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={k}",
                         "-m", "mudsc"])
            cmd = [*launcher, "--device", args.device, "landscape", "--models", *args.models,
                   "--methods", *args.methods, "--plane", args.plane, "--grid", str(args.grid), "--bn", "exact",
                   "--dataset", args.dataset, *(["--data-dir", args.data_dir] if args.data_dir else []),
                   "--path-steps", "0", "--no-cache", "--json", "--out", str(out)]
            threads = str(max(1, args.threads // k))
            env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode:
                sys.exit(proc.stderr[-3000:])
            s = json.loads(proc.stdout.strip().splitlines()[-1])
            res = LandscapeResult.load(out)
            if first is None:
                first = res
            same = float(np.nanmax(np.abs(res.task_loss - first.task_loss)))
            rows.append((k, threads, s, wall, load, same))
    base = rows[0][2]["seconds"]["grid"]  # every run has the same cores: speedup = parallel efficiency here
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print("| ranks | threads per rank | grid | merges + frame s | grid s | points/s | grid speedup over the first "
          "(same cores) | total wall s | max abs task-loss diff vs first | load at start |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, threads, s, wall, load, same in rows:
        ny, nx = s["grid"]
        grid_s = s["seconds"]["grid"]
        print(f"| {k} | {threads} | {ny}x{nx} | {s['seconds']['merge']:.1f} | {grid_s:.1f} | {ny * nx / grid_s:.2f} "
              f"| {base / grid_s:.2f} | {wall:.1f} | {same:.1e} | {load:.1f} |")


if __name__ == "__main__":
    main()
