"""The same job in Daft (a Rust dataframe for multimodal data), with its own download, decode,
crop and resize expressions; for ``benchmarks/run.py --daft PYTHON``.

    PYTHON benchmarks/daft_pipeline.py URLS.txt OUT.npy --size 128

Each image is cropped to its centre square, then resized (Daft has no centre crop of its own);
failed downloads and decodes stay zeros. Install with ``pip install daft numpy``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import daft
import daft.functions as F
import numpy as np
from daft import DataType, col


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("urls", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--connections", type=int, default=64)
    a = ap.parse_args()
    urls = [u for u in a.urls.read_text().splitlines() if u]
    df = daft.from_pydict({"url": urls})
    df = df.with_column("bytes", F.download(col("url"), max_connections=a.connections, on_error="null"))
    df = df.with_column("image", F.decode_image(col("bytes"), on_error="null", mode="RGB"))
    width, height = F.image_width(col("image")), F.image_height(col("image"))
    side = F.when(width < height, width).otherwise(height)
    square = F.to_list(((width - side) / 2).cast(DataType.uint32()), ((height - side) / 2).cast(DataType.uint32()),
                       side.cast(DataType.uint32()), side.cast(DataType.uint32()))
    df = df.select(F.image_to_tensor(F.resize(F.crop(col("image"), square), a.size, a.size)).alias("pixels"))
    out = np.zeros((len(urls), a.size, a.size, 3), np.uint8)
    row = 0
    for part in df.iter_partitions():
        for pixels in part.to_pydict()["pixels"]:
            if pixels is not None:
                out[row] = np.asarray(pixels).reshape(a.size, a.size, 3)
            row += 1
    np.save(a.out, out)


if __name__ == "__main__":
    main()
