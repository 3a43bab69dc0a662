"""The solver registry: ``register_solver(name, paper=...)`` files a plain typed function under a
name; ``get_solver(name)`` is the one way to look one up."""
from __future__ import annotations

import difflib
from typing import Callable

from mudsc.diffinit.solvers.match import Match
from mudsc.errors import UnknownNameError

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
