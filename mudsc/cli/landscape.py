"""``mudsc landscape``: merge the parents with one or more methods and write the multi-task loss over a
plane through the parents and the merges (npz, JSON summary, paper figure)."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from mudsc.cli.common import (
    add_arch_args,
    add_data_args,
    check_inputs,
    check_out,
    data_of,
    launch_of,
    plain_specs,
    positive_int,
    print_json,
)

FIGURE_FORMATS = ("html", "png", "svg", "pdf")


def register(sub: argparse._SubParsersAction) -> None:
    from landscape.compute import PLANE_KINDS
    from mudsc.methods import names

    planes = {kind.replace("_", "-"): what for kind, what in PLANE_KINDS.items()}
    p = sub.add_parser("landscape", help="per-task loss over a plane through the parents and their merges")
    p.add_argument("--models", nargs="+", required=True, metavar="PARENT", help="parent checkpoints (.safetensors, "
                   "or plain state dicts with --arch and --classes)")
    p.add_argument("--classes", nargs="+", metavar="TASK", help="plain state dicts: each parent's task, one per parent")
    add_arch_args(p, per_parent=True)
    p.add_argument("--methods", nargs="+", required=True, metavar="METHOD[@ALPHA]",
                   help=f"merge methods, of {', '.join(names('diff-init'))}; the first gives the basis (its "
                        "parents moved into it); "
                        "METHOD@ALPHA sets that merge's alpha")
    p.add_argument("--alpha", type=float, default=0.5, help="alpha of every merge without its own @ALPHA")
    p.add_argument("--alpha2", type=float,
                   help="alpha of the second merge; with one method, the second merge is that method at this alpha")
    p.add_argument("--cut", default="full", help="merge up to this cut (only full merges have a place on a plane)")
    p.add_argument("--plane", choices=tuple(planes), default="three-point",
                   help="; ".join(f"{flag}: {what}" for flag, what in planes.items())
                        + ". Here the third model is the second merge, and random directions centre on the first")
    p.add_argument("--grid", type=positive_int, default=21, help="grid points along the longer side")
    p.add_argument("--margin", type=float, default=0.25, help="grid margin, share of the models' extent")
    p.add_argument("--seed", type=int, default=0, help="seed of the random plane and the evaluation subset")
    add_data_args(p)
    p.add_argument("--bn", choices=("exact", "preview"), default="exact",
                   help="exact: BatchNorm statistics recomputed at every point; preview: the first merge's")
    p.add_argument("--stats-images", type=positive_int, default=1000,
                   help="images for the merges' activation statistics")
    p.add_argument("--eval-images", type=positive_int, default=500, help="held-out images per task at every point")
    p.add_argument("--calib-images", type=positive_int, default=256,
                   help="training images for exact BatchNorm statistics")
    p.add_argument("--reset-images", type=int, default=1000, help="training images for each merge's BatchNorm reset")
    p.add_argument("--path-steps", type=int, default=11,
                   help="points per segment of each parent 0' - merge - parent 1' path (barrier); 0 skips it")
    p.add_argument("--overlap", type=float, default=0.5,
                   help="overlap region: every task's loss below this share of its chance-level loss ln K")
    p.add_argument("--vmax", type=float, help="clip the figure's colour scale at this loss (default 1.5 ln K)")
    p.add_argument("--chunk-size", type=positive_int, default=16, help="grid points per vectorised call")
    p.add_argument("--method", choices=("auto", "vmap", "loop"), default="auto",
                   help="grid evaluation: vmap over chunks of points, the per-point loop, or auto (vmap, except "
                        "the loop for convolutional models on CPU, where it is faster)")
    p.add_argument("--precision", choices=("auto", "float32", "bf16"), default="auto",
                   help="forward precision: bf16 autocast where the hardware runs it natively (auto), or fixed")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the landscape cache")
    p.add_argument("--out", required=True, help="output .npz (grids, axes, model coordinates)")
    p.add_argument("--figure", help="also draw the figure: FILE.html, .png, .svg or .pdf")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=_landscape)


def merge_specs(methods: list[str], *, alpha: float, alpha2: float | None) -> list[tuple[str, float]]:
    """``['mudsc-zip@0.3', 'zipit']`` -> [(method, alpha)], with --alpha2 applied to the second merge."""
    from mudsc.errors import ConfigError
    from mudsc.methods import get_method

    specs = []
    for item in methods:
        name, _, a = item.partition("@")
        if name == "ensemble":
            raise ConfigError("the ensemble runs the parents side by side and has no merged weights to place on "
                              "a plane")
        get_method(name, "diff-init")  # the plane holds different-init merges; names close matches if unknown
        try:
            specs.append((name, float(a) if a else alpha, bool(a)))
        except ValueError:
            raise ConfigError(f"--methods {item!r}: expected METHOD or METHOD@ALPHA") from None
    if alpha2 is not None:
        if len(specs) == 1:
            specs.append((specs[0][0], alpha2, True))
        elif specs[1][2]:
            raise ConfigError(f"--alpha2 and {methods[1]!r} both set the second merge's alpha")
        else:
            specs[1] = (specs[1][0], alpha2, True)
    return [(m, a) for m, a, _ in specs]


def merge_names(specs: list[tuple[str, float]], configs) -> list[str]:
    """A legend name per merge: the method, with its alpha where alpha matters or the method repeats."""
    from mudsc.errors import ConfigError

    counts = {m: sum(1 for s, _ in specs if s == m) for m, _ in specs}
    names = [f"{m} α={a:g}" if c.similarity == "dual" or counts[m] > 1 else m for (m, a), c in zip(specs, configs)]
    if len(set(names)) != len(names):
        raise ConfigError(f"the same merge is listed twice ({', '.join(names)}); give each merge a different "
                          "method or alpha")
    return names


def _progress_printer():
    """progress(done, total) that prints to stderr at every tenth of the grid."""
    last = [-1]

    def show(done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if tenth != last[0]:
            last[0] = tenth
            print(f"landscape: {done}/{total} grid points", file=sys.stderr, flush=True)
    return show


def _landscape(args: argparse.Namespace) -> int:
    import copy
    import time

    import torch

    from landscape import GridSpec, compute_landscape, evaluate_path, make_eval_set
    from landscape.frames import landscape_plan
    from landscape.plane import trainable_names
    from mudsc.diffinit.config import make_config
    from mudsc.diffinit.session import MergeSession
    from mudsc.errors import ConfigError

    out = Path(args.out)
    if out.suffix != ".npz":
        raise ConfigError(f"--out {args.out}: expected a .npz file")
    fig_fmt = Path(args.figure).suffix.lstrip(".") if args.figure else None
    if args.figure and fig_fmt not in FIGURE_FORMATS:
        raise ConfigError(f"--figure {args.figure}: expected a .html, .png, .svg or .pdf file")
    check_out(out, folder=False)
    check_out(args.figure, folder=False)
    if args.path_steps == 1 or args.path_steps < 0:
        raise ConfigError(f"--path-steps must be 0 (no barrier) or at least 2, got {args.path_steps}")
    if args.overlap <= 0:
        raise ConfigError(f"--overlap must be positive, got {args.overlap}")
    if args.cut != "full":
        raise ConfigError(f"--cut {args.cut}: partial zipping keeps per-task heads after the cut, so the merged trunk "
                          "and the heads are not one network in one basis and have no point on a loss-landscape "
                          "plane; use --cut full")
    specs = merge_specs(args.methods, alpha=args.alpha, alpha2=args.alpha2)
    configs = [make_config(method=m, alpha=a, cut=args.cut, reset_images=args.reset_images) for m, a in specs]
    names = merge_names(specs, configs)
    grid = GridSpec(args.grid, args.margin)
    kind = args.plane.replace("-", "_")
    if kind != "random" and len(specs) < 2:
        # A merge is the midpoint of its primed parents: one merge and its parents lie on one line.
        raise ConfigError(f"a {args.plane} plane needs a second merge: {names[0]} is the midpoint of its primed "
                          "parents, so the three are collinear; give a second method (or --alpha2)")

    t0 = time.perf_counter()
    launch = launch_of(args)  # under torchrun: statistics, BN resets and grid points sharded over the ranks
    specs = plain_specs(args, args.models, data_of(args), args.classes)
    session = MergeSession.from_paths(args.models, args.dataset, args.data_dir, data_img_size=args.data_img_size,
                                      stats_images=args.stats_images,
                                      device=args.device, specs=specs, launch=launch)
    check_inputs(args, args.models, session.data.fingerprint)
    results = [session.merge(c) for c in configs]
    plan = landscape_plan(session, results[0], plane=kind, others=results[1:], names=names, every_parent=True,
                          seed=args.seed)
    template = copy.deepcopy(results[0].model)
    coord_names = trainable_names(template)
    t_merge = time.perf_counter() - t0

    ev = make_eval_set(session.data, session.tasks, per_task=args.eval_images, calib_size=args.calib_images,
                       generator=torch.Generator().manual_seed(args.seed), device=session.device)
    autocast = {"auto": None, "float32": False, "bf16": True}[args.precision]
    t0 = time.perf_counter()
    result = compute_landscape(template, plan.models, plan.plane, ev, grid=grid, bn_mode=args.bn,
                               chunk_size=args.chunk_size, use_cache=not args.no_cache, roles=plan.roles,
                               stats_from=names[0], names=coord_names,
                               progress=_progress_printer() if launch.main else None,
                               method=args.method, autocast=autocast, launch=launch)
    t_grid = time.perf_counter() - t0
    if not launch.main:  # rank 0 evaluates the paths and writes the files
        return 0

    t0 = time.perf_counter()
    barriers = {}
    if args.path_steps:
        for name, triple in plan.triples.items():
            path = evaluate_path(template, [plan.models[lab] for lab in triple], ev, labels=list(triple),
                                 steps=args.path_steps, bn_mode=args.bn, stats=plan.models[names[0]],
                                 names=coord_names, chunk_size=args.chunk_size, task_names=result.task_names,
                                 method=args.method, autocast=autocast)
            barriers[name] = path.barriers()
    t_path = time.perf_counter() - t0

    chance = [math.log(len(t)) for t in session.tasks]
    thresholds = [args.overlap * c for c in chance]
    mask, share = result.overlap(thresholds)
    # Grid cells are square and equal: the overlap's area is its cell count times one cell.
    cell = float((result.xs[1] - result.xs[0]) * (result.ys[1] - result.ys[0]))
    vmax = args.vmax if args.vmax is not None else 1.5 * max(chance)
    result.settings.update({
        "parents": [str(p) for p in args.models],
        "merges": {n: r.config.model_dump(mode="json") for n, r in zip(names, results)},
        "exact_primed_parents": plan.exact, "groups": plan.groups, "segments": plan.segments,
        "barriers": barriers, "overlap": {"thresholds": thresholds, "share": share, "area": float(mask.sum()) * cell}})
    result.save(out)

    figures = {}
    if args.figure:
        from landscape.figure import write_figure  # plotly: only when a figure is asked for

        written = write_figure(result, Path(args.figure).with_suffix(""), formats=(fig_fmt,),
                               overlap_threshold=thresholds, vmax=vmax, groups=plan.groups,
                               segments=plan.segments)
        figures = {f: str(p) for f, p in written.paths.items()}
        figures["static_engine"] = written.static_engine

    summary = _summary(result, plan, barriers, thresholds, share, float(mask.sum()) * cell)
    summary.update({"out": str(out), "figure": figures,
                    "seconds": {"merge": round(t_merge, 2), "grid": round(t_grid, 2), "paths": round(t_path, 2)}})
    if args.json:
        print_json(summary)
    else:
        _print(summary)
    return 0


def _summary(result, plan, barriers: dict, thresholds: list[float], share: float, area: float) -> dict:
    models = []
    for i, lab in enumerate(result.model_labels):
        models.append({
            "label": lab, "role": result.model_roles[i], "merge": plan.groups[lab],
            "coords": [float(c) for c in result.model_coords[i]], "distance": float(result.model_distance[i]),
            "task_loss": {t: float(v) for t, v in zip(result.task_names, result.model_task_loss[i])},
            "task_acc": {t: float(v) for t, v in zip(result.task_names, result.model_task_acc[i])},
            "joint_loss": float(result.model_joint_loss[i]), "joint_acc": float(result.model_joint_acc[i])})
    info = result.settings.get("plane_info", {})
    return {"grid": [len(result.ys), len(result.xs)], "plane": info.get("kind"), "plane_info": info,
            "plane_models": list(result.settings.get("plane", {}).get("models", [])), "bn": result.bn_label,
            "precision": result.settings.get("precision"), "method": result.settings.get("method"),
            "complete": result.complete, "tasks": result.task_names, "models": models,
            "overlap": {"thresholds": thresholds, "share": share, "area": area}, "barriers": barriers,
            "exact_primed_parents": plan.exact}


def _print(s: dict) -> None:
    ny, nx = s["grid"]
    print(f"{s['plane']} plane, {ny}x{nx} grid, BN {s['bn']}, {s['precision']}; tasks: {', '.join(s['tasks'])}")
    for m in s["models"]:
        losses = ", ".join(f"{v:.3f}" for v in m["task_loss"].values())
        print(f"  {m['label']:<32} at ({m['coords'][0]:8.3f}, {m['coords'][1]:8.3f}), off plane {m['distance']:7.3f}; "
              f"task loss {losses}; joint acc {m['joint_acc']:.3f}")
    ov = s["overlap"]
    print(f"overlap (every task below {', '.join(f'{t:.3f}' for t in ov['thresholds'])}): "
          f"{100 * ov['share']:.1f}% of the grid, area {ov['area']:.3g}")
    for name, b in s["barriers"].items():
        print(f"barrier parent 0' -> {name} -> parent 1': mean task loss {b['mean']:.3f}, joint {b['joint']:.3f}")
    print(f"written: {s['out']}" + "".join(f", {p}" for f, p in s["figure"].items() if f != "static_engine"))
