"""End-to-end ``mudsc landscape`` timing on the digits demo pair: merges, grid, barrier paths, figure.

Run by hand:  .venv/bin/python benchmarks/bench_landscape_e2e.py [--grid 21] [--bn exact] [--plane three-point]
              [--methods mudsc-zip zipit] [--figure png] [--keep DIR]
Runs the command in a fresh process (cache off, so every number is computed), prints its stage
timings and the wall time as a markdown row; the numbers go to benchmarks/RESULTS.md under
"## Loss-landscape grid speed".
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mudsc.zoo.demo import demo_pair  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=21)
    ap.add_argument("--bn", choices=("exact", "preview"), default="exact")
    ap.add_argument("--plane", default="three-point")
    ap.add_argument("--methods", nargs="+", default=["mudsc-zip", "zipit"])
    ap.add_argument("--figure", default="png", help="figure format to write too ('' for none)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--precision", choices=("auto", "float32", "bf16"), default="auto")
    ap.add_argument("--keep", help="directory to keep the npz and figure in (default: a temporary one)")
    args = ap.parse_args()

    parents = demo_pair()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mudsc.cli"] + (["--device", args.device] if args.device else []) + [
            "landscape", "--models", *map(str, parents), "--methods", *args.methods, "--plane", args.plane,
            "--grid", str(args.grid), "--bn", args.bn, "--precision", args.precision, "--dataset", "digits",
            "--no-cache", "--json",
            "--out", str(Path(tmp) / "ls.npz")]
        if args.figure:
            cmd += ["--figure", str(Path(tmp) / f"ls.{args.figure}")]
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(proc.stderr)
    s = json.loads(proc.stdout.strip().splitlines()[-1])
    sec = s["seconds"]
    ny, nx = s["grid"]
    print(f"{platform.processor() or platform.machine()}, load average at start {load:.1f}")
    print("| plane | grid | BN | precision, method | methods | merges + frame s | grid s | points/s | paths s "
          "| total wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.plane} | {ny}x{nx} | {args.bn} | {s['precision']}, {s['method']} | {' '.join(args.methods)} "
          f"| {sec['merge']:.1f} | {sec['grid']:.1f} "
          f"| {ny * nx / sec['grid']:.1f} | {sec['paths']:.1f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
