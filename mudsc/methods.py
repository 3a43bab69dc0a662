"""The one registry of merge methods: what each method is, where it comes from, and which knobs apply.

The CLI's choices, the app's method list, its help texts and enabled widgets, and the README's method
table all read :data:`METHODS`. A method names the paper and the equation or algorithm it implements;
``preset`` is how the shared engine runs it (for different-init methods: which solver, which
similarity, whether to iterate across layers; mergekit's named presets of one configuration).
Knob names are fields of :class:`~mudsc.diffinit.config.MergeConfig` (different-init) or of
:class:`~mudsc.sameinit.config.SameInitConfig` (same-init, align-then-fuse).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping

from mudsc.errors import UnknownNameError

Family = Literal["diff-init", "same-init", "align-then-fuse", "bound"]
FAMILY_TITLES: dict[str, str] = {
    "diff-init": "parents trained from different initialisations (matching, then fusing)",
    "same-init": "task models fine-tuned from one base",
    "align-then-fuse": "different-init parents aligned, then fused with a same-init solver",
    "bound": "upper bounds (not merges)",
}

_ZIP = ("zip_a", "zip_b")
_MATCH = ("groups", "cut", "reset_bn", "reset_images")
_ITERATE = ("max_sweeps", "patience", "seed")
_STATS = ("stats_positions", "seed")  # the seed draws the sampled positions


@dataclass(frozen=True)
class Method:
    """A merge method.

    Args:
        name: the name the CLI, the app and manifests use.
        family: which kind of parents it merges (see :data:`FAMILY_TITLES`).
        paper: authors, venue and the equation or algorithm implemented.
        help: one line for ``--help`` and the app.
        knobs: the config fields that change its result (the app enables only these widgets).
        preset: how the engine runs it; for ``diff-init``: ``solver``, ``similarity``, ``iterative``.
    """

    name: str
    family: Family
    paper: str
    help: str
    knobs: tuple[str, ...] = ()
    preset: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "preset", MappingProxyType(dict(self.preset)))

    def takes(self, knob: str) -> bool:
        """Whether `knob` changes this method's result."""
        return knob in self.knobs


def _diff(name: str, paper: str, help: str, solver: str, similarity: str, iterative: bool,
          knobs: tuple[str, ...]) -> Method:
    return Method(name, "diff-init", paper, help, knobs,
                  {"solver": solver, "similarity": similarity, "iterative": iterative})


_MUDSC = "MuDSC (Xu et al., CVPR 2024), S = alpha * S_W + (1 - alpha) * S_A solved across layers, Algorithm 1"

_ALL: tuple[Method, ...] = (
    _diff("weight-avg", "weight averaging without alignment (Wortsman et al., ICML 2022)",
          "plain weight averaging without alignment: the baseline every method should beat",
          "identity", "none", False, ("cut", "reset_bn", "reset_images")),
    _diff("rebasin", "Git Re-Basin weight matching (Ainsworth et al., ICLR 2023, Algorithm 1)",
          "one-to-one permutation by weight similarity, iterated across layers",
          "align", "weight", True, ("weight_metric", *_MATCH, *_ITERATE)),
    _diff("permute", "activation matching (Ainsworth et al., ICLR 2023, Sec. 3.1)",
          "one-to-one permutation by activation correlation", "align", "activation", False, (*_MATCH, *_STATS)),
    _diff("zipit", "ZipIt! (Stoica et al., ICLR 2024, Sec. 4, greedy zip with within-model merges)",
          "activation similarity, units zipped within and across parents",
          "zip", "activation", False, (*_ZIP, *_MATCH, *_STATS)),
    _diff("wzip", "weight-only zip (MuDSC's W. Zip baseline, Xu et al., CVPR 2024)",
          "zip on weight similarity only, iterated across layers",
          "zip", "weight", True, ("weight_metric", *_ZIP, *_MATCH, *_ITERATE)),
    _diff("mudsc-align", _MUDSC + ", Hungarian matching",
          "weight and activation similarity mixed by alpha, one-to-one matching across parents",
          "align", "dual", True, ("alpha", "alpha_overrides", "mix", "weight_metric", *_MATCH, *_ITERATE,
                                  "stats_positions")),
    _diff("mudsc-zip", _MUDSC + ", greedy zip",
          "weight and activation similarity mixed by alpha, units zipped within and across parents",
          "zip", "dual", True, ("alpha", "alpha_overrides", "mix", "weight_metric", *_ZIP, *_MATCH, *_ITERATE,
                                "stats_positions")),
    Method("ensemble", "bound", "all parents side by side (the upper bound of the ZipIt! and MuDSC tables)",
           "every parent runs on the input: N times the cost, not a merge",
           preset={"solver": "none", "similarity": "none", "iterative": False}),
    Method("average", "same-init", "model soups (Wortsman et al., ICML 2022)",
           "the mean of the fine-tuned models", ()),
    Method("task-arithmetic", "same-init", "task arithmetic (Ilharco et al., ICLR 2023, Sec. 2)",
           "base + lambda * sum of task vectors", ("lam",)),
    Method("ties", "same-init", "TIES-merging (Yadav et al., NeurIPS 2023, Sec. 3, Alg. 1)",
           "trim each task vector to its top magnitudes, elect signs, average the agreeing entries",
           ("ties_density", "ties_lambda")),
    Method("fisher", "same-init", "Fisher merging (Matena & Raffel, NeurIPS 2022, Eq. 3)",
           "diagonal-Fisher-weighted average, closed form", ("fisher_floor", "damping", "unsolved")),
    Method("regmean", "same-init", "RegMean (Jin et al., ICLR 2023, Eq. 2)",
           "per layer (sum W_i G_i)(sum G_i)^-1 from input Grams, closed form",
           ("alpha", "init", "damping", "unsolved")),
    Method("mats", "same-init", "MaTS (Tam et al., TMLR 2024, Sec. 3-4): conjugate gradient on a task-subspace "
           "objective, K-FAC block Fisher by default",
           "early-stopped conjugate gradient on the merging objective from an initialisation",
           ("objective", "alpha", "init", "lam", "iterations", "tol", "damping", "fisher_floor", "unsolved")),
    Method("multitask", "bound", "joint training on every task from the base (the MaTS tables' upper bound)",
           "trains the base on all tasks together: the bound a merge is measured against"),
)

ALIGNERS = ("permute", "rebasin", "mudsc-align")
FUSERS = ("average", "fisher", "regmean", "mats")


def _hybrids(methods: tuple[Method, ...]) -> tuple[Method, ...]:
    by = {m.name: m for m in methods}
    out = []
    for a in ALIGNERS:
        for f in FUSERS:
            out.append(Method(f"{a}+{f}", "align-then-fuse",
                              f"beyond the papers: {by[a].paper}, then {by[f].paper}",
                              f"align with {a}, then fuse the aligned parents with {f} around their average",
                              by[f].knobs, {"align": a, "fuse": f}))
    return tuple(out)


METHODS: Mapping[str, Method] = MappingProxyType({m.name: m for m in _ALL + _hybrids(_ALL)})


def names(*families: Family) -> tuple[str, ...]:
    """Method names of `families` (all when none is given), in registry order."""
    return tuple(n for n, m in METHODS.items() if not families or m.family in families)


def diff_init_names() -> tuple[str, ...]:
    """What :class:`~mudsc.diffinit.config.MergeConfig` and ``mudsc merge`` run, in registry order: the
    different-init methods and the ensemble bound, i.e. the methods with a solver preset (multitask, a
    bound too, trains instead)."""
    return tuple(n for n in names("diff-init", "bound") if "solver" in METHODS[n].preset)


def help_lines(method_names: tuple[str, ...]) -> str:
    """One ``name  help`` line per method, for a command's ``--help`` epilog."""
    width = max(map(len, method_names))
    return "\n".join(f"  {n:<{width}}  {METHODS[n].help}" for n in method_names)


def get_method(name: str, *families: Family) -> Method:
    """The method `name` (restricted to `families` when given); UnknownNameError listing valid names."""
    valid = names(*families)
    if name not in valid:
        close = difflib.get_close_matches(name, valid, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UnknownNameError(f"unknown method {name!r}{hint}; choose one of {', '.join(valid)}")
    return METHODS[name]


def markdown_table(*families: Family) -> str:
    """The README's method table: name, family, paper, what it does. The align-then-fuse hybrids share
    one row: their twelve rows would repeat the aligners' and fusers' own."""
    rows = ["| method | merges | paper | what it does |", "|---|---|---|---|"]
    hybrids_done = False
    for n in names(*families):
        m = METHODS[n]
        if m.family != "align-then-fuse":
            rows.append(f"| `{n}` | {m.family} | {m.paper} | {m.help} |")
        elif not hybrids_done:
            hybrids_done = True
            aligners, fusers = (", ".join(f"`{x}`" for x in xs) for xs in (ALIGNERS, FUSERS))
            rows.append(f"| `ALIGNER+FUSER` | {m.family} | beyond the papers: the aligner's paper, then the "
                        f"fuser's | align with one of {aligners}, then fuse the aligned parents with one of "
                        f"{fusers} around their average |")
    return "\n".join(rows)
