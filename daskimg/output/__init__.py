"""Outputs: create or resume one (:mod:`._create`), write chunks and their metadata (:mod:`._store`),
open one to read (:mod:`._open`). The zarr and npy layouts share everything but the pixel files."""

from ._create import check_output_location, prepare_output
from ._open import LAZY_ROWS, Chunks, locate_output, open_output
from ._store import GROUP_ROWS, ChunkReport, Listing, Output, OutputFormat

__all__ = ["GROUP_ROWS", "LAZY_ROWS", "ChunkReport", "Chunks", "Listing", "Output", "OutputFormat",
           "check_output_location", "locate_output", "open_output", "prepare_output"]
