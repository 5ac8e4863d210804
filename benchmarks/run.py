"""Reproduce daskimg's throughput figures on your machine, with nothing but this repository.

Builds a web-like corpus from the photos daskimg ships (85% JPEG, 10% PNG, 5% WebP, longest
side 256-1280 px), serves it on loopback (nginx when installed, else a Python server, which
costs CPU of its own), and times on the same URL list:

* ``limit``: the decode limit with daskimg's own decoders, one process per core decoding,
  cropping and resizing bytes already in memory (no network, no writes);
* ``daskimg``: ``python -m daskimg URLS OUT --size SIZE --allow-private-network``;
* ``img2dataset``: when an ``img2dataset`` executable is given or on PATH, with 64 threads
  per core and the same size and crop;
* ``daft``: when a Python with Daft is given (``--daft``), ``daft_pipeline.py``: Daft's own
  download, decode, crop and resize.

Each contender first runs once, untimed, on ``--warmup`` other URLs, so that the timed run
measures a warm machine (imports and files in the page cache), as every run but the first is.

Wall time includes start-up; peak memory is the largest sum of PSS over the contender's
process tree, sampled every 0.2 s.

``--silent-share 0.005`` points that share of the URLs, spread evenly, at a server that
accepts connections and never answers: the web's dead hosts, which a real URL list has.

    python benchmarks/run.py [--count 10000] [--size 128] [--only limit,daskimg,img2dataset,daft]
        [--img2dataset PATH] [--daft PYTHON]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from daskimg.demo import IMAGES, DemoServer
from daskimg.image import decode, fit, to_array
from daskimg.options import PreprocessOptions

LONGEST_SIDES = [256, 320, 400, 500, 640, 640, 800, 800, 1024, 1280]


def build_corpus(out: Path, count: int, seed: int = 0) -> list[str]:
    """Random crops of the shipped photos, rescaled to common web sizes and re-encoded."""
    rng = random.Random(seed)
    photos = [Image.open(p).convert("RGB") for p in sorted(IMAGES.iterdir()) if p.suffix in (".jpg", ".png", ".webp")]
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        photo = rng.choice(photos)
        w, h = photo.size
        f = rng.uniform(0.6, 1.0)
        cw, ch = int(w * f), int(h * f)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        scale = rng.choice(LONGEST_SIDES) / max(cw, ch)
        img = photo.crop((x, y, x + cw, y + ch)).resize((max(1, int(cw * scale)), max(1, int(ch * scale))))
        r = rng.random()
        name, fmt, kw = ((f"{i:06d}.jpg", "JPEG", {"quality": rng.randint(70, 95)}) if r < 0.85 else
                         (f"{i:06d}.png", "PNG", {}) if r < 0.95 else (f"{i:06d}.webp", "WEBP", {"quality": 80}))
        img.save(out / name, fmt, **kw)
        names.append(name)
    return names


def corpus(work: Path, files: int) -> tuple[Path, list[str]]:
    """The corpus of ``files`` images under ``work`` (built on first use), and its file names."""
    root = work / f"corpus-{files}"
    if not (root / ".done").exists():
        shutil.rmtree(root, ignore_errors=True)
        print(f"# building {files} images in {root}", flush=True)
        build_corpus(root, files)
        (root / ".done").touch()
    return root, sorted(p.name for p in root.iterdir() if not p.name.startswith("."))


@contextlib.contextmanager
def served(root: Path, work: Path) -> Iterator[str]:
    """Serve ``root`` on loopback while the block runs: nginx when installed, else a Python server;
    gives the base URL."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not nginx:
        with DemoServer(directory=root) as server:
            yield server.url
        return
    port = _free_port()
    conf = work / "nginx.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(f"""{user}worker_processes 1; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 8192; }}
http {{ access_log off; sendfile on; keepalive_requests 1000000; keepalive_timeout 120;
  server {{ listen 127.0.0.1:{port}; root {root}; }} }}""")
    proc = subprocess.Popen([nginx, "-c", str(conf), "-g", "daemon off;"])
    try:
        time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def img2dataset_command(img2dataset: str, urls: Path, out: Path, size: int, output_format: str) -> list[str]:
    """img2dataset on ``urls`` into ``out``: 64 threads per process, a process per core, centre crops."""
    return [img2dataset, "--url_list", str(urls), "--input_format", "txt", "--output_folder", str(out),
            "--output_format", output_format, "--image_size", str(size), "--resize_mode", "center_crop",
            "--processes_count", str(os.cpu_count() or 1), "--thread_count", "64", "--number_sample_per_shard",
            "1000", "--disallowed_header_directives", "[]", "--timeout", "10"]


class SilentServer:
    """A loopback server that accepts every connection and never answers (until closed)."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[object] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed
            while True:
                self.held.append(self.sock.accept()[0])

    def close(self) -> None:
        self.sock.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_pss_mib(root: int) -> float:
    """PSS (or RSS) summed over ``root`` and its descendants, in MiB."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):  # processes come and go
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    pids, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in pids]
        pids.update(kids)
        frontier.extend(kids)
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total / 1024


def measured(cmd: list[str], log: Path) -> dict[str, float]:
    """Run ``cmd``; wall seconds and peak PSS of its process tree."""
    peak = 0.0
    start = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, tree_pss_mib(proc.pid))
                stop.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        stop.set()
        sampler.join()
    if rc:
        raise SystemExit(f"{cmd[0]} exited with {rc}; see {log}")
    return {"wall_s": time.perf_counter() - start, "peak_mib": peak}


_DATA: list[bytes] = []


def _load(files: list[str]) -> None:
    _DATA.extend(Path(f).read_bytes() for f in files)


def _work(args: tuple[int, int, int]) -> int:
    start, stop, size = args
    opts = PreprocessOptions(height=size, width=size)
    for i in range(start, stop):
        to_array(fit(decode(_DATA[i % len(_DATA)], opts).pixels, opts), opts)
    return stop - start


def decode_limit(corpus: Path, count: int, size: int) -> float:
    """Images per second when every core only decodes and resizes, with daskimg's decoders."""
    files = sorted(str(p) for p in corpus.iterdir() if not p.name.startswith("."))
    procs = os.cpu_count() or 1
    jobs = [(i, min(i + 256, count), size) for i in range(0, count, 256)]
    with ProcessPoolExecutor(procs, initializer=_load, initargs=(files,)) as pool:
        list(pool.map(_work, [(0, 8, size)] * procs))
        start = time.perf_counter()
        done = sum(pool.map(_work, jobs))
        return done / (time.perf_counter() - start)


def _commands(a: argparse.Namespace, wanted: list[str]) -> dict[str, Callable[[Path, Path], list[str]]]:
    """Per contender, its command for a URL list and an output path (without the suffix)."""
    commands: dict[str, Callable[[Path, Path], list[str]]] = {}
    if "daskimg" in wanted:
        commands["daskimg"] = lambda urls, out: [
            sys.executable, "-m", "daskimg", str(urls), f"{out}.zarr", "--size", str(a.size),
            "--allow-private-network", "--dashboard-address", ":0"]
    if "img2dataset" in wanted and a.img2dataset:
        commands["img2dataset"] = lambda urls, out: img2dataset_command(a.img2dataset, urls, out, a.size, "files")
    if "daft" in wanted and a.daft:
        commands["daft"] = lambda urls, out: [
            a.daft, str(Path(__file__).with_name("daft_pipeline.py")), str(urls), f"{out}.npy", "--size", str(a.size)]
    return commands


def _clear(out: Path) -> None:
    for path in (out, out.with_name(f"{out.name}.zarr"), out.with_name(f"{out.name}.npy")):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10000, help="URLs in the list (files repeat, URLs do not)")
    ap.add_argument("--files", type=int, default=2000, help="distinct images in the corpus")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--only", default="limit,daskimg,img2dataset,daft")
    ap.add_argument("--img2dataset", default=shutil.which("img2dataset"), help="img2dataset executable, if any")
    ap.add_argument("--daft", help="a Python interpreter with Daft installed (pip install daft numpy), if any")
    ap.add_argument("--warmup", type=int, default=200, help="URLs each contender runs untimed first (0: none)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "daskimg-benchmark")
    ap.add_argument("--silent-share", type=float, default=0.0,
                    help="share of the URLs that go to a server that never answers (e.g. 0.005)")
    a = ap.parse_args()
    wanted = a.only.split(",")
    work = a.workdir
    root, names = corpus(work, a.files)
    results: dict[str, dict[str, float]] = {}
    if "limit" in wanted:
        results["limit"] = {"img_s": decode_limit(root, a.count, a.size)}
    silent = SilentServer()
    every = round(1 / a.silent_share) if a.silent_share > 0 else 0
    with served(root, work) as base, contextlib.closing(silent):
        urls, warmup = work / "urls.txt", work / "warmup.txt"
        urls.write_text("".join(f"{silent.url if every and i % every == every - 1 else base}/{names[i % len(names)]}"
                                f"?i={i}\n" for i in range(a.count)))
        warmup.write_text("".join(f"{base}/{names[i % len(names)]}?warmup={i}\n" for i in range(a.warmup)))
        for name, command in _commands(a, wanted).items():
            out = work / name
            if a.warmup:  # caches and imports warm, as they are for every run but a machine's first
                _clear(out)
                print(f"# {name} warm-up: {shlex.join(command(warmup, out))}", flush=True)
                subprocess.run(command(warmup, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            _clear(out)
            print(f"# {name}: {shlex.join(command(urls, out))}", flush=True)
            results[name] = measured(command(urls, out), work / f"{name}.log")
    for r in results.values():
        if "wall_s" in r:
            r["img_s"] = a.count / r["wall_s"]
    print(f"\n{a.count} URLs" + (f" ({a.count // every} to a server that never answers)" if every else "")
          + f", {a.size}x{a.size}, {os.cpu_count()} cores")
    print(f"{'contender':12s} {'img/s':>8s} {'wall s':>8s} {'peak MiB':>9s}")
    for name, r in results.items():
        wall, peak = r.get("wall_s", float("nan")), r.get("peak_mib", float("nan"))
        print(f"{name:12s} {r['img_s']:8.1f} {wall:8.1f} {peak:9.0f}")
    if "daskimg" in results:
        for other in ("limit", "img2dataset", "daft"):
            if other in results:
                print(f"daskimg / {other}: {results['daskimg']['img_s'] / results[other]['img_s']:.2f}")


if __name__ == "__main__":
    main()
