"""Plumbing shared by the Similarity, Alignment and Landscape pages (UI only, no math): the guard,
a per-browser-session memo of view computations, and figure registration for the Export page."""
from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from mudsc.diffinit.session import MergeResult, MergeSession
from pages._state import session_key

MEMO_ENTRIES = 24


def require_merge(*, to_see: str | None = None) -> tuple[MergeSession, MergeResult]:
    """The session and the latest merge, or a pointer to the page that makes them, and stop.
    With `to_see`, also stop when the merge matched no units (there is nothing of that to show)."""
    session = st.session_state.get("session")
    if session is None:
        st.info("Load parents on the Parents page first")
        st.stop()
    result = st.session_state.get("result")
    if result is None:
        st.info("Merge the parents on the Merge page first: these views explain a merge.")
        st.stop()
    if to_see is not None and result.solution is None:
        st.info(f"The {result.config.method} merge matches no units; merge with a matching method to see {to_see}.")
        st.stop()
    return session, result


def memo(result: MergeResult, name: str, fn: Callable[[], Any], *args: Any) -> Any:
    """`fn()` once per (session fingerprint, merge config, name, args) in this browser session; the
    oldest entries are dropped beyond MEMO_ENTRIES (similarity matrices are O x O)."""
    store: dict = st.session_state.setdefault("view_memo", {})
    key = (session_key(), result.config, name, args)
    if key not in store:
        store[key] = fn()
        while len(store) > MEMO_ENTRIES:
            store.pop(next(iter(store)))
    return store[key]


def show(fig, title: str, *, key: str) -> None:
    """Draw a figure and file it under `title` for the Export page."""
    st.plotly_chart(fig, key=key, theme=None, config={"displaylogo": False})
    st.session_state.setdefault("figures", {})[title] = fig
