"""daskimg: image URLs in, chunked training-ready arrays out, on Dask.

>>> import daskimg
>>> job = daskimg.read_urls("urls.parquet", url_col="url")             # doctest: +SKIP
>>> job = job.fetch(timeout=10, retries=2).preprocess(size=224)          # doctest: +SKIP
>>> summary = job.to_zarr("out.zarr")                                   # doctest: +SKIP
>>> images, meta = daskimg.open("out.zarr")                             # doctest: +SKIP

The names below are imported on first use: ``import daskimg.batch`` in a worker, or
``python -m daskimg.run --help``, does not pay for Dask DataFrame and zarr.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .config import FetchOptions, PreprocessOptions
    from .errors import ConfigError, DaskimgError, InputError, OutputError
    from .pipeline import Job, read_urls
    from .report import Summary
    from .store import open_output as open

# public name -> (module, attribute)
_LAZY = {
    "ConfigError": ("errors", "ConfigError"),
    "DaskimgError": ("errors", "DaskimgError"),
    "FetchOptions": ("config", "FetchOptions"),
    "InputError": ("errors", "InputError"),
    "Job": ("pipeline", "Job"),
    "OutputError": ("errors", "OutputError"),
    "PreprocessOptions": ("config", "PreprocessOptions"),
    "Summary": ("report", "Summary"),
    "open": ("store", "open_output"),
    "read_urls": ("pipeline", "read_urls"),
}

__all__ = [
    "ConfigError",
    "DaskimgError",
    "FetchOptions",
    "InputError",
    "Job",
    "OutputError",
    "PreprocessOptions",
    "Summary",
    "__version__",
    "open",
    "read_urls",
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
