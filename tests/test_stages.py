"""The stage functions called directly, without Dask: one bad row never costs its neighbours."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

import daskimg._stages
from daskimg._stages import FetchedPartition, preprocess_partition
from daskimg.fetch import FetchResult
from daskimg.options import PreprocessOptions

from .conftest import photo


def fetched(n: int) -> FetchedPartition:
    buf = io.BytesIO()
    photo("cat.jpg").save(buf, "JPEG")
    rows = pd.DataFrame({"url": [f"http://x/{i}" for i in range(n)], "note": list("abcdefgh"[:n])},
                        index=pd.RangeIndex(512, 512 + n))
    results = [FetchResult("ok", None, 200, buf.getvalue(), "0" * 64) for _ in range(n)]
    results[1] = FetchResult("http_error", "HTTP 404 Not Found", 404)
    return FetchedPartition(rows, "url", results)


def test_a_partition_keeps_row_numbers_and_carried_columns() -> None:
    part = preprocess_partition(fetched(4), PreprocessOptions(height=16, width=24))
    assert part.start == 512
    assert part.images.shape == (4, 16, 24, 3)
    assert part.ok.tolist() == [True, False, True, True]
    assert part.meta["index"].tolist() == [512, 513, 514, 515]
    assert part.meta["note"].tolist() == list("abcd")
    assert part.meta.loc[1, "http_status"] == 404
    assert (part.images[1] == 0).all()


def test_an_unexpected_error_in_one_image_is_recorded_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    real_fit = daskimg._stages.fit
    calls = iter(range(100))

    def flaky_fit(pixels: np.ndarray, opts: PreprocessOptions, convert: object = None) -> np.ndarray:
        if next(calls) == 1:
            raise RuntimeError("a bug for this image only")
        return real_fit(pixels, opts, convert)  # type: ignore[arg-type]

    monkeypatch.setattr(daskimg._stages, "fit", flaky_fit)
    part = preprocess_partition(fetched(4), PreprocessOptions(height=8, width=8))
    assert part.meta["status"].tolist() == ["ok", "http_error", "preprocess_error", "ok"]
    assert "a bug for this image only" in part.meta.loc[2, "error"]
    assert np.count_nonzero(part.images[2]) == 0
