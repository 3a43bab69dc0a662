"""The Merge page's sweeps: every point's test accuracy, and the point chosen on held-out training images
(the papers' protocol, :mod:`mudsc.diffinit.selection`) to mark beside the current setting."""
from __future__ import annotations

from typing import Any, Callable

from mudsc.diffinit.config import MergeConfig
from mudsc.diffinit.selection import select_on_train
from mudsc.diffinit.session import MergeSession
from mudsc.diffinit.sweep import run_sweep
from mudsc.errors import ConfigError


def sweep_with_selection(session: MergeSession, configs: list[MergeConfig], kind: str, *,
                         progress: Callable[[str, float], None] | None = None) -> dict[str, Any]:
    """``{"rows": test rows, "selected": the `kind` value (alpha or cut) chosen by joint accuracy on
    held-out training images, or None, "note": one line saying so}``."""
    rows = run_sweep(session, configs, progress=progress)
    try:
        sel = select_on_train(session, configs, rows)
    except ConfigError as e:  # too few training images left after statistics and BN reset
        return {"rows": rows, "selected": None, "note": f"No choice on training data: {e}."}
    value = getattr(sel.config, kind)
    shown = f"{value:g}" if kind == "alpha" else value
    return {"rows": rows, "selected": value,
            "note": f"Chosen on {len(sel.images):,} held-out training images (joint accuracy "
                    f"{sel.scores[sel.index]:.1%} there): {kind} {shown}, test joint accuracy "
                    f"{sel.test['joint_acc']:.1%}; the dashed line marks it."}
