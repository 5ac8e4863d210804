"""Create an output, or reopen one made with the same settings to resume it."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping
from typing import Any

import fsspec
import zarr
from fsspec.implementations.local import LocalFileSystem

from .._lock import LOCK, refuse_busy_folder
from .._storage import bucket_of, bucket_problem
from .._types import STATUS_CODES
from ..errors import OutputError, cause
from ..options import COMPRESSIONS
from ._store import Output, OutputFormat, compressor

__all__ = ["check_output_location", "prepare_output"]


def _exists(fs: fsspec.AbstractFileSystem, root: str) -> bool:
    return bool(fs.exists(root) and (not fs.isdir(root) or fs.ls(root)))


def check_output_location(path: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Refuse an output whose bucket is missing or cannot be reached, or that another run is writing,
    before a run starts anything.

    Raises
    ------
    OutputError
        With the path and the cause, in one line.
    """
    try:
        fs, root = Output(path, "zarr", 1, 0, storage_options=storage_options)._fs
    except Exception as e:  # an unknown protocol, options the store refuses ...
        raise OutputError(f"cannot use {path} as the output: {cause(e)}") from None
    problem = bucket_problem(fs, root)
    if isinstance(problem, FileNotFoundError):
        raise OutputError(f"cannot create {path}: bucket {bucket_of(fs, root)!r} does not exist "
                          "(daskimg never creates one)")
    if isinstance(problem, PermissionError):  # credentials may reach a prefix without seeing the bucket itself
        problem = _listing_problem(fs, root)
    if problem is not None:
        raise OutputError(f"cannot use {path} as the output: {cause(problem)}")
    if isinstance(fs, LocalFileSystem):  # the folder whose lock Output.locked takes
        refuse_busy_folder(root, path)


def _listing_problem(fs: fsspec.AbstractFileSystem, root: str) -> BaseException | None:
    """Why the output's own folder cannot be listed (as every run lists it), or None."""
    try:
        fs.ls(root, refresh=True)
    except FileNotFoundError:  # a new output: nothing there yet, and the store said so
        return None
    except Exception as e:
        return e
    return None


def prepare_output(
    path: str,
    *,
    format: OutputFormat,
    n_rows: int,
    chunk: int,
    shape: tuple[int, ...],
    dtype: str,
    dim_names: tuple[str, ...],
    compression: str,
    settings: dict[str, Any],
    overwrite: bool,
    storage_options: Mapping[str, Any] | None = None,
) -> Output:
    """Create the output, or reopen it for resuming when it was made with the same settings.

    Raises
    ------
    OutputError
        When ``path`` holds something else (another daskimg run's settings, or files that
        are not a daskimg output) and ``overwrite`` does not allow replacing it.
    """
    if format not in ("zarr", "npy"):
        raise OutputError(f"output format must be zarr or npy, got {format!r}")
    if compression not in COMPRESSIONS:
        raise OutputError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    check_output_location(path, storage_options)
    out = Output(path, format, chunk, n_rows, storage_options=storage_options)
    try:
        return _prepare(out, shape, dtype, dim_names, compression, settings, overwrite)
    except OutputError:
        raise
    except Exception as e:  # a store's own errors (botocore's are no OSError): the path and the cause, one line
        raise OutputError(f"cannot use {path} as the output: {cause(e)}") from None


def _prepare(out: Output, shape: tuple[int, ...], dtype: str, dim_names: tuple[str, ...], compression: str,
             settings: dict[str, Any], overwrite: bool) -> Output:
    path = out.path
    fs, root = out._fs
    if _exists(fs, root):
        previous = out.read_settings()
        if previous is None:
            raise OutputError(f"{path} exists and is not a daskimg output; choose another output path")
        if previous.get("settings") == settings and not overwrite:
            return dataclasses.replace(out, id=str(previous.get("id", "")))
        if not overwrite:
            changed = sorted(k for k in settings.keys() | previous.get("settings", {}).keys()
                             if settings.get(k) != previous.get("settings", {}).get(k))
            raise OutputError(f"{path} was made with other settings ({', '.join(changed)} differ); "
                              "pass --overwrite to replace it, or choose another output")
        with out.locked():  # never from under a run that is writing it; Windows deletes no open file
            for entry in fs.ls(root, detail=False, refresh=True):
                if entry.rstrip("/").rsplit("/", 1)[-1] != LOCK:
                    fs.rm(entry, recursive=True)
        fs.rm(root, recursive=True)
    from .. import __version__

    # Locally the output is built under a temporary name and renamed into place, so a run killed
    # while creating it never leaves a half-made output that the next run would refuse.
    out = dataclasses.replace(out, id=uuid.uuid4().hex)
    local = isinstance(fs, LocalFileSystem)
    staged = dataclasses.replace(out, path=f"{root}.daskimg-{out.id}.tmp") if local else out
    try:
        _create(staged, shape, dtype, dim_names, compression)
        staged.write_settings({"version": __version__, "id": out.id, "settings": settings, "counts": {}})
        if local:
            if fs.exists(root):  # an empty directory made by the user: the output takes its place
                fs.rmdir(root)
            fs.mv(staged.path, root, recursive=True)
    except Exception as e:
        raise OutputError(f"cannot create {path}: {cause(e)}") from None
    finally:
        if local and fs.exists(staged.path):
            fs.rm(staged.path, recursive=True)
    return out


def _create(out: Output, shape: tuple[int, ...], dtype: str, dim_names: tuple[str, ...], compression: str) -> None:
    if out.format == "npy":
        fs, root = out._fs
        if isinstance(fs, LocalFileSystem):  # an object store has no folders (and makedirs would make a bucket)
            fs.makedirs(f"{root}/metadata/_done", exist_ok=True)
        return
    group = zarr.open_group(out.path, mode="w", zarr_format=3, **out.zarr_options)
    coordinates: dict[str, Any] = {"coordinates": "status"}  # CF: xarray shows the status of each row beside its image
    group.create_array(
        "images", shape=(out.n_rows, *shape), chunks=(out.chunk, *shape), dtype=dtype,
        dimension_names=("image", *dim_names), compressors=compressor(compression), fill_value=0,
        attributes=coordinates,
    )
    group.create_array(
        "ok", shape=(out.n_rows,), chunks=(out.chunk,), dtype="bool", dimension_names=("image",), fill_value=False,
        attributes=coordinates,
    )
    group.create_array(
        "status", shape=(out.n_rows,), chunks=(out.chunk,), dtype="uint8", dimension_names=("image",), fill_value=0,
        attributes={"long_name": "what happened to the row (0: not written yet)",
                    "flag_values": list(STATUS_CODES.values()), "flag_meanings": " ".join(STATUS_CODES)},
    )
    _consolidate(out, ("images", "ok", "status"))


def _consolidate(out: Output, arrays: tuple[str, ...]) -> None:
    """Put the arrays' metadata into the group's ``zarr.json``, as zarr-python's consolidated metadata.

    xarray reads a group's members from there (and warns when it cannot); listing the group
    instead would meet ``metadata/``, a parquet folder, which zarr warns is no zarr node. The
    arrays' metadata never changes after this, so it is written once, here. It is written as
    JSON because ``zarr.consolidate_metadata`` lists the group and warns that consolidated
    metadata is not in the v3 specification yet: it is an extension field that readers which
    do not know it ignore (``must_understand: false``).
    """
    fs, root = out._fs
    group = json.loads(fs.cat_file(f"{root}/zarr.json"))
    members = {name: json.loads(fs.cat_file(f"{root}/{name}/zarr.json")) for name in arrays}
    group["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": members}
    out._put("zarr.json", json.dumps(group, indent=2).encode())
