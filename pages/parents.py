"""Parents: load the built-in demo pair or checkpoints, and see each parent's accuracy per task."""
import streamlit as st

from mudsc.errors import MudscError
from mudsc.studio import Parent, describe_parents, load_parent

st.title("Parents")
st.caption("Networks trained separately, on different classes and from different seeds, to be merged.")

parents: list[Parent] = st.session_state.setdefault("parents", [])

demo_col, path_col = st.columns(2)
with demo_col:
    st.subheader("Built-in demo")
    st.write("Two ResNet-20s on scikit-learn's 8x8 digits: classes 0-4 (seed 0) and 5-9 (seed 1). "
             "Trained on first use (about 15 s on two CPU cores), then cached.")
    if st.button("Load the demo parents", key="load_demo", type="primary"):
        from mudsc.zoo import demo_pair

        bar = st.progress(0.0, text="training the demo parents")
        try:
            paths = demo_pair(progress=lambda s, t, loss: bar.progress(min(1.0, s / max(t, 1)),
                                                                         text=f"training: step {s}/{t}, loss {loss:.3f}"))
            st.session_state["parents"] = [load_parent(p, dataset="digits") for p in paths]
            bar.empty()
            st.rerun()
        except MudscError as e:
            bar.empty()
            st.error(str(e))
with path_col:
    st.subheader("From a file")
    path = st.text_input("Checkpoint path (.safetensors written by mudsc)", key="ckpt_path")
    data_name = st.selectbox("Data set", ["digits", "mnist"], key="ckpt_dataset")
    data_dir = st.text_input("Data directory (mnist)", key="ckpt_data_dir") if data_name == "mnist" else None
    if st.button("Add parent", key="add_parent", disabled=not path):
        try:
            st.session_state["parents"] = parents + [load_parent(path, dataset=data_name, data_dir=data_dir or None)]
            st.rerun()
        except MudscError as e:
            st.error(str(e))

parents = st.session_state["parents"]
if not parents:
    st.info("No parents loaded yet: load the demo pair or add checkpoints.")
    st.stop()

st.subheader("Loaded parents")
st.dataframe(describe_parents(parents), hide_index=True, use_container_width=True)
if st.button("Remove all parents", key="clear_parents"):
    st.session_state["parents"] = []
    st.rerun()
