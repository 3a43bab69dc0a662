"""Matching solvers: similarity over the stacked units of N parents -> merge/unmerge maps.

``register_solver(name, paper=...)`` files a plain typed function under a name; ``get_solver(name)``
is the one way to look one up; ``list_solvers()`` lists the names. Every solver takes the [O, O]
similarity and the units per parent positionally, options keyword-only, and returns a
:class:`~mudsc.diffinit.solvers.match.Match` (group solvers a :class:`~mudsc.diffinit.solvers.match.GroupMatch`).
"""
# explicit module list fills the registry (each module registers its solvers on import)
from mudsc.diffinit.solvers.align import hungarian, identity
from mudsc.diffinit.solvers.groups import group_hungarian, group_rigid, group_zip
from mudsc.diffinit.solvers.match import GroupMatch, Match
from mudsc.diffinit.solvers.registry import get_solver, list_solvers, register_solver, solver_paper
from mudsc.diffinit.solvers.zip import greedy_zip, greedy_zip_reference

__all__ = ["GroupMatch", "Match", "get_solver", "greedy_zip", "greedy_zip_reference", "group_hungarian",
           "group_rigid", "group_zip", "hungarian", "identity", "list_solvers", "register_solver", "solver_paper"]
