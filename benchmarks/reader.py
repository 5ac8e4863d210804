"""How fast training reads daskimg's output, against img2dataset's webdataset shards, on one core.

Builds the corpus of ``run.py`` (85% JPEG, 10% PNG, 5% WebP), serves it on loopback, and makes
from the same URL list daskimg's output (``python -m daskimg``) and, when img2dataset is given,
its webdataset shards (JPEG files in tar files, the format people train from). Then, pinned to
one core, it times reading them for training; each figure is the median of ``--passes`` passes
after an untimed one (the page cache and imports warm):

* ``rows``: one row at a time through zarr, in shuffled order (a hand-written ``Dataset``
  whose ``__getitem__`` reads ``images[i]``): each read decompresses the row's whole chunk;
* ``chunks (zarr)``: whole chunks in order through zarr, ``images[k * c:(k + 1) * c]``;
* ``chunks``: whole chunks in order, as the reader reads them, no shuffling or batching;
* ``reader``: :class:`daskimg.ImageReader`, shuffled (8 chunks a buffer), batches of 256 uint8;
* ``reader float32``: the same, scaled to [0, 1] and normalised with ImageNet's mean and std;
* ``webdataset + Pillow``: ``webdataset_reader.py``, with a Python given by ``--webdataset``.

    python benchmarks/reader.py [--count 10000] [--size 128] [--img2dataset PATH] [--webdataset PYTHON]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import corpus, img2dataset_command, served

import daskimg
from daskimg.output import locate_output

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def timed(read: Callable[[], int], passes: int) -> float:
    """Images a second: the median over ``passes`` timed passes, after one untimed pass."""
    read()
    rates = []
    for _ in range(passes):
        start = time.perf_counter()
        n = read()
        rates.append(n / (time.perf_counter() - start))
    return float(np.median(rates))


def make_outputs(a: argparse.Namespace, work: Path) -> tuple[Path, list[str]]:
    root, names = corpus(work, a.files)
    out, shards = work / "daskimg.zarr", work / "webdataset"
    with served(root, work) as base:
        urls = work / "urls.txt"
        urls.write_text("".join(f"{base}/{names[i % len(names)]}?i={i}\n" for i in range(a.count)))
        for path in (out, shards):
            shutil.rmtree(path, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "daskimg", str(urls), str(out), "--size", str(a.size),
                        "--allow-private-network", "--no-progress", "--dashboard-address", ":0"], check=True)
        if a.img2dataset:
            subprocess.run(img2dataset_command(a.img2dataset, urls, shards, a.size, "webdataset"), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out, sorted(str(p) for p in shards.glob("*.tar"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--files", type=int, default=2000, help="distinct images in the corpus")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--rows", type=int, default=500, help="rows read one at a time (slow: a sample)")
    ap.add_argument("--img2dataset", default=shutil.which("img2dataset"), help="img2dataset executable, if any")
    ap.add_argument("--webdataset", help="a Python with webdataset, Pillow and numpy installed, if any")
    ap.add_argument("--cpu", type=int, default=0, help="the core every reader is pinned to")
    ap.add_argument("--keep", action="store_true", help="reuse the outputs a previous run left in --workdir")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "daskimg-reader-benchmark")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    if a.keep and (a.workdir / "daskimg.zarr").exists():
        out, shards = a.workdir / "daskimg.zarr", sorted(str(p) for p in (a.workdir / "webdataset").glob("*.tar"))
    else:
        out, shards = make_outputs(a, a.workdir)
    if hasattr(os, "sched_setaffinity"):  # Linux: from here on one core (the webdataset process inherits it)
        os.sched_setaffinity(0, {a.cpu})

    images = zarr.open_array(str(out), path="images", mode="r")
    c = images.chunks[0]
    _, chunks = locate_output(str(out))
    order = np.random.default_rng(0).permutation(images.shape[0])[: a.rows]

    def batches(**options: object) -> int:
        return sum(len(b.index) for b in daskimg.ImageReader(str(out), **options))  # type: ignore[arg-type]

    results = {
        "rows": timed(lambda: sum(len(images[int(i)]) > 0 for i in order), a.passes),
        "chunks (zarr)": timed(lambda: sum(len(images[k : k + c]) for k in range(0, images.shape[0], c)), a.passes),
        "chunks": timed(lambda: sum(len(chunks.read(k)[1]) for k in range(-(-images.shape[0] // c))), a.passes),
        "reader": timed(lambda: batches(batch_size=256), a.passes),
        "reader float32": timed(lambda: batches(batch_size=256, dtype="float32", **IMAGENET), a.passes),
    }
    if a.webdataset and shards:
        line = subprocess.run([a.webdataset, str(Path(__file__).with_name("webdataset_reader.py")), *shards,
                               "--passes", str(a.passes)], check=True, capture_output=True, text=True).stdout
        results["webdataset + Pillow"] = json.loads(line.strip().splitlines()[-1])["img_s"]
    print(f"\n{a.count} URLs, {a.size}x{a.size}, one core, median of {a.passes} passes")
    print(f"{'reader':22s} {'img/s':>9s}")
    for name, rate in results.items():
        print(f"{name:22s} {rate:9.0f}")
    print(f"reader / chunks: {results['reader'] / results['chunks']:.2f}")
    print(f"reader / chunks (zarr): {results['reader'] / results['chunks (zarr)']:.2f}")
    if "webdataset + Pillow" in results:
        print(f"reader / webdataset + Pillow: {results['reader'] / results['webdataset + Pillow']:.1f}")


if __name__ == "__main__":
    main()
