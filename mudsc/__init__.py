"""mudsc: merge independently trained networks without training, and see why a merge works.

The public face, resolved on first use so that ``import mudsc.errors`` stays light. Rooms:
``unitgraph`` (unit spaces), ``models``, ``diffinit`` (matching merges), ``sameinit`` (same-base
merges), ``zoo`` (training), ``studio`` (what the app shows), ``cli``; ``landscape`` sits beside.
"""
from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_FACE = {
    "MergeConfig": "mudsc.diffinit.config", "make_config": "mudsc.diffinit.config",
    "MergeSession": "mudsc.diffinit.session", "MergeResult": "mudsc.diffinit.session",
    "SameInitConfig": "mudsc.sameinit.config", "SameInitSession": "mudsc.sameinit.session",
    "METHODS": "mudsc.methods", "get_method": "mudsc.methods",
    "create_model": "mudsc.models.registry", "list_models": "mudsc.models.registry",
    "load_model": "mudsc.models.checkpoint", "save_model": "mudsc.models.checkpoint",
    "trace": "mudsc.unitgraph.build", "UnitGraph": "mudsc.unitgraph.types",
    "load_dataset": "mudsc.data",
}


def __getattr__(name: str) -> Any:
    if name in _FACE:
        return getattr(import_module(_FACE[name]), name)
    raise AttributeError(f"module 'mudsc' has no attribute {name!r}")


__all__ = ["__version__", *_FACE]
