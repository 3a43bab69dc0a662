"""Merging parents trained from different initialisations: config, statistics, similarity, solvers,
the iterative solve, fusion, the session that caches them, sweeps and manifests. Imports errors,
device, data, evaluate, methods, unitgraph and models; never sameinit, studio, cli or landscape."""
from mudsc.diffinit.config import MergeConfig, make_config
from mudsc.diffinit.fuse import fuse, reset_bn_stats_, transform_state_dict
from mudsc.diffinit.manifest import read_manifest, reproduce, save_merge
from mudsc.diffinit.session import MergeResult, MergeSession
from mudsc.diffinit.solve import Solution, solve

__all__ = ["MergeConfig", "MergeResult", "MergeSession", "Solution", "fuse", "make_config", "read_manifest",
           "reproduce", "reset_bn_stats_", "save_merge", "solve", "transform_state_dict"]
