"""Argument helpers and progress bars shared by the sub-commands."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, Callable, Iterator

from mudsc.errors import ConfigError


def positive_int(text: str) -> int:
    """argparse type of a count (images, batch size, epochs, widths): an int of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@contextlib.contextmanager
def launched(args: argparse.Namespace) -> Iterator[None]:
    """Run a command as this process's part of its launch (``args.launch``, see :mod:`mudsc.distributed`).

    Under torchrun every rank must have been given the same command line (refused otherwise), takes
    its local device, and only rank 0 prints to stdout and draws progress bars.
    """
    from mudsc.device import default_device
    from mudsc.distributed import digest, launch_from_env

    default_device(getattr(args, "device", None))  # a device this machine lacks is refused before any work
    with launch_from_env(args.device) as launch:
        args.launch = launch
        if not launch.distributed:
            yield
            return
        line = {k: v for k, v in vars(args).items() if k not in ("func", "launch")}
        launch.check_same("command lines", digest(line))
        args.device = str(launch.device(args.device))
        if launch.main:
            yield
            return
        args.quiet = True
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            yield


def check_out(path: str | os.PathLike | None, *, folder: bool) -> None:
    """Refuse an output that cannot be written before the work it would save: `path` is the output
    folder itself (`folder`) or a file or prefix in its folder. The folder is made if missing."""
    from pathlib import Path

    from mudsc.atomic import output_dir

    if path:
        output_dir(path if folder else Path(path).parent)


def launch_of(args: argparse.Namespace):
    """The command's :class:`~mudsc.distributed.Launch` (one process where no :func:`launched` set it)."""
    from mudsc.distributed import Launch

    return getattr(args, "launch", None) or Launch()


def check_inputs(args: argparse.Namespace, paths: list[str], data_fingerprint: str) -> None:
    """Under torchrun: refuse a job whose ranks read different checkpoint files or data."""
    launch = launch_of(args)
    if launch.distributed:
        from mudsc.distributed import digest
        from mudsc.models.checkpoint import sha256_file

        launch.check_same("checkpoints and data", digest([sha256_file(p) for p in paths], data_fingerprint))


def rank_prefix(args: argparse.Namespace) -> str:
    """``'rank 1 of 4: '`` for an error of a torchrun job's rank, else nothing."""
    launch = getattr(args, "launch", None)
    return f"rank {launch.rank} of {launch.world}: " if launch is not None and launch.distributed else ""


def parse_kw(items: list[str] | None) -> dict[str, Any]:
    """``['img_size=28', 'norm=gn']`` -> ``{'img_size': 28, 'norm': 'gn'}`` (JSON values, else strings)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--kw {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def add_data_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--dataset", required=required, help="digits, mnist, cifar10, cifar100, imagefolder, npz "
                   "(or a path)")
    p.add_argument("--data-dir", help="data directory or file (default for mnist and cifar: $MUDSC_DATA)")
    p.add_argument("--data-img-size", type=positive_int, metavar="N", help="load the data set at N x N: every image's "
                   "shorter side resized to N, then centre-cropped (torchvision Resize + CenterCrop), before "
                   "normalising; needed for an ImageFolder of mixed sizes. Every parent sees these images "
                   "(unlike a parent's --img-size, which resizes inside that parent only)")


def data_of(args: argparse.Namespace):
    """The :class:`~mudsc.data.Dataset` that :func:`add_data_args`' options name."""
    from mudsc.data import load_dataset

    return load_dataset(args.dataset, args.data_dir, img_size=args.data_img_size)


ARCH_HELP = ("architecture of plain state dicts: path/to/models.py:FUNCTION or package.module:FUNCTION (your "
             "code, called with the --kw options; importing it RUNS it, so name only code you trust), "
             "torchvision:NAME or timm:NAME (--kw pretrained_file=PATH: timm weights from a local file); "
             "ignored for mudsc checkpoints, which describe themselves")


def add_arch_args(p: argparse.ArgumentParser, *, per_parent: bool) -> None:
    """How to read plain state dicts: the architecture, its options and each parent's preprocessing."""
    each = " (one for all parents, or one per parent)" if per_parent else ""
    n = "+" if per_parent else None
    p.add_argument("--arch", help=ARCH_HELP)
    p.add_argument("--kw", action="append", metavar="KEY=VALUE", help="architecture option (repeatable)")
    p.add_argument("--mean", nargs=n, metavar="M[,M,M]", help="the parent's Normalize mean per channel, on pixels "
                   f"in [0, 1] (torchvision convention){each}; default: the data set's own normalisation")
    p.add_argument("--std", nargs=n, metavar="S[,S,S]", help=f"the parent's Normalize std per channel{each}")
    p.add_argument("--img-size", nargs=n, type=positive_int, metavar="N",
                   help=f"resize the shorter side to N and centre-crop N x N{each}")
    p.add_argument("--class-embeddings", metavar="FILE", help="[num_classes, d] class embeddings (.safetensors or "
                   ".npy, e.g. CLIP text embeddings): the network emits d-dim embeddings scored by cosine, and "
                   "parents share one output space")


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{what} {text!r}: expected numbers separated by commas") from None


def plain_specs(args: argparse.Namespace, paths: list[str], data, classes: list[str] | None) -> list[dict | None]:
    """Per parent, the spec its plain state dict loads with (None for mudsc checkpoints), from
    :func:`add_arch_args`' options and the parents' tasks `classes`."""
    from mudsc.data import parse_classes
    from mudsc.models.plain import plain_specs as specs

    def listed(v):
        return None if v is None else v if isinstance(v, list) else [v]

    per = {k: listed(getattr(args, k.replace("-", "_"), None)) for k in ("mean", "std", "img-size")}
    for k, v in per.items():
        if v is not None and len(v) not in (1, len(paths)):
            raise ConfigError(f"--{k} gives {len(v)} values for {len(paths)} parents; give one, or one per parent")
    mean = [_floats(v, "mean") for v in per["mean"]] if per["mean"] else None
    std = [_floats(v, "std") for v in per["std"]] if per["std"] else None
    tasks = [parse_classes(c, data.num_classes) for c in classes] if classes else None
    return specs(list(map(str, paths)), data.describe(), arch=args.arch, classes=tasks, kwargs=parse_kw(args.kw),
                 mean=mean, std=std, img_size=per["img-size"], class_embeddings=args.class_embeddings)


def add_model_task_args(p: argparse.ArgumentParser, *, classes_help: str) -> None:
    """One checkpoint, the data set and a task of it (``--classes``, default the model's own)."""
    p.add_argument("--model", required=True, help="checkpoint (.safetensors, or a plain .pt/.pth with --arch)")
    add_data_args(p)
    p.add_argument("--classes", help=classes_help + "; for a plain state dict, the task its last layer classifies")
    add_arch_args(p, per_parent=False)


def load_model_task(args: argparse.Namespace):
    """``(model, data set, task classes)`` named by :func:`add_model_task_args`' options."""
    from mudsc.data import parse_classes
    from mudsc.models.checkpoint import load_model

    data = data_of(args)
    spec = plain_specs(args, [args.model], data, [args.classes] if args.classes else None)[0]
    model, _ = load_model(args.model, spec=spec)
    classes = parse_classes(args.classes, data.num_classes) if args.classes else tuple(model.classes)
    return model, data, classes


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, sort_keys=True, default=float))


def print_record(rec: dict, classes: str, *, as_json: bool) -> None:
    """A trained or fine-tuned parent's record: JSON, or one line with its held-out accuracy."""
    if as_json:
        print_json(rec)
    else:
        print(f"{rec['path']}: accuracy {rec['accuracy']:.4f} on task {classes} "
              f"({rec['dataset']['name']} held-out), {rec['train_seconds']:.1f} s")


def add_quiet_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars on stderr")


def bars_off(args: argparse.Namespace) -> bool:
    """``--quiet``, or ``--json`` into a pipe: a script reading the JSON wants a clean stderr too."""
    return bool(getattr(args, "quiet", False) or (getattr(args, "json", False) and not sys.stdout.isatty()))


def progress_bar(desc: str, *, unit: str = "step", disable: bool = False, total: int | None = None):
    """A tqdm bar on stderr and its ``update(done, total, loss=None)`` callback; tqdm writes to stderr
    even when it is no terminal, so scripts silence it with ``disable``."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, leave=False, disable=disable)

    def update(done: int, total: int, loss: float | None = None) -> None:
        if (done, total, loss) == (bar.n, bar.total, None):
            return  # a stage's start, which the bar showed when it opened
        bar.total = total
        bar.n = done
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.refresh()

    return bar, update


class StageBars:
    """The engine's ``steps(stage, done, total)`` callback as one bar per stage, each closed when the
    next stage starts; ``units`` names what each stage counts (others count ``default``). A context
    manager closes the last one."""

    def __init__(self, units: dict[str, str], *, default: str = "step", disable: bool = False) -> None:
        self.units, self.default, self.disable = units, default, disable
        self._stage: str | None = None
        self._bar = None
        self._update: Callable[..., None] | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar, self._update = progress_bar(stage, unit=self.units.get(stage, self.default),
                                                   disable=self.disable, total=total)
        self._update(done, total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._stage = self._bar = self._update = None

    def __enter__(self) -> "StageBars":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
