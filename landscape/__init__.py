"""Loss-landscape engine: planes through merged models, multi-task metrics on grids, figures.

Never imports streamlit. The one entry point for the CLI and the app is :func:`compute_landscape`.
"""
from landscape.barrier import PathResult, evaluate_path, interpolation_barrier
from landscape.cache import LandscapeCache, default_cache_dir, state_dict_fingerprint
from landscape.compute import GridSpec, PlaneSpec, build_plane, compute_landscape
from landscape.evaluate import EvalSet, make_eval_set
from landscape.grid import BN_LABELS, PointEvaluator, evaluate_coords
from landscape.plane import (
           Plane,
           cover_grid,
           filter_normalize,
           line,
           pca,
           random_directions,
           three_point,
           trainable_names,
)
from landscape.result import LandscapeResult

__all__ = ["BN_LABELS", "EvalSet", "GridSpec", "LandscapeCache", "LandscapeResult", "PathResult", "Plane",
           "PlaneSpec", "PointEvaluator", "build_plane", "compute_landscape", "cover_grid",
           "default_cache_dir", "evaluate_coords", "evaluate_path", "filter_normalize", "interpolation_barrier",
           "line", "make_eval_set", "pca", "random_directions",
           "state_dict_fingerprint", "three_point", "trainable_names"]
