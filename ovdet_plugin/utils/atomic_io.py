"""Atomic file writes: a reader never sees a half-written cache or checkpoint.

A write killed before its rename (SIGKILL, power loss) leaves a ``.tmp-<name>-*`` file next to its
target; :func:`remove_stale_temporaries` deletes those on the next start.
"""

import glob
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator, List

__all__ = ["TMP_PREFIX", "atomic_write_path", "remove_stale_temporaries"]

logger = logging.getLogger(__name__)

# Prefix of the temporary files written by atomic_write_path (hidden, next to their target).
TMP_PREFIX = ".tmp-"


@contextmanager
def atomic_write_path(path: str) -> Iterator[str]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` atomically.

    The temporary file is flushed to disk (``fsync``) before the rename. On an exception the
    temporary file is removed and ``path`` is left as it was.

    Example::

        with atomic_write_path("cache/x.pt") as tmp:
            torch.save(obj, tmp)
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + os.path.basename(path) + "-", dir=folder)
    except OSError as e:
        raise OSError(
            e.errno,
            f"Cannot write {path!r}: {e.strerror}. Make the folder {folder!r} writable or choose "
            "another output location.",
        ) from e
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


def remove_stale_temporaries(folder: str, min_age_s: float = 0.0) -> List[str]:
    """Delete the temporary files that interrupted :func:`atomic_write_path` calls left in
    ``folder`` (not recursive), when older than ``min_age_s`` seconds (use an age for folders
    that other live processes may be writing to, such as a shared cache).

    Returns:
        the removed paths (also logged).
    """
    now = time.time()
    removed = []
    for path in glob.glob(os.path.join(glob.escape(folder), TMP_PREFIX + "*")):
        try:
            if os.path.isfile(path) and now - os.path.getmtime(path) >= min_age_s:
                os.remove(path)
                removed.append(path)
        except OSError:  # removed by another process meanwhile, or not ours to remove
            continue
    if removed:
        logger.warning(
            "Removed %d temporary file(s) left by an interrupted write in %s: %s",
            len(removed),
            folder,
            ", ".join(os.path.basename(p) for p in removed),
        )
    return removed
