"""Grids of merges from one statistics pass: alpha sweeps, cut (zip depth) sweeps, method tables,
and mean +- std over several parent pairs (single pairs decide nothing).

A depth sweep over every cut is ZipIt!'s partial-zipping curve (Stoica et al., 2024, Sec. 4.3 and
App. "Partial Zipping"), there only at stage ends; here at every block (see ``mudsc.unitgraph``),
with the share of parameters and FLOPs each depth merges."""
from __future__ import annotations

import itertools
import math
from typing import Callable, Iterable

from mudsc.diffinit.config import MergeConfig
from mudsc.diffinit.session import MergeSession
from mudsc.models.multihead import cut_costs


def grid(base: MergeConfig, *, methods: Iterable[str] | None = None, alphas: Iterable[float] | None = None,
         cuts: Iterable[str] | None = None) -> list[MergeConfig]:
    """Every combination of the given methods, alphas and cuts on top of `base`."""
    ms = list(methods) if methods else [base.method]
    als = list(alphas) if alphas else [base.alpha]
    cs = list(cuts) if cuts else [base.cut]
    configs = []
    for m, a, c in itertools.product(ms, als, cs):
        if m == "ensemble" and c != "full":
            continue
        configs.append(base.model_copy(update={"method": m, "alpha": float(a), "cut": c}))
    # alpha means nothing to single-space methods: keep one row each
    seen, out = set(), []
    for cfg in configs:
        key = (cfg.method, cfg.cut, cfg.alpha if cfg.similarity == "dual" else None)
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def run_sweep(session: MergeSession, configs: list[MergeConfig], *,
              progress: Callable[[str, float], None] | None = None) -> list[dict]:
    """One row per config: method, alpha, cut, accuracies, parameters, FLOPs and merge time."""
    rows = []
    costs = cut_costs(session.parents[0], session.graph, session.eval.x[:1], cuts={c.cut for c in configs})
    for i, cfg in enumerate(configs):
        if progress:
            progress(f"{cfg.method} alpha={cfg.alpha:g} cut={cfg.cut}", i / max(len(configs), 1))
        r = session.merge(cfg)
        # the ensemble shares nothing between the tasks
        share = costs[cfg.cut] if cfg.method != "ensemble" else {"params_share": 0.0, "flops_share": 0.0}
        rows.append({"method": cfg.method, "alpha": cfg.alpha if cfg.similarity == "dual" else None,
                     "cut": cfg.cut, "joint_acc": r.metrics.joint, "per_task_acc": r.metrics.per_task,
                     **{f"task{t}_acc": a for t, a in enumerate(r.metrics.tasks)},
                     "params": r.params, "flops": r.flops, "merged_params_share": share["params_share"],
                     "merged_flops_share": share["flops_share"], "sweeps": r.solution.sweeps if r.solution else 0,
                     "seconds": round(sum(r.timings.values()), 3)})
    if progress:
        progress("done", 1.0)
    return rows


def aggregate(rows_per_pair: list[list[dict]]) -> list[dict]:
    """Rows of several parent pairs (same configs, same order) -> mean and std of every metric."""
    out = []
    for group in zip(*rows_per_pair):
        # one architecture and one cut per row: the costs are the same in every pair
        row = {k: group[0][k] for k in ("method", "alpha", "cut", "params", "flops", "merged_params_share",
                                        "merged_flops_share")}
        for key in group[0]:
            if key.endswith("_acc"):
                vals = [g[key] for g in group]
                mean = sum(vals) / len(vals)
                row[key] = mean
                row[key + "_std"] = math.sqrt(sum((v - mean) ** 2 for v in vals) / max(len(vals) - 1, 1))
        row["pairs"] = len(group)
        out.append(row)
    return out
