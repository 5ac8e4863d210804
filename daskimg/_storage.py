"""What the file systems of fsspec have in common that daskimg needs: where an object-store path's bucket is."""

from __future__ import annotations

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = ["bucket_problem", "missing_bucket"]


def missing_bucket(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    """The bucket (container) of an object-store ``path`` when it does not exist; None when it does, for a
    local path, or when the store cannot say."""
    if isinstance(fs, LocalFileSystem):
        return None
    bucket = str(fs._strip_protocol(path)).split("/", 1)[0]
    if not bucket:
        return None
    try:
        fs.info(bucket)  # (not exists(): it says False for a bucket it may not see, e.g. without credentials)
    except FileNotFoundError:
        return bucket
    except Exception:  # no credentials, no endpoint ...: the caller's own operation fails with the cause
        return None
    return None


def bucket_problem(fs: fsspec.AbstractFileSystem, path: str) -> BaseException | None:
    """Why the bucket of an object-store ``path`` cannot be used (a ``FileNotFoundError`` for a missing one,
    or the store's own error: credentials, endpoint, permissions); None when it can, or for a local path."""
    if isinstance(fs, LocalFileSystem):
        return None
    bucket = str(fs._strip_protocol(path)).split("/", 1)[0]
    try:
        fs.info(bucket)
    except Exception as e:  # (botocore's errors are no OSError)
        return e
    return None
