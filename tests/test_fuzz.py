"""Fuzzing the decode path with mutated real images: an array of the right shape or a recorded error,
never a hang, never a crash. Bounded to well under a minute; each case runs in a forked child (the
same isolation a worker falls back to), so a decoder crash is caught and reported here, not fatal.
Fuzz longer with DASKIMG_FUZZ_EXAMPLES=20000."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daskimg import _isolate as isolate
from daskimg._stages import FetchedPartition, preprocess_partition
from daskimg.fetch import FetchResult
from daskimg.options import PreprocessOptions

pytestmark = pytest.mark.skipif(not isolate.AVAILABLE, reason="needs os.fork")

OPTS = PreprocessOptions(height=16, width=24, max_pixels=4_000_000)
SOURCES = ["photo.jpg", "tall.png", "photo.webp", "photo.gif", "photo.bmp", "big.jpg"]
RECORDED = {"ok", "not_image", "decode_error", "too_many_pixels", "preprocess_error"}


Mutation = tuple[str, float, int, bytes]  # kind, where (0-1 of the length), amount, bytes to insert

MUTATIONS = st.lists(st.tuples(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "repeat"]),
                               st.floats(0, 1), st.integers(0, 512), st.binary(max_size=32)), min_size=1, max_size=6)


def mutate(original: bytes, mutations: list[Mutation]) -> bytes:
    data = bytearray(original)
    for kind, where, amount, blob in mutations:
        at = min(int(where * len(data)), max(0, len(data) - 1))
        if kind == "flip" and data:
            data[at] ^= 1 << (amount % 8)
        elif kind == "set":  # header fields: sizes, lengths, counts
            data[at : at + 4] = (b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff")[amount % 3]
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = blob or b"\x00"
        elif kind == "delete":
            del data[at : at + 1 + amount]
        elif kind == "repeat":
            data[at:at] = data[at : at + 1 + amount]
    return bytes(data)


@pytest.fixture(scope="module")
def corpus(images: dict[str, bytes]) -> dict[str, bytes]:
    return images


def test_mutated_images_give_pixels_or_a_recorded_error(corpus: dict[str, bytes],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolate, "TIME_LIMIT", 10.0)  # a case past this counts as a hang

    @settings(max_examples=int(os.environ.get("DASKIMG_FUZZ_EXAMPLES", "300")), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.sampled_from(SOURCES), MUTATIONS)
    def check(source: str, mutations: list[Mutation]) -> None:
        data = mutate(corpus[source], mutations)
        rows = pd.DataFrame({"url": ["http://example.com/fuzz"]})
        part = preprocess_partition(FetchedPartition(rows, "url", [FetchResult("ok", None, 200, data, "x")]),
                                    OPTS, isolate=True)
        status, error = part.meta["status"][0], part.meta["error"][0]
        assert status in RECORDED, f"{status}: {error}"  # decoder_crashed would be a crash or a hang
        assert part.images.shape == (1, 16, 24, 3)
        if status != "ok":
            assert error
            assert not part.images.any()

    check()
