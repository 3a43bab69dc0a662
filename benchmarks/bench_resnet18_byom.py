"""Bring your own model: two torchvision resnet18 parents trained by a plain loop that knows nothing of
mudsc (its own 5-way heads, its own normalisation, grey MNIST repeated to RGB and resized to 32),
saved as plain state dicts, then merged with ``mudsc sweep --arch torchvision:resnet18`` at every
valid cut (own heads share no output space, so no full merge) with weight-avg, permute, zipit and
mudsc-zip, and the ensemble.

Run by hand (results go to benchmarks/RESULTS.md with machine, date and command):

    python benchmarks/bench_resnet18_byom.py --data-dir ../shared/data/mnist --out runs/bench_byom
"""
from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

MEAN, STD = 0.1307, 0.3081  # the usual MNIST Normalize constants


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def train(images: torch.Tensor, labels: torch.Tensor, classes: range, *, seed: int, steps: int) -> dict:
    """A user's loop: resnet18 with a 5-way fc, Adam, Grayscale(3) + Resize(32) + Normalize."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(num_classes=len(classes))
    keep = (labels >= classes.start) & (labels < classes.stop)
    x, y = images[keep], labels[keep] - classes.start
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=g)
        xb = F.interpolate(x[idx], size=(32, 32), mode="bilinear", antialias=True).expand(-1, 3, -1, -1)
        loss = F.cross_entropy(net((xb - MEAN) / STD), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.state_dict()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", default="runs/bench_byom")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--stats-images", type=int, default=500)
    ap.add_argument("--eval-images", type=int, default=1000)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(args.data_dir)
    pixels = torch.from_numpy(read_idx(root / "t10k-images-idx3-ubyte.gz").copy()).float()[:, None] / 255
    labels = torch.from_numpy(read_idx(root / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    n_train = 8000  # mudsc holds out the last 2,000 test images when only the test set is there
    paths = []
    t0 = time.perf_counter()
    for task, seed in ((range(0, 5), 0), (range(5, 10), 1)):
        p = out / f"resnet18_{task.start}{task.stop - 1}.pt"
        torch.save({"state_dict": train(pixels[:n_train], labels[:n_train], task, seed=seed, steps=args.steps)}, p)
        paths.append(str(p))
    t_train = time.perf_counter() - t0
    common = ["--dataset", "mnist", "--data-dir", args.data_dir, "--arch", "torchvision:resnet18",
              "--classes", "0-4", "5-9", "--mean", str(MEAN), "--std", str(STD), "--img-size", "32"]
    cuts = json.loads(subprocess.run([sys.executable, "-m", "mudsc.cli", "cuts", "--model", paths[0], *common[:8],
                                      "--classes", "0-4", "--mean", str(MEAN), "--std", str(STD), "--img-size", "32",
                                      "--json"], check=True, capture_output=True, text=True).stdout)
    names = [c["name"] for c in cuts if c["name"] != "full"]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mudsc.cli", "sweep", "--parents", *paths, *common, "--methods", "weight-avg",
                    "permute", "zipit", "mudsc-zip", "--cuts", *names, "--stats-images",
                    str(args.stats_images), "--reset-images", str(args.stats_images), "--eval-images",
                    str(args.eval_images), "--quiet", "--out", str(out / "sweep")], check=True)
    t_sweep = time.perf_counter() - t0
    # the sweep leaves the ensemble out; one merge's metrics carry it and the parents' accuracies
    one = json.loads(subprocess.run([sys.executable, "-m", "mudsc.cli", "merge", "--parents", *paths, *common,
                                     "--method", "zipit", "--cut", names[0], "--stats-images", str(args.stats_images),
                                     "--eval-images", str(args.eval_images), "--quiet", "--json", "--out",
                                     str(out / "one")], check=True, capture_output=True, text=True).stdout)
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    print(f"\ntrain {t_train:.0f} s ({args.steps} steps x 2 parents), sweep {t_sweep:.0f} s\n")
    print("parents' own-task accuracy:", ", ".join(f"{p['own_task_acc']:.4f}" for p in one["parents"]))
    print("| method | cut | joint | per-task | params merged |\n|---|---|---|---|---|")
    ens = one["ensemble"]
    print(f"| ensemble | - | {ens['joint_acc']:.4f} | {ens['per_task_acc']:.4f} | - |")
    for r in rows:
        print(f"| {r['method']} | {r['cut']} | {r['joint_acc']:.4f} | {r['per_task_acc']:.4f} | "
              f"{r['merged_params_share']:.0%} |")


if __name__ == "__main__":
    main()
