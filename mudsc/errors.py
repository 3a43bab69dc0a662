"""Errors a user can cause. Each names the problem in one line; the CLI prints it and exits 2."""


class MudscError(Exception):
    """Base class of every user-facing error."""


class CheckpointError(MudscError):
    """Unreadable, truncated or inconsistent checkpoint (missing/unexpected keys, NaN weights)."""


class ShapeMismatchError(CheckpointError):
    """A tensor's shape differs from what the model or another parent expects."""


class UnknownNameError(MudscError, KeyError):
    """A name (model, data set, method, cut) that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(MudscError):
    """A data set that cannot be read, or a class subset that is empty or malformed."""


class ConfigError(MudscError, ValueError):
    """A merge or run option out of range, or options that do not fit together."""


class ResourceError(MudscError):
    """Not enough of the machine: memory or disk space."""


class WriteError(MudscError):
    """An output that cannot be written: a folder under a file, no permission, a read-only disk."""


class DiskFullError(ResourceError):
    """A write failed for lack of disk space (ENOSPC); the file it was replacing is unchanged."""


def out_of_memory(e: BaseException) -> ResourceError | None:
    """`e` as one clear line if it is Python's ``MemoryError`` or torch's (CUDA) ``OutOfMemoryError``, else None."""
    if not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"):  # torch stays unimported here
        return None
    text = str(e).strip()
    why = f" ({text.splitlines()[0][:200]})" if text else ""
    return ResourceError(f"out of memory{why}; finish other jobs or sessions, or use fewer images, a smaller "
                         "grid or a smaller batch")
