"""daskimg's own costs at scale: millions of rows, one tiny image behind every URL.

Every URL points at the same 32x32 JPEG, served by nginx on loopback (with a distinct query
string per row), and the output is 32 px: the network and the decoder cost next to nothing,
so what is measured is daskimg's per-row and per-chunk work on the client, the scheduler
and the workers. Prints, for one run of the command line with its default local cluster:

* rows/s over the whole run, and after the first chunk was written;
* seconds from the command's start to the first chunk written;
* the client's peak RSS (``VmHWM`` of the command's process, which runs the scheduler too);
* the scheduler's largest task count (from its Prometheus endpoint, every 0.25 s);
* CPU seconds of the command's process (the client and, on its local cluster, the scheduler) and of
  its worker processes, and what they come to per row and per chunk;
* any line on stderr that is not the progress or the summary.

    python benchmarks/scale.py --rows 1000000 --format txt
    python benchmarks/scale.py --rows 10000000 --format parquet --shards 10
    python benchmarks/scale.py --rows 100000000 --format parquet --shards 100 --stop-after 120

``--stop-after S`` sends SIGTERM S seconds after the first chunk, then runs the same command
again, reports how soon it writes again (resuming), and stops that one too (after 30 s at
most). Needs ``prometheus_client`` for the task count (``pip install prometheus_client``) and
nginx (``apt-get install nginx-light``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from run import _free_port, served

from daskimg.demo import IMAGES


def write_input(path: Path, base: str, rows: int, fmt: str, shards: int) -> str:
    """``rows`` URLs of the one image, as one text file or ``shards`` parquet files."""
    step = 1_000_000
    if fmt == "txt":
        with open(path / "urls.txt", "w") as f:
            for start in range(0, rows, step):
                f.write("".join(f"{base}/t.jpg?{i}\n" for i in range(start, min(rows, start + step))))
        return str(path / "urls.txt")
    (path / "shards").mkdir()
    per = -(-rows // shards)
    for s in range(shards):
        first, last = s * per, min(rows, (s + 1) * per)
        urls = pa.array([f"{base}/t.jpg?{i}" for i in range(first, last)], pa.string())
        pq.write_table(pa.table({"url": urls}), path / "shards" / f"part-{s:05d}.parquet")
    return str(path / "shards")


def scheduler_tasks(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    return sum(int(float(m)) for m in re.findall(r'^dask_scheduler_tasks\{state="[^"]+"\} (\S+)$', text, re.M))


def peak_rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match[1]) / 1024 if match else None


def first_written(out: Path) -> bool:
    try:
        return any(name.startswith("part-") for name in os.listdir(out / "metadata"))
    except OSError:
        return False


def cpu_seconds(pid: int, cpu: dict[int, tuple[str, float]]) -> None:
    """Record the CPU time so far of ``pid`` ("client") and of its descendants ("workers")."""
    try:
        proc = psutil.Process(pid)
        procs = [("client", proc)] + [("workers", p) for p in proc.children(recursive=True)]
        for kind, p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                cpu[p.pid] = (kind, t.user + t.system)
    except psutil.Error:
        pass


def run_once(cmd: list[str], out: Path, port: int | None, stop_after: float | None) -> dict[str, object]:
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cpu: dict[int, tuple[str, float]] = {}
    first = None
    most_tasks, rss = 0, 0.0
    written_before = _done_rows(out)
    while proc.poll() is None:
        time.sleep(0.25)
        now = time.monotonic()
        if first is None and (first_written(out) and _done_rows(out) > written_before):
            first = now - start
        tasks = scheduler_tasks(port) if port is not None else None
        most_tasks = max(most_tasks, tasks or 0)
        rss = max(rss, peak_rss_mib(proc.pid) or 0.0)
        cpu_seconds(proc.pid, cpu)
        if stop_after is not None and first is not None and now - start > first + stop_after:
            proc.send_signal(signal.SIGTERM)
            stop_after = None
            stopped = now
    stdout, stderr = proc.communicate()
    wall = time.monotonic() - start
    match = re.search(r"(\d+) rows processed", stdout)
    processed = int(match[1]) if match else None
    (out.parent / f"stderr-{int(start)}.txt").write_text(stderr)
    noise = [line for line in stderr.splitlines() if not line.startswith(("daskimg: ", "["))]
    result: dict[str, object] = {
        "exit": proc.returncode, "wall_s": round(wall, 1), "first_chunk_s": None if first is None else round(first, 1),
        "processed": processed, "client_peak_rss_mib": round(rss), "scheduler_max_tasks": most_tasks,
        "stderr_other": noise[:5], "summary": stdout.strip().splitlines()[-1:] if stdout else [],
    }
    if processed and first is not None and wall > first:
        result["rows_per_s"] = round(processed / wall)
        result["rows_per_s_after_first"] = round(processed / (wall - first))
        chunk = int(re.search(r"chunks of (\d+)", stderr)[1]) if re.search(r"chunks of (\d+)", stderr) else 256
        for kind in ("client", "workers"):
            seconds = sum(t for k, t in cpu.values() if k == kind)
            result[f"{kind}_cpu_s"] = round(seconds, 1)
            result[f"{kind}_cpu_us_per_row"] = round(1e6 * seconds / processed, 1)
            result[f"{kind}_cpu_ms_per_chunk"] = round(1e3 * seconds * chunk / processed, 2)
    if proc.returncode == 143:
        result["exit_after_sigterm_s"] = round(time.monotonic() - stopped, 1)
    return result


def _done_rows(out: Path) -> int:
    """Chunks done, by their metadata files (a compacted file counts its chunk range)."""
    try:
        names = os.listdir(out / "metadata")
    except OSError:
        return 0
    total = 0
    for name in names:
        m = re.fullmatch(r"part-(\d+)(?:-(\d+))?\.parquet", name)
        if m:
            total += int(m[2] or m[1]) - int(m[1]) + 1
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--format", choices=("txt", "parquet"), default="txt")
    p.add_argument("--shards", type=int, default=10, help="parquet files (default 10)")
    p.add_argument("--stop-after", type=float, help="SIGTERM this many seconds after the first chunk, then resume")
    p.add_argument("--work", type=Path, help="folder for the input and output (default: a temporary one)")
    p.add_argument("--no-task-count", action="store_true", help="do not poll the scheduler's /metrics")
    p.add_argument("--daskimg-args", default="", help="more arguments for the command, e.g. '--workers 2'")
    args = p.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="daskimg-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    (root := work / "www").mkdir(exist_ok=True)
    Image.open(IMAGES / "coffee.jpg").convert("RGB").resize((32, 32)).save(root / "t.jpg", quality=90)
    with served(root, work) as base:
        t = time.monotonic()
        table = write_input(work, base, args.rows, args.format, args.shards)
        print(f"input: {args.rows} rows as {args.format} in {time.monotonic() - t:.0f} s", file=sys.stderr)
        port = _free_port()
        out = work / "out.zarr"
        cmd = [sys.executable, "-m", "daskimg", table, str(out), "--size", "32", "--allow-private-network",
               "--dashboard-address", f"127.0.0.1:{port}", *args.daskimg_args.split()]
        probe = None if args.no_task_count else port
        results = {"rows": args.rows, "format": args.format, "run": run_once(cmd, out, probe, args.stop_after)}
        if args.stop_after is not None:
            results["resumed"] = run_once(cmd, out, probe, min(args.stop_after, 30.0))
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
