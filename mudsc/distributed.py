"""The launch context: one process, or one rank of a job torchrun started (torch.distributed).

``torchrun --nproc-per-node K -m mudsc ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address in every worker's environment; :func:`launch_from_env` reads them and joins the
process group (gloo on CPUs, NCCL on GPUs). Without them it returns the one-process :class:`Launch`,
whose helpers change nothing, so a command behaves exactly as without torchrun.

What the commands need from a job, and nothing else: which rank this is, its device, disjoint and
deterministic shares of batches and work items, float64 sums of moments, the gather of results on
rank 0, a check that every rank was given the same inputs, and a clear error naming a rank that died.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence, TypeVar

import torch
from torch import Tensor

from mudsc.device import default_device
from mudsc.errors import ConfigError, MudscError

T = TypeVar("T")
# What torchrun sets in every worker; a launch needs all of them.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class RankFailedError(MudscError):
    """Another rank of the job stopped (crashed, killed, or failed with its own error)."""


@dataclass
class Launch:
    """This process's place in the job: `rank` of `world`, `local_rank` on its node.

    ``Launch()`` is one process: every helper then returns its input whole.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None     # gloo or nccl; None for one process
    _calls: int = field(default=0, repr=False)  # collectives so far: the same sequence on every rank

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that prints and writes files."""
        return self.rank == 0

    def device(self, requested: str | None = None) -> torch.device:
        """The compute device: as :func:`mudsc.device.default_device`, and on CUDA this rank's local GPU."""
        dev = default_device(requested)
        if self.distributed and dev.type == "cuda" and dev.index is None:
            return torch.device("cuda", self.local_rank)
        return dev

    # ------------------------------------------------------------------ shares of the work
    def batch_block(self, n: int, batch_size: int) -> slice:
        """The items ``[lo, hi)`` of this rank's contiguous run of whole batches of `n` items.

        The batches stay those of one process (``lo`` is a multiple of `batch_size`), rank 0 holds
        the first ones, and ranks differ by at most one batch.
        """
        batches = -(-n // batch_size)
        if self.distributed and batches < self.world:
            raise ConfigError(f"{n} items make {batches} batches of {batch_size}, fewer than the {self.world} "
                              "ranks: use more images, a smaller batch or fewer ranks")
        lo, hi = (batches * r // self.world for r in (self.rank, self.rank + 1))
        return slice(min(lo * batch_size, n), min(hi * batch_size, n))

    def owns(self, i: int) -> bool:
        """Whether work item `i` (of a sequence every rank walks the same way) is this rank's."""
        return i % self.world == self.rank

    def strided(self, items: Iterable[T]) -> Iterator[T]:
        """This rank's items: every `world`-th, from the `rank`-th."""
        return (x for i, x in enumerate(items) if self.owns(i))

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items of a sequence, as a list (see :meth:`strided`)."""
        return list(items[self.rank::self.world])

    def unshare(self, shares: Sequence[Sequence[T]]) -> list[T]:
        """Every rank's :meth:`share` (in rank order) -> the items in their original order."""
        out: list[T] = []
        for j in range(max((len(s) for s in shares), default=0)):
            out += [s[j] for s in shares if j < len(s)]
        return out

    # ------------------------------------------------------------------ collectives
    def sum_(self, tensors: Sequence[Tensor], what: str) -> None:
        """Sum float64 `tensors` over the ranks in place (one all_reduce of their concatenation), so
        moment sums equal one process's to rounding."""
        if not self.distributed or not tensors:
            return
        if any(t.dtype != torch.float64 for t in tensors):
            raise TypeError("Launch.sum_: moment sums travel in float64")
        flat = torch.cat([t.reshape(-1) for t in tensors]).to(self._tensor_device())
        with self._collective(what):
            _dist().all_reduce(flat)
        off = 0
        for t in tensors:
            t.copy_(flat[off:off + t.numel()].view_as(t))
            off += t.numel()

    def sum_counts(self, counts: Sequence[int], what: str) -> list[int]:
        """Integers summed over the ranks (exact in float64 below 2**53)."""
        t = torch.tensor([float(c) for c in counts], dtype=torch.float64, device=self._tensor_device())
        self.sum_([t], what)
        return [int(v) for v in t.tolist()]

    def gather(self, obj: Any, what: str) -> list[Any] | None:
        """Every rank's `obj` on rank 0, in rank order; None on the other ranks."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world if self.main else None
        with self._collective(what):
            _dist().gather_object(obj, out, dst=0, group=self._objects_group())
        return out

    def broadcast(self, obj: Any, what: str) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj if self.main else None]
        with self._collective(what):
            _dist().broadcast_object_list(box, src=0, group=self._objects_group())
        return box[0]

    def check_same(self, what: str, digest: str) -> None:
        """Refuse a job whose ranks were given different inputs: `digest` (a hash of them) must agree."""
        if not self.distributed:
            return
        out: list[Any] = [None] * self.world
        with self._collective(f"the check of the {what}"):
            _dist().all_gather_object(out, digest, group=self._objects_group())
        odd = [r for r, d in enumerate(out) if d != out[0]]
        if odd:
            ranks = ", ".join(map(str, odd))
            raise ConfigError(f"the ranks were given different {what}: rank(s) {ranks} differ from rank 0 "
                              f"({out[0][:12]} vs {out[odd[0]][:12]}); every rank needs the same command, "
                              "files and data")

    # ------------------------------------------------------------------ plumbing
    def _tensor_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def _objects_group(self):
        """Python objects travel over gloo on the CPU, also beside an NCCL group."""
        if self.backend != "nccl":
            return None
        global _GLOO_GROUP
        if _GLOO_GROUP is None:
            _GLOO_GROUP = _dist().new_group(backend="gloo")
        return _GLOO_GROUP

    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        """Mark this rank as arrived at the job's next collective, so that when a peer is lost the
        error can name the ranks that never arrived."""
        self._calls += 1
        step = self._calls
        store = _store()
        if store is not None:
            store.set(f"mudsc/arrived/{step}/{self.rank}", "1")
        try:
            yield
        except RuntimeError as e:  # gloo and NCCL report a lost peer as a RuntimeError (DistBackendError)
            raise RankFailedError(self._lost(what, step, e)) from None

    def _lost(self, what: str, step: int, e: RuntimeError) -> str:
        store = _store()
        missing: list[int] = []
        if store is not None:
            try:
                missing = [r for r in range(self.world) if not store.check([f"mudsc/arrived/{step}/{r}"])]
            except RuntimeError:  # the store went down with its host rank
                missing = []
        who = (f"rank {', '.join(map(str, missing))} of {self.world}" if missing
               else f"another of the {self.world} ranks")
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        return f"{who} stopped before {what} ({first}); no result was written as complete"


_GLOO_GROUP = None  # the gloo group for Python objects in an NCCL job, made on first use


def _dist():
    import torch.distributed as dist

    return dist


def _store():
    """The job's rendezvous store (torchrun's, or the one init_process_group opened), or None."""
    dist = _dist()
    if not dist.is_initialized():
        return None
    from torch.distributed.distributed_c10d import _get_default_store

    return _get_default_store()


def torchrun_env(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment is that of a torchrun worker."""
    env = os.environ if environ is None else environ
    return all(k in env for k in TORCHRUN_ENV)


@contextmanager
def launch_from_env(device: str | None = None) -> Iterator[Launch]:
    """The launch the environment describes: a joined process group under torchrun (left again at
    the end), else the one-process :class:`Launch`. `device` (the ``--device`` option) picks the
    backend: NCCL on CUDA, gloo otherwise."""
    if not torchrun_env() or int(os.environ["WORLD_SIZE"]) <= 1:
        yield Launch()
        return
    dist = _dist()
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    cuda = default_device(device).type == "cuda"
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend, rank=rank, world_size=world)
    launch = Launch(rank, world, local, backend)
    try:
        yield launch
        # No rank leaves while another may still need the store that rank 0 (or torchrun) keeps.
        with launch._collective("the end of the job"):
            dist.barrier(group=launch._objects_group())
    finally:
        global _GLOO_GROUP
        _GLOO_GROUP = None
        dist.destroy_process_group()


def digest(*parts: Any) -> str:
    """sha256 over JSON-able `parts` (argument values, file hashes, data fingerprints), keys sorted."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
