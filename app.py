"""mudsc studio: merge independently trained networks and see why the merge works.

Run with ``make run`` (or ``streamlit run app.py``). This file is the frame of every run: page
config, the app settings (one typed object, read once per browser session) and the navigation.
Pages live in ``pages/``; they lay out widgets and call the engines in ``mudsc/`` and ``landscape/``.
Shared state and the cached resources are described in ``pages/_state.py``.
"""
import streamlit as st

from pages._state import AppSettings

st.set_page_config(page_title="mudsc studio", page_icon=":material/merge:", layout="wide")
st.session_state.setdefault("settings", AppSettings.from_env())

PAGES = [
    st.Page("pages/parents.py", title="Parents", icon=":material/family_history:", default=True),
    st.Page("pages/merge.py", title="Merge", icon=":material/merge:"),
    st.Page("pages/same_init.py", title="Same-init merge", icon=":material/call_merge:"),
    st.Page("pages/similarity.py", title="Similarity", icon=":material/scatter_plot:"),
    st.Page("pages/alignment.py", title="Alignment", icon=":material/grid_on:"),
    st.Page("pages/loss_landscape.py", title="Landscape", icon=":material/landscape:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
]

st.navigation(PAGES).run()
