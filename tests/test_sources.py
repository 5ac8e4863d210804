"""URL tables in every format become the same numbered rows, read block by block without the client."""

from __future__ import annotations

from pathlib import Path

import dask.dataframe as dd
import pandas as pd
import pytest

import daskimg.sources
from daskimg.errors import InputError
from daskimg.fetch import url_refusal
from daskimg.sources import Source, plan_source

from .tables import write_table

URLS = [f"http://example.com/{i}.jpg" for i in range(700)]
TABLE = pd.DataFrame({"url": URLS, "caption": [f"caption {i}" for i in range(700)], "id": range(700)})


def counted(table: object, **kwargs: object) -> Source:
    return plan_source(table, **kwargs).count()  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["txt", "csv", "tsv", "jsonl", "parquet", "csv.gz", "shards", "glob"])
def test_every_format_gives_the_same_rows_in_any_chunking(tmp_path: Path, fmt: str) -> None:
    source = counted(write_table(tmp_path, fmt, TABLE))
    assert source.n_rows == 700
    parts = [source.rows(start, start + 256) for start in range(0, 700, 256)]
    assert [len(p) for p in parts] == [256, 256, 188]
    rows = pd.concat(parts)
    assert rows.index.tolist() == list(range(700))
    assert rows["url"].tolist() == URLS
    if fmt != "txt":
        assert rows["caption"].tolist() == TABLE["caption"].tolist()
        assert rows["id"].astype(int).tolist() == list(range(700))


@pytest.mark.parametrize("fmt", ["txt", "csv", "tsv", "jsonl"])
def test_large_text_tables_are_read_in_blocks_that_keep_row_order(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daskimg.sources, "BLOCKSIZE", 4096)  # ~100 rows a block instead of 16 MiB
    source = counted(write_table(tmp_path, fmt, TABLE))
    assert len(source.blocks) >= 5
    assert source.n_rows == 700
    rows = pd.concat([source.rows(start, start + 100) for start in range(0, 700, 100)])  # chunks span blocks
    assert rows.index.tolist() == list(range(700))
    assert rows["url"].tolist() == URLS


def test_planning_reads_no_rows_and_parquet_is_counted_from_footers(tmp_path: Path) -> None:
    """The client lists files and reads one schema; a parquet shard's rows come from its row groups' footer."""
    (shards := tmp_path / "shards").mkdir()
    for i in range(3):
        TABLE.iloc[i * 200 : (i + 1) * 200].to_parquet(shards / f"part-{i}.parquet", row_group_size=64)
    source = plan_source(str(shards))
    assert not source.counted
    assert [b.start for b in source.blocks] == [-1, -1, -1]  # a file each, row groups not known yet
    source = source.count()
    assert len(source.blocks) == 3 * 4  # 64 + 64 + 64 + 8 rows a shard
    assert source.offsets is not None
    assert source.offsets.tolist()[:5] == [0, 64, 128, 192, 200]
    assert source.rows(190, 330)["url"].tolist() == URLS[190:330]


def test_chunks_of_one_block_read_it_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker keeps the blocks it read last: the chunks of a block that it takes read it once."""
    source = counted(write_table(tmp_path, "txt", TABLE))
    reads = []
    read_block = daskimg.sources.read_block
    monkeypatch.setattr(daskimg.sources, "read_block", lambda *a: reads.append(a) or read_block(*a))
    monkeypatch.setattr(daskimg.sources, "_CACHE", daskimg.sources._BlockCache(2))
    rows = pd.concat([source.rows(start, start + 50) for start in range(0, 700, 50)])
    assert rows["url"].tolist() == URLS
    assert len(reads) == 1


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
    rows = counted(str(tmp_path / f"u.{fmt}")).rows()
    assert len(rows) == 3
    assert rows["url"].iloc[0] == rows["url"].iloc[2] == good.decode()
    assert url_refusal(rows["url"].iloc[1]) == "not valid UTF-8 in the input table"


def test_in_memory_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert counted(URLS[:10]).n_rows == 10
    monkeypatch.setattr(daskimg.sources, "MEMORY_BLOCK_ROWS", 128)
    source = counted(TABLE.set_index("id"))
    assert len(source.blocks) == 6
    assert source.rows(600, 700).index.tolist() == list(range(600, 700))
    assert source.rows(600, 700)["url"].tolist() == URLS[600:]


def test_a_dask_dataframe_is_counted_and_read_partition_by_partition() -> None:
    frame = dd.from_pandas(TABLE, npartitions=5, sort=False)
    source = counted(frame)
    assert len(source.blocks) == 5
    assert source.rows(100, 400)["url"].tolist() == URLS[100:400]


def test_a_custom_url_column(tmp_path: Path) -> None:
    TABLE.rename(columns={"url": "link"}).to_parquet(tmp_path / "t.parquet")
    source = counted(str(tmp_path / "t.parquet"), url_col="link")
    assert source.rows(0, 10)["link"].iloc[3] == URLS[3]


def test_blank_lines_keep_their_place(tmp_path: Path) -> None:
    (tmp_path / "u.txt").write_text("http://a/1\n\nhttp://a/3\n")
    (tmp_path / "u.csv").write_text("url,caption\nhttp://a/1,one\n\nhttp://a/3,three\n")
    assert counted(str(tmp_path / "u.txt")).rows()["url"].tolist() == ["http://a/1", "", "http://a/3"]
    assert counted(str(tmp_path / "u.csv")).rows()["url"].tolist() == ["http://a/1", "", "http://a/3"]


def test_a_csv_field_with_a_line_break_is_an_error_not_a_shifted_row(tmp_path: Path) -> None:
    (tmp_path / "u.csv").write_text('url,caption\nhttp://a/1,"two\nlines"\nhttp://a/3,three\n')
    source = counted(str(tmp_path / "u.csv"))
    with pytest.raises(InputError, match="holds 2 rows where 3 were counted"):
        source.rows()


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
        counted(setup(tmp_path), url_col=url_col)
