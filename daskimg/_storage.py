"""What the file systems of fsspec have in common that daskimg needs: where an object-store path's bucket is."""

from __future__ import annotations

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = ["bucket_of", "bucket_problem", "missing_bucket"]


def bucket_of(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    """The bucket (container) of an object-store ``path``; None for a local path."""
    if isinstance(fs, LocalFileSystem):
        return None
    return str(fs._strip_protocol(path)).split("/", 1)[0] or None


def bucket_problem(fs: fsspec.AbstractFileSystem, path: str) -> BaseException | None:
    """Why the bucket of an object-store ``path`` cannot be used (a ``FileNotFoundError`` for a missing one,
    or the store's own error: credentials, endpoint, permissions); None when it can, or for a local path.

    ``info``, not ``exists``: s3fs says False for a bucket it cannot see, e.g. without credentials.
    """
    bucket = bucket_of(fs, path)
    if bucket is None:
        return None
    try:
        fs.info(bucket)
    except Exception as e:  # (botocore's errors are no OSError)
        return e
    return None


def missing_bucket(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    """The bucket of an object-store ``path`` when it does not exist, else None."""
    return bucket_of(fs, path) if isinstance(bucket_problem(fs, path), FileNotFoundError) else None
