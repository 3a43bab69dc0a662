"""The ``mudsc merge`` command lines that reproduce a merge made in the app."""
from __future__ import annotations

import shlex
from typing import Sequence

from mudsc.diffinit.config import MergeConfig

# MergeConfig field -> `mudsc merge` option; booleans are written as their --no-* switch.
_VALUE_OPTIONS = {"method": "--method", "cut": "--cut", "alpha": "--alpha", "mix": "--mix",
                  "weight_metric": "--weight-metric", "zip_a": "--zip-a", "zip_b": "--zip-b",
                  "max_sweeps": "--max-sweeps", "patience": "--patience", "seed": "--seed",
                  "reset_images": "--reset-images"}
_SWITCHES = {"groups": "--no-groups", "reset_bn": "--no-bn-reset"}


def manifest_command(manifest: str = "manifest.json", out: str = "merged") -> str:
    """The command that redoes a merge from its manifest (parents checked by sha256)."""
    return shlex.join(["mudsc", "merge", "--manifest", manifest, "--out", out])


def merge_command(config: MergeConfig, *, parents: Sequence[str], dataset: str, data_dir: str | None = None,
                  stats_images: int = 1000, eval_images: int | None = None, batch_size: int = 250,
                  out: str = "merged") -> str:
    """The full ``mudsc merge --parents ... --method ...`` command for `config`.

    Options equal to MergeConfig's defaults (and the CLI's session defaults) are left out, so the
    command shows what differs from a plain merge.
    """
    default = MergeConfig()
    argv = ["mudsc", "merge", "--parents", *map(str, parents), "--dataset", dataset]
    if data_dir:
        argv += ["--data-dir", str(data_dir)]
    if stats_images != 1000:
        argv += ["--stats-images", str(stats_images)]
    if eval_images is not None:
        argv += ["--eval-images", str(eval_images)]
    if batch_size != 250:
        argv += ["--batch-size", str(batch_size)]
    for field, option in _VALUE_OPTIONS.items():
        value = getattr(config, field)
        if field == "method" or value != getattr(default, field):
            argv += [option, str(value)]  # str(float) round-trips exactly
    for space, alpha in config.alpha_overrides:
        argv += ["--alpha-for", f"{space}={alpha}"]
    for field, switch in _SWITCHES.items():
        if not getattr(config, field):
            argv.append(switch)
    argv += ["--out", out]
    return shlex.join(argv)
