"""``mudsc merge-same``: merge task models fine-tuned from one base, train the multitask upper bound,
or align different-init parents and fuse them in a task subspace.

* same-init (``--base`` and the task models fine-tuned from it): ``average``, ``task-arithmetic``,
  ``ties``, ``fisher``, ``regmean``, ``mats`` (:mod:`mudsc.sameinit`);
* ``multitask``: the body fine-tuned from ``--base`` on the union of the tasks (:mod:`mudsc.multitask`);
* align-then-fuse (different-init parents, no ``--base``): ``ALIGN+FUSE`` with ALIGN one of
  ``permute``, ``rebasin``, ``mudsc-align`` and FUSE one of ``average``, ``fisher``, ``regmean``,
  ``mats`` (:mod:`mudsc.hybrid`); ``ALIGN+average`` is the engine's plain alignment merge.

Writes ``OUT/task{i}.safetensors`` (the merged body with task i's own head) and ``OUT/manifest.json``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mudsc.cli.common import add_data_args, print_json


def register(sub: argparse._SubParsersAction) -> None:
    from mudsc.sameinit.merge import OBJECTIVES

    p = sub.add_parser("merge-same", help="merge task models fine-tuned from one base (or align, then fuse)")
    p.add_argument("--base", help="the checkpoint the task models were fine-tuned from (not for ALIGN+FUSE)")
    p.add_argument("--models", nargs="+", required=True, help="task model checkpoints (.safetensors)")
    p.add_argument("--method", required=True,
                   help="average, task-arithmetic, ties, fisher, regmean, mats, multitask, or ALIGN+FUSE "
                        "(permute|rebasin|mudsc-align + average|fisher|regmean|mats)")
    p.add_argument("--stats", nargs="+", help="statistics files written by `mudsc stats`, one per model "
                                               "(default: computed from --dataset when the method needs them)")
    add_data_args(p, required=False)
    p.add_argument("--stats-examples", type=int, default=1000, help="training examples per task for statistics")
    p.add_argument("--fisher", choices=("sampled", "empirical"), default="sampled",
                   help="labels of the Fisher and K-FAC statistics: sampled (true Fisher) or the true labels")
    p.add_argument("--lambda", dest="lam", type=float,
                   help="task-arithmetic scale (and of the task-arithmetic init); TIES: scale of the merged vector")
    p.add_argument("--density", type=float, help="TIES: fraction of each task vector kept")
    p.add_argument("--regmean-alpha", type=float, help="off-diagonal scaling of Grams and K-FAC factors, in [0, 1]")
    p.add_argument("--objective", choices=OBJECTIVES, help="MaTS objective (default kfac)")
    p.add_argument("--cg-iterations", type=int, help="MaTS conjugate-gradient steps (default 100)")
    p.add_argument("--init", help="CG start and null-space fallback: average, task-arithmetic, base, zeros or a "
                                  "checkpoint FILE (default average)")
    p.add_argument("--damping", type=float, help="pull towards the init, relative to each layer's curvature")
    p.add_argument("--no-bn-reset", action="store_true",
                   help="keep the averaged BatchNorm statistics (default: recompute them on the tasks' images)")
    p.add_argument("--reset-images", type=int, default=1000, help="training images for the BatchNorm reset")
    p.add_argument("--epochs", type=int, help="multitask: epochs over the union (default: the task models' own)")
    p.add_argument("--lr", type=float, default=1e-3, help="multitask: learning rate")
    p.add_argument("--align-alpha", type=float, default=0.5, help="mudsc-align: weight share of the similarity")
    p.add_argument("--align-images", type=int, default=1000, help="training images for activation statistics")
    p.add_argument("--seed", type=int, default=0, help="seeds example orders, sampled labels and training")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--eval-images", type=int, help="held-out images to evaluate on (default: all)")
    p.add_argument("--out", required=True, help="output directory (task{i}.safetensors, manifest.json)")
    p.add_argument("--json", action="store_true", help="print per-task accuracy and the average as JSON")
    p.set_defaults(func=_merge_same)


def _config(args: argparse.Namespace, method: str):
    from mudsc.sameinit.merge import SameInitConfig
    from mudsc.sameinit.subspace import INITS

    opts: dict = {"method": method}
    if args.lam is not None:
        opts["ties_lambda" if method == "ties" else "lam"] = args.lam
    for name, key in (("density", "ties_density"), ("regmean_alpha", "alpha"), ("objective", "objective"),
                      ("cg_iterations", "iterations"), ("damping", "damping")):
        if getattr(args, name) is not None:
            opts[key] = getattr(args, name)
    if args.init in INITS:
        opts["init"] = args.init
    return SameInitConfig(**opts)


def _dataset(args: argparse.Namespace, models, infos):
    from mudsc.data import load_dataset
    from mudsc.errors import CheckpointError, ConfigError

    name = args.dataset or (infos[0].get("dataset") or {}).get("name")
    if not name:
        raise ConfigError("give --dataset (the task models do not record theirs)")
    data = load_dataset(name, args.data_dir)
    for m, info in zip(models, infos):
        spec = info["spec"]
        if (spec["in_chans"], spec["img_size"]) != (data.in_chans, data.img_size):
            raise CheckpointError(f"a task model takes {spec['in_chans']}x{spec['img_size']}px images, "
                                  f"{data.name} has {data.in_chans}x{data.img_size}px")
    return data


def _file(path) -> dict:
    from mudsc.models.checkpoint import sha256_file

    return {"path": str(path), "sha256": sha256_file(path)}


def _stats(args: argparse.Namespace, inputs: dict) -> list:
    from mudsc.errors import CheckpointError, ConfigError
    from mudsc.sameinit.taskstats import load_stats

    if len(args.stats) != len(args.models):
        raise ConfigError(f"--stats gives {len(args.stats)} files for {len(args.models)} models; give one per model")
    stats = [load_stats(s) for s in args.stats]
    inputs["stats"] = [_file(s) for s in args.stats]
    for s, f, m in zip(stats, inputs["stats"], inputs["models"]):
        recorded = s.metadata.get("model_sha256")
        if recorded and recorded != m["sha256"]:
            raise CheckpointError(f"statistics {f['path']} were computed for another model than {m['path']}")
    return stats


def _merge_same(args: argparse.Namespace) -> int:
    import time

    from mudsc import __version__
    from mudsc.errors import CheckpointError, ConfigError, UnknownNameError
    from mudsc.sameinit.hybrid import HYBRIDS, align_parents, average_state_dict, split_hybrid
    from mudsc.models.checkpoint import load_model, read_state_dict
    from mudsc.sameinit.multitask import train_multitask
    from mudsc.sameinit.merge import METHODS, check_bodies
    from mudsc.sameinit.run import (body_of, evaluate_task_models, merge_task_models, reset_bn_, task_statistics,
                                write_result)
    from mudsc.sameinit.subspace import INITS

    method = args.method
    valid = METHODS + ("multitask",) + HYBRIDS
    if method not in valid:
        raise UnknownNameError(f"unknown method {method!r}; choose one of {', '.join(METHODS + ('multitask',))} "
                               "or ALIGN+FUSE (permute|rebasin|mudsc-align + average|fisher|regmean|mats)")
    hybrid = method in HYBRIDS
    if hybrid and args.base:
        raise ConfigError(f"{method} aligns different-init parents and takes no --base "
                          "(the base is the average of the aligned parents)")
    if not hybrid and not args.base:
        raise ConfigError(f"{method} needs --base, the checkpoint the task models were fine-tuned from")
    if hybrid and len(args.models) < 2:
        raise ConfigError(f"{method} needs at least 2 parents, got {len(args.models)}")
    if hybrid and args.stats:
        raise ConfigError(f"{method} computes statistics of the aligned parents; drop --stats")
    loaded = [load_model(p) for p in args.models]
    models, infos = [m for m, _ in loaded], [i for _, i in loaded]
    inputs: dict = {"models": [{**_file(p), "task": list(m.classes)} for p, m in zip(args.models, models)]}
    base_sd = None
    if args.base:
        base_model, _ = load_model(args.base)
        inputs["base"] = _file(args.base)
        for p, info in zip(args.models, infos):
            recorded = (info.get("base") or {}).get("sha256")
            if recorded and recorded != inputs["base"]["sha256"]:
                raise CheckpointError(f"{p} was fine-tuned from another base than {args.base} (sha256 differs)")
        base_sd = base_model.state_dict()
        check_bodies(base_sd, [m.state_dict() for m in models])
    data = _dataset(args, models, infos)
    manifest: dict = {"method": method, "version": __version__, "dataset": data.describe()}
    timings: dict[str, float] = {}
    report = None
    t0 = time.perf_counter()
    if method == "multitask":
        epochs = args.epochs or max(int(i.get("epochs", 5)) for i in infos)
        merged = train_multitask(models, body_of(base_sd), data, epochs=epochs, lr=args.lr, seed=args.seed,
                                 device=args.device)
        manifest["config"] = {"method": method, "epochs": epochs, "lr": args.lr, "seed": args.seed}
        timings["train"] = time.perf_counter() - t0
    else:
        config = _config(args, split_hybrid(method)[1] if hybrid else method)
        if hybrid:
            alignment = align_parents(models, data, method=split_hybrid(method)[0], alpha=args.align_alpha,
                                      stats_images=args.align_images, batch_size=args.batch_size, seed=args.seed,
                                      device=args.device)
            models = alignment.models
            base_sd = average_state_dict([m.state_dict() for m in models])
            manifest["alignment"] = alignment.to_dict()
            timings["align"] = time.perf_counter() - t0
        init_sd = None
        if args.init is not None and args.init not in INITS:
            if not Path(args.init).is_file():
                raise ConfigError(f"--init {args.init!r} is neither one of {', '.join(INITS)} nor a checkpoint file")
            init_sd = read_state_dict(args.init)[0]
            inputs["init"] = _file(args.init)
        stats = None
        t1 = time.perf_counter()
        if args.stats:
            stats = _stats(args, inputs)
        elif config.needs_stats:
            stats = task_statistics(models, data, examples=args.stats_examples, fisher=args.fisher, seed=args.seed,
                                    device=args.device, parts=config.stat_parts)
            inputs["stats"] = {"computed": {"examples": args.stats_examples, "fisher": args.fisher,
                                            "seed": args.seed, "split": "train", "parts": list(config.stat_parts)}}
            timings["stats"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        merged, report = merge_task_models(base_sd, models, stats, config=config, init=init_sd, device=args.device)
        timings["merge"] = time.perf_counter() - t1
        manifest["config"] = config.to_dict()
    before = None
    has_bn = any(k.endswith("running_var") for k in body_of(merged[0].state_dict()))
    if method != "multitask" and not args.no_bn_reset and has_bn:
        before = evaluate_task_models(merged, data, batch_size=args.batch_size, eval_images=args.eval_images,
                                      device=args.device)
        t1 = time.perf_counter()
        reset_bn_(merged, data, images=args.reset_images, batch_size=args.batch_size, seed=args.seed,
                  device=args.device)
        timings["bn_reset"] = time.perf_counter() - t1
    metrics = evaluate_task_models(merged, data, batch_size=args.batch_size, eval_images=args.eval_images,
                                   device=args.device)
    tasks = [list(m.classes) for m in merged]
    result = {"method": method, "tasks": tasks, **metrics.as_dict()}
    if before is not None:
        result["before_bn_reset"] = before.as_dict()
    residuals = [r.residual for r in report.layers if r.residual is not None] if report else []
    manifest.update(inputs=inputs, metrics=result, timings={k: round(v, 4) for k, v in timings.items()},
                    bn_reset={"applied": before is not None, "images": args.reset_images if before else 0},
                    layers=report.to_dict()["layers"] if report else [],
                    max_residual=max(residuals) if residuals else None)
    write_result(args.out, merged, manifest)
    if args.json:
        print_json({**result, "out": str(args.out)})
    else:
        for t, acc in zip(tasks, metrics.tasks):
            print(f"task {','.join(map(str, t))}: {100 * acc:.2f}%")
        bn = f" (before BatchNorm reset {100 * before.per_task:.2f}%)" if before is not None else ""
        print(f"{method}: average {100 * metrics.per_task:.2f}%{bn}, joint {100 * metrics.joint:.2f}%; "
              f"written to {args.out}")
    return 0
