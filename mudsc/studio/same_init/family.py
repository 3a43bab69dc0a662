"""A same-init family: a base checkpoint and task models fine-tuned from it, checked before merging;
or different-init parents aligned first, whose aligned average then plays the base (align-then-fuse).

Two checks (task arithmetic, TIES, Fisher, RegMean and MaTS all assume them): the task models'
bodies have the base's keys and shapes, and each was fine-tuned from that base, read from the
checkpoint's record (``base.sha256``, written by ``mudsc zoo finetune``) and confirmed by the
weights: a fine-tuned body stays close to its base, an independently initialised one is as far away
as another random init (relative distance about sqrt(2)).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from mudsc.data import task_label
from mudsc.errors import CheckpointError
from mudsc.models.checkpoint import load_model, read_state_dict, sha256_file
from mudsc.models.heads import body_of
from mudsc.sameinit.merge import check_bodies
from mudsc.sameinit.session import SameInitSession

# A task model whose body is farther than this from the base (relative L2) was not fine-tuned from it.
FAR = 0.8


@dataclass(frozen=True)
class Family:
    """Files of one same-init merge: the base, its task models, optional ``mudsc stats`` files (one per
    task model) and the data they are evaluated on."""

    base: str
    tasks: tuple[str, ...]
    dataset: str = "digits"
    data_dir: str | None = None
    stats: tuple[str, ...] = ()
    data_img_size: int | None = None  # the data set's load-time size (--data-img-size), if any


def relative_distance(base: dict[str, torch.Tensor], model: dict[str, torch.Tensor]) -> float:
    """||body(model) - body(base)|| / ||body(base)|| over the floating body tensors."""
    keys = [k for k, v in body_of(base).items() if v.is_floating_point() and not k.endswith(("running_mean",
                                                                                              "running_var"))]
    num = sum(float((model[k].double() - base[k].double()).pow(2).sum()) for k in keys)
    den = sum(float(base[k].double().pow(2).sum()) for k in keys)
    return (num / max(den, 1e-30)) ** 0.5


def check_family(family: Family) -> list[dict]:
    """One row per task model (task, recorded base, relative distance); raises naming the first
    task model that has another architecture or was not fine-tuned from the base."""
    if not family.tasks:
        raise CheckpointError("a same-init family needs at least one task model besides the base")
    base_sd, _ = read_state_dict(family.base)
    base_sha = sha256_file(family.base)
    rows = []
    sds = []
    for path in family.tasks:
        model, info = load_model(path)
        sds.append(model.state_dict())
        name = Path(path).name
        try:
            check_bodies(base_sd, [sds[-1]])
        except CheckpointError as e:  # ShapeMismatchError is one
            raise type(e)(f"{name} does not share the base's architecture: "
                          f"{str(e).replace('fine-tuned model 0', name)}") from None
        recorded = (info.get("base") or {}).get("sha256")
        if recorded and recorded != base_sha:
            raise CheckpointError(f"{name} was not fine-tuned from {Path(family.base).name}: its record names "
                                  f"another base (sha256 {recorded[:12]}…, this base {base_sha[:12]}…)")
        dist = relative_distance(base_sd, sds[-1])
        if dist > FAR:
            raise CheckpointError(f"{name} was not fine-tuned from {Path(family.base).name}: its body is "
                                  f"{dist:.2f} of the base's norm away (fine-tuned models stay within {FAR}), "
                                  "as far as an independent initialisation; merge different-init parents on the "
                                  "Merge page instead")
        rows.append({"task model": name, "task": task_label(model.classes),
                     "base recorded": "yes" if recorded else "no (weights checked)",
                     "distance to base": round(dist, 4)})
    return rows


def shared_base(infos: Sequence[dict], shas: Sequence[str]) -> int | None:
    """Index of the loaded checkpoint the others record as their base (``base.sha256``), or None."""
    for i, sha in enumerate(shas):
        others = [info for j, info in enumerate(infos) if j != i]
        if others and all((info.get("base") or {}).get("sha256") == sha for info in others):
            return i
    return None


def open_session(family: Family, *, stats_examples: int = 1000, eval_images: int | None = None,
                 reset_images: int = 1000, batch_size: int = 250) -> tuple[SameInitSession, list[dict]]:
    """The checked family as a :class:`SameInitSession` (statistics files used as given, else computed
    on demand) and its check rows."""
    rows = check_family(family)
    session = SameInitSession.from_paths(list(family.tasks), base=family.base, dataset=family.dataset,
                                         data_dir=family.data_dir, data_img_size=family.data_img_size,
                                         stats=list(family.stats) or None,
                                         stats_examples=stats_examples, eval_images=eval_images,
                                         reset_images=reset_images, batch_size=batch_size)
    return session, rows


def open_aligned(paths: Sequence[str], *, dataset: str, data_dir: str | None, data_img_size: int | None = None,
                 align: str, align_alpha: float = 0.5,
                 specs: Sequence[dict | None] | None = None, align_images: int = 1000, stats_examples: int = 1000,
                 eval_images: int | None = None, reset_images: int = 1000, batch_size: int = 250) -> SameInitSession:
    """Different-init parents aligned to the first by `align` (one of :data:`mudsc.methods.ALIGNERS`) as
    a :class:`SameInitSession` whose base is their aligned average: every same-init fuser then merges
    them, as ``mudsc merge-same --method ALIGN+FUSE`` does."""
    return SameInitSession.from_paths(list(paths), dataset=dataset, data_dir=data_dir, data_img_size=data_img_size,
                                      specs=specs, align=align,
                                      align_alpha=align_alpha, align_images=align_images,
                                      stats_examples=stats_examples, eval_images=eval_images,
                                      reset_images=reset_images, batch_size=batch_size)
