"""Bytes from URLs, safely: the transfer loop (:mod:`._transfer`) and its policy (:mod:`._policy`)."""

from ._policy import address_refusal, url_refusal
from ._transfer import FetchResult, fetch_batch, fetch_one

__all__ = ["FetchResult", "address_refusal", "fetch_batch", "fetch_one", "url_refusal"]
