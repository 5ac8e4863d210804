"""Read img2dataset's webdataset shards for training, as people do today: webdataset streams the tar
files, a shuffle buffer mixes the samples, Pillow decodes each JPEG to an RGB uint8 array, and
batches of BATCH arrays are stacked. Prints the images delivered per second, over PASSES timed
passes after one untimed pass (the page cache and imports warm).

Run by ``reader.py`` with a Python that has ``webdataset pillow numpy``:

    python webdataset_reader.py SHARD [SHARD ...] [--batch 256] [--passes 3]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import webdataset as wds


def one_pass(shards: list[str], batch: int) -> tuple[int, float]:
    pipeline = (wds.WebDataset(shards, shardshuffle=len(shards), seed=0, empty_check=False)
                .shuffle(1000).decode("rgb8").to_tuple("jpg").batched(batch))
    start, n = time.perf_counter(), 0
    for (images,) in pipeline:
        n += len(np.asarray(images))
    return n, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shards", nargs="+")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--passes", type=int, default=3)
    a = ap.parse_args()
    one_pass(a.shards, a.batch)
    rates = [n / s for n, s in (one_pass(a.shards, a.batch) for _ in range(a.passes))]
    print(json.dumps({"img_s": float(np.median(rates)), "rates": rates}))


if __name__ == "__main__":
    main()
