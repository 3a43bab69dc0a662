"""Matching solvers: similarity over the stacked units of N parents -> merge/unmerge maps.

``register_solver(name, paper=...)`` files a plain typed function under a name; ``get_solver(name)``
is the one way to look one up; ``list_solvers()`` lists the names. Every solver takes the [O, O]
similarity and the units per parent positionally, options keyword-only, and returns a
:class:`~mudsc.solvers.match.Match` (group solvers a :class:`~mudsc.solvers.match.GroupMatch`).
"""
from __future__ import annotations

import difflib
from typing import Callable

from ..errors import UnknownNameError
from .match import GroupMatch, Match

_SOLVERS: dict[str, Callable[..., Match]] = {}
_PAPERS: dict[str, str] = {}


def register_solver(name: str, *, paper: str) -> Callable[[Callable[..., Match]], Callable[..., Match]]:
    """Decorator filing a solver under `name` with the link of the paper it implements."""

    def add(fn: Callable[..., Match]) -> Callable[..., Match]:
        if name in _SOLVERS:
            raise ValueError(f"solver {name!r} is registered twice")
        _SOLVERS[name] = fn
        _PAPERS[name] = paper
        return fn

    return add


def list_solvers() -> list[str]:
    """Registered solver names, sorted."""
    return sorted(_SOLVERS)


def get_solver(name: str) -> Callable[..., Match]:
    """The solver registered as `name`; UnknownNameError listing the valid names otherwise."""
    if name not in _SOLVERS:
        close = difflib.get_close_matches(name, list_solvers(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UnknownNameError(f"unknown solver {name!r}{hint}; choose one of {', '.join(list_solvers())}")
    return _SOLVERS[name]


def solver_paper(name: str) -> str:
    """Link to the paper the solver `name` implements."""
    get_solver(name)
    return _PAPERS[name]


# explicit module list fills the registry (each module registers its solvers on import)
from .align import hungarian, identity  # noqa: E402
from .groups import group_hungarian, group_zip  # noqa: E402
from .zip import greedy_zip, greedy_zip_reference  # noqa: E402

__all__ = ["GroupMatch", "Match", "get_solver", "greedy_zip", "greedy_zip_reference", "group_hungarian",
           "group_zip", "hungarian", "identity", "list_solvers", "register_solver", "solver_paper"]
