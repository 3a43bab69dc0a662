"""The same-init method registry: each method of :mod:`mudsc.methods` (family ``same-init``) is a
plain function of a :class:`MergeJob`, registered under its name by its family module
(:mod:`~mudsc.sameinit.arithmetic`, :mod:`~mudsc.sameinit.curvature`); :func:`merger` finds it.

A method yields ``(tensors, LayerReport)`` per block it solves, the tensors keyed by state-dict name
in any dtype and device; :func:`mudsc.sameinit.merge.merge_same_init` stores them and handles the
rest (validation, heads, unsolved parameters).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor

from mudsc.methods import get_method
from mudsc.sameinit.config import SameInitConfig
from mudsc.sameinit.subspace import diverged, initial_point
from mudsc.sameinit.taskstats import TaskStats

StateDict = dict[str, Tensor]
Reader = Callable[[StateDict], Tensor]  # one block of a state dict, float64 on the job's device


@dataclass(frozen=True)
class LayerReport:
    """How one group of keys was merged: ``how`` is the method, ``cg``, ``closed-form``, ``average``
    or ``base``; residual and iterations where a linear system was solved, and for CG the relative
    residual before the first step and after each (``history``) and whether it met negative
    curvature (``indefinite``)."""

    keys: tuple[str, ...]
    how: str
    residual: float | None = None
    iterations: int | None = None
    history: tuple[float, ...] = ()
    indefinite: bool = False

    @property
    def diverged(self) -> bool:
        """Whether this layer's CG met an indefinite operator or ended with a larger residual than it
        started (or a non-finite one)."""
        return self.indefinite or (bool(self.history) and diverged(self.history, self.residual))


@dataclass(frozen=True)
class MergeJob:
    """One merge as a method reads it (inputs already validated by ``merge_same_init``).

    ``params`` are the floating ``body.`` keys that are not buffers, the keys a method may solve;
    ``stats`` is empty for methods that read none; ``init`` replaces ``config.init`` as starting point.
    """

    base: StateDict
    finetuned: Sequence[StateDict]
    stats: Sequence[TaskStats]
    config: SameInitConfig
    params: tuple[str, ...]
    device: torch.device
    init: StateDict | None = None

    def reader(self, key: str) -> Reader:
        """The tensor `key` of a state dict, in float64 on the job's device."""
        return lambda sd: sd[key].to(self.device, torch.float64)

    def weights(self, get: Reader) -> list[Tensor]:
        """The block `get` reads, of every fine-tuned model."""
        return [get(m) for m in self.finetuned]

    def start(self, get: Reader) -> Tensor:
        """The initial point of the block `get` reads: from ``init`` when given, else ``config.init``."""
        if self.init is not None:
            return get(self.init)
        return initial_point(self.config.init, get(self.base), self.weights(get), lam=self.config.lam)


Merged = tuple[dict[str, Tensor], LayerReport]
MergeFn = Callable[[MergeJob], Iterable[Merged]]
_MERGERS: dict[str, MergeFn] = {}


def register(name: str) -> Callable[[MergeFn], MergeFn]:
    """Decorator: `fn` runs the same-init method `name` (which :mod:`mudsc.methods` must list)."""
    get_method(name, "same-init")

    def add(fn: MergeFn) -> MergeFn:
        _MERGERS[name] = fn
        return fn

    return add


def merger(name: str) -> MergeFn:
    """The registered function of same-init method `name`."""
    return _MERGERS[get_method(name, "same-init").name]


def registered() -> tuple[str, ...]:
    """The names with a registered function, in registration order."""
    return tuple(_MERGERS)
