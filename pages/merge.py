"""Merge: a method and the zip depth chosen on a drawing of the network (the page), then its knobs,
the merge next to its parents and the ensemble, and alpha and depth sweeps (a fragment: moving alpha
reruns only that panel; the drawing and the parents' rows stay as they are), all from the session's
cached statistics."""
from __future__ import annotations

import streamlit as st

from mudsc.cli.command_lines import sweep_job
from mudsc.data import task_label
from mudsc.diffinit.config import MergeConfig, make_config
from mudsc.diffinit.session import MergeSession
from mudsc.diffinit.sweep import grid
from mudsc.errors import MudscError
from mudsc.methods import METHODS, diff_init_names
from mudsc.studio import merging
from mudsc.studio.demo import demo_note, first_config, is_demo
from mudsc.studio.merge_figures import sweep_figure
from mudsc.studio.summary import config_label
from mudsc.studio.sweeps import sweep_with_selection
from mudsc.studio.torchrun import BIG_SWEEP, landed_sweep
from pages._state import (
    cached_cut_costs,
    cached_metric_rows,
    cached_network_figure,
    drop_stale_run,
    figures,
    job_status,
    jobs,
    require_session,
    rerun_requested,
    running,
    session_key,
    settings,
    start_job,
    take,
)

ALPHAS = [round(0.1 * i, 1) for i in range(11)]
ALPHA_STEP = 0.05
PUBLISHED_PATIENCE = MergeConfig.model_fields["patience"].default


@st.fragment
def knobs_and_result(session: MergeSession, key: tuple, method: str, cut: str) -> None:
    """The method's knobs, the merge they give and the sweeps: what an alpha step changes, rerun alone."""
    spec = METHODS[method]
    graph = session.graph
    config = st.session_state["config"]
    a_col, mix_col, za_col, zb_col = st.columns(4, gap="medium")
    alpha = a_col.slider("alpha: weight share of the similarity", 0.0, 1.0, step=ALPHA_STEP, key="m_alpha",
                         disabled=not spec.takes("alpha"),
                         help="S = alpha * S_weight + (1 - alpha) * S_activation (MuDSC Algorithm 1); 0 is ZipIt!'s "
                              "activation matching, 1 weight matching")
    mix = mix_col.radio("Mixing", ["published", "standardized"], key="m_mix", horizontal=True,
                        disabled=not spec.takes("mix"),
                        help="published: mix the two correlation matrices as they are; standardized: z-score "
                             "each over its off-diagonal entries first")
    zip_a = za_col.slider("ZipIt! a: decay of repeatedly merged units", 0.0, 1.0, step=0.05, key="m_zip_a",
                          disabled=not spec.takes("zip_a"))
    zip_b = zb_col.slider("ZipIt! b: share of merges within one parent", 0.0, 1.0, step=0.05, key="m_zip_b",
                          disabled=not spec.takes("zip_b"))
    with st.expander("Per-unit-space alpha", expanded=bool(config.alpha_overrides)):
        st.caption("Leave a cell empty to use the global alpha; early layers often prefer activations, late "
                   "layers weights. Applies to the MuDSC methods.")
        own = dict(config.alpha_overrides)
        edited = st.data_editor(
            [{"unit space": s.name, "units": s.size, "alpha": own.get(s.name)} for s in graph.spaces],
            key="m_overrides", hide_index=True,
            disabled=["unit space", "units"] if spec.takes("alpha_overrides") else True,
            column_config={"alpha": st.column_config.NumberColumn(min_value=0.0, max_value=1.0, step=0.05,
                                                                  format="%.2f")})
    overrides = {r["unit space"]: float(r["alpha"]) for r in edited
                 if r["alpha"] is not None and r["alpha"] == r["alpha"]}
    with st.expander("Iterative solve and seed", expanded=(config.patience, config.seed) != (PUBLISHED_PATIENCE, 0)):
        p_col, s_col = st.columns(2)
        patience = p_col.number_input(
            "Stop after this many sweeps without improvement", min_value=1, max_value=100, step=1,
            key="m_patience", disabled=not spec.takes("patience"),
            help=f"The stopping rule of MuDSC's and Git Re-Basin's sweeps across layers; the papers use "
                 f"{PUBLISHED_PATIENCE}. Fewer sweeps make a paper-scale pair quicker to scrub, and may stop "
                 "before a later, better sweep (benchmarks/RESULTS.md, \"The iterative solve's stopping patience\").")
        seed = s_col.number_input("Seed", min_value=0, step=1, key="m_seed", disabled=not spec.takes("seed"),
                                  help="draws the order in which each sweep visits the unit spaces, and the "
                                       "positions the activation statistics sample (when they sample)")
    with st.expander("Activation statistics", expanded=config.stats_positions is not None):
        positions = st.number_input(
            "Spatial positions (or tokens) per image and tap, 0 for all", min_value=0, step=16, key="m_positions",
            disabled=not spec.takes("stats_positions"),
            help="Large inputs have thousands of positions per image (a ResNet's first stage at 224 x 224 has "
                 "3,136): sampling some of them, seeded, makes the statistics pass cheaper. A new value "
                 "makes a new pass over the statistics images; the same value finds it cached.")
    try:
        config = make_config(**{**config.model_dump(), "method": method, "alpha": float(alpha), "mix": mix,
                                "zip_a": float(zip_a), "zip_b": float(zip_b), "alpha_overrides": overrides,
                                "cut": cut, "patience": int(patience), "seed": int(seed),
                                "stats_positions": int(positions) or None})
        st.session_state["config"] = config
    except MudscError as e:
        st.error(str(e))

    # ------------------------------------------------------------------------- the merge
    drop_stale_run()  # the slider moved on already: start no merge for a setting it has left
    result = st.session_state.get("result")
    tracked = jobs().get("merge")
    if result is None or result.config != config:
        held = session.cached(config)  # made ahead, by a sweep, or by another browser on these parents
        if held is None and session.in_flight(config):  # being made right now: wait for it, not a second copy
            held = merging.await_in_flight(session, config, timeout=settings().inline_wait_s, stop=rerun_requested)
        if held is not None:
            st.session_state["result"] = result = held
            if tracked is not None and tracked.job.running:
                tracked.job.cancel()  # a merge for a setting the slider has left
        elif not (tracked is not None and tracked.tag == config):
            start_job("merge", lambda progress, cancel: merging.merge(session, config, progress), tag=config)
    fresh = take("merge", tag=config)
    if fresh is not None:
        st.session_state["result"] = result = fresh
    drop_stale_run()

    st.subheader("Result")
    job_status("merge", "Merging")
    if result is None:
        return
    if result.config != config:
        st.caption(f"Showing the previous merge ({config_label(result)}) while the new one runs.")
    else:
        st.caption(f"Merged with {config_label(result)}.")
        steps = settings().merge_ahead
        if steps and spec.takes("alpha") and merging.worth_ahead(result):
            ahead = jobs().get("ahead")
            if ahead is None or ahead.tag != config:
                toward = 1 if ahead is not None and ahead.tag.alpha < config.alpha else -1
                near = merging.alpha_neighbours(config, step=ALPHA_STEP, radius=steps, toward=toward)
                start_job("ahead", lambda progress, cancel: merging.merge_ahead(session, near, progress),
                          tag=config, wait=False, background=True)
    rows = cached_metric_rows(key, result.config, session, result)
    merged, parent_rows, ensemble = rows[0], rows[1:-1], rows[-1]
    best_joint = max((r["joint"] for r in parent_rows if r["joint"] is not None), default=None)
    one_parent = parent_rows[0]["parameters"]
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Joint accuracy", f"{100 * merged['joint']:.1f}%",
              None if best_joint is None else f"{100 * (merged['joint'] - best_joint):+.1f} pp vs best parent",
              help="argmax over the classes of all tasks, on held-out images of every task")
    m2.metric("Per-task accuracy", f"{100 * merged['per-task']:.1f}%",
              f"{100 * (merged['per-task'] - ensemble['per-task']):+.1f} pp vs ensemble",
              help="mean over tasks of the accuracy among that task's classes")
    m3.metric("Parameters (vs one parent)", f"{merged['parameters'] / one_parent:.2f}x",
              help=f"{merged['parameters']:,} parameters; the ensemble has {ensemble['parameters']:,}")
    m4.metric("Merge time", f"{sum(result.timings.values()):.2f} s", help=", ".join(
        f"{k} {v:.2f} s" for k, v in result.timings.items()))
    percent = {k: st.column_config.NumberColumn(format="percent") for k in rows[0] if k.startswith("task ")
               or k in ("joint", "per-task")}
    st.dataframe(rows, hide_index=True, key="metrics_table", column_config={
        **percent, "parameters": st.column_config.NumberColumn(format="compact"),
        "FLOPs": st.column_config.NumberColumn(format="compact", help="forward FLOPs per image")})
    sweeps(session, config, spec, ensemble["joint"], best_joint)


def sweeps(session: MergeSession, config: MergeConfig, spec, ensemble_joint: float, best_joint: float | None) -> None:
    """Alpha and depth sweeps: each point a full merge from the cached statistics, in the background."""
    st.subheader("Sweeps")
    st.caption("Every point is a full merge (matching, fusion, BatchNorm reset, evaluation) from the cached "
               "statistics, computed in the background.")
    done_sweeps = st.session_state.setdefault("sweeps", {})
    references = {"ensemble": ensemble_joint, **({"best parent": best_joint} if best_joint is not None else {})}
    cuts = [c.name for c in session.graph.cuts] + ["full"]
    for kind, col in zip(("alpha", "cut"), st.columns(2)):
        name = f"sweep_{kind}"
        # what a sweep varies is not part of its identity
        base = config.model_copy(update={kind: 0.0 if kind == "alpha" else "full"})
        with col:
            enabled = spec.takes(kind)
            if kind == "alpha":
                label, configs = "Run alpha sweep", grid(config, alphas=ALPHAS) if enabled else []
            else:
                label, configs = "Run depth sweep", grid(config, cuts=cuts) if enabled else []
            why = f"{config.method} has no {kind} knob"
            if st.button(label, key=f"{name}_run", disabled=not enabled or running(name) is not None,
                         help=None if enabled else why):
                start_job(name, lambda progress, cancel, cs=configs, k=kind: sweep_with_selection(
                    session, cs, k, progress=progress), tag=base, wait=False)
                st.rerun()
            done = take(name)
            if done is not None:
                done_sweeps[kind] = {"base": jobs()[name].tag, **done}
            job_status(name, "Alpha sweep" if kind == "alpha" else "Depth sweep")
            values = {"alphas": ALPHAS} if kind == "alpha" else {"cuts": cuts}
            job = sweep_job(session, config, **values) if enabled else None
            if job is not None and len(configs) >= BIG_SWEEP:
                with st.expander("Or run it as a torchrun job"):
                    st.code(job.command, language="bash")
                    st.caption(f"Its rows are shown here when they land in {job.result}.")
                if kind not in done_sweeps and (landed := landed_sweep(job.result)) is not None:
                    done_sweeps[kind] = {"base": base, "rows": landed}
            if kind in done_sweeps:
                sweep = done_sweeps[kind]
                fig = sweep_figure(sweep["rows"], x=kind, current=getattr(config, kind), references=references,
                                   x_title="alpha" if kind == "alpha" else "merged up to (cut)",
                                   title=f"{sweep['base'].method}: accuracy vs "
                                         + ("alpha" if kind == "alpha" else "zip depth"), shares=kind == "cut",
                                   selected=sweep.get("selected"))
                st.plotly_chart(fig, key=f"{name}_chart")
                if sweep.get("note"):
                    st.caption(sweep["note"])
                figures()["Alpha sweep" if kind == "alpha" else "Depth sweep"] = fig
                if sweep["base"] != base:
                    st.caption(f"Computed for {sweep['base'].method}"
                               + ("" if kind == "cut" else f", cut {sweep['base'].cut}")
                               + "; the current setting differs, run it again to update.")


session = require_session()
key = session_key()
graph = session.graph
cuts = [c.name for c in graph.cuts] + ["full"]
space_names = [s.name for s in graph.spaces]

config = st.session_state.get("config") or first_config(session.paths)
if config.cut not in cuts or any(n not in space_names for n, _ in config.alpha_overrides):
    # a config made for other parents: keep the method and knobs, drop what these parents lack
    config = make_config(**{**config.model_dump(), "cut": "full", "alpha_overrides": ()})
st.session_state["config"] = config
for widget, value in {"m_method": config.method, "m_alpha": config.alpha, "m_mix": config.mix,
                      "m_zip_a": config.zip_a, "m_zip_b": config.zip_b, "m_cut": config.cut,
                      "m_patience": config.patience, "m_seed": config.seed,
                      "m_positions": config.stats_positions or 0}.items():
    st.session_state.setdefault(widget, value)  # widgets mirror the config; a page switch deleted their keys

st.title("Merge")
st.caption(f"{len(session.parents)} parents on tasks {' and '.join(task_label(t) for t in session.tasks)}; "
           f"accuracies on {len(session.eval):,} held-out images. Every change re-merges from cached statistics.")
if is_demo(session.paths):
    st.info(demo_note())

controls, drawing = st.columns([1, 2], gap="large")
with controls:
    method = st.selectbox("Method", diff_init_names(), key="m_method")
    spec = METHODS[method]
    st.caption(f"{spec.help} — {spec.paper}")
    # a slider, not buttons: ResNet-20 alone has a cut after each of its blocks
    cut = st.select_slider("Merge up to", cuts, key="m_cut", disabled=not spec.takes("cut"),
                           format_func=lambda c: "full (whole network)" if c == "full" else c)
    cut = cut if spec.takes("cut") else "full"
    costs = cached_cut_costs(key, session)
    st.caption(f"Merging up to **{cut}** shares {costs[cut]['params_share']:.1%} of the parameters and "
               f"{costs[cut]['flops_share']:.1%} of the FLOPs between the tasks.")
    st.caption("Spaces up to the cut are merged; the layers after it stay one copy per task (a multi-head "
               "model with more parameters). A cut inside a residual stage splits its stream: merged before "
               "the cut, unmerged into each parent's basis after it. Only valid cuts, where every path passes "
               "through one tensor, are offered.")
with drawing:
    net = cached_network_figure(key, cut, session)
    st.plotly_chart(net, key="network_chart", config={"displayModeBar": False})
    figures()["Unit spaces and cut"] = net

knobs_and_result(session, key, method, cut)
