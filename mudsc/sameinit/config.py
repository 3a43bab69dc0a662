"""SameInitConfig and MultitaskConfig: the declarative description of a same-init merge, and of the
multitask bound, shared by the session, the CLI and the manifest (``config`` there is ``to_dict()``).

Frozen and hashable, so they key :class:`~mudsc.sameinit.session.SameInitSession`'s caches. The
method names come from :data:`mudsc.methods.METHODS` (family ``same-init``).
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from mudsc.errors import ConfigError, UnknownNameError
from mudsc.methods import get_method
from mudsc.sameinit.subspace import INITS

OBJECTIVES = ("kfac", "regmean", "fisher", "identity")
UNSOLVED = ("average", "base")
_CHOICES = {"objective": OBJECTIVES, "init": INITS, "unsolved": UNSOLVED}
# which TaskStats fields each solver reads (mats: by its objective)
_PARTS = {"regmean": ("gram",), "fisher": ("fisher",), "kfac": ("gram", "grad")}


class _Config(BaseModel):
    """Frozen, no unknown fields; bad values raise :class:`~mudsc.errors.ConfigError`, unknown names
    :class:`~mudsc.errors.UnknownNameError`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: ClassVar[str]

    def __init__(self, /, **data: Any) -> None:
        # pydantic wraps every ValueError raised while validating (ConfigError is one) into a
        # ValidationError; construction raises the project's one-line ConfigError instead, which the
        # CLI reports without a traceback. UnknownNameError (a KeyError) is not wrapped.
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise self._error(e) from None

    @classmethod
    def _error(cls, e: ValidationError) -> ConfigError:
        errors = e.errors()
        unknown = sorted(str(err["loc"][0]) for err in errors if err["type"] == "extra_forbidden")
        if unknown:
            return ConfigError(f"unknown {cls.kind} options {unknown}; valid: {', '.join(sorted(cls.model_fields))}")
        err = errors[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        return ConfigError(f"{cls.kind} config: {where}: {err['msg']} (got {err.get('input')!r})")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "_Config":
        return cls(**data)


class SameInitConfig(_Config):
    """What to merge and how (one of the same-init methods of :mod:`mudsc.methods` and its knobs)."""

    kind: ClassVar[str] = "same-init"

    method: str = Field("mats", description="average, task-arithmetic, ties, fisher, regmean or mats")
    lam: float = Field(0.3, description="task-arithmetic scale (also the task-arithmetic initialisation's)")
    ties_density: float = Field(0.2, gt=0.0, le=1.0, description="fraction of each task vector TIES keeps "
                                "(top magnitudes over the whole body)")
    ties_lambda: float = Field(1.0, description="scale of the TIES-merged task vector")
    alpha: float = Field(1.0, ge=0.0, le=1.0, description="off-diagonal scaling of Grams and gradient factors "
                         "(1 keeps them whole)")
    objective: str = Field("kfac", description="the mats objective: kfac, regmean, fisher or identity")
    init: str = Field("average", description="start of CG and null-space fallback of RegMean: average, "
                      "task-arithmetic, base or zeros")
    # 10, chosen on validation splits carved from the training images (MLP and ResNet-20x2, 3 task splits
    # each; benchmarks/RESULTS.md, "Same-init defaults chosen on a validation split"): early-stopped CG is
    # MaTS's regulariser (Sec. 3.2), and 100 steps over-fit the approximate objective on the BatchNorm nets
    iterations: int = Field(10, ge=0, description="CG step cap")
    tol: float = Field(1e-5, ge=0.0, description="CG relative-residual tolerance")
    damping: float = Field(0.0, ge=0.0, description="pull towards the initialisation, relative to each "
                           "layer's mean curvature")
    fisher_floor: float = Field(1e-8, ge=0.0, description="lower bound of each Fisher entry")
    unsolved: str = Field("average", description="parameters a method leaves without a solve: average or base")

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        return get_method(v, "same-init").name

    @field_validator("objective", "init", "unsolved")
    @classmethod
    def _choice(cls, v: str, info: ValidationInfo) -> str:
        valid = _CHOICES[info.field_name]
        if v not in valid:
            raise UnknownNameError(f"unknown {info.field_name} {v!r}; choose one of {', '.join(valid)}")
        return v

    @property
    def stat_parts(self) -> tuple[str, ...]:
        """The :class:`~mudsc.sameinit.taskstats.TaskStats` fields this merge reads (empty: none)."""
        return _PARTS.get(self.objective if self.method == "mats" else self.method, ())

    @property
    def needs_stats(self) -> bool:
        return bool(self.stat_parts)


class MultitaskConfig(_Config):
    """The multitask upper bound: the base's body trained on the union of the tasks, each task keeping
    its own head (:func:`mudsc.sameinit.multitask.train_multitask`)."""

    kind: ClassVar[str] = "multitask"

    method: Literal["multitask"] = "multitask"
    epochs: int = Field(3, ge=1, description="epochs over the union of the tasks' training images")
    lr: float = Field(1e-3, gt=0.0, description="AdamW learning rate")
    seed: int = Field(0, description="seeds the data order and the random shifts")
