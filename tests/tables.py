"""Write one URL table in every input format the tests read."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd


def write_table(directory: Path, fmt: str, table: pd.DataFrame) -> str:
    """Write ``table`` as ``fmt`` and return the path (or glob) to read it from."""
    n = len(table)
    if fmt == "txt":
        path = directory / "urls.txt"
        path.write_text("\n".join(table["url"]) + "\n")
    elif fmt == "csv":
        table.to_csv(path := directory / "urls.csv", index=False)
    elif fmt == "tsv":
        table.to_csv(path := directory / "urls.tsv", index=False, sep="\t")
    elif fmt == "jsonl":
        table.to_json(path := directory / "urls.jsonl", orient="records", lines=True)
    elif fmt == "parquet":
        table.to_parquet(path := directory / "urls.parquet")
    elif fmt == "csv.gz":
        with gzip.open(path := directory / "urls.csv.gz", "wt") as f:
            table.to_csv(f, index=False)
    elif fmt == "shards":
        (path := directory / "shards").mkdir()
        for i, start in enumerate(range(0, n, 300)):
            table.iloc[start : start + 300].to_parquet(path / f"part-{i}.parquet")
    elif fmt == "glob":
        for i, start in enumerate(range(0, n, 250)):
            table.iloc[start : start + 250].to_json(directory / f"urls-{i}.jsonl", orient="records", lines=True)
        return str(directory / "urls-*.jsonl")
    else:
        raise AssertionError(fmt)
    return str(path)
