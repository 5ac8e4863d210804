"""daskimg: image URLs in, chunked training-ready arrays out, on Dask.

>>> import daskimg
>>> job = daskimg.read_urls("urls.parquet", url_col="url")             # doctest: +SKIP
>>> job = job.fetch(timeout=10, retries=2).preprocess(size=224)          # doctest: +SKIP
>>> summary = job.to_zarr("out.zarr")                                   # doctest: +SKIP
>>> images, meta = daskimg.open("out.zarr")                             # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import FetchOptions, PreprocessOptions
from .errors import ConfigError, DaskimgError, InputError, OutputError
from .pipeline import Job, read_urls
from .report import Summary
from .store import open_output as open

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
