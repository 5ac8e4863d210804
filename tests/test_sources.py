"""URL tables in every format become the same numbered rows, split into aligned chunks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import daskimg.sources
from daskimg.errors import InputError
from daskimg.fetch import url_refusal
from daskimg.sources import read_source

from .tables import write_table

URLS = [f"http://example.com/{i}.jpg" for i in range(700)]
TABLE = pd.DataFrame({"url": URLS, "caption": [f"caption {i}" for i in range(700)], "id": range(700)})


@pytest.mark.parametrize("fmt", ["txt", "csv", "tsv", "jsonl", "parquet", "csv.gz", "shards", "glob"])
def test_every_format_gives_the_same_rows_in_aligned_chunks(tmp_path: Path, fmt: str) -> None:
    source = read_source(write_table(tmp_path, fmt, TABLE), chunk=256)
    assert source.n_rows == 700
    assert source.n_chunks == 3
    parts = [source.frame.partitions[k].compute() for k in range(source.n_chunks)]
    assert [len(p) for p in parts] == [256, 256, 188]
    rows = pd.concat(parts)
    assert rows.index.tolist() == list(range(700))
    assert rows["url"].tolist() == URLS
    if fmt != "txt":
        assert rows["caption"].tolist() == TABLE["caption"].tolist()


@pytest.mark.parametrize("fmt", ["txt", "csv", "tsv", "jsonl"])
def test_large_text_tables_are_read_in_blocks_that_keep_row_order(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daskimg.sources, "BLOCKSIZE", 4096)  # ~100 rows a block instead of 64 MiB
    source = read_source(write_table(tmp_path, fmt, TABLE), chunk=256)
    rows = source.frame.compute()
    assert rows.index.tolist() == list(range(700))
    assert rows["url"].tolist() == URLS


@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl"])
def test_a_row_that_is_not_utf8_stays_a_row(tmp_path: Path, fmt: str) -> None:
    good = b"http://example.com/a.jpg"
    bad = b"http://example.com/\xff\xfe.jpg"
    if fmt == "txt":
        data = b"\n".join([good, bad, good]) + b"\n"
    elif fmt == "csv":
        data = b"url\n" + b"\n".join([good, bad, good]) + b"\n"
    else:
        data = b"".join(b'{"url": "' + u + b'"}\n' for u in [good, bad, good])
    (tmp_path / f"u.{fmt}").write_bytes(data)
    rows = read_source(str(tmp_path / f"u.{fmt}")).frame.compute()
    assert len(rows) == 3
    assert rows["url"].iloc[0] == rows["url"].iloc[2] == good.decode()
    assert url_refusal(rows["url"].iloc[1]) == "not valid UTF-8 in the input table"


def test_in_memory_tables(tmp_path: Path) -> None:
    assert read_source(URLS[:10]).n_rows == 10
    source = read_source(TABLE.set_index("id"), chunk=100)
    assert source.n_chunks == 7
    assert source.frame.partitions[6].compute().index.tolist() == list(range(600, 700))


def test_a_custom_url_column(tmp_path: Path) -> None:
    TABLE.rename(columns={"url": "link"}).to_parquet(tmp_path / "t.parquet")
    source = read_source(str(tmp_path / "t.parquet"), url_col="link")
    assert source.frame.partitions[0].compute()["link"].iloc[3] == URLS[3]


def test_blank_lines_keep_their_place(tmp_path: Path) -> None:
    (tmp_path / "u.txt").write_text("http://a/1\n\nhttp://a/3\n")
    rows = read_source(str(tmp_path / "u.txt")).frame.compute()
    assert rows["url"].tolist() == ["http://a/1", "", "http://a/3"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: str(d / "nope.csv"), "no input file matches"),
        (lambda d: (d / "u.xyz").write_text("x") and str(d / "u.xyz"), "cannot tell the format"),
        (lambda d: TABLE.to_csv(d / "t.csv", index=False) or str(d / "t.csv"), "no column 'link'"),
        (lambda d: (d / "e.csv").write_text("url\n") and str(d / "e.csv"), "holds no rows"),
        (lambda d: (d / "bad.parquet").write_bytes(b"not parquet") and str(d / "bad.parquet"), "cannot read"),
    ],
    ids=["missing", "unknown-suffix", "no-url-column", "empty", "corrupt"],
)
def test_unreadable_input_is_a_clear_error(tmp_path: Path, setup, message: str) -> None:  # type: ignore[no-untyped-def]
    url_col = "link" if message.startswith("no column") else "url"
    with pytest.raises(InputError, match=message):
        read_source(setup(tmp_path), url_col=url_col)
