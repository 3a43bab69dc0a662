"""The results of torchrun jobs the pages print (:func:`mudsc.cli.command_lines.landscape_job`,
:func:`~mudsc.cli.command_lines.sweep_job`), read back once rank 0 has written them whole."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from landscape.result import LandscapeResult
from mudsc.errors import CheckpointError

BIG_GRID = 31   # grid points per side from which the Landscape page offers a torchrun job
BIG_SWEEP = 8   # configurations from which the Merge page does


def landed_landscape(path: Path) -> LandscapeResult | None:
    """The job's landscape once rank 0 has written it whole, else None."""
    try:
        result = LandscapeResult.load(path) if path.is_file() else None
    except CheckpointError:
        return None
    return result if result is not None and result.complete else None


def landed_plan(result: LandscapeResult) -> SimpleNamespace:
    """The merge groups and segments a landed landscape's figure draws (the CLI keeps them in its settings)."""
    return SimpleNamespace(groups=result.settings.get("groups") or {}, segments=result.settings.get("segments") or [])


def landed_sweep(path: Path) -> list[dict] | None:
    """The job's sweep rows once rank 0 has written them, else None."""
    try:
        return json.loads(path.read_text())["rows"] if path.is_file() else None
    except (OSError, json.JSONDecodeError, KeyError):
        return None
