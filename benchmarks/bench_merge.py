"""Different-init merging on MNIST: every method over several parent pairs (mean +- std), alpha sweeps
of the MuDSC variants, cut sweeps of the zip methods, and the time of each step.

Run by hand (results go to benchmarks/RESULTS.md with machine, date and command):

    python benchmarks/bench_merge.py --data-dir ../shared/data/mnist --pairs 3 --width 2 --out runs/bench_merge

Other architectures (`--arch`, `--kw` JSON) with `--groups-table` add the group-aware vs group-blind
comparison (GroupNorm groups, attention heads); `--quick` runs only the method tables.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mudsc.diffinit.config import make_config
from mudsc.diffinit.session import MergeSession
from mudsc.diffinit.sweep import aggregate, grid, run_sweep
from mudsc.methods import diff_init_names
from mudsc.zoo.demo import train_parent


def parents(args, pair: int) -> list[Path]:
    root = Path(args.parents_dir) if args.parents_dir else Path(args.out) / "parents"
    paths = []
    for task, seed in (("0-4", 2 * pair), ("5-9", 2 * pair + 1)):
        tag = args.arch.replace("timm:", "") + (f"x{args.width}" if args.width else "")
        p = root / f"{tag}.mnist_{task.replace('-', '')}_s{seed}.safetensors"
        if not p.is_file():
            kw = dict(json.loads(args.kw))
            if args.width:
                kw["width"] = args.width
            rec = train_parent(dataset="mnist", data_dir=args.data_dir, arch=args.arch, classes=task, seed=seed,
                               out=p, epochs=args.epochs, lr=args.lr, device=args.device, **kw)
            print(f"trained {p.name}: acc {rec['accuracy']:.4f} in {rec['train_seconds']:.1f} s", flush=True)
        paths.append(p)
    return paths


def fmt(rows: list[dict], cols: list[str]) -> str:
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    lines = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if c.endswith("_acc") and v is not None:
                std = r.get(c + "_std")
                cells.append(f"{100 * v:.1f}" + (f" ± {100 * std:.1f}" if std is not None else ""))
            else:
                cells.append("" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--first-pair", type=int, default=0, help="run pairs first-pair .. pairs - 1 only")
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--kw", default="{}", help="architecture options as JSON")
    ap.add_argument("--width", type=int, default=2, help="width multiplier (0: none, for timm models)")
    ap.add_argument("--groups-table", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=2e-3, help="parents' peak learning rate (AdamW, cosine)")
    ap.add_argument("--stats-images", type=int, default=1000)
    ap.add_argument("--device")
    ap.add_argument("--pooling", choices=["published", "mean"], default="published",
                    help="mean: the descriptor pooling before issue 18 (M, not N M), for before/after tables")
    ap.add_argument("--out", default="runs/bench_merge")
    ap.add_argument("--parents-dir", help="where parents are cached (default OUT/parents): share one set across runs")
    ap.add_argument("--methods", help="comma-separated subset of the method table (default: every method)")
    args = ap.parse_args()
    if args.pooling == "mean":
        from pooling_before_fix import use_mean_pooling

        use_mean_pooling(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = make_config()
    methods = args.methods.split(",") if args.methods else list(diff_init_names())
    tables: dict[str, list[list[dict]]] = {"methods": [], "alpha": [], "mix": [], "cuts": [], "blind": []}
    parent_rows, timing_rows = [], []
    for pair in range(args.first_pair, args.pairs):
        paths = parents(args, pair)
        t0 = time.perf_counter()
        session = MergeSession.from_paths([str(p) for p in paths], "mnist", args.data_dir,
                                          stats_images=args.stats_images, device=args.device)
        session.activation_stats()
        open_s = time.perf_counter() - t0
        parent_rows.append(session.parent_metrics())
        tables["methods"].append(run_sweep(session, grid(base, methods=methods)))
        if args.groups_table:
            blind = base.model_copy(update={"groups": False})
            tables["blind"].append(run_sweep(session, grid(blind, methods=[m for m in methods if m != "ensemble"])))
        # the pairs so far, so a run stopped early still leaves its finished pairs
        (out / "partial.json").write_text(json.dumps({"per_pair": tables, "parents": parent_rows}, default=float))
        if args.quick:
            print(f"pair {pair} done", flush=True)
            continue
        alphas = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 1.0]
        tables["alpha"].append(run_sweep(session, grid(base, methods=["mudsc-align", "mudsc-zip"], alphas=alphas)))
        std = base.model_copy(update={"mix": "standardized"})
        tables["mix"].append(run_sweep(session, grid(std, methods=["mudsc-align", "mudsc-zip"], alphas=alphas)))
        cuts = [c.name for c in session.graph.cuts] + ["full"]
        tables["cuts"].append(run_sweep(session, grid(base, methods=["zipit", "mudsc-zip"], cuts=cuts)))
        for cfg in grid(base, methods=methods):
            r = session.merge(cfg)
            timing_rows.append({"pair": pair, "method": cfg.method, **{k: round(v, 3) for k, v in r.timings.items()}})
        timing_rows.append({"pair": pair, "method": "(session: load + statistics)", "stats": round(open_s, 3)})
        print(f"pair {pair} done", flush=True)
    report = {k: aggregate(v) for k, v in tables.items() if v}
    report["per_pair"] = {k: v for k, v in tables.items() if v}
    report["parents"] = parent_rows
    report["timings"] = timing_rows
    report["device"] = str(session.device)
    report["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    cols = ["method", "alpha", "cut", "joint_acc", "per_task_acc", "task0_acc", "task1_acc"]
    titles = {"methods": "Methods (full merge)", "blind": "Methods, group-blind (groups=False)",
              "alpha": "alpha sweep, published mix", "mix": "alpha sweep, standardized mix", "cuts": "cut sweep"}
    md = [f"\n### {titles[k]}\n" + fmt(report[k], cols) for k in titles if k in report]
    own = [[p["own_task_acc"] for p in pr] for pr in parent_rows]
    md.append("\n### Parents (own-task accuracy per pair)\n" + "\n".join(
        f"- pair {i}: " + ", ".join(f"{100 * a:.2f}" for a in o) for i, o in enumerate(own, args.first_pair)) + "\n")
    (out / "report.md").write_text("".join(md))
    print("".join(md))


if __name__ == "__main__":
    main()
