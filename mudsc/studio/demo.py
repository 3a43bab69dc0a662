"""The built-in demo's first screen: the merge the Merge page shows first for the demo pair, and what
the page says about where its numbers come from."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from mudsc.diffinit.config import MergeConfig, make_config
from mudsc.zoo.demo import DEMO, demo_names


def is_demo(paths: Sequence[str]) -> bool:
    """Whether the parents are the built-in demo pair (its file names name the whole recipe)."""
    return [Path(p).name for p in paths] == demo_names()


def first_config(paths: Sequence[str]) -> MergeConfig:
    """The config the Merge page starts from: the demo's chosen partial zip for the demo pair, the
    defaults otherwise."""
    return make_config(**DEMO["merge"]) if is_demo(paths) else make_config()


def demo_tasks() -> str:
    """The demo's tasks and seeds as the pages write them: ``classes 0-4 (seed 4) and classes 5-9 (seed 5)``."""
    return " and ".join(f"classes {t} (seed {s})" for t, s in zip(DEMO["tasks"], DEMO["seeds"]))


def demo_note() -> str:
    """What the Merge page says under the demo's numbers."""
    return (f"The demo: one small pair of width-1 ResNet-20s on the 8x8 digits, {demo_tasks()}, "
            f"{DEMO['epochs']} epochs each. The accuracies below come from this pair alone; over five seed "
            "pairs of the same recipe they spread by several points (benchmarks/RESULTS.md, the demo over five "
            "seed pairs).")
