"""The ``mudsc`` command lines that reproduce what the app does: a merge, and (under torchrun) a
landscape or a sweep too big for one process."""
from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from landscape.cache import default_cache_dir
from mudsc.diffinit.config import MergeConfig
from mudsc.diffinit.session import MergeSession

# MergeConfig field -> `mudsc merge` option; booleans are written as their --no-* switch.
_VALUE_OPTIONS = {"method": "--method", "cut": "--cut", "alpha": "--alpha", "mix": "--mix",
                  "weight_metric": "--weight-metric", "zip_a": "--zip-a", "zip_b": "--zip-b",
                  "max_sweeps": "--max-sweeps", "patience": "--patience", "seed": "--seed",
                  "reset_images": "--reset-images", "stats_positions": "--stats-positions"}
_SWITCHES = {"groups": "--no-groups", "reset_bn": "--no-bn-reset"}


def manifest_command(manifest: str = "manifest.json", out: str = "merged") -> str:
    """The command that redoes a merge from its manifest (parents checked by sha256)."""
    return shlex.join(["mudsc", "merge", "--manifest", manifest, "--out", out])


def merge_command(config: MergeConfig, *, parents: Sequence[str], dataset: str, data_dir: str | None = None,
                  data_img_size: int | None = None, stats_images: int = 1000, eval_images: int | None = None,
                  batch_size: int = 250,
                  out: str = "merged") -> str:
    """The full ``mudsc merge --parents ... --method ...`` command for `config`.

    Options equal to MergeConfig's defaults (and the CLI's session defaults) are left out, so the
    command shows what differs from a plain merge.
    """
    argv = ["mudsc", "merge", *_session_argv(parents, dataset, data_dir, data_img_size, stats_images, eval_images,
                                             batch_size),
            *_config_argv(config, skip=()), "--out", out]
    return shlex.join(argv)


def sweep_command(config: MergeConfig, *, parents: Sequence[str], dataset: str, data_dir: str | None = None,
                  data_img_size: int | None = None, stats_images: int = 1000, eval_images: int | None = None,
                  batch_size: int = 250,
                  alphas: Sequence[float] | None = None, cuts: Sequence[str] | None = None,
                  out: str = "sweep") -> str:
    """``mudsc sweep`` over `alphas` or `cuts` around `config`: the rows the Merge page's sweep shows."""
    argv = ["mudsc", "sweep", *_session_argv(parents, dataset, data_dir, data_img_size, stats_images, eval_images,
                                             batch_size),
            "--methods", config.method, *_config_argv(config, skip=("method", "alpha" if alphas else "", "cut"))]
    if alphas:
        argv += ["--alphas", *map(str, alphas)]
    argv += ["--cuts", *cuts] if cuts else ["--cuts", config.cut]
    return shlex.join([*argv, "--out", out])


def landscape_command(config: MergeConfig, *, others: Sequence[str], parents: Sequence[str], dataset: str,
                      data_dir: str | None = None, data_img_size: int | None = None, stats_images: int = 1000,
                      plane: str = "three_point",
                      resolution: int = 21, bn: str = "exact", per_task: int = 500, out: str = "landscape.npz") -> str:
    """``mudsc landscape`` of the merge `config` and the merges of the `others` methods at its alpha
    (the command's merges take every other knob at its default)."""
    argv = ["mudsc", "landscape", "--models", *map(str, parents), *_data_argv(dataset, data_dir, data_img_size)]
    argv += ["--methods", config.method, *others, "--alpha", str(config.alpha), "--plane", plane.replace("_", "-"),
             "--grid", str(resolution), "--bn", bn, "--eval-images", str(per_task), "--stats-images",
             str(stats_images), "--reset-images", str(config.reset_images), "--out", out]
    return shlex.join(argv)


def torchrun_command(command: str, *, nproc: int, nnodes: int = 1) -> str:
    """A ``mudsc ...`` command line as the job ``torchrun --nproc-per-node K -m mudsc ...``."""
    head = ["torchrun", f"--nproc-per-node={nproc}"]
    if nnodes > 1:
        head += [f"--nnodes={nnodes}", "--node-rank=RANK_OF_THIS_NODE", "--rdzv-backend=c10d",
                 "--rdzv-endpoint=HOST_OF_NODE_0:29500"]
    argv = shlex.split(command)
    if argv[:1] != ["mudsc"]:
        raise ValueError(f"torchrun_command: expected a mudsc command line, got {command[:40]!r}")
    return shlex.join([*head, "-m", "mudsc", *argv[1:]])


@dataclass(frozen=True)
class TorchrunJob:
    """A torchrun command line and the file its rank 0 writes when it finishes."""

    command: str
    result: Path


def default_nproc() -> int:
    """Ranks for one node: one per GPU, else two CPU ranks."""
    import torch

    return torch.cuda.device_count() or 2


def _landing(kind: str, command: str, suffix: str) -> Path:
    """``$MUDSC_HOME/torchrun/KIND-<sha of the command>SUFFIX``: one file per distinct job."""
    tag = hashlib.sha256(command.encode()).hexdigest()[:16]
    return default_cache_dir().parent / "torchrun" / f"{kind}-{tag}{suffix}"


def _job(kind: str, command: str, suffix: str, nproc: int | None) -> TorchrunJob:
    """`command` with its ``--out`` where the job's result lands, as a torchrun job."""
    path = _landing(kind, command, suffix)
    argv = shlex.split(command)
    argv[argv.index("--out") + 1] = str(path if suffix == ".npz" else path.with_suffix(""))
    return TorchrunJob(torchrun_command(shlex.join(argv), nproc=nproc or default_nproc()), path)


def landscape_job(session: MergeSession, config: MergeConfig, *, others: Sequence[str], plane: str,
                  resolution: int, bn: str, per_task: int, nproc: int | None = None) -> TorchrunJob | None:
    """The ``mudsc landscape`` job of the Landscape page's choices (each merge with its own primed
    parents; a three-point plane through the first other merge), or None for parents not opened
    from files."""
    if not session.paths:
        return None
    cmd = landscape_command(config, others=others, parents=session.paths, dataset=session.data.reload_name,
                            data_dir=session.data_dir, data_img_size=session.data.resized_to,
                            stats_images=session.stats_images, plane=plane,
                            resolution=resolution, bn=bn, per_task=per_task, out="landscape.npz")
    return _job("landscape", cmd, ".npz", nproc)


def sweep_job(session: MergeSession, config: MergeConfig, *, alphas: Sequence[float] | None = None,
              cuts: Sequence[str] | None = None, nproc: int | None = None) -> TorchrunJob | None:
    """The ``mudsc sweep`` job of one of the Merge page's sweeps (its rows land in ``PREFIX.json``)."""
    if not session.paths:
        return None
    cmd = sweep_command(config, parents=session.paths, dataset=session.data.reload_name, data_dir=session.data_dir,
                        data_img_size=session.data.resized_to,
                        stats_images=session.stats_images, eval_images=len(session.eval),
                        batch_size=session.batch_size, alphas=alphas, cuts=cuts, out="sweep")
    return _job("sweep", cmd, ".json", nproc)


def _data_argv(dataset: str, data_dir: str | None, data_img_size: int | None) -> list[str]:
    argv = ["--dataset", dataset]
    if data_dir:
        argv += ["--data-dir", str(data_dir)]
    if data_img_size is not None:
        argv += ["--data-img-size", str(data_img_size)]
    return argv


def _session_argv(parents: Sequence[str], dataset: str, data_dir: str | None, data_img_size: int | None,
                  stats_images: int, eval_images: int | None, batch_size: int) -> list[str]:
    argv = ["--parents", *map(str, parents), *_data_argv(dataset, data_dir, data_img_size)]
    if stats_images != 1000:
        argv += ["--stats-images", str(stats_images)]
    if eval_images is not None:
        argv += ["--eval-images", str(eval_images)]
    if batch_size != 250:
        argv += ["--batch-size", str(batch_size)]
    return argv


def _config_argv(config: MergeConfig, *, skip: Sequence[str]) -> list[str]:
    """`config`'s options that differ from the defaults (the method always), but those in `skip`."""
    default = MergeConfig()
    argv = []
    for field, option in _VALUE_OPTIONS.items():
        value = getattr(config, field)
        if field not in skip and (field == "method" or value != getattr(default, field)):
            argv += [option, str(value)]  # str(float) round-trips exactly
    for space, alpha in config.alpha_overrides:
        argv += ["--alpha-for", f"{space}={alpha}"]
    for field, switch in _SWITCHES.items():
        if not getattr(config, field):
            argv.append(switch)
    return argv
