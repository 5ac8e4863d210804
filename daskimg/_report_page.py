"""The report's page: Bokeh figures and HTML, in one self-contained file (see :mod:`._report`)."""

from __future__ import annotations

import base64
import datetime
import html
from typing import TYPE_CHECKING, Any

import numpy as np
from bokeh.embed import components
from bokeh.models import ColumnDataSource, DataRange1d, FactorRange, NumeralTickFormatter
from bokeh.plotting import figure
from bokeh.resources import Resources

from ._types import Status

if TYPE_CHECKING:
    from ._report import Report

__all__ = ["page"]

_OK_COLOUR = "#3a923a"
_FAILURE_COLOURS = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
                    "#1f77b4", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2"]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1.5em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin: 1.6em 0 0.4em; }
.path { color: #555; font-family: ui-monospace, monospace; word-break: break-all; }
.numbers { display: flex; flex-wrap: wrap; gap: 1em; margin: 1em 0; }
.numbers div { background: #f4f4f4; border-radius: 6px; padding: 0.6em 1em; }
.numbers b { display: block; font-size: 1.4em; }
.row { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 1.2em; }
.sheet { display: grid; grid-template-columns: repeat(auto-fill, minmax(120px, 1fr)); gap: 6px; }
.sheet figure { margin: 0; text-align: center; font-size: 0.75em; color: #666; }
.sheet img { width: 100%; image-rendering: auto; border-radius: 3px; background: #eee; }
table { border-collapse: collapse; width: 100%; font-size: 0.85em; }
th, td { text-align: left; padding: 0.35em 0.6em; border-bottom: 1px solid #ddd; vertical-align: top; }
td.n { text-align: right; white-space: nowrap; } td.url { word-break: break-all; color: #555; }
.note { color: #666; font-size: 0.85em; }
"""


def page(report: Report) -> str:
    """The whole page, with Bokeh's JavaScript inline."""
    plots = {"status": _status_figure(report), "hosts": _hosts_figure(report), "sizes": _sizes_figure(report),
             "bytes": _bytes_figure(report), "throughput": _throughput_figure(report)}
    drawn = {name: p for name, p in plots.items() if p is not None}
    script, divs = components(drawn) if drawn else ("", {})

    def div(name: str, empty: str) -> str:
        return str(divs.get(name, f'<p class="note">{empty}</p>'))

    name = html.escape(report.path.rstrip("/").rsplit("/", 1)[-1])
    resources = Resources(mode="inline", components=["bokeh"]).render()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>daskimg report: {name}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
{resources}
<style>{_STYLE}</style></head>
<body>
<h1>daskimg report: {name}</h1>
<div class="path">{html.escape(report.path)}</div>
{_numbers(report)}
<div class="row">
<section><h2>Rows by status</h2>{div("status", "No rows written yet.")}</section>
<section><h2>Hosts with the most failures</h2>{div("hosts", "No failures.")}</section>
</div>
<section><h2>Sample images</h2>{_sheet(report)}</section>
<section><h2>Sample error messages</h2>{_errors(report)}</section>
<div class="row">
<section><h2>Original sizes</h2>{div("sizes", "No usable images.")}</section>
<section><h2>Bytes downloaded</h2>{div("bytes", "No usable images.")}</section>
</div>
<section><h2>Throughput</h2>{div("throughput", _no_times(report))}</section>
<p class="note">{_sample_note(report)}</p>
{script}
</body></html>
"""


def _numbers(report: Report) -> str:
    written = sum(report.counts.values())
    ok = report.counts.get(Status.OK, 0)
    s = report.settings
    shape = s.get("preprocess", {})
    cells = [("rows", f"{report.rows:,}"), ("written", f"{written:,}"),
             ("ok", f"{ok:,} ({100 * ok / written:.1f}%)" if written else "0"), ("failed", f"{report.failed:,}")]
    if shape:
        cells.append(("images", f"{shape.get('height')}x{shape.get('width')} {shape.get('mode', '')} "
                                f"{shape.get('dtype', '')}"))
    if report.rate is not None:
        cells.append(("written at", f"{report.rate:,.0f} rows/s"))
    if len(report.chunk_times):
        written_at = datetime.datetime.fromtimestamp(float(report.chunk_times[-1, 3]), datetime.UTC)
        cells.append(("last chunk written", written_at.strftime("%Y-%m-%d %H:%M:%S UTC")))
    return '<div class="numbers">' + "".join(
        f"<div>{html.escape(label)}<b>{html.escape(value)}</b></div>" for label, value in cells) + "</div>"


def _colours(statuses: list[str]) -> dict[str, str]:
    failures = [s for s in statuses if s != Status.OK]
    colours = {s: _FAILURE_COLOURS[i % len(_FAILURE_COLOURS)] for i, s in enumerate(sorted(failures))}
    return {Status.OK: _OK_COLOUR, **colours}


def _status_figure(report: Report) -> Any:
    if not report.counts:
        return None
    statuses = list(report.counts)[::-1]  # the largest at the top
    colours = _colours(statuses)
    source = ColumnDataSource({"status": statuses, "rows": [report.counts[s] for s in statuses],
                               "colour": [colours[s] for s in statuses]})
    p = figure(y_range=FactorRange(factors=statuses), x_range=DataRange1d(start=0), height=60 + 28 * len(statuses),
               sizing_mode="stretch_width", toolbar_location=None,
               tools="hover", tooltips="@status: @rows{0,0} rows", x_axis_label="rows")
    p.hbar(y="status", right="rows", height=0.7, color="colour", source=source)
    return _counted(p)


def _counted(p: Any) -> Any:
    """An axis of counts along x: whole numbers, thousands separated."""
    p.xaxis.ticker.min_interval = 1
    p.xaxis.formatter = NumeralTickFormatter(format="0,0")
    return p


def _hosts_figure(report: Report) -> Any:
    hosts = report.hosts
    if hosts.empty:
        return None
    table = hosts.pivot_table(index="host", columns="status", values="rows", aggfunc="sum", fill_value=0,
                              observed=True)
    order = list(table.sum(axis=1).sort_values().index.astype(str))  # the most failures at the top
    table.index = table.index.astype(str)
    table = table.loc[order]
    statuses = list(table.columns)
    colours = _colours(statuses)
    source = ColumnDataSource({"host": order, **{s: table[s].tolist() for s in statuses}})
    p = figure(y_range=FactorRange(factors=order), x_range=DataRange1d(start=0), height=80 + 26 * len(order),
               sizing_mode="stretch_width", toolbar_location=None,
               tools="hover", tooltips="@host, $name: @$name{0,0} rows", x_axis_label="failed rows")
    p.hbar_stack(statuses, y="host", height=0.7, color=[colours[s] for s in statuses], source=source,
                 legend_label=statuses)
    p.add_layout(p.legend[0], "right")  # beside the bars, not over them
    return _counted(p)


def _histogram(values: Any, bins: Any) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(values.dropna(), dtype=np.float64)
    counts, edges = np.histogram(data, bins=bins)
    return counts, edges


def _sizes_figure(report: Report) -> Any:
    sizes = report.sizes
    if sizes.empty or sizes[["width", "height"]].isna().all().all():
        return None
    top = float(np.nanmax(sizes[["width", "height"]].to_numpy(dtype=np.float64)))
    bins = np.linspace(0, max(top, 1.0), 41)
    p = figure(height=300, y_range=DataRange1d(start=0), sizing_mode="stretch_width", toolbar_location=None,
               x_axis_label="pixels",
               y_axis_label="images", tools="hover", tooltips="$name: @left{0}-@right{0} px, @top images")
    for column, colour in (("width", "#1f77b4"), ("height", "#ff7f0e")):
        counts, edges = _histogram(sizes[column], bins)
        p.quad(left=edges[:-1], right=edges[1:], bottom=0, top=counts, alpha=0.55, color=colour,
               legend_label=column, name=column)
    return p


def _bytes_figure(report: Report) -> Any:
    data = report.sizes["bytes"].dropna()
    if data.empty:
        return None
    lo, hi = max(float(data.min()), 1.0), max(float(data.max()), 2.0)
    counts, edges = _histogram(data, np.geomspace(lo, hi * 1.0001, 41))
    p = figure(height=300, y_range=DataRange1d(start=0), sizing_mode="stretch_width", toolbar_location=None,
               x_axis_type="log",
               x_axis_label="bytes (log scale)", y_axis_label="images", tools="hover",
               tooltips="@left{0,0}-@right{0,0} bytes: @top images")
    p.xaxis.formatter = NumeralTickFormatter(format="0a")
    p.quad(left=edges[:-1], right=edges[1:], bottom=0, top=counts, color="#2b8cbe", alpha=0.8)
    return p


def _throughput_figure(report: Report) -> Any:
    times = report.chunk_times
    if len(times) < 2:
        return None
    start, stop = float(times[0, 3]), float(times[-1, 3])
    bins = int(min(120, max(10, len(times) // 2)))
    edges = np.linspace(start, max(stop, start + 1.0), bins + 1)
    width = np.diff(edges)
    rows = np.histogram(times[:, 3], bins=edges, weights=times[:, 1])[0] / width
    ok = np.histogram(times[:, 3], bins=edges, weights=times[:, 2])[0] / width
    p = figure(height=300, y_range=DataRange1d(start=0), sizing_mode="stretch_width", toolbar_location=None,
               x_axis_type="datetime",
               x_axis_label="time written (UTC)", y_axis_label="rows / s", tools="hover",
               tooltips="$name: @top{0,0.0} rows/s")
    p.quad(left=edges[:-1] * 1000, right=edges[1:] * 1000, bottom=0, top=rows, color="#9ecae1",
           legend_label="all rows", name="all rows")
    p.quad(left=edges[:-1] * 1000, right=edges[1:] * 1000, bottom=0, top=ok, color=_OK_COLOUR, alpha=0.8,
           legend_label="ok rows", name="ok rows")
    p.legend.location = "top_left"
    return p


def _sheet(report: Report) -> str:
    if not report.thumbnails:
        return '<p class="note">No usable images.</p>'
    cells = []
    for row, url, jpeg in report.thumbnails:
        label = html.escape(f"row {row}: {url}", quote=True)
        uri = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
        cells.append(f'<figure><img src="{uri}" alt="{label}" title="{label}">'
                     f"<figcaption>row {row}</figcaption></figure>")
    return '<div class="sheet">' + "".join(cells) + "</div>"


def _errors(report: Report) -> str:
    if report.errors.empty:
        return '<p class="note">No failures.</p>'
    rows = "".join(
        f"<tr><td>{html.escape(str(r.status))}</td><td class='n'>{int(r.rows):,}</td>"
        f"<td>{html.escape(str(r.error))}</td><td class='url'>{html.escape(str(r.url or ''))}</td></tr>"
        for r in report.errors.itertuples())
    return ("<table><thead><tr><th>status</th><th>rows</th><th>message</th><th>for example</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _no_times(report: Report) -> str:
    if not report.counts:
        return "No chunks written yet."
    if len(report.chunk_times):
        return "Too few chunks written to draw."
    return "No chunk timings: this output was written before daskimg recorded them."


def _sample_note(report: Report) -> str:
    written = sum(report.counts.values())
    if report.sampled < written:
        return (f"Counts by status cover all {written:,} written rows; hosts, messages, sizes and images come "
                f"from a sample of {report.sampled:,} rows.")
    return f"Every figure covers all {written:,} written rows."
