"""The local cluster daskimg starts: where its workers come from, also after one dies; and the client it yields."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest
from distributed import Client

from daskimg.cluster import run_client

# Run in a process of its own: in this one the test session's client is the active client,
# which run_client would (rightly) use instead of starting a cluster.
_RESTART = textwrap.dedent("""
    import os, signal, time
    from pathlib import Path
    from daskimg.cluster import run_client

    def origin(pid):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        ignored = next(int(line.split()[1], 16) for line in status if line.startswith("SigIgn:"))
        return b"forkserver" in cmdline, bool(ignored & (1 << (signal.SIGINT - 1)))

    if __name__ == "__main__":
        with run_client(workers=1, threads_per_worker=1, dashboard_address=None) as client:
            (first,) = client.run(os.getpid).values()
            print("first", origin(first))
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                time.sleep(0.2)
                pids = list(client.run(os.getpid).values())
                if pids and pids[0] != first:
                    print("restarted", origin(pids[0]))
                    break
""")


def test_a_worker_restarted_after_a_crash_comes_from_the_fork_server_and_ignores_ctrl_c() -> None:
    done = subprocess.run([sys.executable, "-c", _RESTART], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["first (True, True)", "restarted (True, True)"], done.stderr[-3000:]


_ARENAS = textwrap.dedent("""
    import ctypes, os, tempfile, threading
    from daskimg.cluster import run_client

    def arenas():
        # Threads that allocate at once, as a worker's fetching and decoding threads do; then
        # glibc's malloc_stats (on stderr) lists one "Arena N:" block per arena.
        ready = threading.Barrier(4)
        def allocate():
            ready.wait()
            held = [bytearray(200_000) for _ in range(20)]
            ready.wait()
        threads = [threading.Thread(target=allocate) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        libc = ctypes.CDLL(None)
        with tempfile.TemporaryFile() as f:
            saved = os.dup(2)
            libc.fflush(None)
            os.dup2(f.fileno(), 2)
            libc.malloc_stats()
            libc.fflush(None)
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            return f.read().decode().count("Arena ")

    if __name__ == "__main__":
        with run_client(workers=1, threads_per_worker=1, dashboard_address=None) as client:
            (worker,) = client.run(arenas).values()
        print(worker, arenas())
""")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc arenas")
def test_workers_share_one_malloc_arena_so_freed_chunks_serve_any_thread() -> None:
    done = subprocess.run([sys.executable, "-c", _ARENAS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    worker, plain = (int(n) for n in done.stdout.split())
    assert plain > 1  # the probe sees the arenas that threads get by default
    assert worker == 1


def _use(expected: Client) -> None:
    with run_client() as given:
        assert given is expected
        raise ValueError("the caller's own")


def test_an_error_in_the_callers_block_propagates_with_the_active_client(client: Client) -> None:
    with pytest.raises(ValueError, match="the caller's own"):
        _use(client)


_DASHBOARD = textwrap.dedent("""
    import sys, urllib.request
    from daskimg.cluster import run_client

    def get(url):
        with urllib.request.urlopen(url, timeout=60) as answer:
            return answer.status, answer.read().decode()

    if __name__ == "__main__":
        with run_client(workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0") as client:
            print("bokeh before the visit", "bokeh" in sys.modules)
            link = client.dashboard_link
            base = link.rsplit("/", 1)[0]
            print("health", get(base + "/health"))
            status, page = get(link)
            print("status", status, "<title>Dask Diagnostic UI</title>" in page)
            status, page = get(base + "/individual-task-stream")
            print("task stream", status, "<title>Dask: TaskStream</title>" in page)
            print("json", get(base + "/json/counts.json")[0])
""")


def test_the_dashboard_is_served_from_its_first_visit_and_costs_nothing_before() -> None:
    done = subprocess.run([sys.executable, "-c", _DASHBOARD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "bokeh before the visit False", "health (200, 'ok')", "status 200 True", "task stream 200 True", "json 200",
    ], done.stderr[-3000:]
