"""Zip depth at every block on MNIST 0-4 / 5-9 (issue 14): ResNet-20x2 pairs swept over every cut for
zipit and mudsc-zip, and a small ViT pair swept over every transformer block; accuracy, parameters and
the merged shares per cut, mean +- std over the pairs (ZipIt!'s partial-zipping curves, Stoica et al.,
2024, Sec. 4.3, there only at stage ends).

Parents are what `mudsc zoo train --dataset mnist --arch ARCH --classes 0-4 --seed 2p` makes (the same
`train_parent`), pair p = seeds (2p, 2p + 1). Every piece is cached under --out, so the run can be split
into short pieces (``--only resnet:0`` trains and sweeps one pair) and a last call writes the tables:

    python benchmarks/bench_depth.py --data-dir ../shared/data/mnist --out runs/bench_depth
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mudsc.diffinit.config import make_config
from mudsc.diffinit.session import MergeSession
from mudsc.diffinit.sweep import aggregate, grid, run_sweep
from mudsc.zoo.demo import train_parent

# name -> (arch, options, pairs, epochs, methods): the ResNet recipe of the "Different-init merging on
# MNIST" section with 3 epochs instead of 10 (a parent takes 34 s per epoch on one CPU core); the ViT is
# the small ViT of the group-alignment section (4 blocks), trained as long (20 epochs)
SETUPS = {
    "resnet": ("resnet20", {"width": 2}, 3, 3, ["zipit", "mudsc-zip"]),
    "vit": ("timm:vit_tiny_patch16_224", {"patch_size": 7, "depth": 4, "num_heads": 6, "embed_dim": 96}, 1, 20,
            ["zipit", "mudsc-zip"]),
}


def parents(out: Path, name: str, pair: int, data_dir: str, device: str | None) -> list[Path]:
    arch, kw, _, epochs, _ = SETUPS[name]
    paths = []
    for task, seed in (("0-4", 2 * pair), ("5-9", 2 * pair + 1)):
        p = out / "parents" / f"{name}.mnist_{task.replace('-', '')}_s{seed}.safetensors"
        if not p.is_file():
            rec = train_parent(dataset="mnist", data_dir=data_dir, arch=arch, classes=task, seed=seed, out=p,
                               epochs=epochs, device=device, **kw)
            print(f"trained {p.name}: acc {rec['accuracy']:.4f} in {rec['train_seconds']:.1f} s", flush=True)
        paths.append(p)
    return paths


def sweep_pair(out: Path, name: str, pair: int, args: argparse.Namespace) -> dict:
    """One pair's depth sweep (cached as JSON): every cut and full, for each method, plus the ensemble."""
    cached = out / f"{name}_pair{pair}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    paths = parents(out, name, pair, args.data_dir, args.device)
    t0 = time.perf_counter()
    session = MergeSession.from_paths([str(p) for p in paths], "mnist", args.data_dir, stats_images=args.stats_images,
                                      device=args.device)
    cuts = [c.name for c in session.graph.cuts] + ["full"]
    base = make_config(reset_images=args.stats_images)
    rows = run_sweep(session, grid(base, methods=SETUPS[name][4], cuts=cuts))
    rows += run_sweep(session, grid(base, methods=["ensemble"]))
    result = {"rows": rows, "parents": session.parent_metrics(), "seconds": round(time.perf_counter() - t0, 1)}
    cached.write_text(json.dumps(result, indent=1, default=float))
    print(f"{name} pair {pair}: {len(rows)} merges in {result['seconds']} s", flush=True)
    return result


def pct(r: dict, key: str) -> str:
    std = r.get(key + "_std")
    return f"{100 * r[key]:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def table(rows: list[dict]) -> str:
    lines = ["| method | cut | joint | per-task | task 0-4 | task 5-9 | params | merged params | merged FLOPs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['cut']} | {pct(r, 'joint_acc')} | {pct(r, 'per_task_acc')} | "
                     f"{pct(r, 'task0_acc')} | {pct(r, 'task1_acc')} | {r['params']:,} | "
                     f"{r['merged_params_share']:.0%} | {r['merged_flops_share']:.0%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", default="runs/bench_depth")
    ap.add_argument("--only", help="one piece, NAME:PAIR (e.g. resnet:0, vit:0); default: all, then the tables")
    ap.add_argument("--train-only", action="store_true", help="with --only: train that pair's parents, no sweep")
    ap.add_argument("--stats-images", type=int, default=1000, help="statistics and BN-reset images")
    ap.add_argument("--device")
    args = ap.parse_args()
    out = Path(args.out)
    (out / "parents").mkdir(parents=True, exist_ok=True)
    if args.only:
        name, pair = args.only.split(":")
        if args.train_only:
            parents(out, name, int(pair), args.data_dir, args.device)
        else:
            sweep_pair(out, name, int(pair), args)
        return
    md = []
    for name, (arch, kw, pairs, epochs, _) in SETUPS.items():
        results = [sweep_pair(out, name, p, args) for p in range(pairs)]
        rows = aggregate([r["rows"] for r in results]) if pairs > 1 else results[0]["rows"]
        own = "; ".join(", ".join(f"{100 * p['own_task_acc']:.2f}" for p in r["parents"]) for r in results)
        md.append(f"\n#### {arch} {json.dumps(kw)}, {pairs} pair(s), {epochs} epochs (parents' own-task "
                  f"accuracy: {own})\n\n" + table(rows))
    (out / "report.md").write_text("".join(md))
    print("".join(md))


if __name__ == "__main__":
    main()
