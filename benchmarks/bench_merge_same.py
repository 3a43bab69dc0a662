"""The same-init table of the merge-same issue, and align-then-fuse on different-init pairs.

Part 1 (same init): a base pre-trained on all MNIST classes is fine-tuned on each named task with its
own head; rows are each fine-tuned body under every task's head, the base body, every merge of
``mudsc merge-same`` and the multitask upper bound (one body fine-tuned on the union of the tasks).
Cells are task-aware held-out accuracy (%); "avg, no BN reset" is the average with the merged
(averaged) BatchNorm statistics, "avg" after resetting them on the tasks' training images.

Part 2 (different init): pairs of ResNet-20s trained from different seeds on MNIST 0-4 / 5-9
(shared-embedding heads, as ``mudsc zoo train``) are aligned (permute, rebasin, mudsc-align) and fused
by averaging (the engine's plain alignment merge) or by Fisher / RegMean / MaTS on the aligned
parents; joint and per-task accuracy, mean +- std over the pairs.

Run: python benchmarks/bench_merge_same.py --data-dir ../shared/data/mnist --out runs/bench_merge_same
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mudsc.data import load_dataset, parse_classes
from mudsc.device import default_device
from mudsc.evaluate import accuracy
from mudsc.models.checkpoint import load_model
from mudsc.sameinit.config import MultitaskConfig, SameInitConfig
from mudsc.sameinit.session import SameInitSession, with_body
from mudsc.zoo.demo import train_parent
from mudsc.zoo.finetune import task_family

SAME_INIT = [
    ("average", {}), ("task-arithmetic", {"lam": 0.3}), ("ties", {"ties_density": 0.2}), ("fisher", {}),
    ("regmean", {"alpha": 1.0}), ("regmean", {"alpha": 0.9}),
    ("mats", {"init": "average", "iterations": 100}),
    ("mats", {"init": "task-arithmetic", "lam": 0.3, "iterations": 10}),
]
FUSERS = [("average", {}), ("fisher", {}), ("regmean", {"alpha": 1.0}), ("regmean", {"alpha": 0.9}),
          ("mats", {"iterations": 100}), ("mats", {"iterations": 10})]


def label(method: str, opts: dict) -> str:
    return method + "".join(f" {k}={v}" for k, v in opts.items())


def merge_and_score(session: SameInitSession, method: str, opts: dict) -> dict:
    """One merge: accuracies with the averaged BatchNorm statistics and after the reset; the merge
    time (its results land on the CPU, so a GPU merge has finished when it is taken)."""
    r = session.merge(SameInitConfig(method=method, **opts))
    after = r.metrics.as_dict()
    before = r.before_bn_reset.as_dict() if r.before_bn_reset is not None else after
    res = [layer.residual for layer in r.report.layers if layer.residual is not None]
    return {"before": before, "after": after, "seconds": r.timings["merge"],
            "max_residual": max(res) if res and method == "mats" else None}


def same_init(args, data, device) -> dict:
    tasks = args.tasks.split(",")
    kw = json.loads(args.kw)
    t0 = time.perf_counter()
    base, paths = task_family(Path(args.out) / f"sameinit_{args.arch}", dataset=args.dataset, data_dir=args.data_dir,
                              arch=args.arch, tasks=tasks, base_epochs=args.base_epochs, epochs=args.epochs,
                              device=device, **kw)
    models = [load_model(p)[0] for p in paths]
    base_sd = load_model(base)[0].state_dict()
    session = SameInitSession(base_sd, models, data, stats_examples=args.examples, device=device)
    prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    session.statistics()  # every part, once: the merges below share them
    stats_s = (time.perf_counter() - t0) / len(models)
    cls = [parse_classes(t, data.num_classes) for t in tasks]
    rows = []
    for j, mj in enumerate(models):
        accs = [accuracy(with_body(mk, mj.state_dict()), data.eval, cls[k], device=device) for k, mk in enumerate(models)]
        rows.append({"method": f"fine-tuned on {tasks[j]}", "task_acc": accs})
    accs = [accuracy(with_body(mk, base_sd), data.eval, cls[k], device=device) for k, mk in enumerate(models)]
    rows.append({"method": "base body", "task_acc": accs})
    for method, opts in SAME_INIT:
        r = merge_and_score(session, method, opts)
        rows.append({"method": label(method, opts), "task_acc": r["after"]["task_acc"],
                     "no_reset": r["before"]["per_task_acc"], "seconds": r["seconds"],
                     "max_residual": r["max_residual"]})
    multi = session.merge(MultitaskConfig(epochs=args.epochs))
    rows.append({"method": f"multitask ({args.epochs} epochs on the union)",
                 "task_acc": list(multi.metrics.tasks), "seconds": multi.timings["train"]})
    return {"arch": args.arch, "kw": kw, "tasks": tasks, "rows": rows, "stats_seconds_per_task": stats_s,
            "setup_seconds": prep}


def hybrid(args, data, device) -> dict:
    root = Path(args.out) / "pairs"
    per_pair: list[dict[str, dict]] = []
    for pair in range(args.pairs):
        paths = []
        for task, seed in (("0-4", 2 * pair), ("5-9", 2 * pair + 1)):
            p = root / f"resnet20x{args.pair_width}.{args.dataset}_{task.replace('-', '')}_s{seed}.safetensors"
            if not p.is_file():
                train_parent(dataset=args.dataset, data_dir=args.data_dir, arch="resnet20", classes=task, seed=seed, out=p,
                             epochs=args.pair_epochs, width=args.pair_width, device=device)
            paths.append(p)
        parents = [load_model(p)[0] for p in paths]
        rows: dict[str, dict] = {}
        for align in ("permute", "rebasin", "mudsc-align"):
            session = SameInitSession(None, parents, data, align=align, stats_examples=args.examples, device=device)
            t0 = time.perf_counter()
            session.statistics()
            stats_s = time.perf_counter() - t0
            for method, opts in FUSERS:
                r = merge_and_score(session, method, opts)
                rows[f"{align}+{label(method, opts)}"] = {**r, "align_seconds": session.timings["align"],
                                                         "stats_seconds": stats_s}
        per_pair.append(rows)
        print(f"pair {pair} done", flush=True)
    table = []
    for name in per_pair[0]:
        row = {"method": name}
        for when in ("after", "before"):
            for metric in ("joint_acc", "per_task_acc"):
                vals = [p[name][when][metric] for p in per_pair]
                row[f"{when}_{metric}"] = statistics.mean(vals)
                row[f"{when}_{metric}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        row["seconds"] = statistics.mean(p[name]["seconds"] for p in per_pair)
        table.append(row)
    return {"pairs": args.pairs, "width": args.pair_width, "epochs": args.pair_epochs, "rows": table,
            "per_pair": per_pair}


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown(report: dict) -> str:
    out = []
    for part in report.get("same_init", []):
        tasks = part["tasks"]
        out.append(f"\n{part['arch']} {part['kw']}: statistics {part['stats_seconds_per_task']:.2f} s per task\n\n")
        out.append("| method | " + " | ".join(tasks) + " | avg | avg, no BN reset | merge s |\n")
        out.append("|---" * (len(tasks) + 4) + "|\n")
        for r in part["rows"]:
            accs = r["task_acc"]
            res = f" (max residual {r['max_residual']:.1e})" if r.get("max_residual") else ""
            nr = pct(r["no_reset"]) if r.get("no_reset") is not None else ""
            secs = f"{r['seconds']:.2f}" if r.get("seconds") is not None else ""
            out.append(f"| {r['method']}{res} | " + " | ".join(pct(a) for a in accs)
                       + f" | {pct(sum(accs) / len(accs))} | {nr} | {secs} |\n")
    if "hybrid" in report:
        h = report["hybrid"]
        out.append(f"\nAlign, then fuse: {h['pairs']} pairs of ResNet-20 x{h['width']} ({h['epochs']} epochs), "
                   "mean +- std over pairs\n\n")
        out.append("| method | joint | per-task | joint, no BN reset | per-task, no BN reset | merge s |\n")
        out.append("|---|---|---|---|---|---|\n")
        for r in h["rows"]:
            cells = [f"{pct(r[k])} ± {pct(r[k + '_std'])}" for k in
                     ("after_joint_acc", "after_per_task_acc", "before_joint_acc", "before_per_task_acc")]
            out.append(f"| {r['method']} | " + " | ".join(cells) + f" | {r['seconds']:.2f} |\n")
    return "".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-dir")
    ap.add_argument("--archs", default="mlp,resnet20", help="same-init architectures, comma-separated")
    ap.add_argument("--tasks", default="0-2,3-5,6-7,8-9", help="comma-separated class ranges")
    ap.add_argument("--base-epochs", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=3, help="different-init pairs for align-then-fuse (0: skip)")
    ap.add_argument("--pair-width", type=int, default=2)
    ap.add_argument("--pair-epochs", type=int, default=10)
    ap.add_argument("--device")
    ap.add_argument("--out", default="runs/bench_merge_same")
    args = ap.parse_args()
    device = default_device(args.device)
    data = load_dataset(args.dataset, args.data_dir)
    report: dict = {"device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                    "torch": torch.__version__, "same_init": []}
    Path(args.out).mkdir(parents=True, exist_ok=True)

    def save() -> str:  # after every part, so a cut-off run keeps what it finished
        (Path(args.out) / "report.json").write_text(json.dumps(report, indent=1, default=float))
        md = markdown(report)
        (Path(args.out) / "report.md").write_text(md)
        return md

    for arch in [a for a in args.archs.split(",") if a]:
        args.arch = arch
        args.kw = '{"width": 1}' if arch.startswith("resnet") else "{}"
        t0 = time.perf_counter()
        report["same_init"].append(same_init(args, data, device))
        print(f"{arch} done in {time.perf_counter() - t0:.1f} s", flush=True)
        save()
    if args.pairs:
        t0 = time.perf_counter()
        report["hybrid"] = hybrid(args, data, device)
        print(f"hybrid done in {time.perf_counter() - t0:.1f} s", flush=True)
    print(save())


if __name__ == "__main__":
    main()
