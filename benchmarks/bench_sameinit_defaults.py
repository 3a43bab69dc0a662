"""Choosing the same-init defaults of ``mudsc merge-same`` on a validation split (issue 18).

A base is pre-trained on all MNIST classes and fine-tuned on each task of several task splits
(own heads), on the training images minus a validation split carved from them (``--val`` images).
Every candidate is merged once and scored on both the validation split (which picks the defaults)
and the held-out test split (which only reports). Candidates: average, RegMean, and MaTS (K-FAC)
over CG steps x initialisation x where the statistics are taken (under each task model's own
BatchNorm statistics, or after re-estimating them on the union of the tasks' training images, the
images the merged body's BatchNorm reset uses).

Run by hand (results go to benchmarks/RESULTS.md with machine, date and command):

    python benchmarks/bench_sameinit_defaults.py --data-dir ../shared/data/mnist --arch resnet20 --kw '{"width": 2}'
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import torch

from mudsc.data import Split, batches, load_dataset, parse_classes, union_train
from mudsc.diffinit.fuse import reset_bn_stats_
from mudsc.models import create_model
from mudsc.models.checkpoint import load_model, save_model
from mudsc.models.heads import BODY
from mudsc.sameinit.config import SameInitConfig
from mudsc.sameinit.session import STATS_BATCH, SameInitSession
from mudsc.sameinit.taskstats import compute_stats
from mudsc.zoo.train import train_model

SPLITS = ("0-2,3-5,6-9", "0-4,5-9", "even,odd")
FIXED = [("average", {}), ("regmean", {})]


def carve(data, n_val: int):
    """(training data without the last `n_val` training images, the same with those images as its eval split)."""
    tr = Split(data.train.x[:-n_val], data.train.y[:-n_val])
    val = Split(data.train.x[-n_val:], data.train.y[-n_val:])
    return dataclasses.replace(data, train=tr), dataclasses.replace(data, train=tr, eval=val)


def family(args, data, tasks: list[str]):
    """The base (seed 0, own 10-way head) and one fine-tuned model per task (seed i + 1), cached under --out."""
    root = Path(args.out) / f"{args.arch}{json.loads(args.kw).get('width', '')}"
    root.mkdir(parents=True, exist_ok=True)
    kw = json.loads(args.kw)
    spec = dict(num_classes=data.num_classes, head="own", in_chans=data.in_chans, img_size=data.img_size, **kw)
    base_path = root / "base.safetensors"
    if not base_path.is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            base = create_model(args.arch, classes=tuple(range(data.num_classes)), **spec)
        train_model(base, data, tuple(range(data.num_classes)), epochs=args.base_epochs, seed=0, lr=2e-3)
        save_model(base, base_path)
    base = load_model(base_path)[0]
    models = []
    for i, t in enumerate(tasks):
        cls = parse_classes(t, data.num_classes)
        p = root / f"task_{''.join(map(str, cls))}_s{i + 1}.safetensors"
        if not p.is_file():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(i + 1)
                m = create_model(args.arch, classes=cls, **spec)
            m.load_state_dict({**m.state_dict(), **{k: v for k, v in base.state_dict().items() if k.startswith(BODY)}})
            acc = train_model(m, data, cls, epochs=args.epochs, seed=i + 1, lr=1e-3)
            save_model(m, p)
            print(f"fine-tuned {p.name}: {100 * acc:.1f}", flush=True)
        models.append(load_model(p)[0])
    return base.state_dict(), models


def reestimated_stats(session: SameInitSession, parts) -> list:
    """Statistics of each task model after re-estimating its BatchNorm statistics on the images the
    merged body's reset uses; otherwise the session's conventions (examples, order, seeds)."""
    train = union_train(session.data, session.tasks, seed=session.seed).head(session.reset_images)
    out = []
    for i, m in enumerate(session.models):
        m = reset_bn_stats_(copy.deepcopy(m), batches(train, session.batch_size))
        split = session.data.train.subset(tuple(m.classes))
        g = torch.Generator().manual_seed(session.seed + i)
        out.append(compute_stats(m, batches(split, STATS_BATCH, shuffle=True, generator=g), examples=session.stats_examples,
                                 fisher=session.fisher, generator=g, parts=parts))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--arch", default="mlp")
    ap.add_argument("--kw", default="{}", help="architecture options as JSON")
    ap.add_argument("--splits", default=";".join(SPLITS), help="task splits, ';'-separated")
    ap.add_argument("--val", type=int, default=1000, help="validation images carved from the training split")
    ap.add_argument("--base-epochs", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--examples", type=int, default=500)
    ap.add_argument("--where", choices=("own", "reestimated"), default="own",
                    help="statistics under each task model's own BatchNorm statistics, or after re-estimating them")
    ap.add_argument("--iterations", default="3,10,30,100", help="MaTS CG step caps, from the average")
    ap.add_argument("--ta-iterations", default="10,100", help="MaTS CG step caps, from task arithmetic")
    ap.add_argument("--dampings", default="", help="MaTS from the average at each --iterations cap with these "
                    "dampings too (relative to each layer's mean curvature)")
    ap.add_argument("--out", default="runs/bench_sameinit_defaults")
    args = ap.parse_args()
    full = load_dataset("mnist", args.data_dir)
    train, val = carve(full, args.val)
    report = {"args": vars(args), "splits": {}}
    tag = "".join(c if c.isalnum() else "_" for c in args.splits) + f"_{args.where}_e{args.examples}"
    steps = lambda text: [int(i) for i in text.split(",") if i]  # noqa: E731
    candidates = (FIXED + [("mats", {"init": "average", "iterations": i}) for i in steps(args.iterations)]
                  + [("mats", {"init": "task-arithmetic", "iterations": i}) for i in steps(args.ta_iterations)]
                  + [("mats", {"init": "average", "iterations": i, "damping": float(d)})
                     for d in args.dampings.split(",") if d for i in steps(args.iterations)])
    for split in args.splits.split(";"):
        tasks = split.split(",")
        base, models = family(args, train, tasks)
        sv = SameInitSession(base, models, val, stats_examples=args.examples)
        test = dataclasses.replace(train, eval=full.eval)
        t0 = time.perf_counter()
        # training images only; the test session merges from the same statistics
        stats = sv.statistics(("gram", "grad")) if args.where == "own" else reestimated_stats(sv, ("gram", "grad"))
        print(f"statistics {time.perf_counter() - t0:.1f} s", flush=True)
        s_test = SameInitSession(base, models, test, stats=stats)
        rows = []
        for method, opts in candidates:
            if args.where != "own" and method == "average":
                continue  # takes no statistics
            t0 = time.perf_counter()
            r = s_test.merge(SameInitConfig(method=method, **opts))
            before = r.before_bn_reset.per_task if r.before_bn_reset is not None else None
            rows.append({"method": method, **opts, "stats": args.where, "test": r.metrics.per_task,
                         "test_before_bn_reset": before,
                         "val": sv.evaluate(r.models).per_task, "seconds": round(time.perf_counter() - t0, 1)})
            print(split, rows[-1], flush=True)
        report["splits"][split] = rows
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"report_{args.arch}_{tag}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
