"""``daskimg report``: a page about an output with failures, looked at in a real browser."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from distributed import Client

import daskimg
import daskimg.output._store

from .browser import PAINTED_CANVASES, chromium, needs_chromium, requests
from .server import FaultServer, free_port

GOOD = ["photo.jpg", "big.jpg", "tall.png", "photo.webp", "photo.gif", "photo.bmp"]


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory, server: FaultServer, client: Client) -> tuple[Path, pd.DataFrame]:
    """120 rows in chunks of 8: images from "localhost", 404s and web pages among them, and a dead host."""
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: every connection is refused
    images = server.url("/img/").replace("127.0.0.1", "localhost")
    urls = [f"{dead}/photo{i}.jpg" if i % 10 == 9 else server.url(f"/missing?{i}") if i % 10 == 4
            else server.url(f"/html?{i}") if i % 15 == 7 else f"{images}{GOOD[i % len(GOOD)]}?row={i}"
            for i in range(120)]
    path = tmp_path_factory.mktemp("report") / "out.zarr"
    summary = (daskimg.read_urls(urls, chunk=8).fetch(allow_private_network=True, retries=0)
               .preprocess(size=48).to_zarr(str(path), client=client, progress=False))
    assert summary.complete
    meta = daskimg.open(str(path))[1]
    assert set(meta["status"]) == {"ok", "http_error", "not_image", "connection_error"}
    return path, meta


def test_the_report_counts_what_the_metadata_holds_and_names_the_failing_hosts(
    output: tuple[Path, pd.DataFrame], server: FaultServer
) -> None:
    path, meta = output
    report = daskimg.report(str(path), samples=12)
    assert report.counts == meta["status"].value_counts().to_dict()
    assert report.sampled == len(meta)
    failures = meta[meta["status"] != "ok"]
    by_host = report.hosts.groupby("host", observed=True)["rows"].sum().to_dict()
    dead = failures["url"].str.extract(r"//([^/]+)/photo")[0].dropna().unique()  # the dead host, with its port
    assert by_host == {dead[0]: int((failures["status"] == "connection_error").sum()),
                       server.url("/").split("/")[2]: int(failures["status"].isin(["http_error", "not_image"]).sum())}
    assert set(report.hosts["status"]) == {"http_error", "not_image", "connection_error"}
    assert set(report.errors["status"]) == {"http_error", "not_image", "connection_error"}
    assert report.errors["error"].str.len().gt(0).all()
    assert len(report.thumbnails) == 12
    ok_rows = set(meta.loc[meta["status"] == "ok", "index"])
    assert {row for row, _, _ in report.thumbnails} <= ok_rows
    assert all(url.startswith("http://localhost:") for _, url, _ in report.thumbnails)
    times = report.chunk_times
    assert sorted(times[:, 0].astype(int).tolist()) == list(range(15))  # every chunk, when it was written
    assert times[:, 1].sum() == 120
    assert times[:, 2].sum() == len(ok_rows)
    assert abs(times[-1, 3] - time.time()) < 3600
    assert '<iframe srcdoc="' in report._repr_html_()  # a notebook shows the page inline
    assert "ok" in str(report)
    assert f"{len(failures)}" in str(report)


@pytest.mark.slow
@needs_chromium
def test_the_page_renders_its_plots_and_images_in_chromium_without_the_network(
    output: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    path, meta = output
    page = tmp_path / "page.html"
    done = subprocess.run([sys.executable, "-m", "daskimg", "report", str(path), "--html", str(page),
                           "--samples", "20"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"ok {int((meta['status'] == 'ok').sum())}" in done.stdout.replace(",", "")
    assert done.stderr.strip() == f"daskimg: report written to {page}"
    with chromium() as browser:
        browser.get(page.as_uri())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # Bokeh renders after the page has loaded
            painted = browser.execute_script(PAINTED_CANVASES)
            if sum(n > 0 for n in painted) >= 5:
                break
            time.sleep(0.2)
        views = browser.execute_script("return Object.values(Bokeh.index).map(v => v.model.type)")
        sheet = browser.execute_script(
            "return [...document.querySelectorAll('.sheet img')].map(i => [i.complete, i.naturalWidth])")
        table = browser.execute_script("return document.querySelector('table').innerText")
        made = requests(browser)
        browser.save_screenshot(str(tmp_path / "page.png"))
    assert views.count("Figure") == 5  # status, hosts, sizes, bytes, throughput
    assert sum(n > 0 for n in painted) >= 5  # and each drew something
    assert sheet == [[True, 48]] * 20  # the contact sheet: 20 decoded 48 px images
    for status in ("http_error", "not_image", "connection_error"):
        assert status in table
    assert made[0] == page.as_uri()
    assert [url for url in made[1:] if not url.startswith("data:")] == []  # nothing but the page and its images


def test_a_report_on_no_output_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "daskimg", "report", str(tmp_path / "nothing.zarr")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == f"daskimg: error: {tmp_path / 'nothing.zarr'} is not a daskimg output\n"
    assert not list(tmp_path.iterdir())


def test_a_large_output_is_sampled_file_by_file_and_its_counts_and_timings_stay_whole(
    tmp_path: Path, server: FaultServer, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daskimg.output._store, "GROUP_ROWS", 16)  # two chunks a metadata file: 8 files
    urls = [server.url("/missing") if i % 5 == 0 else server.url(f"/img/photo.jpg?large={i}") for i in range(120)]
    path = tmp_path / "out.zarr"
    assert (daskimg.read_urls(urls, chunk=8).fetch(allow_private_network=True).preprocess(size=16)
            .to_zarr(str(path), client=client, progress=False).complete)
    assert len(list((path / "metadata").glob("*.parquet"))) == 8
    report = daskimg.Report.from_output(str(path), max_rows=40, samples=6)
    assert report.counts == {"ok": 96, "http_error": 24}  # from every file's footer
    assert report.sampled == 48  # three files of 16 rows, spread over the eight
    assert "from a sample of 48 rows" in report.html()
    assert sorted(report.chunk_times[:, 0].astype(int).tolist()) == list(range(15))  # kept through compaction
    assert report.chunk_times[:, 1].sum() == 120
