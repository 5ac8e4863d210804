"""A report on an output, for people to look at: one self-contained HTML page, mostly pictures.

It shows the rows by status, the hosts with the most failures and why they failed, sample error
messages, a contact sheet of sample images, the sizes that came in, and the throughput over the
run (from the time each chunk was written, kept in the metadata's footers). Counts come from the
footers; the rest from the metadata, read whole up to ``max_rows`` rows and sampled file by file
beyond, so a report on a billion-row output reads a few million rows.

    daskimg report OUT.zarr --html report.html
    >>> daskimg.report("out.zarr")          # in a notebook, the page shows inline    # doctest: +SKIP
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._types import Status
from .output import locate_output
from .output._store import total_counts, write_times

__all__ = ["Report", "report"]

_COLUMNS = ["index", "url", "status", "error", "width", "height", "bytes"]
_HOST = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>(?:\[[^\]]*\]|[^:/?#]*)(?::\d+)?)"  # with its port


@dataclass
class Report:
    """What an output holds and how its run went; :meth:`html` draws it."""

    path: str
    rows: int
    counts: dict[str, int]
    settings: dict[str, Any]
    sampled: int  # metadata rows the figures below were computed from
    hosts: pd.DataFrame  # host, status, rows: the hosts with the most failures
    errors: pd.DataFrame  # status, error, rows, url: the commonest messages per failed status
    sizes: pd.DataFrame  # width, height, bytes of the usable rows sampled
    thumbnails: list[tuple[int, str, bytes]] = field(repr=False)  # row, URL, JPEG of sample usable images
    chunk_times: np.ndarray = field(repr=False)  # (chunk, rows, ok rows, unix time written), in time order

    @classmethod
    def from_output(cls, path: str, *, storage_options: Mapping[str, Any] | None = None, samples: int = 48,
                    max_rows: int = 2_000_000, seed: int = 0) -> Report:
        """Read what the report shows from the output at ``path`` (local or any fsspec URL)."""
        out, chunks = locate_output(path, storage_options)
        listing = out.listing()
        footers = out.footers(listing)
        counts = total_counts(footers)
        meta = _sample_metadata(out, listing.files(), [sum(c.values()) for c, _ in footers], max_rows)
        failed = meta.filter(pc.not_equal(meta["status"], Status.OK))
        hosts = pc.struct_field(pc.extract_regex(failed["url"], _HOST), "host")
        failed_frame = failed.select(["url", "status", "error"]).to_pandas()
        failed_frame["host"] = hosts.to_pandas().fillna("(no host)")
        ok = meta.filter(pc.equal(meta["status"], Status.OK))
        rng = np.random.default_rng(seed)
        return cls(
            path=path, rows=out.n_rows, counts=dict(sorted(counts.items(), key=lambda kv: -kv[1])),
            settings=(out.read_settings() or {}).get("settings", {}), sampled=meta.num_rows,
            hosts=_top_hosts(failed_frame), errors=_top_errors(failed_frame),
            sizes=ok.select(["width", "height", "bytes"]).to_pandas(),
            thumbnails=_thumbnails(chunks, ok, samples, rng),
            chunk_times=write_times(footers),
        )

    @property
    def rate(self) -> float | None:
        """Rows written a second, over the time chunks were being written (gaps between runs left out)."""
        times = self.chunk_times
        if len(times) < 2:
            return None
        gaps = np.diff(times[:, 3])
        busy = float(gaps[gaps < 300].sum())  # a pause of over 5 minutes: the run was stopped and resumed
        return float(times[1:, 1].sum()) / busy if busy > 0 else None

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.counts.items() if status != Status.OK)

    def __str__(self) -> str:
        written = sum(self.counts.values())
        lines = [f"daskimg report: {self.path}: {written:,} of {self.rows:,} rows written, "
                 f"ok {self.counts.get(Status.OK, 0):,}, failed {self.failed:,}"]
        lines += [f"  {status:20s} {n:>12,}" for status, n in self.counts.items()]
        if len(self.hosts):
            top = self.hosts.groupby("host", sort=False)["rows"].sum().head(5)
            lines.append("  hosts with the most failures: " + ", ".join(f"{h} ({n:,})" for h, n in top.items()))
        if self.rate is not None:
            lines.append(f"  written at {self.rate:,.0f} rows/s on average")
        return "\n".join(lines)

    def html(self) -> str:
        """The page: self-contained (Bokeh's JavaScript and the images inline), no network needed."""
        from ._report_page import page

        return page(self)

    def save(self, path: str) -> str:
        """Write the page to ``path``; returns ``path``."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.html())
        return path

    def _repr_html_(self) -> str:  # Jupyter: the page in a frame of its own, its scripts apart from the notebook's
        return (f'<iframe srcdoc="{html.escape(self.html(), quote=True)}" title="daskimg report" '
                'style="width: 100%; height: 1600px; border: none;"></iframe>')


def report(path: str, *, html: str | None = None, storage_options: Mapping[str, Any] | None = None,
           samples: int = 48) -> Report:
    """A :class:`Report` on the output at ``path``; with ``html``, the page is also written there.

    In a notebook, the returned report shows as the page itself.
    """
    result = Report.from_output(path, storage_options=storage_options, samples=samples)
    if html is not None:
        result.save(html)
    return result


def _sample_metadata(out: Any, files: list[str], rows: list[int], max_rows: int) -> pa.Table:
    """The report's columns of every metadata file, or of files spread evenly over the output until
    ``max_rows`` rows are read."""
    fs, _ = out._fs
    picked = list(range(len(files)))
    if sum(rows) > max_rows:
        step = sum(rows) / max_rows
        picked = sorted({min(len(files) - 1, int(i * step)) for i in range(len(files)) if i * step < len(files)})
    tables, total = [], 0
    for i in picked:
        with fs.open(files[i], "rb") as f:
            table = pq.read_table(f, columns=_COLUMNS)
        tables.append(table)
        total += table.num_rows
        if total >= max_rows:
            break
    if not tables:
        return pa.table({name: pa.array([], type=pa.string() if name in ("url", "status", "error") else pa.int64())
                         for name in _COLUMNS})
    return pa.concat_tables(tables, promote_options="permissive")


def _top_hosts(failed: pd.DataFrame, n: int = 15) -> pd.DataFrame:
    if failed.empty:
        return pd.DataFrame({"host": [], "status": [], "rows": []})
    by = failed.groupby(["host", "status"]).size().rename("rows").reset_index()
    top = by.groupby("host")["rows"].sum().sort_values(ascending=False).head(n).index
    by = by[by["host"].isin(top)]
    by["host"] = pd.Categorical(by["host"], categories=list(top), ordered=True)
    return by.sort_values(["host", "rows"], ascending=[True, False]).reset_index(drop=True)


def _top_errors(failed: pd.DataFrame, per_status: int = 3) -> pd.DataFrame:
    if failed.empty:
        return pd.DataFrame({"status": [], "error": [], "rows": [], "url": []})
    frame = failed.assign(error=failed["error"].fillna("").str.slice(0, 300))
    grouped = frame.groupby(["status", "error"]).agg(rows=("url", "size"), url=("url", "first")).reset_index()
    grouped = grouped.sort_values(["status", "rows"], ascending=[True, False])
    return grouped.groupby("status").head(per_status).reset_index(drop=True)


def _thumbnails(chunks: Any, ok: pa.Table, samples: int, rng: np.random.Generator) -> list[tuple[int, str, bytes]]:
    """JPEGs of ``samples`` usable images (fewer if there are not as many), a few from each of chunks
    picked at random: a contact sheet from all over the output, reading a dozen chunks for 48 images."""
    if samples <= 0 or ok.num_rows == 0:
        return []
    index = ok["index"].to_numpy()
    urls = dict(zip(index.tolist(), ok["url"].to_pylist(), strict=True))
    candidates = rng.permutation(np.unique(index // chunks.out.chunk))
    per_chunk = max(4, -(-samples // len(candidates)))
    thumbnails: list[tuple[int, str, bytes]] = []
    for k in candidates.tolist():
        images, rows = chunks.read(k)
        take = min(len(rows), per_chunk, samples - len(thumbnails))
        for j in np.sort(rng.choice(len(rows), size=take, replace=False)).tolist():
            row = int(rows[j])
            thumbnails.append((row, urls.get(row) or "", _jpeg(images[j], chunks.channels_first)))
        if len(thumbnails) == samples:
            break
    return sorted(thumbnails)


def _jpeg(image: np.ndarray, channels_first: bool) -> bytes:
    from PIL import Image

    if channels_first:
        image = np.moveaxis(image, 0, -1)
    if image.dtype != np.uint8:  # float outputs (maybe normalised): stretched to 0-255 for the eye
        lo, hi = float(image.min()), float(image.max())
        image = ((image - lo) / (hi - lo or 1.0) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, "JPEG", quality=85)
    return buf.getvalue()
