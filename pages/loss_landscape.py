"""Landscape: per-task loss over a plane through the parents (moved into the merge's basis), the merge
and merges by other methods, computed as a background job and cached on disk."""
import copy
import time

import numpy as np
import streamlit as st
import torch

from landscape import GridSpec, compute_landscape, make_eval_set
from landscape.compute import PLANE_KINDS
from landscape.figure import landscape_figure
from landscape.frames import landscape_plan, merge_label
from mudsc.cli.command_lines import landscape_job
from mudsc.diffinit.rebase import is_permutation
from mudsc.methods import names
from mudsc.studio import figures
from mudsc.studio.torchrun import BIG_GRID, landed_landscape, landed_plan
from pages._state import job_status, jobs, session_key, start_job, take
from pages._views import require_merge, show

JOB = "landscape"
PARTIAL_SECONDS = 3.0

st.title("Landscape")
st.caption("Loss of every task over a plane through parameter space: where the parents, the merge and other "
           "merges sit, and whether a region is good for all tasks at once (MuDSC, Fig. 3).")

session, result = require_merge()
if result.config.cut != "full":
    st.info(f"This is a partial merge (cut {result.config.cut}): the layers up to the cut are merged, but after it "
            "every task keeps its own copy, in its own parent's basis. There is no single network in one basis, "
            "so it has no point on a plane through parameter space and no landscape. What this page can show is "
            "the landscape of the full merge: same method and settings, cut = full.")
    if st.button("Use the full merge", key="ls_full_merge", type="primary"):
        with st.spinner("Merging the whole network"):
            full = session.merge(result.config.model_copy(update={"cut": "full"}))
        st.session_state["config"], st.session_state["result"] = full.config, full
        st.session_state.pop("m_cut", None)  # the Merge page's cut control follows the config again
        st.rerun()
    st.stop()
if result.solution is None:
    st.info(f"The {result.config.method} has no merged weights to place on a plane.")
    st.stop()

if not is_permutation(result):
    st.caption(f"⚠ {result.config.method} zips units (its merge maps are not permutations), so the primed "
               "parents (N·M_i W_i U_i) only approximate the parents: their losses can differ from the "
               "parents' own.")
cuda = session.device.type == "cuda"

with st.form("landscape_form"):
    c1, c2 = st.columns(2)
    plane = c1.radio("Plane", list(PLANE_KINDS), format_func=PLANE_KINDS.get, key="ls_plane")
    others = c2.multiselect("Merges of other methods (rebased into this merge's basis)",
                            [m for m in names("diff-init") if m != result.config.method],
                            default=[m for m in ("permute", "zipit") if m != result.config.method], key="ls_others",
                            help="Same settings as the current merge, other method; aligned to this merge by "
                                 "Git Re-Basin weight matching. New merges are computed first.")
    every_parent = c2.checkbox("PCA plane: each method's own primed parents too (MuDSC Fig. 3)", key="ls_all_parents",
                               help="Every merge comes with its parents moved into its basis, the whole group "
                                    "aligned to this merge by weight matching; markers are coloured per method.")
    thirds = ["parent 1"] + [f"parent {i}'" for i in range(2, len(session.parents))] + [f"merge: {m}" for m in others]
    third = c2.selectbox("Third model of the three-point plane", thirds, key="ls_third",
                         help="The merge is the mean of the primed parents, so it lies on their segment; "
                              "the plane needs a third model off that line.")
    c3, c4, c5 = st.columns(3)
    resolution = c3.slider("Grid points along the longer side", 3, 41, 21, key="ls_res")
    bn = c4.radio("BatchNorm statistics", ["exact", "preview"], key="ls_bn",
                  format_func={"exact": "exact (recomputed at every point)",
                               "preview": "preview (frozen: the merge's statistics)"}.get)
    per_task = c5.number_input("Evaluation images per task", 20, 5000, 500 if cuda else 150, step=50, key="ls_eval")
    go_ = st.form_submit_button("Compute landscape", type="primary")


def _work(progress, cancel, *, config, others, plane, third, every_parent, resolution, bn, per_task, holder):
    other_results = []
    for m in others:
        progress(f"merging with {m}", 0.0)
        other_results.append(session.merge(config.model_copy(update={"method": m})))
    plan = landscape_plan(session, result, plane=plane, others=other_results, every_parent=every_parent, third=third)
    holder["plan"] = plan
    ev = make_eval_set(session.data, session.tasks, per_task=per_task, calib_size=256,
                       generator=torch.Generator().manual_seed(0), device=session.device)
    return compute_landscape(copy.deepcopy(result.model), plan.models, plan.plane, ev, grid=GridSpec(resolution),
                             bn_mode=bn, roles=plan.roles, stats_from=merge_label(result),
                             progress=lambda d, t: progress(f"{d}/{t} grid points", d / max(t, 1)),
                             should_stop=cancel, on_update=lambda r: holder.__setitem__("partial", r))


# What a landscape is computed for: the session's content and the merge (the other knobs are the form's).
tag = (session_key(), result.config)
if go_:
    holder: dict = {}  # the job fills in its plan, then every partial result
    params = dict(config=result.config, others=tuple(others), plane=plane, third=third if plane == "three_point" else None,
                  every_parent=bool(every_parent) and plane == "pca", resolution=int(resolution), bn=bn,
                  per_task=int(per_task))
    start_job(JOB, lambda p, c: _work(p, c, holder=holder, **params), tag=tag, wait=False)
    st.session_state["landscape"] = {"tag": tag, "holder": holder}


def _figure(res, plan, *, threshold, vmax):
    if plan.groups:  # several merges with their own primed parents: colours and paths per merge
        return landscape_figure(res, overlap_threshold=threshold, vmax=vmax, groups=plan.groups,
                                segments=plan.segments)
    fig = landscape_figure(res, overlap_threshold=threshold, vmax=vmax)
    if vmax is not None:
        figures.clip_contours(fig, vmax)
    coords = {lab: res.model_coords[i] for i, lab in enumerate(res.model_labels)}
    return figures.add_segments(fig, coords, plan.segments, panels=len(res.task_names) + 1)


def _draw(res, plan, *, key: str) -> None:
    chance = np.log([len(t) for t in session.tasks])
    c1, c2 = st.columns(2)
    share = c1.slider("Overlap threshold (share of chance-level loss ln K per task)", 0.05, 1.0, 0.5, 0.05,
                      key=f"{key}_thr")
    vmax = c2.slider("Clip the colour scale at (loss)", 0.5, 10.0, float(np.round(1.5 * chance.max(), 1)), 0.1,
                     key=f"{key}_vmax")
    threshold = list(share * chance)
    show(_figure(res, plan, threshold=threshold, vmax=vmax), "loss landscape", key=f"{key}_fig")
    mask, frac = res.overlap(threshold)
    st.caption(f"One panel per task (loss on that task's classes) and their mean, one colour scale clipped at "
               f"{vmax:g}. Axes are true parameter distances (L2 over all trainable tensors). The dashed black "
               f"outline is where every task's loss is below {share:g}·ln K (here "
               + ", ".join(f"{t:.2f}" for t in threshold) + f"): {100 * frac:.0f}% of the computed points. "
               "Primed parents are the parents moved into the merge's basis; other methods' merges are "
               "rebased into it by weight matching; dashed lines join parent 0', the merge and parent 1'. "
               f"BatchNorm: {res.bn_label}; forward precision: {res.settings.get('precision', 'float32')}.")
    rows = [{"model": lab, "role": res.model_roles[i], "distance to plane": round(float(res.model_distance[i]), 3),
             **{f"{n} loss": round(float(res.model_task_loss[i, k]), 3) for k, n in enumerate(res.task_names)},
             "joint accuracy": round(float(res.model_joint_acc[i]), 3)} for i, lab in enumerate(res.model_labels)]
    st.dataframe(rows, hide_index=True)


job = landscape_job(session, result.config, others=others, plane=plane, resolution=resolution, bn=bn, per_task=per_task)
if job is not None and resolution >= BIG_GRID:
    with st.expander("A big grid: run it as a torchrun job (one rank per GPU or core)"):
        st.code(job.command, language="bash")
        landed = landed_landscape(job.result)
        if landed is None:
            st.caption(f"This page opens its result when it lands in {job.result}.")
        else:
            _draw(landed, landed_plan(landed), key="ls_tr")

view = st.session_state.get("landscape")
if view is None or view["tag"] != tag or JOB not in jobs():
    st.info("Choose a plane and press Compute landscape. Results are cached on disk and reused.")
    st.stop()
done = take(JOB, tag=tag)
if done is not None:
    view["result"] = done


def _partial() -> None:
    """The grid so far, drawn under the progress bar while the job runs."""
    holder = view["holder"]
    partial, plan = holder.get("partial"), holder.get("plan")
    if partial is None or plan is None or not partial.done.any():
        return
    # Building the figure holds the GIL that the grid job in this process needs: rebuilt at most every
    # PARTIAL_SECONDS, the polls in between show the last one.
    now = time.monotonic()
    if now - holder.get("drawn_at", -PARTIAL_SECONDS) >= PARTIAL_SECONDS:
        holder["partial_figure"] = _figure(partial, plan, threshold=None, vmax=None)
        holder["drawn_at"] = now
    st.plotly_chart(holder["partial_figure"], key="ls_partial", theme=None)


job_status(JOB, "Landscape", during=_partial)
status = jobs()[JOB].job.status
if status in ("done", "cancelled"):
    res = view.get("result") if status == "done" else view["holder"].get("partial")
    if res is None:
        st.caption("Cancelled before any point was computed.")
    else:
        if not res.complete:
            st.caption(f"{int(res.done.sum())}/{res.done.size} points computed; computing again resumes from the cache.")
        _draw(res, view["holder"]["plan"], key="ls")
