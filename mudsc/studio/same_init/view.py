"""The same-init merge view: which knobs each method reads (from :data:`mudsc.methods.METHODS`), the
configs of the chosen methods, their metrics beside the fine-tuned models, the base and the
multitask bound, sweeps of one knob, and the CG residual of every MaTS layer.

A method's config carries only the knobs it takes (the rest stay at their defaults), so moving λ
re-merges task arithmetic alone: the session caches every other method's result under its config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from mudsc.data import task_label
from mudsc.evaluate import TaskMetrics
from mudsc.methods import METHODS, names
from mudsc.sameinit.config import OBJECTIVES, MultitaskConfig, SameInitConfig
from mudsc.sameinit.session import SameInitResult, SameInitSession, with_body
from mudsc.sameinit.subspace import INITS

_DEFAULTS = {k: f.default for k, f in SameInitConfig.model_fields.items()}


@dataclass(frozen=True)
class Knob:
    """A config field as the page draws it: a slider over ``choices`` (numbers) or a select (names)."""

    field: str
    label: str
    choices: tuple[Any, ...]
    help: str

    @property
    def default(self) -> Any:
        return _DEFAULTS[self.field]


_STEPS = tuple(round(0.05 * i, 2) for i in range(21))
KNOBS: tuple[Knob, ...] = (
    Knob("lam", "λ: task-vector scale", _STEPS + (1.25, 1.5), "task arithmetic: base + λ Σ task vectors "
         "(Ilharco et al. 2023); also the scale of MaTS's task-arithmetic initialisation"),
    Knob("ties_density", "TIES density", tuple(round(0.05 * i, 2) for i in range(1, 21)),
         "fraction of each task vector TIES keeps (top magnitudes; Yadav et al. 2023, trim step)"),
    Knob("ties_lambda", "TIES λ", _STEPS + (1.25, 1.5, 2.0), "scale of the TIES-merged task vector"),
    Knob("alpha", "RegMean α: off-diagonal scale", _STEPS, "Grams (and K-FAC factors) as α A + (1 - α) diag A "
         "(Jin et al. 2023, Sec. 3.2); 1 keeps them whole"),
    Knob("objective", "MaTS objective", OBJECTIVES, "the task subspace CG solves in (Tam et al. 2024, Sec. 4): "
         "K-FAC block Fisher, RegMean's Gram, diagonal Fisher or the identity"),
    Knob("init", "initialisation", INITS, "where CG starts and what RegMean keeps in the null space of its Gram"),
    Knob("iterations", "CG steps", (0, 1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200),
         "MaTS stops conjugate gradient after this many steps: early stopping is a hyperparameter (Sec. 3.2)"),
    Knob("damping", "damping", (0.0, 1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0),
         "pull towards the initialisation, relative to each layer's mean curvature"),
)
KNOB = {k.field: k for k in KNOBS}
# what a sweep can vary, and over which values
SWEEPS: dict[str, tuple[Any, ...]] = {
    "lam": tuple(round(0.1 * i, 1) for i in range(11)) + (1.25, 1.5),
    "alpha": tuple(round(0.1 * i, 1) for i in range(11)),
    "iterations": (0, 1, 2, 5, 10, 20, 50, 100),
    "ties_density": (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0),
}
METHOD_NAMES = names("same-init")


def enabled(methods: Sequence[str]) -> dict[str, bool]:
    """knob -> whether one of `methods` reads it (the page disables the others)."""
    return {k.field: any(METHODS[m].takes(k.field) for m in methods) for k in KNOBS}


def configs(methods: Sequence[str], values: dict[str, Any]) -> dict[str, SameInitConfig]:
    """method -> its config: the knob `values` it takes, defaults for the rest."""
    return {m: SameInitConfig(method=m, **{k: v for k, v in values.items() if METHODS[m].takes(k)})
            for m in methods}


def stat_parts(cfgs: Sequence[SameInitConfig]) -> tuple[str, ...]:
    """The statistics parts any of `cfgs` reads, in TaskStats order (what the background job computes)."""
    wanted = {p for c in cfgs for p in c.stat_parts}
    return tuple(p for p in ("gram", "grad", "fisher") if p in wanted)


_SHORT = {"lam": "λ", "ties_density": "density", "ties_lambda": "λ", "alpha": "α", "objective": "", "init": "init",
          "iterations": "steps", "damping": "damping"}


def label(config: SameInitConfig) -> str:
    """``mats (kfac, α 1, init average, 10 steps)``: a method with the knobs that set it (MaTS's λ only
    where it starts from task arithmetic; damping only when set)."""
    shown = []
    for k in METHODS[config.method].knobs:
        v = getattr(config, k)
        if k not in _SHORT or (k == "lam" and config.method == "mats" and config.init != "task-arithmetic") \
                or (k == "damping" and not v):
            continue
        text = f"{v:g}" if isinstance(v, float) else str(v)
        shown.append(f"{text} steps" if k == "iterations" else f"{_SHORT[k]} {text}".strip())
    return config.method + (f" ({', '.join(shown)})" if shown else "")


def _row(model: str, kind: str, tasks: Sequence[tuple[int, ...]], m: TaskMetrics, **extra) -> dict[str, Any]:
    return {"model": model, "kind": kind, **{f"task {task_label(t)}": a for t, a in zip(tasks, m.tasks)},
            "mean (task-aware)": m.per_task, "joint": m.joint, **extra}


def reference_rows(session: SameInitSession, multitask: SameInitResult | None = None) -> list[dict[str, Any]]:
    """The base's body and each fine-tuned body under every task's own head, then the multitask bound."""
    rows = [_row("base", "base", session.tasks,
                 session.evaluate([with_body(m, session.base) for m in session.models]))]
    for m in session.models:
        rows.append(_row(f"fine-tuned on {task_label(m.classes)}", "fine-tuned", session.tasks,
                         session.evaluate([with_body(x, m.state_dict()) for x in session.models])))
    if multitask is not None:
        rows.append(_row(f"multitask ({multitask.config.epochs} epochs)", "bound", session.tasks, multitask.metrics))
    return rows


def merge_rows(session: SameInitSession, results: dict[str, SameInitResult]) -> list[dict[str, Any]]:
    """One row per merge: per-task, mean and joint accuracy, merge seconds, worst CG residual."""
    rows = []
    for result in results.values():
        residuals = [r.residual for r in result.report.layers if r.residual is not None] if result.report else []
        rows.append(_row(label(result.config), "merge", session.tasks, result.metrics,
                         seconds=round(sum(result.timings.values()), 3),
                         **{"max residual": max(residuals) if residuals else None}))
    return rows


def merge_all(session: SameInitSession, cfgs: dict[str, SameInitConfig]) -> tuple[dict[str, SameInitResult],
                                                                                  dict[str, str]]:
    """Each config merged (cached by the session); a method that fails is reported, the others kept."""
    from mudsc.errors import MudscError

    results, errors = {}, {}
    for method, cfg in cfgs.items():
        try:
            results[method] = session.merge(cfg)
        except MudscError as e:
            errors[method] = str(e)
    return results, errors


def sweep(session: SameInitSession, cfgs: dict[str, SameInitConfig], knob: str, *,
          progress: Callable[[str, float], None] | None = None) -> list[dict[str, Any]]:
    """Every method of `cfgs` that takes `knob`, merged at each of :data:`SWEEPS`'s values (the rest of
    its config as given): rows of method, value, per-task, mean and joint accuracy."""
    todo = [(m, cfg.model_copy(update={knob: v})) for m, cfg in cfgs.items() if METHODS[m].takes(knob)
            for v in SWEEPS[knob]]
    rows = []
    for i, (method, cfg) in enumerate(todo):
        if progress is not None:
            progress(f"{method}, {knob} = {getattr(cfg, knob)}", i / max(len(todo), 1))
        res = session.merge(SameInitConfig(**cfg.to_dict()))
        rows.append({"method": method, knob: getattr(cfg, knob), **{f"task {task_label(t)}": a for t, a in
                                                                     zip(session.tasks, res.metrics.tasks)},
                     "mean (task-aware)": res.metrics.per_task, "joint": res.metrics.joint})
    return rows


def residual_rows(result: SameInitResult) -> list[dict[str, Any]]:
    """The relative CG residual of every solved layer at every step (long form, for the chart)."""
    if result.report is None:
        return []
    return [{"layer": layer.keys[0].removesuffix(".weight"), "iteration": i, "residual": r}
            for layer in result.report.layers for i, r in enumerate(layer.history)]


def diverged_layers(result: SameInitResult) -> list[str]:
    """Layers whose CG ended with a larger residual than it started with (or a non-finite one)."""
    if result.report is None:
        return []
    return [layer.keys[0] for layer in result.report.layers if layer.diverged]


def multitask_config(session: SameInitSession) -> MultitaskConfig:
    """The bound's config: the task models' own epochs (as ``mudsc merge-same --method multitask``)."""
    epochs = max((int(i.get("epochs", 3)) for i in session.infos), default=3)
    return MultitaskConfig(epochs=min(epochs, 10))
