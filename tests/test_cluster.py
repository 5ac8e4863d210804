"""The clusters daskimg starts, and what a run leaves behind in the caller's process: nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from distributed import Client

from daskimg.cluster import run_client

from .conftest import workers_die_as_they_start

pytestmark = pytest.mark.slow  # clusters and kernels in processes of their own

# Each script runs in a process of its own: in this one the test session's client is the active
# client, which run_client would (rightly) use instead of starting a cluster.


def _python(script: str, tmp_path: Path, **env: str) -> list[str]:
    """Run ``script`` with HOME, the temp dir and the working directory inside ``tmp_path``; its stdout lines."""
    import os

    for name in ("home", "tmp", "cwd"):
        (tmp_path / name).mkdir(exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "DASK_"))}
    environ.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"), **env)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path / "cwd", env=environ)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


_RESTART = """
    import os, signal, time
    from pathlib import Path
    from daskimg.cluster import run_client

    def state():
        import cv2, dask
        status = Path(f"/proc/{os.getpid()}/status").read_text().splitlines()
        ignored = next(int(line.split()[1], 16) for line in status if line.startswith("SigIgn:"))
        stop_signals_ignored = all(ignored & (1 << (s - 1)) for s in (signal.SIGINT, signal.SIGTERM))
        intervals = [dask.config.get(f"distributed.{k}.interval") for k in ("worker.profile", "admin.tick")]
        return os.getpid(), (cv2.getNumThreads(), stop_signals_ignored, *intervals)

    if __name__ == "__main__":
        with run_client(workers=1, threads_per_worker=1, dashboard_address=None) as client:
            ((first, tuned),) = client.run(state).values()
            print("first", tuned)
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                time.sleep(0.2)
                states = list(client.run(state).values())
                if states and states[0][0] != first:
                    print("restarted", states[0][1])
                    break
            ms = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.periodic_callbacks["tick"].callback_time)
            print(f"scheduler ticks every {ms / 1000:g} s")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_of_a_local_cluster_are_tuned_and_ignore_stop_signals_also_after_a_restart(tmp_path: Path) -> None:
    assert _python(_RESTART, tmp_path) == ["first (1, True, '100ms', '500ms')", "restarted (1, True, '100ms', '500ms')",
                                           "scheduler ticks every 0.5 s"]


_START = """
    import os, signal, urllib.request
    from daskimg.cluster import start_client
    from daskimg.errors import Interrupted

    calls = []

    def mine(signum, frame):
        calls.append(signum)

    def handlers():
        return [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]

    if __name__ == "__main__":
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, mine)
        with start_client(workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0") as starting:
            os.kill(os.getpid(), signal.SIGTERM)  # while the workers start
            try:
                starting.ready()
            except Interrupted as e:
                print("kept until ready", e.signum == signal.SIGTERM, calls)
            client = starting.client
            print("ready", len(client.scheduler_info()["workers"]), handlers() == [mine, mine])
            # (a nanny restarts a worker that dies only once its own start is over)
            print("nannies started", [n.status.name for n in client.cluster.workers.values()])
            with urllib.request.urlopen(client.dashboard_link, timeout=60) as page:
                print("dashboard", page.status)
        try:
            with start_client(workers=1, threads_per_worker=1, dashboard_address=None):
                raise ValueError("the input is unreadable")
        except ValueError:
            print("after an error before ready", handlers() == [mine, mine])
"""


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="POSIX signals")
def test_a_starting_cluster_keeps_stop_signals_only_until_it_is_ready_or_abandoned(tmp_path: Path) -> None:
    """The CLI imports while the workers start; a stop signal meanwhile is raised by ready() once they
    have joined (with the dashboard built), the caller's handlers are back then, and also when the
    caller's block fails before that."""
    assert _python(_START, tmp_path) == [
        "kept until ready True []", "ready 2 True", "nannies started ['running', 'running']",
        "dashboard 200", "after an error before ready True",
    ]


_CTRL_C_WHILE_STARTING = """
    import multiprocessing, os, signal, threading, time
    from pathlib import Path
    from daskimg.cluster import start_client

    def sigint_ignored():
        status = Path(f"/proc/{os.getpid()}/status").read_text().splitlines()
        ignored = next(int(line.split()[1], 16) for line in status if line.startswith("SigIgn:"))
        return bool(ignored & (1 << (signal.SIGINT - 1)))

    def ctrl_c_once_heeded():
        while sigint_ignored():
            time.sleep(0.002)
        os.kill(os.getpid(), signal.SIGINT)

    if __name__ == "__main__":
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's; the tests may run with it ignored
        try:
            with start_client(workers=2, threads_per_worker=1, dashboard_address=None) as starting:
                threading.Thread(target=ctrl_c_once_heeded, daemon=True).start()
                starting.ready()
                print("ready")
        except KeyboardInterrupt as e:
            print("stopped while starting", type(e).__name__, e.signum)
        print("processes left", multiprocessing.active_children())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_while_the_workers_start_stops_the_caller_once_they_are_up(tmp_path: Path) -> None:
    """The signal is ignored only while the workers' processes are spawned (they inherit that); one
    that comes later is kept, and raised as Interrupted once the workers have joined."""
    assert _python(_CTRL_C_WHILE_STARTING, tmp_path) == [
        f"stopped while starting Interrupted {int(signal.SIGINT)}", "processes left []"]


_CTRL_C_WHILE_WORKERS_FAIL = """
    import os, signal, threading, time
    from daskimg.cluster import start_client

    if __name__ == "__main__":
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's; the tests may run with it ignored
        start = time.monotonic()
        try:
            with start_client(workers=1, threads_per_worker=1, dashboard_address=None) as starting:
                threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
                starting.ready()
                print("ready")
        except KeyboardInterrupt as e:
            print("stopped", type(e).__name__, time.monotonic() - start < 60)
"""


_WORKERS_NEVER_COME_UP = """
    import multiprocessing, os
    import daskimg.cluster
    from daskimg.cluster import start_client
    from daskimg.errors import ClusterError

    if __name__ == "__main__":
        daskimg.cluster.START_TIMEOUT = float(os.environ.get("START_TIMEOUT", daskimg.cluster.START_TIMEOUT))
        daskimg.cluster.CLOSE_PATIENCE = 2.0
        try:
            with start_client(workers=1, threads_per_worker=1, dashboard_address=None) as starting:
                starting.ready()
                print("ready")
        except ClusterError as e:
            print(e)
        print("processes left:", len(multiprocessing.active_children()))
"""


def test_a_start_up_whose_workers_die_ends_when_their_nannies_give_up_not_at_the_timeout(tmp_path: Path) -> None:
    """A worker that exits in its start-up (here a Dask preload that exits) is never replaced: the caller
    hears of it then, not after the two-minute start-up timeout (left at its default here)."""
    lines = _python(_WORKERS_NEVER_COME_UP, tmp_path, **workers_die_as_they_start(tmp_path))
    assert lines == ["the local cluster's workers did not start: 1 of 1 failed in their start-up (Dask's log says "
                     "why)", "processes left: 0"]


def test_a_worker_stuck_in_its_start_up_does_not_hang_the_close(tmp_path: Path) -> None:
    """Dask's close waits for every nanny to finish starting its worker: forever, for a worker whose
    start-up hangs (here a Dask preload that sleeps). Its process is killed once the close has taken
    ``CLOSE_PATIENCE`` seconds, and the caller gets the start-up error."""
    preload = tmp_path / "hang_at_start.py"
    preload.write_text("import time\n\ndef dask_setup(worker):\n    time.sleep(3600)\n")
    lines = _python(_WORKERS_NEVER_COME_UP, tmp_path, DASK_DISTRIBUTED__WORKER__PRELOAD=f'["{preload}"]',
                    START_TIMEOUT="3")
    assert lines == ["the local cluster's workers did not start: 0 of 1 joined in 3 s (Dask's log says why)",
                     "processes left: 0"]


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="POSIX signals")
def test_ctrl_c_stops_a_start_up_whose_workers_never_come_up(tmp_path: Path) -> None:
    """A worker that dies as it starts (here a Dask preload that exits) would hold the caller for the
    whole two-minute start-up timeout; a stop signal ends the wait a few seconds later."""
    lines = _python(_CTRL_C_WHILE_WORKERS_FAIL, tmp_path, **workers_die_as_they_start(tmp_path))
    assert lines == ["stopped Interrupted True"]


def test_a_pre_spawn_environ_that_is_not_a_mapping_is_a_config_error() -> None:
    import dask

    from daskimg.cluster import _local_cluster_config
    from daskimg.errors import ConfigError

    with (dask.config.set({"daskimg.local-cluster.pre-spawn-environ": "MALLOC_ARENA_MAX=2"}),
          pytest.raises(ConfigError, match="must be a mapping")):
        _local_cluster_config()
    with dask.config.set({"daskimg.local-cluster.pre-spawn-environ": {"MALLOC_ARENA_MAX": "2"}}):
        assert _local_cluster_config()["distributed.nanny.pre-spawn-environ"]["MALLOC_ARENA_MAX"] == "2"


@pytest.mark.parametrize(("name", "key", "default"), [
    ("profile-interval", "distributed.worker.profile.interval", "100ms"),
    ("tick-interval", "distributed.admin.tick.interval", "500ms"),
])
def test_the_intervals_of_local_clusters_leave_one_the_caller_set(name: str, key: str, default: str) -> None:
    import dask

    from daskimg.cluster import _local_cluster_config
    from daskimg.errors import ConfigError

    assert _local_cluster_config()[key] == default
    with dask.config.set({f"daskimg.local-cluster.{name}": "50ms"}):
        assert _local_cluster_config()[key] == "50ms"
    with dask.config.set({f"daskimg.local-cluster.{name}": None}):
        assert key not in _local_cluster_config()  # Dask's own
    with dask.config.set({key: "5ms"}):
        assert key not in _local_cluster_config()  # the caller's, which the cluster inherits
    with (dask.config.set({f"daskimg.local-cluster.{name}": "often"}),
          pytest.raises(ConfigError, match=f"local-cluster.{name} must be a time")):
        _local_cluster_config()


_LEFT_AS_FOUND = """
    import multiprocessing, os, signal, sys, warnings
    # What the libraries daskimg uses change when imported (OpenCV adds to LD_LIBRARY_PATH, numpy and
    # numcodecs add warning filters) is theirs, and a user of daskimg imports them anyway: measured after.
    import cv2, distributed, dask.array, dask.dataframe, numcodecs, PIL.Image, pyarrow.parquet, pycurl, zarr

    def state():
        import cv2, PIL.ImageFile
        from multiprocessing import forkserver
        return {
            "opencv threads": cv2.getNumThreads(),
            "warnings filters": list(warnings.filters),
            "LOAD_TRUNCATED_IMAGES": PIL.ImageFile.LOAD_TRUNCATED_IMAGES,
            "forkserver preload": list(forkserver._forkserver._preload_modules),  # no public getters
            "fork server": forkserver._forkserver._forkserver_pid,  # none started
            "environment": dict(os.environ),
            "signal handlers": [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)],
        }

    def changed(before, after):
        for k in before:
            if before[k] != after[k]:
                print(k, before[k], after[k], file=sys.stderr)
        return sorted(k for k in before if before[k] != after[k])

    if __name__ == "__main__":
        before = state()
        import daskimg
        from daskimg.demo import DemoServer
        print("import", changed(before, state()))
        with DemoServer() as server:
            job = daskimg.read_urls(server.table).fetch(allow_private_network=True).preprocess(size=32)
            summary = job.to_zarr("own-cluster.zarr", progress=False, workers=1, dashboard_address=None)
            print("own cluster", changed(before, state()), summary.ok)
            from distributed import Client, LocalCluster
            with LocalCluster(n_workers=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as c:
                before = state()  # (a LocalCluster's nanny sets Dask's pre-spawn-environ in the process)
                summary = job.to_zarr("user-client.zarr", progress=False, client=c)
                print("user's client", changed(before, state()), summary.ok)
        print("files", sorted(os.listdir(".")), os.listdir(os.environ["HOME"]))
"""


def test_import_and_runs_leave_the_callers_process_as_they_found_it(tmp_path: Path) -> None:
    """OpenCV's threads, warnings filters, Pillow's truncated-image switch, multiprocessing's settings, the
    environment (a MALLOC_TRIM_THRESHOLD_ of the user's included) and signal handlers are unchanged; the
    run writes its output and the temp dir, nothing in the working directory or home."""
    lines = _python(_LEFT_AS_FOUND, tmp_path, MALLOC_TRIM_THRESHOLD_="1000000")
    ok = len([p for p in Path(__file__).parents[1].joinpath("daskimg/demo_images").iterdir() if p.suffix != ".md"])
    assert lines == [
        "import []", f"own cluster [] {ok}", f"user's client [] {ok}",
        "files ['own-cluster.zarr', 'user-client.zarr'] []",
    ]


def _use(expected: Client) -> None:
    with run_client() as given:
        assert given is expected
        raise ValueError("the caller's own")


def test_an_error_in_the_callers_block_propagates_with_the_active_client(client: Client) -> None:
    with pytest.raises(ValueError, match="the caller's own"):
        _use(client)



_DASHBOARD = """
    import http.client, json, sys, urllib.request
    from daskimg.cluster import run_client

    def get(url):
        with urllib.request.urlopen(url, timeout=60) as answer:
            return answer.status, answer.read().decode()

    if __name__ == "__main__":
        with run_client(workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0") as client:
            link = client.dashboard_link
            base = link.rsplit("/", 1)[0]
            print("health", get(base + "/health"), "bokeh" in sys.modules)
            # JupyterLab's Dask extension first asks for the list of plots
            status, plots = get(base + "/individual-plots.json")
            print("plots", status, json.loads(plots).get("Individual Task Stream"))
            status, page = get(link)
            print("status", status, "<title>Dask Diagnostic UI</title>" in page)
            status, page = get(base + "/profile")
            print("profile", status, "<title>Dask Diagnostic UI</title>" in page)
        with run_client(workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0") as client:
            # a first visit to a path that reads as another host's URL: the redirect stays on this server
            host, port = client.dashboard_link.split("//")[1].split("/")[0].split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            conn.request("GET", "//example.com/status")
            answer = conn.getresponse()
            print("elsewhere", answer.status, answer.getheader("Location"))
            conn.close()
"""


def test_the_local_clusters_dashboard_is_built_on_its_first_visit_and_serves_every_page(tmp_path: Path) -> None:
    """Until someone looks, the scheduler serves its own routes and Bokeh is not even imported (half a
    second of CPU at the start of every run); the first visit, from a browser or from JupyterLab, builds it."""
    assert _python(_DASHBOARD, tmp_path) == [
        "health (200, 'ok') False", "plots 200 /individual-task-stream", "status 200 True", "profile 200 True",
        "elsewhere 302 /example.com/status",
    ]


_HEARTBEAT_AT_CLOSE = """
    import asyncio, time
    from daskimg.cluster import run_client

    def slow_heartbeats(dask_scheduler=None):
        # Each worker's heartbeat is in flight for a second: the worker closes while one is.
        answer = dask_scheduler.handlers["heartbeat_worker"]

        async def slowly(*args, **kwargs):
            await asyncio.sleep(1.0)
            return answer(*args, **kwargs)

        dask_scheduler.handlers["heartbeat_worker"] = slowly

    if __name__ == "__main__":
        with run_client(workers=1, threads_per_worker=1, dashboard_address=None) as client:
            client.run_on_scheduler(slow_heartbeats)
            time.sleep(1.5)
        print("closed")
"""


def test_closing_the_local_cluster_prints_no_heartbeat_error(tmp_path: Path) -> None:
    """A worker that closes while its heartbeat is in flight logs an error with a traceback (distributed#7105)."""
    script = textwrap.dedent(_HEARTBEAT_AT_CLOSE)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["closed"]
    assert done.stderr == ""


def test_worker_tuning_registered_twice_keeps_one_log_filter(client: Client) -> None:
    """On a cluster of the user's own, registering the plugin again changes nothing more."""
    import logging

    from daskimg.cluster import WorkerTuning

    def filters() -> int:
        return sum(type(f).__name__ == "_HeartbeatAtClose" for f in logging.getLogger("distributed.worker").filters)

    for _ in range(2):
        client.register_plugin(WorkerTuning(opencv_threads=None, ignore_stop_signals=False, freeze_imports=False))
    assert set(client.run(filters).values()) == {1}
    client.unregister_worker_plugin(WorkerTuning.name)
