"""Sub-commands of the ``mudsc`` CLI, one module per command family."""
