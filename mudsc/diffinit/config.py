"""MergeConfig: the one declarative description of a merge, shared by the app, the CLI, the engine
and the manifest (mergekit's split between a config and an executor).

Every different-init method is a named preset of the same knobs (which similarity, which solver,
whether to iterate across layers: its ``preset`` in :data:`mudsc.methods.METHODS`), so ``mudsc-zip``
at alpha = 0 is exactly ``zipit`` and at alpha = 1 it is ``wzip``.
"""
from __future__ import annotations

from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mudsc.methods import METHODS, diff_init_names

# A Literal built from the registry, so the JSON schema and pydantic's error name the valid methods.
Method = Literal[diff_init_names()]  # type: ignore[valid-type]


class MergeConfig(BaseModel):
    """How to merge. Frozen and hashable, so it keys caches; round-trips through YAML and JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Method = "mudsc-zip"
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight share of S = a*S_W + (1-a)*S_A")
    alpha_overrides: tuple[tuple[str, float], ...] = Field(
        (), description="per-unit-space alpha, as (space, alpha) pairs")
    mix: Literal["published", "standardized"] = Field(
        "published", description="published: mix the two correlations as they are; standardized: z-score "
        "each matrix over its off-diagonal entries before mixing")
    weight_metric: Literal["pearson", "cosine"] = "pearson"
    zip_a: float = Field(0.5, ge=0.0, le=1.0, description="ZipIt! alpha: decay of repeatedly merged units")
    zip_b: float = Field(1.0, ge=0.0, le=1.0, description="ZipIt! beta: share of within-model merges")
    groups: bool = Field(True, description="respect GroupNorm groups / attention heads")
    cut: str = Field("full", description="merge up to this cut, keep later layers as per-task heads")
    max_sweeps: int = Field(100, ge=1)
    patience: int = Field(5, ge=1)
    seed: int = 0
    reset_bn: bool = True
    reset_images: int = Field(1000, ge=1)
    stats_positions: int | None = Field(
        None, ge=1, description="spatial positions (or tokens) per image and tap that the activation statistics "
        "sample, seeded by `seed` (default: all)")

    @field_validator("alpha_overrides", mode="before")
    @classmethod
    def _overrides(cls, v):
        items = v.items() if isinstance(v, dict) else v
        out = tuple(sorted((str(k), float(a)) for k, a in items))
        for k, a in out:
            if not 0.0 <= a <= 1.0:
                raise ValueError(f"alpha override for {k!r} must be in [0, 1], got {a}")
        return out

    @model_validator(mode="after")
    def _fits(self) -> "MergeConfig":
        if self.method == "ensemble" and self.cut != "full":
            raise ValueError("the ensemble has no cut")
        return self

    @property
    def solver(self) -> str:
        return METHODS[self.method].preset["solver"]

    @property
    def similarity(self) -> str:
        return METHODS[self.method].preset["similarity"]

    @property
    def iterative(self) -> bool:
        return METHODS[self.method].preset["iterative"]

    def alpha_for(self, space: str) -> float:
        """The alpha of `space`: its override, else the global alpha; pure-weight or pure-activation
        methods fix it to 1 or 0."""
        if self.similarity == "weight":
            return 1.0
        if self.similarity == "activation":
            return 0.0
        return dict(self.alpha_overrides).get(space, self.alpha)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def from_yaml(cls, text: str) -> "MergeConfig":
        return cls.model_validate(yaml.safe_load(text) or {})


def make_config(**fields) -> MergeConfig:
    """A MergeConfig, with validation failures turned into one-line ConfigErrors."""
    from pydantic import ValidationError

    from mudsc.errors import ConfigError

    try:
        return MergeConfig(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        raise ConfigError(f"merge config: {where}: {err['msg']} (got {err.get('input')!r})") from None
