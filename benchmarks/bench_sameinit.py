"""Same-init merging on MNIST class-subset tasks: accuracy and time of each method.

A base is pre-trained on all classes, fine-tuned on each task with its own head, and the bodies are
merged; every merged body is evaluated with each task's own head on that task (task-aware accuracy
on the held-out split). Run: .venv/bin/python benchmarks/bench_sameinit.py --data-dir ../shared/data/mnist
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mudsc.data import batches, load_dataset, parse_classes
from mudsc.device import default_device
from mudsc.evaluate import accuracy
from mudsc.models.checkpoint import load_model
from mudsc.sameinit.config import SameInitConfig
from mudsc.sameinit.merge import merge_same_init
from mudsc.sameinit.taskstats import compute_stats
from mudsc.zoo.finetune import task_family

METHODS = [
    ("average", {}), ("task-arithmetic", {"lam": 0.3}), ("task-arithmetic", {"lam": 0.5}),
    ("ties", {"ties_density": 0.2, "ties_lambda": 1.0}), ("fisher", {}),
    ("regmean", {"alpha": 1.0}), ("regmean", {"alpha": 0.9}),
    ("mats", {"objective": "kfac", "init": "average", "iterations": 100}),
    ("mats", {"objective": "kfac", "init": "task-arithmetic", "lam": 0.3, "iterations": 100}),
    ("mats", {"objective": "kfac", "init": "task-arithmetic", "lam": 0.3, "iterations": 10}),
    ("mats", {"objective": "regmean", "init": "task-arithmetic", "lam": 0.3, "iterations": 100}),
]


def _eval_body(paths, body, data, device) -> list[float]:
    accs = []
    for p in paths:
        model, info = load_model(p)
        sd = model.state_dict()
        sd.update({k: v for k, v in body.items() if k.startswith("body.")})
        model.load_state_dict(sd)
        accs.append(accuracy(model, data.eval, tuple(info["task"]), device=device))
    return accs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir")
    ap.add_argument("--arch", default="mlp")
    ap.add_argument("--kw", default="{}", help="architecture options as JSON")
    ap.add_argument("--tasks", default="0-2,3-5,6-7,8-9", help="comma-separated class ranges")
    ap.add_argument("--base-epochs", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--root", default="/tmp/bench_sameinit")
    ap.add_argument("--device")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    device = default_device(args.device)
    data = load_dataset(args.dataset, args.data_dir)
    tasks = args.tasks.split(",")
    kw = json.loads(args.kw)
    t0 = time.perf_counter()
    base, paths = task_family(args.root, dataset=args.dataset, data_dir=args.data_dir, arch=args.arch, tasks=tasks,
                              base_epochs=args.base_epochs, epochs=args.epochs, device=device, **kw)
    stats, stat_s = [], []
    for i, (t, out) in enumerate(zip(tasks, paths)):
        model, _ = load_model(out)
        split = data.train.subset(parse_classes(t, data.num_classes))
        g = torch.Generator().manual_seed(i)
        s0 = time.perf_counter()
        stats.append(compute_stats(model, batches(split, 32, shuffle=True, generator=g), examples=args.examples,
                                   generator=g, device=device))
        stat_s.append(time.perf_counter() - s0)
    prep = time.perf_counter() - t0
    base_sd = load_model(base)[0].state_dict()
    fts = [load_model(p)[0].state_dict() for p in paths]
    buffers = [k for k in base_sd if k.endswith(("running_mean", "running_var"))]
    rows = [("fine-tuned (individual)", [_eval_body([p], sd, data, device)[0] for p, sd in zip(paths, fts)], 0.0),
            ("base body", _eval_body(paths, base_sd, data, device), 0.0)]
    for method, opts in METHODS:
        cfg = SameInitConfig(method=method, **opts)
        m0 = time.perf_counter()
        merged, report = merge_same_init(base_sd, fts, stats, config=cfg, buffers=buffers, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - m0
        label = method + "".join(f" {k}={v}" for k, v in opts.items())
        res = [r.residual for r in report.layers if r.residual is not None]
        label += f" (max residual {max(res):.1e})" if res and method == "mats" else ""
        rows.append((label, _eval_body(paths, merged, data, device), secs))
    print(f"device {device}; arch {args.arch} {kw}; tasks {tasks}; base {args.base_epochs} epoch(s) on all classes; "
          f"fine-tune {args.epochs} epochs; stats {args.examples} examples/task "
          f"({sum(stat_s) / len(stat_s):.2f} s/task); setup {prep:.1f} s")
    print("| method | " + " | ".join(tasks) + " | avg | merge s |")
    print("|---" * (len(tasks) + 3) + "|")
    for label, accs, secs in rows:
        print(f"| {label} | " + " | ".join(f"{100 * a:.1f}" for a in accs)
              + f" | {100 * sum(accs) / len(accs):.1f} | {secs:.2f} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"rows": rows, "stats_seconds": stat_s}, indent=1))


if __name__ == "__main__":
    main()
