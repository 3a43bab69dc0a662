"""What the studio's pages show, without Streamlit: view models, figures, tables, UMAP, background
jobs, parent sources and exports. May import every engine room and landscape; pages/ call it."""
