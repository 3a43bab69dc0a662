"""Loss-landscape grid speed: points/s of vmap vs the per-point loop, MLP and ResNet-20 on digits.

Run by hand:  .venv/bin/python benchmarks/bench_landscape.py [--device cpu|cuda] [--points 32] [--precision bf16]
Prints a markdown table; the numbers go to benchmarks/RESULTS.md under "## Loss-landscape grid speed".
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.evaluate import make_eval_set  # noqa: E402
from landscape.grid import PointEvaluator, evaluate_coords  # noqa: E402
from landscape.plane import three_point, trainable_names  # noqa: E402
from mudsc.data import load_dataset  # noqa: E402
from mudsc.device import default_device  # noqa: E402
from mudsc.models import create_model  # noqa: E402

TASKS = [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
CASES = {
    "mlp": ("mlp (width 256, no BN)", "mlp", dict(width=256), "exact"),
    "resnet20-preview": ("resnet20 (width 1, BN)", "resnet20", dict(width=1), "preview"),
    "resnet20-exact": ("resnet20 (width 1, BN)", "resnet20", dict(width=1), "exact"),
}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench(case: str, *, points: int, chunk: int, es, dev: torch.device, repeats: int, autocast: bool) -> dict:
    _, arch, kw, bn = CASES[case]
    sds = []
    for i in range(3):
        torch.manual_seed(i)
        m = create_model(arch, classes=TASKS[0], num_classes=10, in_chans=1, img_size=8, **kw)
        sds.append(m.state_dict())
    plane = three_point(*sds, names=trainable_names(m))
    g = torch.Generator().manual_seed(0)
    coords = torch.rand(points, 2, generator=g, dtype=torch.float64) * torch.tensor(plane.info["axis_lengths"])
    ev = PointEvaluator(m, plane, es, bn_mode=bn, autocast=autocast)
    out = {}
    for method in ("vmap", "loop"):
        evaluate_coords(ev, coords[:chunk], method=method, chunk_size=chunk)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            _sync(dev)
            t = time.perf_counter()
            evaluate_coords(ev, coords, method=method, chunk_size=chunk)
            _sync(dev)
            best = min(best, time.perf_counter() - t)
        out[method] = points / best
    out["auto"] = ev.default_method()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--points", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--per-task", type=int, default=100)
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--precision", choices=("float32", "bf16"), default="float32")
    args = ap.parse_args()
    dev = default_device(args.device)
    es = make_eval_set(load_dataset("digits"), TASKS, per_task=args.per_task, calib_size=args.calib,
                       batch_size=200, calib_batch_size=args.calib, generator=torch.Generator().manual_seed(0), device=dev)
    print(f"device {dev} ({torch.cuda.get_device_name() if dev.type == 'cuda' else platform.processor() or 'cpu'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.points} points, chunk {args.chunk}, "
          f"{len(es.y)} eval + {len(es.calib_batches()) * es.calib_batch_size} calibration images, {args.precision}")
    print("| model | BN mode | vmap points/s | loop points/s | vmap / loop | auto picks |")
    print("|---|---|---|---|---|---|")
    for case in CASES:
        r = bench(case, points=args.points, chunk=args.chunk, es=es, dev=dev, repeats=args.repeats,
                  autocast=args.precision == "bf16")
        print(f"| {CASES[case][0]} | {CASES[case][3]} | {r['vmap']:.2f} | {r['loop']:.2f} | "
              f"{r['vmap'] / r['loop']:.2f} | {r['auto']} |", flush=True)


if __name__ == "__main__":
    main()
