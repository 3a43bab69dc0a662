"""Reproducing a same-init merge from its ``manifest.json`` (``mudsc merge-same --manifest FILE --out DIR``).

:meth:`~mudsc.sameinit.session.SameInitSession.save` records the config, every input file with its
sha256 (base, task models, statistics files, CG init), the data set with its directory and the
session's settings; :func:`reproduce` checks the files against their sha256, opens the same
session, merges with the same config and writes the task checkpoints again: bit for bit on CPU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mudsc.data import reload_name
from mudsc.diffinit.manifest import load_json
from mudsc.errors import CheckpointError
from mudsc.models.plain import check_record
from mudsc.sameinit.config import MultitaskConfig, SameInitConfig
from mudsc.sameinit.session import MANIFEST_FORMAT, Config, SameInitResult, SameInitSession


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A ``manifest.json`` written by ``mudsc merge-same`` (or the studio's same-init export)."""
    p, manifest = load_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{p} is not a mudsc merge-same manifest (format {MANIFEST_FORMAT})")
    for key in ("config", "inputs", "session", "dataset"):
        if key not in manifest:
            raise CheckpointError(f"{p}: the manifest lacks {key!r}; it predates --manifest reproduction, "
                                  "merge again with mudsc merge-same")
    return manifest


def manifest_config(manifest: dict[str, Any]) -> Config:
    """The merge's config: a :class:`SameInitConfig`, or the :class:`MultitaskConfig` of the bound."""
    data = manifest["config"]
    return MultitaskConfig.from_dict(data) if data.get("method") == "multitask" else SameInitConfig.from_dict(data)


def reproduce(manifest: dict[str, Any], out: str | Path, *, device=None) -> tuple[SameInitResult, dict[str, Any]]:
    """Redo the merge `manifest` describes (every input checked against its sha256) and save it under `out`."""
    inputs, opts = manifest["inputs"], dict(manifest["session"])
    models = [check_record(m, "task model") for m in inputs["models"]]
    base = check_record(inputs["base"], "base") if "base" in inputs else None
    specs = [m.get("spec") for m in inputs["models"]]
    stats = [check_record(s, "statistics file") for s in inputs["stats"]] if isinstance(inputs.get("stats"), list) else None
    init = check_record(inputs["init"], "CG init") if "init" in inputs else None
    data = manifest["dataset"]
    session = SameInitSession.from_paths(models, base=base, dataset=reload_name(data["name"], data["source"]),
                                         data_dir=manifest.get("data_dir"),
                                         data_img_size=data.get("resized_to"), stats=stats, init=init,
                                         specs=specs, device=device, **opts)
    if session.data.fingerprint != data["sha256"]:
        raise CheckpointError("the data set differs from the one the manifest was made with (sha256 differs)")
    result = session.merge(manifest_config(manifest))
    return result, session.save(result, out)
