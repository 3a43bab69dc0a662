"""Export: the merged checkpoint with its manifest, the commands that reproduce it, metric tables as CSV
and LaTeX, and every figure the session drew (HTML; PNG, SVG and PDF where a browser can render them)."""
from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from mudsc.cli.command_lines import manifest_command, merge_command
from mudsc.errors import MudscError
from mudsc.studio.figure_export import (
    MIME,
    STATIC_FORMATS,
    figure_files,
    figure_html,
    file_stem,
    static_image,
    zip_bytes,
)
from mudsc.studio.same_init.export import bundle as same_init_bundle
from mudsc.studio.same_init.export import reproduce_command as same_init_command
from mudsc.studio.summary import config_label
from mudsc.studio.tables import to_csv, to_latex
from pages._state import (
    cached_export,
    cached_metric_rows,
    current_session,
    figures,
    session_key,
    static_export_works,
)

session, key = current_session(), session_key()
result = st.session_state.get("result") if session is not None else None
same_export = st.session_state.get("same_export")  # the Same-init page's export folder

st.title("Export")
if result is None and same_export is None:
    st.info("No merge yet: choose a method on the Merge page, or merge a same-init family on the Same-init page.")
    st.page_link("pages/merge.py", label="Go to Merge", icon=":material/arrow_forward:")
    st.stop()
if result is not None:
    st.caption(f"The current merge: **{config_label(result)}**.")
everything_slot = st.container()
bundle: dict[str, str | Path] = {}  # the one zip of everything: path in the archive -> text or file to read


# ----------------------------------------------------------------------------- checkpoint
if result is not None:
    st.subheader("Merged checkpoint")
if result is not None and result.config.method == "ensemble":
    st.info("The ensemble is an upper bound, not a merged model: there is no checkpoint to export.")
elif result is not None:
    try:
        out = cached_export(key, result.config, session, result)
    except MudscError as e:
        st.error(str(e))
        out = None
    if out is not None:
        model_path, manifest_path = out / "model.safetensors", out / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        buttons = st.container(horizontal=True)
        buttons.download_button("model.safetensors", data=model_path.read_bytes, file_name="model.safetensors",
                                mime="application/octet-stream", key="dl_model", on_click="ignore",
                                icon=":material/download:")
        buttons.download_button("manifest.json", data=manifest_path.read_bytes(), file_name="manifest.json",
                                mime="application/json", key="dl_manifest", on_click="ignore",
                                icon=":material/download:")
        both = {"model.safetensors": model_path, "manifest.json": manifest_path}
        bundle.update({f"merge/{n}": p for n, p in both.items()})
        buttons.download_button("both as merge.zip", file_name="merge.zip", mime="application/zip", key="dl_zip",
                                data=lambda: zip_bytes({n: p.read_bytes() for n, p in both.items()}), on_click="ignore",
                                icon=":material/folder_zip:")
        st.caption(f"{'Multi-head' if result.multihead else 'Single'} model, {result.params:,} parameters, "
                   f"sha256 `{manifest['model_sha256'][:16]}…`; written to `{out}`. The manifest records the "
                   "config, the parents with their sha256, the data, versions, metrics and every unit "
                   "space's transform.")

        st.subheader("Reproduce from the command line")
        from_manifest = manifest_command("manifest.json", "merged")
        st.code(from_manifest, language="bash")
        st.caption("Redoes the merge from the manifest; the parents are checked against their sha256.")
        all_eval = len(session.data.eval.subset(session.union))
        spelled = merge_command(result.config, parents=session.paths, dataset=session.data.reload_name, data_dir=session.data_dir,
                                data_img_size=session.data.resized_to, stats_images=session.stats_images,
                                eval_images=None if len(session.eval) == all_eval else len(session.eval),
                                batch_size=session.batch_size, out="merged")
        st.code(spelled, language="bash", wrap_lines=True)
        st.caption("The same merge spelled out (options at their defaults are left out).")
        bundle["merge/reproduce.sh"] = ("#!/bin/sh\n# Redo the merge from its manifest (parents checked by sha256):\n"
                                        f"{from_manifest}\n# or, spelled out:\n# {spelled}\n")

# ----------------------------------------------------------------------------- same-init
if same_export is not None:
    st.subheader("Same-init merge")
    same_files = same_init_bundle(same_export)
    bundle.update(same_files)
    st.caption(f"{len(same_files) - 2} task checkpoint(s) (merged body + that task's head) and the manifest from "
               f"the Same-init page, in `{same_export}`; `same-init/` in the zip.")
    st.code(same_init_command(), language="bash")

# ----------------------------------------------------------------------------- tables
st.subheader("Tables")
tables = {}
if result is not None:
    rows = cached_metric_rows(key, result.config, session, result)
    tables["metrics"] = (rows, f"Held-out accuracy (%) of the merge ({config_label(result)}), its parents and "
                               "the ensemble; parameters and forward FLOPs per image.")
    for kind, sweep in st.session_state.get("sweeps", {}).items():
        what = "alpha" if kind == "alpha" else "zip depth (cut)"
        tables[f"{kind} sweep"] = (sweep["rows"], f"Held-out accuracy (%) of {sweep['base'].method} against {what}.")
tables.update(st.session_state.get("same_tables", {}))
for name, (table, caption) in tables.items():
    accuracy = [k for k in table[0] if k.endswith("_acc") or k.startswith("task ")
                or k in ("joint", "per-task", "mean (task-aware)")]
    latex = to_latex(table, percent=accuracy, bold_max=[k for k in accuracy if k in ("joint", "joint_acc")],
                     caption=caption, label=f"tab:{name.replace(' ', '-')}")
    stem = name.replace(" ", "_")
    bundle.update({f"tables/{stem}.csv": to_csv(table), f"tables/{stem}.tex": latex})
    st.markdown(f"**{name.capitalize()}** ({len(table)} rows)")
    buttons = st.container(horizontal=True)
    buttons.download_button("CSV", data=to_csv(table), file_name=f"{stem}.csv", mime="text/csv",
                            key=f"dl_{stem}_csv", on_click="ignore", icon=":material/table:")
    buttons.download_button("LaTeX", data=latex, file_name=f"{stem}.tex", mime="text/x-tex",
                            key=f"dl_{stem}_tex", on_click="ignore", icon=":material/description:")
    with st.expander(f"LaTeX source of the {name} table (needs booktabs)"):
        st.code(latex, language="latex")

# ----------------------------------------------------------------------------- figures
st.subheader("Figures")
drawn = figures()
static = static_export_works()
if not drawn:
    st.info("No figures yet: the Merge page and the analysis pages add theirs here.")
else:
    st.caption("HTML files are interactive and open offline (plotly.js inlined). "
               + ("PNG, SVG and PDF are rendered by kaleido with the machine's Chromium when you click."
                  if static else "PNG, SVG and PDF need a Chrome or Chromium for kaleido (apt-get install chromium); "
                                 "only HTML is offered here."))
for title, fig in drawn.items():
    stem = file_stem(title)
    row = st.container(horizontal=True, vertical_alignment="center")
    row.markdown(f"**{title}**", width=320)
    row.download_button("HTML", data=lambda f=fig: figure_html(f), file_name=f"{stem}.html", mime=MIME["html"],
                        key=f"dl_fig_{stem}_html", on_click="ignore")
    for fmt in STATIC_FORMATS:
        row.download_button(fmt.upper(), data=lambda f=fig, x=fmt: static_image(f, x), file_name=f"{stem}.{fmt}",
                            mime=MIME[fmt], key=f"dl_fig_{stem}_{fmt}", on_click="ignore", disabled=not static)

# ----------------------------------------------------------------------------- everything
def everything() -> bytes:
    files = {name: v.read_bytes() if isinstance(v, Path) else v for name, v in bundle.items()}
    return zip_bytes({**files, **figure_files(drawn, static_formats=("pdf", "png") if static else ())})


with everything_slot:
    kinds = (["the checkpoint, manifest and commands"] if "merge/manifest.json" in bundle else []) + (
        ["the same-init task checkpoints and manifest"] if same_export is not None else []) + [
        f"{len(tables)} table(s) as CSV and LaTeX",
        f"{len(drawn)} figure(s) as HTML" + (", PDF and PNG" if static else "")]
    st.download_button("Everything as one zip", data=everything, file_name="mudsc_export.zip", mime="application/zip",
                       key="dl_everything", type="primary", icon=":material/folder_zip:", on_click="ignore")
    st.caption("One archive for the paper: " + "; ".join(kinds) + ". Figures are rendered when you click "
               "(about 0.2 s each once the renderer has started).")
