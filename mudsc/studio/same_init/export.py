"""The same-init export: per task a checkpoint (merged body + that task's head) and the manifest that
``mudsc merge-same --manifest`` reproduces bit for bit, written once per (inputs, settings, config)
under ``$MUDSC_HOME/exports``; and the files it adds to the Export page's one zip."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mudsc.errors import ConfigError
from mudsc.sameinit.session import SameInitResult, SameInitSession

PREFIX = "same-init"  # folder of these files in the Export page's zip


def export_dir(session: SameInitSession, result: SameInitResult, root: str | Path) -> Path:
    """Where `result`'s export lives: ``root/exports/same-init/DIGEST``, DIGEST of its inputs and config."""
    key = json.dumps([session.inputs, session.options, session.data_dir, result.config.to_dict()], sort_keys=True,
                     default=str)
    return Path(root).expanduser() / "exports" / PREFIX / hashlib.sha256(key.encode()).hexdigest()[:16]


def export_merge(session: SameInitSession, result: SameInitResult, root: str | Path) -> Path:
    """Write (once) ``task{i}.safetensors`` and ``manifest.json`` of `result`; returns the folder."""
    if not session.inputs.get("models"):
        raise ConfigError("export needs a session opened from checkpoint files (SameInitSession.from_paths)")
    out = export_dir(session, result, root)
    if not (out / "manifest.json").is_file():
        session.save(result, out)
    return out


def reproduce_command(out: str = "merged") -> str:
    return f"mudsc merge-same --manifest manifest.json --out {out}"


def bundle(out: Path) -> dict[str, str | Path]:
    """The export's files for the zip (archive name -> file), with a script that reproduces them."""
    manifest = json.loads((out / "manifest.json").read_text())
    files: dict[str, str | Path] = {f"{PREFIX}/manifest.json": out / "manifest.json"}
    files.update({f"{PREFIX}/{o['path']}": out / o["path"] for o in manifest["outputs"]})
    files[f"{PREFIX}/reproduce.sh"] = ("#!/bin/sh\n# Redo the same-init merge from its manifest (inputs checked by "
                                       f"sha256), bit for bit on CPU:\n{reproduce_command()}\n")
    return files
