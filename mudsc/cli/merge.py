"""``mudsc merge``, ``mudsc cuts`` and ``mudsc sweep``: different-init merging from the command line."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from mudsc.cli.common import (
    StageBars,
    add_arch_args,
    add_data_args,
    add_quiet_arg,
    bars_off,
    check_inputs,
    check_out,
    data_of,
    launch_of,
    plain_specs,
    positive_int,
    print_json,
    progress_bar,
)


def _add_merge_options(p: argparse.ArgumentParser) -> None:
    from mudsc.diffinit.config import MergeConfig

    f = MergeConfig.model_fields
    p.add_argument("--alpha", type=float, default=f["alpha"].default, help=f["alpha"].description)
    p.add_argument("--alpha-for", action="append", metavar="SPACE=ALPHA", help="per-unit-space alpha (repeatable)")
    p.add_argument("--mix", choices=("published", "standardized"), default=f["mix"].default, help=f["mix"].description)
    p.add_argument("--weight-metric", choices=("pearson", "cosine"), default=f["weight_metric"].default)
    p.add_argument("--zip-a", type=float, default=f["zip_a"].default, help=f["zip_a"].description)
    p.add_argument("--zip-b", type=float, default=f["zip_b"].default, help=f["zip_b"].description)
    p.add_argument("--no-groups", action="store_true", help="ignore GroupNorm groups / attention heads")
    p.add_argument("--max-sweeps", type=int, default=f["max_sweeps"].default)
    p.add_argument("--patience", type=int, default=f["patience"].default)
    p.add_argument("--seed", type=int, default=f["seed"].default)
    p.add_argument("--no-bn-reset", action="store_true")
    p.add_argument("--reset-images", type=int, default=f["reset_images"].default)
    p.add_argument("--stats-positions", type=int, default=f["stats_positions"].default,
                   help=f["stats_positions"].description)


def _add_session_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parents", nargs="+", help="parent checkpoints (.safetensors, or plain .safetensors/.pt/.pth "
                   "state dicts with --arch and --classes)")
    add_data_args(p, required=False)
    p.add_argument("--classes", nargs="+", metavar="TASK",
                   help="plain state dicts: each parent's task (its last layer's classes), one per parent: 0-4 5-9")
    add_arch_args(p, per_parent=True)
    p.add_argument("--stats-images", type=positive_int, default=1000, help="images for activation statistics")
    p.add_argument("--eval-images", type=positive_int, help="held-out images to evaluate on (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=250)
    add_quiet_arg(p)


def register(sub: argparse._SubParsersAction) -> None:
    from mudsc.methods import diff_init_names, help_lines

    methods = diff_init_names()
    # The epilog lists what each method does; the raw formatter keeps its one line per method.
    m = sub.add_parser("merge", help="merge parents trained from different initialisations",
                       epilog=f"methods:\n{help_lines(methods)}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_session_options(m)
    m.add_argument("--method", choices=methods, default="mudsc-zip", metavar="METHOD",
                   help="one of the methods listed below (default: %(default)s)")
    m.add_argument("--cut", default="full", help="merge up to this cut (see `mudsc cuts`), or full")
    _add_merge_options(m)
    m.add_argument("--manifest", help="reproduce the merge a manifest.json describes")
    m.add_argument("--out", required=True, help="output directory (model.safetensors, manifest.json)")
    m.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    m.set_defaults(func=_merge)

    c = sub.add_parser("cuts", help="list a model's valid cuts for partial zipping, input to output")
    c.add_argument("--model", required=True)
    add_data_args(c, required=False)
    c.add_argument("--classes", help="plain state dicts: the task its last layer classifies")
    add_arch_args(c, per_parent=False)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_cuts)

    s = sub.add_parser("sweep", help="grid over methods, alpha and cut from one statistics pass")
    _add_session_options(s)
    s.add_argument("--pairs", nargs="+", metavar="A.safetensors,B.safetensors",
                   help="several parent sets, comma-separated; rows report mean and std over them")
    s.add_argument("--methods", nargs="+", default=["mudsc-zip"], choices=methods, metavar="METHOD",
                   help=f"methods to sweep, of {', '.join(methods)} (see `mudsc merge --help`)")
    s.add_argument("--alphas", nargs="+", type=float)
    s.add_argument("--cuts", nargs="+", help="cuts (or full); 'all' for every valid cut and full")
    s.add_argument("--method", default="mudsc-zip", help=argparse.SUPPRESS)
    s.add_argument("--cut", default="full", help=argparse.SUPPRESS)
    _add_merge_options(s)
    s.add_argument("--select-on", choices=("train",),
                   help="choose the config (alpha, cut, method) on held-out training images and report the "
                        "test accuracy at that choice, per pair (the papers' protocol)")
    s.add_argument("--select-metric", choices=("joint", "per-task"), default="joint")
    s.add_argument("--select-images", type=positive_int,
                   help="training images to select on, after those the statistics and BN reset use "
                        "(default: all of the rest, at most 1,000)")
    s.add_argument("--out", required=True, help="output prefix: writes PREFIX.csv and PREFIX.json")
    s.set_defaults(func=_sweep)


def _config(args: argparse.Namespace):
    from mudsc.cli.common import parse_kw
    from mudsc.diffinit.config import make_config

    return make_config(method=args.method, alpha=args.alpha, alpha_overrides=parse_kw(args.alpha_for),
                       mix=args.mix, weight_metric=args.weight_metric, zip_a=args.zip_a, zip_b=args.zip_b,
                       groups=not args.no_groups, cut=args.cut, max_sweeps=args.max_sweeps,
                       patience=args.patience, seed=args.seed, reset_bn=not args.no_bn_reset,
                       reset_images=args.reset_images, stats_positions=args.stats_positions)


def _session(paths: list[str], args: argparse.Namespace, *, shard_stats: bool = True):
    """The session of `paths`; under torchrun (`shard_stats`) its statistics and BN resets are sharded."""
    from mudsc.diffinit.session import MergeSession
    from mudsc.errors import ConfigError

    if not paths or not args.dataset:
        raise ConfigError("give --parents A.safetensors B.safetensors [...] and --dataset (or --manifest)")
    session = MergeSession.from_paths(paths, args.dataset, args.data_dir, data_img_size=args.data_img_size,
                                      stats_images=args.stats_images,
                                      eval_images=args.eval_images, batch_size=args.batch_size, device=args.device,
                                      specs=_specs(paths, args), launch=launch_of(args) if shard_stats else None)
    check_inputs(args, paths, session.data.fingerprint)
    return session


def _specs(paths: list[str], args: argparse.Namespace) -> list[dict | None]:
    return plain_specs(args, paths, data_of(args), getattr(args, "classes", None))


def _merge(args: argparse.Namespace) -> int:
    from mudsc.diffinit.manifest import read_manifest, reproduce, save_merge

    check_out(args.out, folder=True)
    if args.manifest:
        result, manifest = reproduce(read_manifest(args.manifest), args.out, device=args.device, launch=launch_of(args))
    else:
        config = _config(args)  # a bad option is refused before the parents and data load
        session = _session(args.parents, args)
        units = {"statistics": "img", "sweeps": "sweep", "BN reset": "img", "evaluation": "img"}
        with StageBars(units, disable=bars_off(args)) as bars:
            result = session.merge(config, steps=bars)
        manifest = save_merge(result, session, args.out)
    metrics = manifest["metrics"]
    if args.json:
        print_json(metrics)
    else:
        print(f"{result.config.method} (cut {result.config.cut}): joint {metrics['joint_acc']:.4f}, "
              f"per-task {metrics['per_task_acc']:.4f}; ensemble joint {metrics['ensemble']['joint_acc']:.4f}; "
              f"written to {Path(args.out) / 'model.safetensors'}")
    return 0


def _cuts(args: argparse.Namespace) -> int:
    import torch

    from mudsc.models.checkpoint import load_model
    from mudsc.models.multihead import cut_costs
    from mudsc.unitgraph import trace

    if args.dataset:  # a plain state dict needs the data set's geometry and classes
        from mudsc.cli.common import load_model_task

        model = load_model_task(args)[0]
        info = {"spec": model.spec}
    else:
        model, info = load_model(args.model)
    graph = trace(model)
    spec = info["spec"]
    costs = cut_costs(model, graph, torch.zeros(1, spec["in_chans"], spec["img_size"], spec["img_size"]))
    merged = {c.name: len(c.merged_spaces) for c in graph.cuts} | {"full": len(graph.spaces)}
    rows = [{"name": n, "merged_spaces": merged[n], **cost} for n, cost in costs.items()]
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            print(f"{r['name']}\t(merges {r['merged_spaces']} of {len(graph.spaces)} unit spaces, "
                  f"{r['params_share']:.0%} of the parameters, {r['flops_share']:.0%} of the FLOPs)")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from mudsc.diffinit.selection import aggregate_selections, select_on_train
    from mudsc.diffinit.sweep import aggregate, grid, run_sweep
    from mudsc.errors import ConfigError

    check_out(args.out, folder=False)
    sets = [p.split(",") for p in args.pairs] if args.pairs else [args.parents]
    if not sets or not all(sets):
        raise ConfigError("give --parents A B or --pairs A1,B1 A2,B2 ...")
    base = _config(args)
    launch = launch_of(args)
    per_pair, selections = [], []
    for paths in sets:
        # every rank merges its share of the configurations, each from the whole statistics pass
        session = _session(paths, args, shard_stats=False)
        cuts = args.cuts
        if cuts == ["all"]:
            cuts = [c.name for c in session.graph.cuts] + ["full"]
        every = grid(base, methods=args.methods, alphas=args.alphas, cuts=cuts)
        configs = launch.share(every)
        bar, update = progress_bar("configurations", unit="config", disable=bars_off(args))

        def report(desc: str, fraction: float) -> None:  # before each config: name the one running
            bar.set_postfix_str(desc, refresh=False)
            update(round(fraction * len(configs)), len(configs))
        try:
            rows = run_sweep(session, configs, progress=report)
        finally:
            bar.close()
        shares = launch.gather(rows, "the gather of the sweep's rows")
        if launch.main:
            per_pair.append(launch.unshare(shares))
            if args.select_on:  # on rank 0, over every configuration: the choice is one process's
                metric = args.select_metric.replace("-", "_") + "_acc"
                selections.append(select_on_train(session, every, per_pair[-1], metric=metric,
                                                  images=args.select_images))
    if not launch.main:
        return 0
    rows = aggregate(per_pair) if len(per_pair) > 1 else per_pair[0]
    selected = aggregate_selections(selections) if selections else None
    prefix = Path(args.out)
    with open(prefix.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report = {"pairs": sets, "rows": rows, **({"selected_on_train": selected} if selected else {})}
    prefix.with_suffix(".json").write_text(json.dumps(report, indent=1, default=float))
    for r in rows:
        std = f" +- {r['joint_acc_std']:.4f}" if "joint_acc_std" in r else ""
        alpha = "" if r["alpha"] is None else f" alpha={r['alpha']:g}"
        print(f"{r['method']:<12}{alpha:<11} cut={r['cut']:<10} joint {r['joint_acc']:.4f}{std}  "
              f"per-task {r['per_task_acc']:.4f}  params {r['params']:,} ({r['merged_params_share']:.0%} merged)")
    if selected:
        std = f" +- {selected['joint_acc_std']:.4f}" if len(selections) > 1 else ""
        picks = "; ".join(f"{c['method']}" + ("" if c["alpha"] is None else f" alpha={c['alpha']:g}")
                          + f" cut={c['cut']}" for c in selected["choices"])
        print(f"selected on {selected['choices'][0]['selection_images']:,} held-out training images by "
              f"{args.select_metric} accuracy: {picks}; test joint {selected['joint_acc']:.4f}{std}, "
              f"per-task {selected['per_task_acc']:.4f}")
    return 0
