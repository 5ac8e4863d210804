"""The leaf of the package: what every stage shares. Imports nothing of daskimg.

* :class:`Status`: the outcome of one row, recorded in the metadata's ``status`` column.
* :data:`META_SCHEMA`: the metadata columns daskimg itself writes.
* :class:`ImagePartition`: a preprocessed chunk, what the writer takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = ["META_SCHEMA", "STATUS_CODES", "ImagePartition", "Status"]


class Status(StrEnum):
    """What happened to one row. A ``str``: the metadata stores the value, and compares equal to it."""

    OK = "ok"
    # fetch: refused before or while connecting
    INVALID_URL = "invalid_url"
    BLOCKED_ADDRESS = "blocked_address"
    BLOCKED_REDIRECT = "blocked_redirect"
    # fetch: the network or the server
    DNS_ERROR = "dns_error"
    CONNECTION_ERROR = "connection_error"
    TIMEOUT = "timeout"
    HTTP_ERROR = "http_error"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    TOO_LARGE = "too_large"
    EMPTY_BODY = "empty_body"
    OPTED_OUT = "opted_out"
    # fetch: given up on for now, fetched again later in the run
    DEFERRED = "deferred"
    # preprocess
    NOT_IMAGE = "not_image"
    TOO_MANY_PIXELS = "too_many_pixels"
    DECODE_ERROR = "decode_error"
    DECODER_CRASHED = "decoder_crashed"
    PREPROCESS_ERROR = "preprocess_error"


# The zarr output's ``status`` array holds these codes (0: not written yet), described to xarray and other
# CF readers by ``flag_values`` / ``flag_meanings``: zarr v3 has no stable string type.
STATUS_CODES = {status: code for code, status in enumerate(Status, start=1)}


# The columns daskimg itself writes, in order; the input's other columns follow them.
META_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("url", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("http_status", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
    ]
)


@dataclass(frozen=True, slots=True)
class ImagePartition:
    """Rows ``start .. start + len(images)`` of the output: pixels, ok mask and metadata."""

    start: int
    images: np.ndarray
    ok: np.ndarray
    meta: pd.DataFrame
