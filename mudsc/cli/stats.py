"""``mudsc stats``: a task model's Grams, K-FAC factors and diagonal Fisher, saved for same-init merging."""
from __future__ import annotations

import argparse

from mudsc.cli.common import (
    add_model_task_args,
    add_quiet_arg,
    bars_off,
    check_inputs,
    check_out,
    launch_of,
    load_model_task,
    positive_int,
    print_json,
    progress_bar,
)


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("stats", help="collect merging statistics (Gram, K-FAC, Fisher) of a task model")
    add_model_task_args(s, classes_help="task whose examples to use (default: the model's own task)")
    s.add_argument("--split", choices=("train", "eval"), default="train",
                   help="examples to use (default train: the eval split stays held out)")
    s.add_argument("--examples", type=positive_int, default=1000)
    s.add_argument("--fisher", choices=("sampled", "empirical"), default="sampled",
                   help="labels drawn from the model's prediction (true Fisher) or the true labels")
    s.add_argument("--parts", nargs="+", choices=("gram", "grad", "fisher"), default=["gram", "grad", "fisher"],
                   help="what to collect: gram (RegMean), gram grad (MaTS K-FAC), fisher (Fisher merging); "
                        "default all, so one file serves every method")
    s.add_argument("--batch-size", type=positive_int, default=32)
    s.add_argument("--seed", type=int, default=0, help="seeds the example order and sampled labels")
    s.add_argument("--out", required=True, help="output .safetensors file")
    s.add_argument("--json", action="store_true")
    add_quiet_arg(s)
    s.set_defaults(func=_stats)


def _stats(args: argparse.Namespace) -> int:
    import time

    import torch

    from mudsc.data import batches
    from mudsc.models.checkpoint import sha256_file
    from mudsc.sameinit.taskstats import compute_stats, save_stats

    check_out(args.out, folder=False)
    model, data, classes = load_model_task(args)
    launch = launch_of(args)
    check_inputs(args, [args.model], data.fingerprint)
    split = (data.train if args.split == "train" else data.eval).subset(classes)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    bar, update = progress_bar("statistics", unit="example", disable=bars_off(args))
    try:
        stats = compute_stats(model, batches(split, args.batch_size, shuffle=True, generator=g),
                              examples=args.examples, fisher=args.fisher, generator=g, device=args.device,
                              parts=args.parts, progress=update, launch=launch)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    meta = {"model": str(args.model), "model_sha256": sha256_file(args.model), "dataset": data.name,
            "dataset_sha256": data.fingerprint, "classes": ",".join(map(str, classes)), "split": args.split,
            "seed": str(args.seed), "world_size": str(launch.world)}
    if launch.main:
        save_stats(stats, args.out, meta)
    tensors = {part: len(getattr(stats, part)) for part in args.parts}
    rec = {"path": args.out, "count": stats.count, "tensors": tensors, "fisher": stats.fisher_kind,
           "seconds": round(seconds, 2)}
    if args.json:
        print_json(rec)
    else:
        held = ", ".join(f"{part} for {n} tensors" for part, n in tensors.items())
        print(f"{args.out}: {stats.count} examples, {held}, {stats.fisher_kind} labels, {seconds:.1f} s")
    return 0
