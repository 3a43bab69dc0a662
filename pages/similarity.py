"""Similarity: how alike the parents' units are in weight space and in activation space, which pairs
each choice of alpha merges, and where the units sit relative to each other (UMAP)."""
import numpy as np
import streamlit as st
import torch

from mudsc.errors import MudscError
from mudsc.studio import figures, umap_view, views
from pages._state import job_status, running, start_job, take
from pages._views import memo, require_merge, show

st.title("Similarity")
st.caption("Why units were merged: their similarity in weight space (S_W), in activation space (S_A), "
           "and the mix S = α S_W + (1 − α) S_A the merge matched on (MuDSC, Xu et al., CVPR 2024).")

session, result = require_merge(to_see="similarities")

spaces = list(result.solution.matches)
left, right = st.columns([2, 3])
space = left.selectbox("Unit space", spaces, key="sim_space", help="A set of hidden units merged together")
choice = right.radio("Highlight the pairs chosen by", list(figures.CHOICE), horizontal=True, key="sim_choice",
                     format_func=lambda c: figures.CHOICE[c][0])

try:
    with st.spinner("Activation statistics and similarities"):
        view = memo(result, "space", lambda: views.space_similarity(session, result, space), space)
except MudscError as e:
    st.error(str(e))
    st.stop()

# ----------------------------------------------------------------------------- scatter
st.subheader("Weight vs activation similarity")
ps = memo(result, "scatter", lambda: views.pair_scatter(view, max_points=4000,
                                                        generator=torch.Generator().manual_seed(0)), space)
show(figures.similarity_scatter(ps, highlight=choice, space=space), f"similarity scatter {space}", key="sim_scatter")
sampled = "" if len(ps.s_a) == ps.n_pairs else f" {ps.n_pairs:,} pairs in all; a random {len(ps.s_a):,} are drawn, every merged pair among them."
st.caption("Each point is a pair (unit j of parent 0, unit k of another parent). x: Pearson correlation of "
           "their activations on the same images (S_A). y: correlation of their weight descriptors: the "
           "filter that produces the unit, its norm parameters and the weights that read it, with "
           "neighbouring layers mapped into the merged basis of the final solution (S_W). Pairs high on both "
           "axes are alike in both spaces; the weight-only and activation-only choices re-solve this space "
           "alone on S_W or S_A with the merge's solver." + sampled)
summary = views.choice_summary(ps)
st.dataframe([{"choice": figures.CHOICE[r["choice"]][0], "cross-parent pairs merged": r["pairs"],
               "mean S_A": round(r["mean S_A"], 3), "mean S_W": round(r["mean S_W"], 3)} for r in summary],
             hide_index=True)

# ----------------------------------------------------------------------------- agreement
st.subheader("Do weights and activations agree?")
rows = memo(result, "agreement", lambda: views.network_agreement(session, result))
show(figures.agreement_figure(rows), "matching agreement per unit space", key="sim_agreement")
chance = 100 / max(1, min(view.sizes))
st.caption("Share of units merged with exactly the same partners by two matchings, per unit space. "
           f"Unrelated permutations agree on about {chance:.0f}% of units by chance in this space. "
           "Low weight-vs-activation agreement means the two similarities point to different partners, "
           "and α decides which one the merge follows.")

# ----------------------------------------------------------------------------- heatmaps
st.subheader("Similarity matrices")
hv = views.heatmap_view(view, choice=choice, max_side=256)
show(figures.similarity_heatmaps(hv, view.sizes, space=space, choice=choice), f"similarity matrices {space}",
     key="sim_heatmaps")
st.caption("Units of all parents stacked (lines separate parents), each parent's units sorted by the merged "
           "unit they join, so an alignment shows as a diagonal in the off-diagonal blocks. Circles mark "
           "pairs merged together; circles inside a diagonal block are merges within one parent (zip). "
           "One colour scale for all three matrices." + (f" Matrices above 256 units are drawn as "
                                                         f"{hv.factor}×{hv.factor} block means." if hv.factor > 1 else ""))

# ----------------------------------------------------------------------------- UMAP
st.subheader("Units in two dimensions (UMAP)")
with_merge = result.config.cut == "full"
cloud = memo(result, "cloud", lambda: views.unit_cloud(session, result, space, with_merge=with_merge), space)
n_neighbors = st.slider("UMAP neighbours", 5, 50, 15, key="umap_neighbors",
                        help="Larger values keep more of the global structure")
params = {"seed": 0, "n_neighbors": n_neighbors}
tag = (result.config, space, n_neighbors)
if umap_view.cached(cloud.features, **params):
    coords = umap_view.embed(cloud.features, **params)
else:
    # off the page's thread: the first UMAP in a server compiles numba code (about 15 s); a job shows it
    # going, leaves the other pages usable and waits its turn for the server's job slot
    if st.button("Compute the UMAP", key="umap_go", disabled=running("umap") is not None,
                 help="The first UMAP in a server process compiles numba code (about 15 s)"):
        features = cloud.features
        start_job("umap", lambda progress, cancel: umap_view.embed_reporting(features, progress, **params),
                  tag=tag)
    coords = take("umap", tag=tag)
    if coords is None:
        job_status("umap", "UMAP")
if coords is not None:
    show(figures.umap_figure(coords, cloud, space=space), f"UMAP of units {space}", key="sim_umap")
    n_units = int(np.sum(cloud.owner >= 0))
    st.caption(f"{n_units} units of {len(view.sizes)} parents" + (f" and the merged model's {int(np.sum(cloud.owner < 0))}"
               " units" if with_merge else "") + f", each described by its activations at {cloud.features.shape[1]} "
               "fixed positions (same images for every model), embedded jointly with UMAP (correlation metric, "
               f"{n_neighbors} neighbours, seed 0). Lines join each unit to the merged unit it became"
               + ("" if with_merge else " (here: the units of one cluster, since a partial merge has no single merged model)")
               + ". Axes have no units; only neighbourhoods are meaningful.")
elif running("umap") is None:
    st.caption("Not computed yet for these units and settings; results are cached on disk.")
