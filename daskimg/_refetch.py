"""The rows a chunk stopped waiting for: fetched again on their own, then written into the chunk.

A fetch task stops waiting for its chunk's slowest URLs (``FetchOptions.defer_after``). The
chunk is decoded and written without them: their rows say ``deferred``, and the chunk has no
done marker yet. For each such chunk the run starts one :func:`refetch_deferred` task. It
waits on the network off the worker's count of threads (``distributed.secede``), so a URL
that never answers holds a thread that only waits, not one that would decode. Those URLs get
the whole ``timeout``, ``retries`` and ``deadline`` again. The task then decodes what came,
writes the chunk again with those rows, and marks it done.
"""

from __future__ import annotations

import pandas as pd

from ._stages import fetch_partition, preprocess_partition
from ._types import Status
from .cluster import lost_a_worker, only_waiting
from .options import FetchOptions, PreprocessOptions
from .output import ChunkReport, Output

__all__ = ["refetch_deferred"]


def refetch_deferred(output: Output, chunk: int, fetch: FetchOptions, preprocess: PreprocessOptions) -> ChunkReport:
    """Fetch the deferred rows of written chunk ``chunk`` again, and write them into it; see the module."""
    meta = output.read_meta(chunk)
    late = meta[meta["status"] == Status.DEFERRED]
    rows = pd.DataFrame({"url": late["url"].to_numpy()}, index=pd.Index(late["index"].to_numpy(), name="index"))
    with only_waiting():
        fetched = fetch_partition(rows, "url", fetch)
    return output.rewrite(chunk, preprocess_partition(fetched, preprocess, isolate=lost_a_worker()))
