"""Parents: the data, the networks to merge (demo, uploads, paths, plain weights with an architecture),
each parent's accuracy per task and unit spaces, and the merge session the other pages use."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from mudsc.data import NAMED
from mudsc.errors import MudscError
from mudsc.studio.demo import demo_tasks
from mudsc.studio.parents import Parent, describe_parents
from mudsc.studio.summary import parent_rows, space_rows
from pages._family import render_align_then_fuse, render_family_tab, render_shared_base_hint
from pages._state import (
    cached_parent,
    cached_session,
    current_session,
    drop_session,
    fingerprint,
    job_status,
    running,
    settings,
    start_job,
    take,
)

DATA_KINDS = {"digits": "Built-in digits (8x8, scikit-learn)", "mnist": "MNIST directory (IDX files)",
              "cifar10": "CIFAR-10 directory (official binary or Python batches)",
              "cifar100": "CIFAR-100 directory (official binary or Python batches)",
              "imagefolder": "ImageFolder directory", "npz": ".npz file with arrays x and y"}

st.session_state.setdefault("parents", [])
st.session_state.setdefault("data", ("digits", None, None))
cfg = settings()


def add_parents(paths: list[str | Path]) -> int:
    """Evaluate checkpoints on the current data and append them; a file already loaded is skipped."""
    parents: list[Parent] = st.session_state["parents"]
    have = {fingerprint(p.path)[1] for p in parents}
    new = []
    for path in paths:
        resolved, sha = fingerprint(path)
        if sha not in have:
            new.append(cached_parent(resolved, sha, *st.session_state["data"]))
            have.add(sha)
    st.session_state["parents"] = parents + new
    return len(new)


def train_demo(progress, cancel) -> list[str]:
    from mudsc.zoo.demo import demo_pair

    seen = {"parent": 0, "last": 0}

    def step(s: int, total: int, loss: float) -> None:
        if s < seen["last"]:
            seen["parent"] += 1  # demo_pair trains its two parents one after the other
        seen["last"] = s
        progress(f"parent {seen['parent'] + 1} of 2, step {s}/{total}, loss {loss:.3f}",
                 (seen["parent"] + s / max(total, 1)) / 2)

    return [str(p) for p in demo_pair(progress=step)]


# A finished demo job switches the data to digits and loads the pair, before any widget is drawn.
demo_paths = take("demo")
if demo_paths is not None:
    st.session_state["data"] = ("digits", None, None)
    st.session_state["data_kind"] = "digits"
    try:
        add_parents(demo_paths)
    except MudscError as e:
        st.error(str(e))


# ----------------------------------------------------------------------------- the merge session
def prepare(session):
    def work(progress, cancel):
        session.activation_stats(progress)
        progress("evaluating the parents", 1.0)
        session.parent_metrics()
        return session
    return work


parents: list[Parent] = st.session_state["parents"]
if len(parents) >= 2:
    key = (tuple(fingerprint(p.path) for p in parents), *st.session_state["data"], cfg.stats_images,
           cfg.eval_images, cfg.batch_size)
    if st.session_state.get("session_target") != key:
        drop_session()
        st.session_state["session_target"] = key
        st.session_state.pop("session_error", None)
        try:
            start_job("stats", prepare(cached_session(*key)), tag=key)
        except MudscError as e:
            st.session_state["session_error"] = str(e)
    ready = take("stats", tag=key)
    if ready is not None:
        st.session_state["session"], st.session_state["session_key"] = ready, key
elif st.session_state.get("session_target"):  # fewer than two parents left: the session is gone
    drop_session()
    st.session_state.pop("session_target", None)
    st.session_state.pop("session_error", None)


# ----------------------------------------------------------------------------- page
st.title("Parents")
st.caption("Networks trained separately (different classes, different seeds) that you want to merge into one. "
           "Accuracies are measured on held-out images.")

st.subheader("1. Data")
data_col, path_col, size_col = st.columns([1, 2, 1])
st.session_state.setdefault("data_kind", st.session_state["data"][0])
st.session_state.setdefault("data_path", st.session_state["data"][1] or "")
st.session_state.setdefault("data_img_size", st.session_state["data"][2] or 0)
kind = data_col.selectbox("Data set", list(DATA_KINDS), format_func=DATA_KINDS.get, key="data_kind")
data_path = path_col.text_input("Directory or file", key="data_path", disabled=kind == "digits",
                                placeholder=f"/path/to/{kind}" if kind in NAMED else "/path/to/data")
data_size = size_col.number_input("Load at size", min_value=0, step=1, key="data_img_size",
                                  help="resize every image's shorter side, then centre-crop a square, as it loads "
                                       "(--data-img-size; needed for a folder mixing sizes); every parent sees "
                                       "these images. 0 keeps the stored size")
wanted = (kind, None if kind == "digits" else (data_path.strip() or None), int(data_size) or None)
if wanted != st.session_state["data"]:
    if wanted[1] is None and kind != "digits":
        st.info(f"Give the {DATA_KINDS[kind]} to use it.")
    else:
        try:
            from mudsc.data import load_dataset

            load_dataset(wanted[0], wanted[1], img_size=wanted[2])
            refreshed = [cached_parent(*fingerprint(p.path), *wanted) for p in parents]
            st.session_state["data"] = wanted
            st.session_state["parents"] = refreshed
            st.rerun()
        except MudscError as e:
            st.error(f"Keeping {st.session_state['data'][0]}: {e}")
name, data_dir, data_size = st.session_state["data"]
st.caption(f"Evaluating on **{name}**" + (f" from `{data_dir}`" if data_dir else "")
           + (f", loaded at {data_size}x{data_size}" if data_size else "") + ".")

st.subheader("2. Add parents")
demo_tab, upload_tab, path_tab, plain_tab, family_tab = st.tabs(["Built-in demo", "Upload", "From a path",
                                                                 "Architecture + weights", "Same-init family"])
with demo_tab:
    st.write(f"Two ResNet-20s on the 8x8 digits: {demo_tasks()}, trained on first use (about 15 s on two CPU "
             "cores), then cached in `$MUDSC_HOME/demo`.")
    if st.button("Load the demo parents", key="load_demo", type="primary", disabled=running("demo") is not None):
        start_job("demo", train_demo)
        st.rerun()
    job_status("demo", "Training the demo parents")

with upload_tab:
    files = st.file_uploader("Checkpoints written by mudsc (.safetensors), or plain state dicts (.pt, .pth, "
                             ".safetensors)", type=["safetensors", "pt", "pth"], accept_multiple_files=True,
                             key="upload", max_upload_size=cfg.max_upload_mb)
    st.caption(f"Up to {cfg.max_upload_mb} MB per file; bigger checkpoints load from a path.")
    if st.button("Add uploaded checkpoints", key="add_upload", disabled=not files):
        from mudsc.studio.parent_sources import self_describing, store_upload

        stored = None
        try:
            paths = []
            for f in files:
                stored = store_upload(f.name, f.getvalue(), root=cfg.home, max_bytes=cfg.max_upload_mb * 2**20)
                paths.append(self_describing(stored, root=cfg.home))
            add_parents(paths)
            st.rerun()
        except MudscError as e:
            st.error(str(e))
            if stored is not None and "plain state dict" in str(e):
                st.session_state["plain_path"] = str(stored)  # ready in the Architecture + weights tab

with path_tab:
    ckpt = st.text_input("Checkpoint path (.safetensors written by mudsc)", key="ckpt_path",
                         placeholder="~/.cache/mudsc/zoo/resnet20.digits_04_s0.safetensors")
    if st.button("Add parent", key="add_parent", disabled=not ckpt.strip()):
        from mudsc.studio.parent_sources import self_describing

        try:
            add_parents([self_describing(ckpt.strip(), root=cfg.home)])
            st.rerun()
        except MudscError as e:
            st.error(str(e))

with plain_tab:
    st.write("Plain weights (from timm or your own training loop) with the architecture that reads them: a "
             "registry name, or your own network as `path/to/models.py:FUNCTION`, `package.module:FUNCTION`, "
             "`torchvision:NAME` or `timm:NAME` whose last layer classifies its task. Saved once as a "
             "self-describing checkpoint under `$MUDSC_HOME/parents`.")
    st.warning("Naming a model file or module imports it, which runs its code on this machine with the app's "
               "rights. Only paths on this machine are imported, never uploaded Python.", icon=":material/warning:")
    a, b, c = st.columns(3)
    arch = a.text_input("Architecture", key="plain_arch",
                        placeholder="resnet20, timm:resnet18, torchvision:resnet18, ~/code/models.py:make_net")
    options = b.text_input("Options (key=value, space-separated)", key="plain_kwargs",
                           placeholder="width=1 strides=1/1/2")
    classes = c.text_input("Classes it was trained on", key="plain_classes", placeholder="0-4")
    d, e, f = st.columns(3)
    head = d.selectbox("Head", ["shared", "own", "last layer"], key="plain_head",
                       help="registry architectures: shared (frozen class embeddings common to all parents) or own "
                            "(a linear layer); last layer: the network's own classifier (always so for your own code)")
    feat_dim = e.number_input("Embedding width", min_value=1, value=64, step=1, key="plain_feat_dim")
    weights = f.text_input("Weights file", key="plain_path", placeholder="/path/to/weights.pt")
    from mudsc.models.external import is_external

    user_net = is_external(arch.strip()) or head == "last layer"
    with st.expander("Your network's preprocessing and head", expanded=user_net):
        g, h, i, j = st.columns(4)
        mean = g.text_input("Normalize mean", key="plain_mean", placeholder="0.485,0.456,0.406",
                            help="per channel, on pixels in [0, 1]; empty: the data set's own normalisation")
        std = h.text_input("Normalize std", key="plain_std", placeholder="0.229,0.224,0.225")
        size = i.number_input("Image size", min_value=0, value=0, step=1, key="plain_img_size",
                              help="resize the shorter side, then centre-crop a square; 0 keeps the data's size")
        embeddings = j.text_input("Class embeddings file", key="plain_embeddings", placeholder="text_embed.npy",
                                  help="[num_classes, d] in .safetensors or .npy: the network emits d-dim embeddings")
        weights_upload = st.file_uploader("Or upload the weights", type=["safetensors", "pt", "pth"],
                                          key="plain_upload", max_upload_size=cfg.max_upload_mb)
    if st.button("Add parent", key="add_plain", disabled=not (arch.strip() and classes.strip()
                                                            and (weights.strip() or weights_upload))):
        from mudsc.cli.common import parse_kw
        from mudsc.data import load_dataset
        from mudsc.models.checkpoint import load_model
        from mudsc.studio.coverage import coverage
        from mudsc.studio.parent_sources import plain_spec, self_describing, store_upload, user_spec

        try:
            data = load_dataset(name, data_dir, img_size=data_size)
            kwargs = parse_kw(options.split())
            if user_net:
                spec = user_spec(arch, classes=classes, data=data, kwargs=kwargs, mean=mean, std=std,
                                 img_size=int(size), class_embeddings=embeddings)
            else:
                spec = plain_spec(arch, classes=classes, data=data, head=head, feat_dim=int(feat_dim), kwargs=kwargs)
            source = weights.strip() or store_upload(weights_upload.name, weights_upload.getvalue(), root=cfg.home,
                                                     max_bytes=cfg.max_upload_mb * 2**20)
            path = self_describing(source, root=cfg.home, spec=spec)
            # traced before it is added: a network torch.fx cannot trace is refused, the parents kept
            shown = coverage(load_model(path)[0], data.eval.x[:2])
            add_parents([path])
            added = next(p for p in st.session_state["parents"] if Path(p.path).name == Path(path).name)
            st.session_state["plain_coverage"] = (added.name, *shown)
            st.rerun()
        except MudscError as e:
            st.error(str(e))
    if st.session_state.get("plain_coverage"):
        cov_name, share, cov_rows = st.session_state["plain_coverage"]
        st.markdown(f"**Unit-space coverage of {cov_name}**: {share:.0%} of its parameter tensors lie in a unit "
                    "space a merge can permute or zip; the rest are only averaged.")
        st.dataframe(cov_rows, hide_index=True, key="coverage_table", height=260)

with family_tab:
    render_family_tab()

st.subheader("3. Loaded parents")
parents = st.session_state["parents"]
if not parents:
    st.info("No parents loaded yet: load the demo pair or add checkpoints.")
    st.stop()

st.dataframe(describe_parents(parents), hide_index=True, key="parents_table", column_config={
    "own-task accuracy": st.column_config.NumberColumn(format="percent"),
    "other classes (task-aware)": st.column_config.NumberColumn(
        format="percent", help="accuracy among the classes it never saw: near chance is expected"),
    "parameters": st.column_config.NumberColumn(format="compact")})
with st.expander("Architectures"):
    from mudsc.studio.parent_sources import architecture_summary

    st.dataframe([{"parent": p.name, **architecture_summary(p.model, p.info)} for p in parents], hide_index=True,
                 key="arch_table", column_config={"parameters": st.column_config.NumberColumn(format="compact")})
render_shared_base_hint(parents)  # a base among the parents: offer the same-init merge
remove_col, button_col = st.columns([4, 1], vertical_alignment="bottom")
drop = remove_col.multiselect("Remove parents", [p.name for p in parents], key="remove_names")
if button_col.button("Remove", key="remove_parents", disabled=not drop):
    st.session_state["parents"] = [p for p in parents if p.name not in drop]
    st.rerun()

st.subheader("4. Merge session")
if len(parents) < 2:
    st.info("Add a second parent to merge.")
    st.stop()
if st.session_state.get("session_error"):
    st.error(f"These parents cannot be merged: {st.session_state['session_error']}")
    st.stop()
job_status("stats", "Activation statistics")
session = current_session()
if session is None:
    st.stop()

st.success(f"Ready: {len(session.parents)} parents, {len(session.graph.spaces)} unit spaces, "
           f"{len(session.graph.cuts)} cuts; statistics from {session.stats_images:,} training images, "
           f"evaluation on {len(session.eval):,} held-out images.", icon=":material/check_circle:")
st.page_link("pages/merge.py", label="Merge them", icon=":material/arrow_forward:")
render_align_then_fuse(session)
acc_col, space_col = st.columns([2, 3])
with acc_col:
    st.markdown("**Accuracy per task** (held-out, task-aware)")
    rows = parent_rows(session)
    st.dataframe(rows, hide_index=True, key="parent_acc_table",
                 column_config={k: st.column_config.NumberColumn(format="percent") for k in rows[0]
                                if k.startswith("task ") or k == "joint"})
    st.caption("A parent knows only its own classes, so its accuracy on another task is near chance and its joint "
               "accuracy (argmax over all classes) about its share of the data. Merging aims to keep both.")
with space_col:
    st.markdown("**Unit spaces** (input to output; a merge matches units within each)")
    st.dataframe(space_rows(session.graph), hide_index=True, key="spaces_table", height=320)
