"""Alignment: which unit of each parent went into which merged unit, how groups were paired, and how
many merges stayed inside one parent."""
import streamlit as st

from mudsc.studio import figures, views
from pages._views import require_merge, show

st.title("Alignment")
st.caption("What the solver decided: the merge map of every unit space, the pairing of groups "
           "(GroupNorm groups, attention heads), and merges within one parent versus across parents.")

session, result = require_merge(to_see="its alignment")
matches = result.solution.matches

# ----------------------------------------------------------------------------- merges within / across
st.subheader("Merges within one parent vs across parents")
show(figures.merge_counts_figure(views.merge_counts(result)), "merges within vs across parents", key="al_counts")
st.caption("Per unit space, the unit pairs joined into one merged unit: across parents (what an alignment "
           "does, one per unit) or within one parent (only zip solvers, budgeted by ZipIt!'s β). Together "
           "they reduce the N·C stacked units to C.")

# ----------------------------------------------------------------------------- merge map
st.subheader("Merge map")
space = st.selectbox("Unit space", list(matches), key="al_space")
show(figures.merge_map_figure(matches[space], space=space, max_side=256), f"merge map {space}", key="al_map")
st.caption("Row c is merged unit c, columns are the units of every parent side by side. A cell holds the weight "
           "with which that unit enters the merged unit: 1/N for an alignment (one cell per row in each "
           "parent's block, a permutation matrix), 1/k for a cluster of k units in a zip. Several cells in "
           "one row and one block are a merge within that parent.")

# ----------------------------------------------------------------------------- groups
st.subheader("Group alignment")
groups = views.group_alignments(result)
if not groups:
    st.info("No grouped unit spaces in this merge. Group alignment pairs GroupNorm groups (e.g. resnet20gn) "
            "or attention heads before matching units inside them, when the merge respects groups.")
else:
    labels = [f"{g.space} · parent 0 × parent {g.parent}" for g in groups]
    pick = st.selectbox("Grouped space", range(len(groups)), format_func=labels.__getitem__, key="al_group")
    ga = groups[pick]
    show(figures.group_alignment_figure(ga), f"group alignment {labels[pick]}", key="al_group_fig")
    st.caption("G[j, k]: mean similarity of the best one-to-one matching between the units of group j of "
               "parent 0 and group k of the other parent; crosses mark the group pairing the Hungarian "
               "algorithm chose on G (MuDSC group matching). Units are then matched only inside paired groups, "
               "so merged groups stay contiguous.")
