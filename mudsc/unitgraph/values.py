"""Abstract values the unit-space rules assign to fx nodes: where a tensor's channels are and which
candidate space each run of channels belongs to."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from mudsc.unitgraph.types import Tap


class Seg(NamedTuple):
    """A run of `size` channels of candidate `cand` (None: fixed), each repeated `repeat` times."""

    cand: int | None
    size: int
    repeat: int = 1
    tap: Tap | None = None


@dataclass(frozen=True)
class Val:
    """A tensor of rank `ndim` whose dim `dim` carries the channels `segs`."""

    dim: int
    ndim: int
    segs: tuple[Seg, ...]

    @property
    def width(self) -> int:
        return sum(s.size * s.repeat for s in self.segs)

    def offsets(self):
        off = 0
        for s in self.segs:
            yield off, s
            off += s.size * s.repeat


@dataclass(frozen=True)
class Param:
    """A state-dict tensor (or an expanded view): `axes[d]` is the tensor axis at dim d."""

    key: str
    axes: tuple[int | None, ...]


@dataclass(frozen=True)
class ParamCat:
    """1-D tensors side by side along dim 0, as ``cat`` builds a fused q/k/v bias (timm's EVA):
    each part a state-dict key, or None for a buffer with one value at every entry, and its length."""

    parts: tuple[tuple[str | None, int], ...]


class Opaque:
    """A tensor with no tracked channels (the model input, outputs of unknown ops)."""


OPAQUE = Opaque()


@dataclass(frozen=True)
class Split:
    """A tensor of rank `ndim` whose channels are spread over dims (chunk or None, head, unit), e.g.
    attention q/k/v as [B, 3, H, T, D]: one candidate (and tap) per chunk, `heads` groups each."""

    ndim: int
    dims: tuple[int | None, int, int]
    cands: tuple[int, ...]
    taps: tuple[Tap | None, ...]
    heads: int


@dataclass(frozen=True)
class Scores:
    """Attention logits or weights [.., H, Tq, Tk]: heads on dim `hdim` in the order of the q/k
    candidate `cand` (`heads` groups); no channels."""

    ndim: int
    hdim: int
    cand: int
    heads: int


@dataclass(frozen=True)
class Rotated:
    """Attention q or k after an op that is the same for every head but not for every unit of a head
    (rotary embeddings): heads on dim `hdim` in the order of candidate `cand` (`heads` groups), the rest
    of each head in a fixed layout, so the candidate is rigid; `tap` observes its units before the op."""

    ndim: int
    hdim: int
    cand: int
    heads: int
    tap: Tap | None


TENSORS = (Val, Param, Opaque, Split, Rotated, Scores)  # every value that stands for a tensor
