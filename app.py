"""mudsc studio: merge independently trained networks and see why the merge works.

Run with ``make run`` (or ``streamlit run app.py``). Pages live in ``pages/``; they only lay out
widgets and call the engines in ``mudsc/`` and ``landscape/``.
"""
import streamlit as st

st.set_page_config(page_title="mudsc studio", layout="wide")

PAGES = [
    st.Page("pages/parents.py", title="Parents", icon=":material/family_history:", default=True),
]

st.navigation(PAGES).run()
