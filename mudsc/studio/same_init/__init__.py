"""What the studio's same-init page shows, without Streamlit: the family of task models and its
checks, the knobs and merges of each method, sweeps and CG residuals, the task-vector plane, exports.
Part of the studio room: may import the engine rooms (same-init above all) and landscape, never Streamlit."""
