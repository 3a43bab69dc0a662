"""Same-init merge: task models fine-tuned from one base merged by the registry's same-init methods, each
knob re-merging at once from statistics computed once in the background; metrics against the base,
the fine-tuned models and the multitask bound; a knob sweep; MaTS's CG residuals; the task-vector
landscape; and the export that ``mudsc merge-same --manifest`` reproduces."""
from __future__ import annotations

import numpy as np
import streamlit as st

from landscape.figure import landscape_figure
from mudsc.data import task_label
from mudsc.errors import MudscError
from mudsc.methods import METHODS
from mudsc.studio.figure_export import zip_bytes
from mudsc.studio.same_init import view
from mudsc.studio.same_init.export import bundle, export_merge, reproduce_command
from mudsc.studio.same_init.figures import residual_figure, sweep_curves
from mudsc.studio.same_init.plane import task_landscape
from pages._state import figures, job_status, jobs, running, settings, start_job, take

PERCENT = "percent"

session = st.session_state.get("same_session")
if session is None:
    st.info("No same-init family yet: load a base and its fine-tuned task models (or the demo family) on the "
            "Parents page, tab Same-init family; or align different-init parents there (align, then fuse).")
    st.page_link("pages/parents.py", label="Go to Parents", icon=":material/arrow_forward:")
    st.stop()

st.title("Same-init merge")
origin = (f"different-init parents aligned with {session.options['align']} (their aligned average is the base "
          "row and task arithmetic's base)" if session.alignment is not None else "task models fine-tuned from one base")
st.caption(f"{len(session.models)} {origin}, tasks "
           f"{', '.join(task_label(t) for t in session.tasks)}; accuracies on {len(session.eval):,} held-out images "
           "(task-aware: each task through its own head). Every knob change re-merges from cached statistics.")

# ----------------------------------------------------------------------------- methods and knobs
methods = st.multiselect("Methods", view.METHOD_NAMES, default=["task-arithmetic", "ties", "regmean", "mats"],
                         key="si_methods", format_func=lambda m: f"{m}: {METHODS[m].help}")
if not methods:
    st.info("Choose at least one method.")
    st.stop()
on = view.enabled(methods)
values = {}
cols = st.columns(4)
for i, knob in enumerate(view.KNOBS):
    st.session_state.setdefault(f"si_{knob.field}", knob.default)
    with cols[i % 4]:
        why = None if on[knob.field] else f"none of {', '.join(methods)} reads it"
        if isinstance(knob.default, str):
            values[knob.field] = st.selectbox(knob.label, knob.choices, key=f"si_{knob.field}",
                                              disabled=not on[knob.field], help=why or knob.help)
        else:
            values[knob.field] = st.select_slider(knob.label, knob.choices, key=f"si_{knob.field}",
                                                  disabled=not on[knob.field], help=why or knob.help)
values = {k: v for k, v in values.items() if on[k]}
try:
    cfgs = view.configs(methods, values)
except MudscError as e:
    st.error(str(e))
    st.stop()

# ----------------------------------------------------------------------------- statistics, once, in the background
parts = view.stat_parts(list(cfgs.values()))
missing = session.missing_parts(parts)
last = jobs().get("same_stats")
failed = last is not None and last.tag == parts and last.job.status == "failed"  # shown below, not retried
if missing and running("same_stats") is None and not failed:
    def _stats(progress, cancel, parts=parts):
        def steps(stage: str, done: int, total: int) -> None:
            progress(f"{stage}: {done}/{total} examples", done / max(total, 1))
        session.statistics(parts, steps=steps)
        return parts
    start_job("same_stats", _stats, tag=parts)
take("same_stats")
missing = session.missing_parts(parts)
job_status("same_stats", "Task statistics (" + ", ".join(missing or parts) + ")")
ready = {m: c for m, c in cfgs.items() if not session.missing_parts(c.stat_parts)}
if len(ready) < len(cfgs):
    st.caption("Waiting for statistics: " + ", ".join(m for m in cfgs if m not in ready) + ".")

results, errors = view.merge_all(session, ready)
for method, message in errors.items():
    st.error(f"{method} cannot merge these task models: {message}")
st.session_state["same_results"] = results

# ----------------------------------------------------------------------------- metrics
multitask = st.session_state.get("same_multitask")
refs = st.session_state.get("same_references")
if refs is None or refs[0] is not multitask:
    refs = (multitask, view.reference_rows(session, multitask))
    st.session_state["same_references"] = refs
rows = view.merge_rows(session, results) + refs[1]
st.subheader("Result")
if results:
    best = max(results.values(), key=lambda r: r.metrics.per_task)
    fine = [r for r in refs[1] if r["kind"] == "fine-tuned"]
    own = float(np.mean([r[f"task {task_label(t)}"] for r, t in zip(fine, session.tasks)]))
    m1, m2, m3 = st.columns(3)
    m1.metric("Best merge", view.label(best.config).split(" (")[0], help=view.label(best.config))
    m2.metric("Mean task-aware accuracy", f"{100 * best.metrics.per_task:.1f}%",
              f"{100 * (best.metrics.per_task - own):+.1f} pp vs fine-tuned", help="each task model on its own task")
    m3.metric("Merge time", f"{sum(best.timings.values()):.3f} s")
    st.caption("Merged: " + "; ".join(view.label(r.config) for r in results.values()) + ".")
st.dataframe(rows, hide_index=True, key="si_metrics", column_config={
    k: st.column_config.NumberColumn(format=PERCENT) for k in rows[0] if k.startswith("task ")
    or k in ("mean (task-aware)", "joint")} | {"max residual": st.column_config.NumberColumn(format="%.2e")})
st.caption("Fine-tuned rows put one task model's body under every task's head (its own task is the "
           "individual bound); the base row is the base's body under the task heads. Joint: argmax over every "
           "task's classes.")
tables = {"same-init metrics": (rows, "Held-out task-aware accuracy (%) of the same-init merges, the base, the "
                                      "fine-tuned models and the multitask bound.")}

if multitask is None:
    mt = view.multitask_config(session)
    if st.button(f"Train the multitask bound ({mt.epochs} epochs on the union of the tasks)", key="si_multitask",
                 disabled=running("same_multitask") is not None):
        start_job("same_multitask", lambda progress, cancel: session.merge(mt), wait=False)
        st.rerun()
    done = take("same_multitask")
    if done is not None:
        st.session_state["same_multitask"] = done
        st.rerun()
    job_status("same_multitask", "Multitask training")

# ----------------------------------------------------------------------------- CG residuals
mats = results.get("mats")
if mats is not None:
    st.subheader("Conjugate gradient (MaTS)")
    bad = view.diverged_layers(mats)
    if bad:
        worst = next(layer for layer in mats.report.layers if layer.diverged)
        what = (f"met negative curvature after {worst.iterations} step(s)" if worst.indefinite else
                f"grew from {worst.history[0]:.2e} to {worst.residual:.2e}")
        st.warning(f"CG diverged in {len(bad)} layer(s) ({', '.join(bad)}): the system of {worst.keys[0]} {what}. "
                   "The statistics give an indefinite system (corrupt or foreign statistics files?); this merge "
                   "is not trustworthy.")
    res_rows = view.residual_rows(mats)
    if res_rows:
        fig = residual_figure(res_rows, title=f"CG residual per layer: {view.label(mats.config)}", diverged=bad)
        st.plotly_chart(fig, key="si_residual_chart")
        figures()["CG residual"] = fig
        st.caption("Relative residual ||b - C x|| / ||b|| of each layer's system after every CG step. Early "
                   "stopping from a good initialisation is a hyperparameter (MaTS, Sec. 3.2): fewer steps can "
                   "generalise better than a converged solve.")

# ----------------------------------------------------------------------------- sweep
st.subheader("Sweep")
sweepable = [k for k in view.SWEEPS if on[k]]
sweeps = st.session_state.setdefault("same_sweeps", {})
if not sweepable:
    st.caption("None of the chosen methods has a knob to sweep.")
else:
    knob = st.selectbox("Knob", sweepable, key="si_sweep_knob", format_func=lambda k: view.KNOB[k].label)
    tag = (knob, tuple(sorted((m, c) for m, c in ready.items() if METHODS[m].takes(knob))))
    if st.button("Run sweep", key="si_sweep_run", disabled=running("same_sweep") is not None):
        start_job("same_sweep", lambda progress, cancel: view.sweep(session, dict(tag[1]), knob, progress=progress),
                  tag=tag, wait=False)
        st.rerun()
    done = take("same_sweep")
    if done is not None:
        sweeps[jobs()["same_sweep"].tag[0]] = {"tag": jobs()["same_sweep"].tag, "rows": done}
    job_status("same_sweep", "Sweep")
    if knob in sweeps and sweeps[knob]["rows"]:
        references = {"fine-tuned (own task)": own} if results else {}
        if multitask is not None:
            references["multitask"] = multitask.metrics.per_task
        fig = sweep_curves(sweeps[knob]["rows"], knob=knob, current=values.get(knob), references=references,
                           title=f"Mean task-aware accuracy vs {view.KNOB[knob].label}")
        st.plotly_chart(fig, key="si_sweep_chart")
        figures()["Same-init sweep"] = fig
        tables["same-init sweep"] = (sweeps[knob]["rows"], f"Held-out accuracy (%) against {knob}.")
        if sweeps[knob]["tag"] != tag:
            st.caption("Computed for other settings; run it again to update.")
st.session_state["same_tables"] = tables

# ----------------------------------------------------------------------------- task-vector landscape
st.subheader("Task-vector landscape")
labels = [task_label(t) for t in session.tasks]
with st.form("si_landscape_form"):
    c1, c2, c3, c4, c5 = st.columns(5)
    a = c1.selectbox("x axis: task model", range(len(labels)), format_func=lambda i: labels[i], key="si_ls_a")
    b = c2.selectbox("plane through", range(len(labels)), index=1, format_func=lambda i: labels[i], key="si_ls_b")
    res = c3.slider("Grid points", 5, 31, 11, key="si_ls_res")
    per_task = c4.number_input("Images per task", 20, 2000, 100, step=20, key="si_ls_eval")
    bn = c5.radio("BatchNorm", ["exact", "preview"], key="si_ls_bn")
    go_ = st.form_submit_button("Compute task-vector landscape", type="primary")
if go_:
    merges = {view.label(r.config): r for r in results.values()}
    try:
        from mudsc.studio.same_init.plane import task_plane

        task_plane(session, merges, pair=(a, b))  # refuse a bad pair here, not in the job
    except MudscError as e:
        st.error(str(e))
    else:
        start_job("same_landscape", lambda progress, cancel: task_landscape(
            session, merges, pair=(a, b), resolution=int(res), per_task=int(per_task), bn=bn,
            progress=lambda d, t: progress(f"{d}/{t} grid points", d / max(t, 1)), should_stop=cancel.is_set))
done = take("same_landscape")
if done is not None:
    st.session_state["same_landscape"] = done
job_status("same_landscape", "Task-vector landscape")
land = st.session_state.get("same_landscape")
if land is not None:
    chance = np.log([len(t) for t in session.tasks])
    fig = landscape_figure(land, overlap_threshold=list(0.5 * chance), vmax=float(np.round(1.5 * chance.max(), 1)))
    st.plotly_chart(fig, key="si_landscape_chart", theme=None)
    figures()["Task-vector landscape"] = fig
    st.caption(f"Loss per task and the mean over the plane through the base, {land.model_labels[1]} and "
               f"{land.model_labels[2]} (true parameter distances over the body); merges and the other task models "
               f"are projected onto it (their distance to the plane in the table). BatchNorm: {land.bn_label}.")
    st.dataframe([{"model": lab, "distance to plane": round(float(land.model_distance[i]), 3),
                   **{f"{n} loss": round(float(land.model_task_loss[i, k]), 3) for k, n in enumerate(land.task_names)}}
                  for i, lab in enumerate(land.model_labels)], hide_index=True, key="si_landscape_table")

# ----------------------------------------------------------------------------- export
st.subheader("Export")
if results:
    chosen = st.selectbox("Merge to export", list(results), key="si_export_method",
                          format_func=lambda m: view.label(results[m].config))
    try:
        out = export_merge(session, results[chosen], settings().home)
    except MudscError as e:
        st.error(str(e))
    else:
        st.session_state["same_export"] = out
        files = bundle(out)
        row = st.container(horizontal=True)
        row.download_button("task checkpoints + manifest (zip)", key="si_dl_zip", file_name="same_init_merge.zip",
                            mime="application/zip", on_click="ignore", icon=":material/folder_zip:",
                            data=lambda: zip_bytes({n.split("/", 1)[1]: (p.read_bytes() if hasattr(p, "read_bytes")
                                                                         else p) for n, p in files.items()}))
        row.download_button("manifest.json", key="si_dl_manifest", file_name="manifest.json", mime="application/json",
                            data=(out / "manifest.json").read_bytes(), on_click="ignore")
        st.code(reproduce_command(), language="bash")
        st.caption(f"One checkpoint per task (the merged body with that task's head) and the manifest, written to "
                   f"`{out}`; the command redoes the merge bit for bit on CPU. The Export page puts them, the "
                   "tables and the figures into one zip.")
