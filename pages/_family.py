"""The Parents page's same-init family tab (UI only): a base and task models fine-tuned from it, from
the built-in demo, paths or uploads, checked and opened as the Same-init page's session.

State: ``family`` (:class:`mudsc.studio.same_init.family.Family`), ``family_rows`` (its check),
``same_session`` (the :class:`~mudsc.sameinit.session.SameInitSession`). A family that fails its
check shows the error and leaves the loaded one as it was.
"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from mudsc.errors import MudscError
from mudsc.methods import ALIGNERS, METHODS
from mudsc.studio.same_init.family import Family, open_aligned, open_session, shared_base
from pages._state import fingerprint, job_status, running, settings, start_job, take

SAME_INIT_STATE = ("same_session", "family", "family_rows", "same_results", "same_sweeps", "same_multitask",
                   "same_landscape", "same_export", "same_tables", "same_references")


def use_family(family: Family) -> bool:
    """Check and open `family`; on failure show why and keep what was loaded. True when opened."""
    cfg = settings()
    try:
        session, rows = open_session(family, stats_examples=cfg.stats_images, eval_images=cfg.eval_images,
                                     reset_images=cfg.stats_images, batch_size=cfg.batch_size)
    except MudscError as e:
        st.error(f"Not loaded as a same-init family: {e}")
        return False
    for key in SAME_INIT_STATE:
        st.session_state.pop(key, None)
    st.session_state.update(family=family, family_rows=rows, same_session=session)
    return True


def _train_demo(progress, cancel):
    from mudsc.zoo.demo_family import DEMO_FAMILY, demo_family

    stages = ["base", *DEMO_FAMILY["tasks"]]

    def step(stage: str, s: int, total: int) -> None:
        k = stages.index(stage)
        progress(f"{'base on all classes' if stage == 'base' else 'fine-tuning on ' + stage}, step {s}/{total}",
                 (k + s / max(total, 1)) / len(stages))

    base, tasks = demo_family(progress=step)
    return str(base), tuple(map(str, tasks))


def _lines(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def render_family_tab() -> None:
    """The tab's widgets: demo, paths, uploads, and the loaded family with its check."""
    name, data_dir, size = st.session_state["data"]
    done = take("family_demo")
    if done is not None:
        if use_family(Family(done[0], done[1], "digits", None)):
            st.session_state["data"] = ("digits", None, None)
    st.write("A **base** checkpoint and **task models fine-tuned from it** (task arithmetic, TIES, Fisher, RegMean, "
             "MaTS). The demo pre-trains a BatchNorm MLP on all digits and fine-tunes it on 0-3, 4-6 and 7-9 "
             "(a few seconds on two CPU cores, cached in `$MUDSC_HOME/demo_family`).")
    if st.button("Load the demo family", key="load_family_demo", disabled=running("family_demo") is not None):
        start_job("family_demo", _train_demo)
        st.rerun()
    job_status("family_demo", "Training the demo family")

    paths_col, upload_col = st.columns(2)
    with paths_col:
        base = st.text_input("Base checkpoint path", key="fam_base", placeholder="runs/family/base.safetensors")
        tasks = st.text_area("Task model paths, one per line", key="fam_tasks", height=100)
        stats = st.text_area("Statistics files (`mudsc stats`), one per task model, optional", key="fam_stats",
                             height=68)
        if st.button("Use this family", key="fam_use", disabled=not (base.strip() and tasks.strip())):
            if use_family(Family(base.strip(), _lines(tasks), name, data_dir, _lines(stats), size)):
                st.rerun()
    with upload_col:
        cfg = settings()
        up_base = st.file_uploader("Base (.safetensors)", type=["safetensors"], key="fam_up_base")
        up_tasks = st.file_uploader("Task models (.safetensors)", type=["safetensors"], accept_multiple_files=True,
                                    key="fam_up_tasks")
        if st.button("Use the uploaded family", key="fam_use_upload", disabled=not (up_base and up_tasks)):
            from mudsc.studio.parent_sources import store_upload

            try:
                stored = [store_upload(f.name, f.getvalue(), root=cfg.home, max_bytes=cfg.max_upload_mb * 2**20)
                          for f in [up_base, *up_tasks]]
            except MudscError as e:
                st.error(str(e))
            else:
                if use_family(Family(str(stored[0]), tuple(map(str, stored[1:])), name, data_dir, data_img_size=size)):
                    st.rerun()

    family = st.session_state.get("family")
    if family is not None:
        st.success(f"Same-init family: base `{Path(family.base).name}` and {len(family.tasks)} task models "
                   f"on {family.dataset}" + (", statistics files given" if family.stats else "") + ".",
                   icon=":material/check_circle:")
        st.dataframe(st.session_state["family_rows"], hide_index=True, key="family_table")
        st.page_link("pages/same_init.py", label="Merge them (same-init)", icon=":material/arrow_forward:")


def render_shared_base_hint(parents) -> None:
    """Where the loaded parents are one base and models fine-tuned from it: offer the same-init merge."""
    if len(parents) < 2:
        return
    shas = [fingerprint(p.path)[1] for p in parents]
    i = shared_base([p.info for p in parents], shas)
    if i is None:
        return
    st.info(f"{parents[i].name} is the base the other parents were fine-tuned from (their checkpoints record it): "
            "they are a same-init family, merged by task arithmetic, TIES, Fisher, RegMean or MaTS.")
    if st.button("Merge them as a same-init family", key="use_as_family"):
        name, data_dir, size = st.session_state["data"]
        others = tuple(p.path for j, p in enumerate(parents) if j != i)
        if use_family(Family(parents[i].path, others, name, data_dir, data_img_size=size)):
            st.switch_page("pages/same_init.py")


def render_align_then_fuse(session) -> None:
    """Different-init parents, aligned once by a one-to-one matching and then fused by a same-init solver
    (``mudsc-align+mats`` and the other hybrids): the aligned copies open on the Same-init page, their
    average as the base. The alignment runs as a job; what was loaded stays as it is if it fails."""
    if not session.paths:  # the hybrids re-read the checkpoints (and their manifest names them)
        return
    with st.expander("Align, then fuse with a same-init method (Fisher, RegMean, MaTS)"):
        st.caption("Each parent is permuted onto the first by a one-to-one matching, which keeps its function; "
                   "the aligned parents then share a basis, and the same-init solvers fuse them instead of the "
                   "plain average (`mudsc merge-same --method ALIGN+FUSE`).")
        left, right = st.columns(2)
        align = left.selectbox("Alignment", ALIGNERS, index=ALIGNERS.index("mudsc-align"), key="atf_align",
                               format_func=lambda m: f"{m}: {METHODS[m].help}")
        alpha = right.slider("alpha of the alignment", 0.0, 1.0, 0.5, 0.05, key="atf_alpha",
                             disabled=align != "mudsc-align", help="MuDSC's weight share of the similarity")
        tag = (tuple(session.paths), align, float(alpha))
        if st.button("Align the parents", key="atf_run", disabled=running("align_family") is not None):
            name, data_dir, size = st.session_state["data"]
            cfg = settings()

            def work(progress, cancel):
                progress(f"aligning with {align}", 0.0)
                return open_aligned(session.paths, dataset=name, data_dir=data_dir, data_img_size=size, align=align,
                                    align_alpha=alpha,
                                    specs=session.specs or None, align_images=cfg.stats_images,
                                    stats_examples=cfg.stats_images, eval_images=cfg.eval_images,
                                    reset_images=cfg.stats_images, batch_size=cfg.batch_size)
            start_job("align_family", work, tag=tag)
        aligned = take("align_family", tag=tag)
        if aligned is not None:
            for key in SAME_INIT_STATE:
                st.session_state.pop(key, None)
            st.session_state["same_session"] = aligned
        job_status("align_family", "Alignment")
        current = st.session_state.get("same_session")
        if current is not None and current.alignment is not None:
            st.success(f"Aligned with {current.options['align']}: the Same-init page fuses these parents.",
                       icon=":material/check_circle:")
            st.page_link("pages/same_init.py", label="Fuse them (same-init methods)", icon=":material/arrow_forward:")
