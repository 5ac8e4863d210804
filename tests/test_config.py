"""daskimg's own Dask config keys: a value of the wrong kind is a ConfigError that names the key."""

from __future__ import annotations

from collections.abc import Callable

import dask
import pytest

from daskimg import _config
from daskimg.errors import ConfigError


@pytest.mark.parametrize(
    ("read", "good", "expected", "bad", "message"),
    [
        (lambda: _config.flag("daskimg.k", True), False, False, "no", "must be true or false, got 'no'"),
        (lambda: _config.positive("daskimg.k", 2), 0.5, 0.5, -1, "must be a number above 0, got -1"),
        (lambda: _config.positive("daskimg.k", 2), 3, 3.0, float("nan"), "must be a number above 0"),
        (lambda: _config.count("daskimg.k", 1, none="null: none"), 0, 0, 1.5,
         r"must be a whole number >= 0 \(null: none\), got 1.5"),
        (lambda: _config.count("daskimg.k", 1, none="null: none"), None, None, True, "must be a whole number"),
        (lambda: _config.interval("daskimg.k", "500ms"), "2s", "2s", "often",
         "must be a time such as '500ms' .null leaves Dask's., got 'often'"),
        (lambda: _config.interval("daskimg.k", "500ms"), None, None, [1], "must be a time"),
        (lambda: _config.mapping("daskimg.k", "a mapping of names"), {"A": 1}, {"A": 1}, "A=1",
         "must be a mapping of names, got 'A=1'"),
    ],
    ids=["flag", "positive", "positive-nan", "count", "count-null", "interval", "interval-null", "mapping"],
)
def test_a_key_is_read_when_right_and_refused_by_name_when_wrong(
    read: Callable[[], object], good: object, expected: object, bad: object, message: str
) -> None:
    with dask.config.set({"daskimg.k": good}):
        assert read() == expected
    with (dask.config.set({"daskimg.k": bad}),
          pytest.raises(ConfigError, match=f"the Dask config key daskimg.k {message}")):
        read()


def test_an_unset_key_reads_as_its_default() -> None:
    assert _config.flag("daskimg.unset", True) is True
    assert _config.positive("daskimg.unset", 2) == 2.0
    assert _config.count("daskimg.unset", 1, none="") == 1
    assert _config.interval("daskimg.unset", "500ms") == "500ms"
    assert _config.mapping("daskimg.unset", "") == {}
