"""daskimg: image URLs in, chunked training-ready arrays out, on Dask.

>>> import daskimg
>>> job = daskimg.read_urls("urls.parquet", url_col="url")             # doctest: +SKIP
>>> job = job.fetch(timeout=10, retries=2).preprocess(size=224)          # doctest: +SKIP
>>> summary = job.to_zarr("out.zarr")                                   # doctest: +SKIP
>>> images, meta = daskimg.open("out.zarr")                             # doctest: +SKIP
>>> for images, index in daskimg.ImageReader("out.zarr", batch_size=256):  # doctest: +SKIP
...     ...

The names below are imported on first use: ``python -m daskimg --help`` does not pay for
Dask and zarr. ``import daskimg`` changes nothing in the process: no thread count, warning
filter, multiprocessing setting, environment variable or file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from ._report import Report, report
    from ._types import Status
    from .errors import ClusterError, ConfigError, DaskimgError, InputError, OutputError
    from .job import Job, read_urls
    from .options import FetchOptions, PreprocessOptions
    from .output import open_output as open
    from .progress import Summary
    from .reader import Batch, ImageReader

# public name -> (module, attribute)
_LAZY = {
    "Batch": ("reader", "Batch"),
    "ClusterError": ("errors", "ClusterError"),
    "ConfigError": ("errors", "ConfigError"),
    "DaskimgError": ("errors", "DaskimgError"),
    "FetchOptions": ("options", "FetchOptions"),
    "ImageReader": ("reader", "ImageReader"),
    "InputError": ("errors", "InputError"),
    "Job": ("job", "Job"),
    "OutputError": ("errors", "OutputError"),
    "PreprocessOptions": ("options", "PreprocessOptions"),
    "Status": ("_types", "Status"),
    "Summary": ("progress", "Summary"),
    "open": ("output", "open_output"),
    "read_urls": ("job", "read_urls"),
    "Report": ("_report", "Report"),
    "report": ("_report", "report"),
}

__all__ = [
    "Batch",
    "ClusterError",
    "ConfigError",
    "DaskimgError",
    "FetchOptions",
    "ImageReader",
    "InputError",
    "Job",
    "OutputError",
    "PreprocessOptions",
    "Report",
    "Status",
    "Summary",
    "__version__",
    "open",
    "read_urls",
    "report",
]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'daskimg' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
