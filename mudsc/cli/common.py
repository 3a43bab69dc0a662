"""Argument helpers and progress bars shared by the sub-commands."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, Callable, Iterator

from mudsc.errors import ConfigError


@contextlib.contextmanager
def launched(args: argparse.Namespace) -> Iterator[None]:
    """Run a command as this process's part of its launch (``args.launch``, see :mod:`mudsc.distributed`).

    Under torchrun every rank must have been given the same command line (refused otherwise), takes
    its local device, and only rank 0 prints to stdout and draws progress bars.
    """
    from mudsc.distributed import digest, launch_from_env

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


def add_model_task_args(p: argparse.ArgumentParser, *, classes_help: str) -> None:
    """One checkpoint, the data set and a task of it (``--classes``, default the model's own)."""
    p.add_argument("--model", required=True, help="checkpoint (.safetensors)")
    add_data_args(p)
    p.add_argument("--classes", help=classes_help)


def load_model_task(args: argparse.Namespace):
    """``(model, data set, task classes)`` named by :func:`add_model_task_args`' options."""
    from mudsc.data import load_dataset, parse_classes
    from mudsc.models.checkpoint import load_model

    model, _ = load_model(args.model)
    data = load_dataset(args.dataset, args.data_dir)
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


def progress_bar(desc: str, *, unit: str = "step", disable: bool = False):
    """A tqdm bar on stderr and its ``update(done, total, loss=None)`` callback; tqdm writes to stderr
    even when it is no terminal, so scripts silence it with ``disable``."""
    from tqdm import tqdm

    bar = tqdm(total=None, desc=desc, unit=unit, leave=False, disable=disable)

    def update(done: int, total: int, loss: float | None = None) -> None:
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
            self._bar, self._update = progress_bar(stage, unit=self.units.get(stage, self.default), disable=self.disable)
        self._update(done, total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._stage = self._bar = self._update = None

    def __enter__(self) -> "StageBars":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
