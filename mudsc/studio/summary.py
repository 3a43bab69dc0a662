"""Tables the app and exports show: unit spaces of a network, and a merge next to its parents and the
ensemble (accuracies as fractions, parameters and FLOPs as integers)."""
from __future__ import annotations

from typing import Any

from mudsc.data import task_label
from mudsc.diffinit.session import MergeResult, MergeSession
from mudsc.evaluate import count_flops
from mudsc.unitgraph import Cut, UnitGraph


def split_stream(graph: UnitGraph, cut: Cut) -> str | None:
    """The residual stream that `cut` splits (merged before it, one copy per task after it: some of its
    producers lie past the cut), or None where the cut's space ends at the cut (a stage end) or the cut
    carries fixed channels."""
    if not cut.space:
        return None
    space = graph.space(cut.space)
    return cut.space if any(r.param not in cut.trunk_params for r in space.producers) else None


def cut_positions(graph: UnitGraph) -> dict[str, float]:
    """Where each cut sits among the unit spaces in input -> output order: one past the last space it
    merges whole, -0.5 before the first. A stream split by the cut is left out, since it also spans the
    blocks after the cut; so the cuts inside one stage spread over its blocks instead of piling up on
    the stream."""
    index = {s.name: i for i, s in enumerate(graph.spaces)}
    out = {}
    for c in graph.cuts:
        split = split_stream(graph, c)
        out[c.name] = max((index[n] for n in c.merged_spaces if n != split), default=-1) + 0.5
    return out


def space_rows(graph: UnitGraph) -> list[dict[str, Any]]:
    """One row per unit space in input -> output order, with the cuts right after it and, for a residual
    stream, the cuts that split it."""
    at = cut_positions(graph)
    split_by = {c.name: split_stream(graph, c) for c in graph.cuts}
    return [{"#": i, "unit space": s.name, "units": s.size, "groups": s.groups,
             "tensors": len({r.param for r in s.refs}),
             "cut after it": ", ".join(c for c, x in at.items() if x == i + 0.5),
             "split by cuts": ", ".join(c for c, n in split_by.items() if n == s.name)}
            for i, s in enumerate(graph.spaces)]


def config_label(result: MergeResult) -> str:
    """``'mudsc-zip, alpha 0.5, cut full'`` (alpha only where the method mixes two similarities)."""
    cfg = result.config
    parts = [cfg.method]
    if cfg.similarity == "dual":
        parts.append(f"alpha {cfg.alpha:g}" + (" (+overrides)" if cfg.alpha_overrides else ""))
    if cfg.method != "ensemble":
        parts.append(f"cut {cfg.cut}")
    return ", ".join(parts)


def metric_rows(result: MergeResult, session: MergeSession) -> list[dict[str, Any]]:
    """The merge, each parent and the ensemble: joint, per-task and each task's accuracy, size, cost."""
    return [merged_row(result, session), *reference_rows(session)]


def merged_row(result: MergeResult, session: MergeSession) -> dict[str, Any]:
    """The merge's row of :func:`metric_rows`: the only one that changes with the merge config."""
    labels = [f"task {task_label(t)}" for t in session.tasks]
    m = result.metrics
    return {"model": f"merged ({config_label(result)})", "joint": m.joint, "per-task": m.per_task,
            **dict(zip(labels, m.tasks)), "parameters": result.params, "FLOPs": result.flops}


def reference_rows(session: MergeSession) -> list[dict[str, Any]]:
    """Each parent and the ensemble, the rows of :func:`metric_rows` a session fixes once.

    Parents whose head covers only their own classes have no joint accuracy (``None``) and report
    only their own task.
    """
    from mudsc.diffinit.config import make_config

    labels = [f"task {task_label(t)}" for t in session.tasks]
    x = session.eval.x[:1]
    rows = []
    for i, (p, m) in enumerate(zip(session.parents, session.parent_metrics())):
        accs = m["task_acc"] or [m["own_task_acc"] if j == i else None for j in range(len(labels))]
        rows.append({"model": f"parent {i} ({task_label(m['task'])})", "joint": m["joint_acc"],
                     "per-task": m["per_task_acc"], **dict(zip(labels, accs)),
                     "parameters": sum(t.numel() for t in p.parameters()), "FLOPs": count_flops(p, x)})
    ens = session.merge(make_config(method="ensemble"))
    rows.append({"model": "ensemble (all parents)", "joint": ens.metrics.joint, "per-task": ens.metrics.per_task,
                 **dict(zip(labels, ens.metrics.tasks)), "parameters": ens.params, "FLOPs": ens.flops})
    return rows


def parent_rows(session: MergeSession) -> list[dict[str, Any]]:
    """Each parent's held-out accuracy on every task of the session (task-aware) and jointly."""
    labels = [f"task {task_label(t)}" for t in session.tasks]
    rows = []
    for i, m in enumerate(session.parent_metrics()):
        accs = m["task_acc"] or [m["own_task_acc"] if t == tuple(m["task"]) else None for t in session.tasks]
        rows.append({"parent": i, "trained on": task_label(m["task"]), **dict(zip(labels, accs)),
                     "joint": m["joint_acc"]})
    return rows
