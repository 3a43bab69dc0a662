"""``mudsc merge-same``: merge task models fine-tuned from one base, train the multitask upper bound,
or align different-init parents and fuse them in a task subspace.

* same-init (``--base`` and the task models fine-tuned from it): ``average``, ``task-arithmetic``,
  ``ties``, ``fisher``, ``regmean``, ``mats`` (:mod:`mudsc.sameinit`);
* ``multitask``: the body fine-tuned from ``--base`` on the union of the tasks (:mod:`mudsc.sameinit.multitask`);
* align-then-fuse (different-init parents, no ``--base``): ``ALIGN+FUSE`` with ALIGN one of
  ``permute``, ``rebasin``, ``mudsc-align`` and FUSE one of ``average``, ``fisher``, ``regmean``,
  ``mats`` (:mod:`mudsc.sameinit.hybrid`); ``ALIGN+average`` is the engine's plain alignment merge.

Parses, then merges through :class:`mudsc.sameinit.session.SameInitSession`, which writes
``OUT/task{i}.safetensors`` (the merged body with task i's own head) and ``OUT/manifest.json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mudsc.cli.common import (
    StageBars,
    add_arch_args,
    add_data_args,
    add_quiet_arg,
    bars_off,
    check_out,
    data_of,
    plain_specs,
    positive_int,
    print_json,
)


def register(sub: argparse._SubParsersAction) -> None:
    from mudsc.sameinit.config import OBJECTIVES

    p = sub.add_parser("merge-same", help="merge task models fine-tuned from one base (or align, then fuse)")
    p.add_argument("--base", help="the checkpoint the task models were fine-tuned from (not for ALIGN+FUSE)")
    p.add_argument("--models", nargs="+", help="task model checkpoints (.safetensors)")
    p.add_argument("--manifest", help="reproduce the merge a merge-same manifest.json describes (bit for bit on CPU)")
    p.add_argument("--method",
                   help="average, task-arithmetic, ties, fisher, regmean, mats, multitask, or ALIGN+FUSE "
                        "(permute|rebasin|mudsc-align + average|fisher|regmean|mats)")
    p.add_argument("--stats", nargs="+", help="statistics files written by `mudsc stats`, one per model "
                                               "(default: computed from --dataset when the method needs them)")
    add_data_args(p, required=False)
    p.add_argument("--classes", nargs="+", metavar="TASK", help="plain state dicts: each model's task, one per model")
    add_arch_args(p, per_parent=True)
    p.add_argument("--stats-examples", type=positive_int, default=1000,
                   help="training examples per task for statistics")
    p.add_argument("--fisher", choices=("sampled", "empirical"), default="sampled",
                   help="labels of the Fisher and K-FAC statistics: sampled (true Fisher) or the true labels")
    p.add_argument("--lambda", dest="lam", type=float,
                   help="task-arithmetic scale (and of the task-arithmetic init); TIES: scale of the merged vector")
    p.add_argument("--density", type=float, help="TIES: fraction of each task vector kept")
    p.add_argument("--regmean-alpha", type=float, help="off-diagonal scaling of Grams and K-FAC factors, in [0, 1]")
    p.add_argument("--objective", choices=OBJECTIVES, help="MaTS objective (default kfac)")
    p.add_argument("--cg-iterations", type=int, help="MaTS conjugate-gradient steps (default 10)")
    p.add_argument("--init", help="CG start and null-space fallback: average, task-arithmetic, base, zeros or a "
                                  "checkpoint FILE (default average)")
    p.add_argument("--damping", type=float, help="pull towards the init, relative to each layer's curvature")
    p.add_argument("--no-bn-reset", action="store_true",
                   help="keep the averaged BatchNorm statistics (default: recompute them on the tasks' images)")
    p.add_argument("--reset-images", type=int, default=1000, help="training images for the BatchNorm reset")
    p.add_argument("--epochs", type=positive_int,
                   help="multitask: epochs over the union (default: the task models' own)")
    p.add_argument("--lr", type=float, default=1e-3, help="multitask: learning rate")
    p.add_argument("--align-alpha", type=float, default=0.5, help="mudsc-align: weight share of the similarity")
    p.add_argument("--align-images", type=positive_int, default=1000, help="training images for activation statistics")
    p.add_argument("--seed", type=int, default=0, help="seeds example orders, sampled labels and training")
    p.add_argument("--batch-size", type=positive_int, default=250)
    p.add_argument("--eval-images", type=positive_int, help="held-out images to evaluate on (default: all)")
    p.add_argument("--out", required=True, help="output directory (task{i}.safetensors, manifest.json)")
    p.add_argument("--json", action="store_true", help="print per-task accuracy and the average as JSON")
    add_quiet_arg(p)
    p.set_defaults(func=_merge_same)


def _config(args: argparse.Namespace, method: str):
    from mudsc.sameinit.config import SameInitConfig
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


def _specs(args: argparse.Namespace) -> list[dict | None] | None:
    """Specs of plain task models (they need --dataset for the data set's geometry)."""
    if not args.arch:
        return None
    from mudsc.errors import ConfigError

    if not args.dataset:
        raise ConfigError("plain state dicts (--arch) need --dataset")
    return plain_specs(args, args.models, data_of(args), args.classes)


def _merge_same(args: argparse.Namespace) -> int:
    from mudsc.errors import ConfigError, UnknownNameError
    from mudsc.methods import ALIGNERS, FUSERS, get_method, names
    from mudsc.sameinit.config import MultitaskConfig
    from mudsc.sameinit.session import SameInitSession
    from mudsc.sameinit.subspace import INITS

    check_out(args.out, folder=True)
    if args.manifest:
        return _reproduce(args)
    if not args.models or not args.method:
        raise ConfigError("give --models and --method (or --manifest FILE to reproduce a merge)")
    method = args.method
    plain = names("same-init") + ("multitask",)
    hybrid = method in names("align-then-fuse")
    if method not in plain and not hybrid:
        raise UnknownNameError(f"unknown method {method!r}; choose one of {', '.join(plain)} "
                               f"or ALIGN+FUSE ({'|'.join(ALIGNERS)} + {'|'.join(FUSERS)})")
    if hybrid and args.base:
        raise ConfigError(f"{method} aligns different-init parents and takes no --base "
                          "(the base is the average of the aligned parents)")
    if not hybrid and not args.base:
        raise ConfigError(f"{method} needs --base, the checkpoint the task models were fine-tuned from")
    if hybrid and len(args.models) < 2:
        raise ConfigError(f"{method} needs at least 2 parents, got {len(args.models)}")
    if hybrid and args.stats:
        raise ConfigError(f"{method} computes statistics of the aligned parents; drop --stats")
    if args.init is not None and args.init not in INITS and not Path(args.init).is_file():
        raise ConfigError(f"--init {args.init!r} is neither one of {', '.join(INITS)} nor a checkpoint file")
    preset = get_method(method).preset
    config = None if method == "multitask" else _config(args, preset.get("fuse", method))
    session = SameInitSession.from_paths(
        args.models, base=args.base, dataset=args.dataset, data_dir=args.data_dir,
        data_img_size=args.data_img_size, stats=args.stats,
        init=None if args.init in (None, *INITS) else args.init, align=preset.get("align"),
        align_alpha=args.align_alpha, align_images=args.align_images, stats_examples=args.stats_examples,
        fisher=args.fisher, seed=args.seed, batch_size=args.batch_size, eval_images=args.eval_images,
        reset_bn=not args.no_bn_reset, reset_images=args.reset_images, device=args.device, specs=_specs(args))
    if config is None:  # default epochs: the task models' own
        epochs = args.epochs or max(int(i.get("epochs", 5)) for i in session.infos)
        config = MultitaskConfig(epochs=epochs, lr=args.lr, seed=args.seed)
    units = {"layers": "tensor", "BN reset": "img"}  # statistics stages count examples
    with StageBars(units, default="example", disable=bars_off(args)) as bars:
        result = session.merge(config, steps=bars)
    session.save(result, args.out)
    _report(args, method, result)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from mudsc.sameinit.manifest import read_manifest, reproduce

    result, _ = reproduce(read_manifest(args.manifest), args.out, device=args.device)
    _report(args, result.method, result)
    return 0


def _report(args: argparse.Namespace, method: str, result) -> None:
    metrics, before = result.metrics, result.before_bn_reset
    bad = [layer.keys[0] for layer in (result.report.layers if result.report else ()) if layer.diverged]
    if bad:  # the merge is written, but its numbers should not be trusted
        print(f"warning: CG diverged in {len(bad)} layer(s) ({', '.join(bad)}): the statistics give an "
              "indefinite system (corrupt or foreign statistics files?)", file=sys.stderr)
    if args.json:
        print_json({**result.summary(), "out": str(args.out)})
    else:
        for t, acc in zip(result.tasks, metrics.tasks):
            print(f"task {','.join(map(str, t))}: {100 * acc:.2f}%")
        bn = f" (before BatchNorm reset {100 * before.per_task:.2f}%)" if before is not None else ""
        print(f"{method}: average {100 * metrics.per_task:.2f}%{bn}, joint {100 * metrics.joint:.2f}%; "
              f"written to {args.out}")
