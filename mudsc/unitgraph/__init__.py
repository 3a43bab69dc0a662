"""Unit graphs: which tensor axes of a model share one set of hidden units, derived with torch.fx.
Imports only :mod:`mudsc.errors` (and torch, timm); every other room builds on it."""
from mudsc.unitgraph.build import default_leaves, explain, trace
from mudsc.unitgraph.modules import observed, split
from mudsc.unitgraph.types import AxisRef, Cut, Tap, UnitGraph, UnitSpace, check_params, validate

__all__ = ["AxisRef", "Cut", "Tap", "UnitGraph", "UnitSpace", "check_params", "default_leaves", "explain",
           "observed", "split", "trace", "validate"]
