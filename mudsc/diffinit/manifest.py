"""Reproducible export: the merged checkpoint and a manifest that reproduces the merge from the CLI.

``DIR/model.safetensors`` is self-describing (single- or multi-head); ``DIR/manifest.json`` holds the
MergeConfig, the parents with their sha256, the data set with its fingerprint, the session settings,
versions, seeds, metrics, timings and the transform of every unit space.
"""
from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch

from mudsc import __version__
from mudsc.atomic import atomic_path, output_dir
from mudsc.data import reload_name
from mudsc.diffinit.config import MergeConfig
from mudsc.diffinit.session import MergeResult, MergeSession
from mudsc.distributed import Launch
from mudsc.errors import CheckpointError, ConfigError
from mudsc.models.checkpoint import META_KEY, safetensors_bytes
from mudsc.models.plain import check_record, file_record

MANIFEST_VERSION = 1


def result_summary(result: MergeResult, session: MergeSession) -> dict[str, Any]:
    """The numbers a merge is judged by: joint/per-task/each-task accuracy, parents, ensemble, cost."""
    from mudsc.diffinit.config import make_config

    ens = session.merge(make_config(method="ensemble"))
    return {
        **result.metrics.as_dict(),
        "ensemble": {**ens.metrics.as_dict(), "params": ens.params, "flops": ens.flops},
        "parents": session.parent_metrics(),
        "params": result.params,
        "flops": result.flops,
        "timings": {**{k: round(v, 4) for k, v in session.timings.items()},
                    **{k: round(v, 4) for k, v in result.timings.items()}},
        "sweeps": result.solution.sweeps if result.solution else 0,
        "score_history": result.solution.history if result.solution else [],
    }


def save_merge(result: MergeResult, session: MergeSession, out_dir: str | Path) -> dict[str, Any]:
    """Write ``model.safetensors`` and ``manifest.json`` into `out_dir`; returns the manifest.

    Both files are written in full under temporary names before either is renamed into place, so a
    failed write (a full disk raises :class:`~mudsc.errors.DiskFullError`) leaves an earlier export as it was.
    In a torchrun job (``session.launch``) only rank 0 writes; the manifest records the world size.
    """
    if result.config.method == "ensemble":
        raise ConfigError("the ensemble is an upper bound, not a merged model; nothing to export")
    if not session.paths:
        raise ConfigError("export needs a session opened from checkpoint files (MergeSession.from_paths)")
    out = output_dir(out_dir)
    specs = [p.spec for p in session.parents]
    meta: dict[str, Any] = {"version": __version__, "merge": result.config.model_dump(mode="json"),
                            "tasks": [list(t) for t in session.tasks]}
    if result.multihead:
        meta.update(kind="multihead", specs=specs, cut=result.config.cut, spec=specs[0])
    else:
        meta.update(spec=specs[0])
    tensors = {k: v.detach().cpu().contiguous() for k, v in result.state_dict.items()}
    model_bytes = safetensors_bytes(tensors, {META_KEY: json.dumps(meta, sort_keys=True)})
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "config": result.config.model_dump(mode="json"),
        "parents": [file_record(p, s) for p, s in zip(session.paths, session.specs or [None] * len(session.paths))],
        "data": {**session.data.describe(), "data_dir": session.data_dir},
        "session": {"stats_images": session.stats_images, "eval_images": len(session.eval),
                    "batch_size": session.batch_size},
        "versions": {"mudsc": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "device": str(session.device),
        "world_size": session.launch.world if session.launch is not None else 1,
        "metrics": result_summary(result, session),
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "transforms": result.transforms(),
    }
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True, default=float).encode()
    if session.launch is not None and not session.launch.main:
        return manifest
    with atomic_path(out / "model.safetensors", size=len(model_bytes)) as model_tmp:
        model_tmp.write_bytes(model_bytes)
        with atomic_path(out / "manifest.json", size=len(manifest_bytes)) as manifest_tmp:
            manifest_tmp.write_bytes(manifest_bytes)
    return manifest


def load_json(path: str | Path) -> tuple[Path, Any]:
    """``(path, parsed JSON)`` of a manifest file; one line naming the file when it cannot be read."""
    p = Path(path).expanduser()
    try:
        return p, json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read manifest {p}: {e}") from None


def read_manifest(path: str | Path) -> dict[str, Any]:
    p, manifest = load_json(path)
    if not isinstance(manifest, dict) or manifest.get("manifest_version") != MANIFEST_VERSION or "config" not in manifest:
        raise CheckpointError(f"{p} is not a mudsc merge manifest (version {MANIFEST_VERSION})")
    return manifest


def reproduce(manifest: dict[str, Any], out_dir: str | Path, *, device=None,
              launch: Launch | None = None) -> tuple[MergeResult, dict]:
    """Redo the merge a manifest describes (parents checked against their sha256) and export it;
    `launch` shards its statistics over a torchrun job's ranks."""
    for parent in manifest["parents"]:
        check_record(parent, "parent")
    data, sess = manifest["data"], manifest["session"]
    session = MergeSession.from_paths([p["path"] for p in manifest["parents"]],
                                      reload_name(data["name"], data["source"]), data.get("data_dir"),
                                      data_img_size=data.get("resized_to"), stats_images=sess["stats_images"],
                                      eval_images=sess["eval_images"], batch_size=sess["batch_size"], device=device,
                                      specs=[p.get("spec") for p in manifest["parents"]], launch=launch)
    if session.data.fingerprint != data["sha256"]:
        raise CheckpointError("the data set differs from the one the manifest was made with (sha256 differs)")
    result = session.merge(MergeConfig.model_validate(manifest["config"]))
    return result, save_merge(result, session, out_dir)
