"""Atomic file writes: a reader never sees a half-written cache or checkpoint."""

import os
import tempfile
from contextlib import contextmanager
from typing import Iterator

__all__ = ["atomic_write_path"]


@contextmanager
def atomic_write_path(path: str) -> Iterator[str]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left as it was.

    Example::

        with atomic_write_path("cache/x.pt") as tmp:
            torch.save(obj, tmp)
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
