"""The built-in demo recipe (mudsc.zoo.demo.DEMO: digits, ResNet-20 width 1, strides 1/1/2, tasks
0-4 / 5-9) over several seed pairs: every different-init method as a full merge, and the zip
methods at every cut (partial zipping), mean +- std over the pairs.

Run by hand (results go to benchmarks/RESULTS.md with machine, date and command):

    python benchmarks/bench_demo_pairs.py --pairs 5 --out runs/bench_demo_pairs

`--epochs`, `--strides`, `--stats-images` and `--reset-images` vary the recipe for the diagnosis.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_merge import fmt

from mudsc.data import load_dataset
from mudsc.diffinit.config import make_config
from mudsc.diffinit.session import MergeSession
from mudsc.diffinit.sweep import aggregate, grid, run_sweep
from mudsc.methods import diff_init_names
from mudsc.models.checkpoint import load_model
from mudsc.zoo.demo import DEMO, train_parent


def pair_paths(args, pair: int) -> list[Path]:
    """The two parents of seed pair `pair` (seeds 2p, 2p + 1), trained once under --out."""
    root = Path(args.parents_dir) if args.parents_dir else Path(args.out) / "parents"
    kw = {**DEMO["kwargs"], "strides": args.strides}
    paths = []
    for task, seed in zip(DEMO["tasks"], (2 * pair, 2 * pair + 1)):
        p = root / f"{DEMO['arch']}_{args.strides.replace('/', '')}_e{args.epochs}.digits_{task.replace('-', '')}_s{seed}.safetensors"
        if not p.is_file():
            train_parent(dataset=DEMO["dataset"], arch=DEMO["arch"], classes=task, seed=seed, out=p,
                         epochs=args.epochs, **kw)
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=DEMO["epochs"])
    ap.add_argument("--strides", default=DEMO["kwargs"]["strides"])
    ap.add_argument("--stats-images", type=int, default=1000)
    ap.add_argument("--reset-images", type=int, default=1000)
    ap.add_argument("--out", default="runs/bench_demo_pairs")
    ap.add_argument("--parents-dir", help="where parents are cached (default OUT/parents): share one set across runs")
    ap.add_argument("--pooling", choices=["published", "mean"], default="published",
                    help="mean: the descriptor pooling before issue 18 (M, not N M), for before/after tables")
    args = ap.parse_args()
    if args.pooling == "mean":
        from pooling_before_fix import use_mean_pooling

        use_mean_pooling(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(DEMO["dataset"])
    base = make_config(reset_images=args.reset_images)
    methods, cut_rows, parent_rows = [], [], []
    for pair in range(args.pairs):
        models = [load_model(p)[0] for p in pair_paths(args, pair)]
        session = MergeSession(models, data, stats_images=min(args.stats_images, len(data.train)))
        parent_rows.append([{"joint_acc": p["joint_acc"], "own_task_acc": p["own_task_acc"]}
                            for p in session.parent_metrics()])
        methods.append(run_sweep(session, grid(base, methods=diff_init_names())))
        cuts = [c.name for c in session.graph.cuts]
        cut_rows.append(run_sweep(session, grid(base, methods=["zipit", "mudsc-zip"], cuts=cuts)))
        print(f"pair {pair}: " + ", ".join(f"{r['method']} {100 * r['joint_acc']:.1f}" for r in methods[-1])
              + " | parents " + ", ".join(f"{100 * p['joint_acc']:.1f}" for p in parent_rows[-1]), flush=True)
    best_parent = [max(p["joint_acc"] for p in pr) for pr in parent_rows]
    report = {"args": vars(args), "methods": aggregate(methods), "cuts": aggregate(cut_rows),
              "parents": parent_rows, "per_pair": methods}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    cols = ["method", "alpha", "cut", "joint_acc", "per_task_acc", "task0_acc", "task1_acc"]
    md = ("\n#### Methods (full merge)\n" + fmt(report["methods"], cols)
          + "\n#### Partial zip (merged up to each cut)\n" + fmt(report["cuts"], cols + ["merged_params_share"])
          + "\n#### Parents: joint accuracy of the better parent per pair\n"
          + ", ".join(f"{100 * b:.1f}" for b in best_parent) + "\n")
    (out / "report.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
