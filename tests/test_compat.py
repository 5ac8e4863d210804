"""The platform branches, each taken here whatever the platform: see daskimg/_compat.py."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import daskimg._isolate as isolate
from daskimg import _compat
from daskimg._stages import preprocess_partition
from daskimg.options import PreprocessOptions

from .conftest import fetched

OPTS = PreprocessOptions(height=24, width=24)


def _address_space_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_AS)[0]


@pytest.mark.skipif(not isolate.AVAILABLE, reason="needs os.fork")
@pytest.mark.parametrize("linux", [True, False], ids=["with-proc", "without-proc"])
def test_an_isolated_decoder_is_capped_where_the_platform_says_how_much_it_holds(
    monkeypatch: pytest.MonkeyPatch, linux: bool
) -> None:
    if linux and not _compat.LINUX:
        pytest.skip("/proc/self/statm is Linux's")
    if not linux:
        monkeypatch.setattr(isolate, "address_space_in_use", lambda: None)  # as on macOS
    limit = isolate.run_isolated(_address_space_limit, lambda why: pytest.fail(why))
    import resource

    if linux:
        assert limit != resource.RLIM_INFINITY
        assert limit > isolate.MEMORY_HEADROOM  # what the child inherited, plus the headroom
    else:
        assert limit == resource.getrlimit(resource.RLIMIT_AS)[0]  # the time limit alone applies


def test_without_fork_a_chunk_is_preprocessed_in_process(
    images: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows: no decoder isolation, and the chunk still gives every row."""
    bodies = [images["photo.jpg"], b"not an image"]
    expected = preprocess_partition(fetched(bodies), OPTS)
    monkeypatch.setattr(isolate, "AVAILABLE", False)
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("forked without fork"), raising=False)
    part = preprocess_partition(fetched(bodies), OPTS, isolate=True)
    np.testing.assert_array_equal(part.images, expected.images)
    assert part.meta["status"].tolist() == ["ok", "not_image"]


def test_cores_are_counted_without_cpu_affinity(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS and Windows have no sched_getaffinity: every core counts."""
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert _compat.usable_cpus() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert _compat.usable_cpus() == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's branch")
def test_on_linux_the_affinity_counts() -> None:
    assert _compat.usable_cpus() == len(os.sched_getaffinity(0))
