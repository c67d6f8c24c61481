"""File checksums shared by the CLIP loader's log line and the benchmark's checkpoint record."""

import hashlib
import os
from functools import lru_cache

__all__ = ["file_sha256", "cached_file_sha256"]


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes (the checksum in the shipped checkpoint's record)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=64)
def _sha256_of_version(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def cached_file_sha256(path: str) -> str:
    """:func:`file_sha256`, computed once per file version (path, size, modification time) in a
    process: a detector that builds the same CLIP tower three times hashes it once."""
    st = os.stat(path)
    return _sha256_of_version(os.path.abspath(path), st.st_size, st.st_mtime_ns)
