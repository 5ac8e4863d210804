"""The command line as a user meets it: the demo, clear refusals, and a cluster started by hand."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from distributed import Client

import daskimg
from daskimg.output import locate_output

from .conftest import HandMadeCluster, workers_die_as_they_start
from .server import FaultServer, free_port

BIN = Path(sys.executable).parent
QUIET = ["--no-progress", "--dashboard-address", ":0"]


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daskimg", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_the_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo.zarr"
    done = cli("--demo", str(out), "--size", "64", *QUIET)
    assert done.returncode == 0, done.stderr
    assert "dashboard at http" in done.stderr
    # stderr holds daskimg's two lines (the job, the dashboard): no Dask INFO chatter, no closing traceback
    assert len(done.stderr.strip().splitlines()) == 2, done.stderr
    assert "ok 10, failed 1 (http_error 1)" in done.stdout
    images, meta = daskimg.open(str(out))
    assert images.shape == (11, 64, 64, 3)
    assert (meta["status"] == "ok").sum() == 10
    again = cli("--demo", str(out), "--size", "64", *QUIET)
    assert again.returncode == 0
    assert "0 rows processed" in again.stdout


@pytest.mark.parametrize("command", [[str(BIN / "daskimg")], [sys.executable, "-m", "daskimg.run"]],
                         ids=["console-script", "python-m-daskimg.run"])
def test_the_other_ways_to_call_the_command(command: list[str]) -> None:
    done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"daskimg {daskimg.__version__}"


@pytest.mark.slow
def test_pad_letterboxes_with_the_fill_colour(tmp_path: Path) -> None:
    out = tmp_path / "pad.zarr"
    done = cli("--demo", str(out), "--size", "48", "--resize-mode", "pad", "--fill", "255,0,0", *QUIET)
    assert done.returncode == 0, done.stderr
    images, meta = daskimg.open(str(out))
    ok = images.compute()[meta["status"].to_numpy() == "ok"]
    red = (ok == (255, 0, 0)).all(axis=-1)
    assert red[:, 0, :].all(axis=1).sum() + red[:, :, 0].all(axis=1).sum() >= 5  # the non-square photos' borders


_ATEXIT = """
import atexit, sys
atexit.register(lambda: print("the caller's atexit handler ran"))
from daskimg.cli import entry_point
sys.argv = ["daskimg", "--demo", sys.argv[1], "--size", "16", "--no-progress", "--dashboard-address", ":0"]
entry_point()
"""


@pytest.mark.slow
def test_the_callers_atexit_handlers_run_after_the_command(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _ATEXIT, str(tmp_path / "out.zarr")], capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "the caller's atexit handler ran"


def test_help_documents_every_option() -> None:
    text = cli("--help").stdout
    for option in ["--url-col", "--size", "--resize-mode", "--dtype", "--channels-first", "--timeout", "--deadline",
                   "--max-bytes", "--retries", "--allow-private-network", "--format", "--chunk", "--overwrite",
                   "--scheduler", "--workers", "--demo"]:
        assert option in text


@pytest.fixture
def urls_csv(tmp_path: Path) -> Path:
    path = tmp_path / "urls.csv"
    pd.DataFrame({"link": ["http://example.com/a.jpg"]}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.csv", "out.zarr"], "no input file matches"),
        (["urls.csv", "out.zarr"], "no column 'url'"),
        (["urls.csv", "out.zarr", "--url-col", "link", "--size", "0"], "height must be a positive integer"),
        (["urls.csv", "out.zarr", "--url-col", "link", "--size", "-3"], "height must be a positive integer"),
        (["urls.csv"], "expected INPUT and OUTPUT"),
        (["urls.csv", "out.zarr", "--resize-mode", "squash"], "invalid choice"),
        (["urls.csv", "out.zarr", "--url-col", "link", "--chunk", "0"], "--chunk must be >= 1"),
        (["urls.csv", "out.zarr", "--url-col", "link", "--timeout", "-1"], "timeout must be > 0"),
    ],
    ids=["missing-input", "no-url-column", "size-0", "size-negative", "no-output", "bad-mode", "chunk-0",
         "bad-timeout"],
)
def test_misuse_gets_one_clear_line_and_writes_nothing(
    tmp_path: Path, urls_csv: Path, args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    done = cli(*args, *QUIET)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("daskimg: error:")
    assert message in lines[0]
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DASK_DASKIMG__WORKER__OPENCV_THREADS", "four",
         "the Dask config key daskimg.worker.opencv-threads must be a whole number >= 0"),
        ("DASK_DASKIMG__COMMAND__FORK_SERVER", "sometimes",
         "the Dask config key daskimg.command.fork-server must be true or false, got 'sometimes'"),
        ("DASK_DASKIMG__CHUNKS_PER_THREAD", "0",
         "the Dask config key daskimg.chunks-per-thread must be a number above 0, got 0"),
    ],
    ids=["opencv-threads", "fork-server", "chunks-per-thread"],
)
def test_a_daskimg_config_key_of_the_wrong_kind_gets_one_line_and_writes_nothing(
    tmp_path: Path, urls_csv: Path, variable: str, value: str, message: str
) -> None:
    """Set in the environment (or a Dask config file) as Dask reads it: the command names the key and stops
    before the output is touched, instead of logging a worker's traceback and running without the setting."""
    done = subprocess.run([sys.executable, "-m", "daskimg", str(urls_csv), str(tmp_path / "out.zarr"),
                           "--url-col", "link", "--workers", "1", *QUIET],
                          capture_output=True, text=True, timeout=180, env=dict(os.environ, **{variable: value}))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(f"daskimg: error: {message}")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out.zarr").exists()


_WITHOUT_FORK_SERVER = """
import sys
import daskimg._worker_start
daskimg._worker_start.HAS_FORK_SERVER = False  # as on Windows
from daskimg.cli import entry_point
sys.argv = ["daskimg", *sys.argv[1:]]
entry_point()
"""


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["forkserver", "no-forkserver"])
def test_the_commands_workers_fork_from_a_server_that_imported_their_code_where_the_platform_can(
    tmp_path: Path, platform: str
) -> None:
    """Where multiprocessing has a fork server, the command's workers are forked from one that has
    imported what they run (none imports it again); without one (Windows) they are spawned, and the run
    is the same. Either way each worker's process begins with Dask's pre-spawn environment and daskimg's
    changes to it, which its C libraries read as they load (Linux shows it in ``/proc/self/environ``)."""
    record = tmp_path / "workers.txt"
    preload = tmp_path / "record_worker.py"  # a Dask preload: runs in each worker as it starts
    preload.write_text(textwrap.dedent(f"""
        import os, sys

        def dask_setup(worker):
            try:
                with open("/proc/self/environ", "rb") as f:  # as the process began (os.environ may differ)
                    began = dict(v.decode().partition("=")[::2] for v in f.read().split(b"\\0") if v)
            except OSError:  # not Linux
                began = {{}}
            with open({str(record)!r}, "a") as f:
                f.write(f"{{os.getppid()}} {{'daskimg._stages' in sys.modules}} {{began.get('OMP_NUM_THREADS')}} "
                        f"{{began.get('MALLOC_ARENA_MAX')}}\\n")
    """))
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__PRELOAD=f'["{preload}"]')
    out = tmp_path / "out.zarr"
    args = ["--demo", str(out), "--size", "16", "--workers", "2", *QUIET]
    command = [sys.executable, "-m", "daskimg"] if platform == "forkserver" else [sys.executable, "-c",
                                                                                  _WITHOUT_FORK_SERVER]
    run = subprocess.Popen([*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stdout, stderr = run.communicate(timeout=180)
    assert run.returncode == 0, stderr
    assert "ok 10, failed 1" in stdout
    workers = [line.split() for line in record.read_text().splitlines()]
    assert len(workers) == 2
    forked = platform == "forkserver"
    for parent, imported, omp_threads, malloc_arenas in workers:
        assert (int(parent) != run.pid) is forked  # forked by the server, else spawned by the command
        assert imported == str(forked)
        if sys.platform.startswith("linux"):  # Dask's pre-spawn variable, and one of daskimg's
            assert (omp_threads, malloc_arenas) == ("1", "1")


def test_a_local_cluster_whose_workers_do_not_start_ends_with_one_line_and_status_2(
    tmp_path: Path, urls_csv: Path
) -> None:
    """Workers that exit as they start (a Dask preload that exits: a broken installation, say). Dask
    logs why; daskimg's own last word is one line, as soon as the nanny gives up (not after the two-minute
    start-up timeout), and the output is not created."""
    env = dict(os.environ, **workers_die_as_they_start(tmp_path))
    done = subprocess.run([sys.executable, "-m", "daskimg", str(urls_csv), str(tmp_path / "out.zarr"),
                           "--url-col", "link", "--workers", "1", *QUIET],
                          capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "daskimg: error: the local cluster's workers did not start: 1 of 1 failed in their start-up (Dask's log "
        "says why)")
    assert "daskimg/cli.py" not in done.stderr  # no traceback through daskimg
    assert not (tmp_path / "out.zarr").exists()


def test_an_output_with_other_settings_is_refused_and_kept(tmp_path: Path) -> None:
    out = tmp_path / "demo.zarr"
    assert cli("--demo", str(out), "--size", "32", *QUIET).returncode == 0
    before = sorted(p.name for p in (out / "metadata").iterdir())
    refused = cli("--demo", str(out), "--size", "48", *QUIET)
    assert refused.returncode == 2
    assert "other settings" in refused.stderr
    assert "--overwrite" in refused.stderr
    assert sorted(p.name for p in (out / "metadata").iterdir()) == before
    assert daskimg.open(str(out))[0].shape[1] == 32


@pytest.mark.slow
def test_an_output_another_run_is_writing_gets_one_line_before_a_cluster_starts_and_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "demo.zarr"
    assert cli("--demo", str(out), "--size", "32", *QUIET).returncode == 0
    before = sorted(p.name for p in (out / "metadata").iterdir())
    output, _ = locate_output(str(out))
    with output.locked():  # as a run in another process would hold it
        refused = cli("--demo", str(out), "--size", "32", "--overwrite", *QUIET)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith(
        f"daskimg: error: {out} is being written by another run (process {os.getpid()} on "), refused.stderr
    assert "Traceback" not in refused.stderr
    assert "dashboard at" not in refused.stderr  # refused before a cluster started for nothing
    assert sorted(p.name for p in (out / "metadata").iterdir()) == before
    assert daskimg.open(str(out))[0].shape == (11, 32, 32, 3)


@pytest.mark.slow
@pytest.mark.cluster
def test_a_hand_started_cluster_gives_the_same_output_as_the_local_default(
    tmp_path: Path, server: FaultServer, hand_made_cluster: HandMadeCluster
) -> None:
    urls = tmp_path / "urls.txt"
    names = ["photo.jpg", "big.jpg", "tall.png", "photo.webp", "photo.gif", "photo.bmp"]
    urls.write_text("".join(server.url(f"/img/{names[i % 6]}?i={i}\n") for i in range(40)) + server.url("/missing"))
    common = [str(urls), "--size", "40", "--chunk", "16", "--allow-private-network", *QUIET]
    local = cli(common[0], str(tmp_path / "local.zarr"), *common[1:])
    assert local.returncode == 0, local.stderr
    remote = cli(common[0], str(tmp_path / "remote.zarr"), *common[1:], "--scheduler", hand_made_cluster.address)
    assert remote.returncode == 0, remote.stderr
    a, meta_a = daskimg.open(str(tmp_path / "local.zarr"))
    b, meta_b = daskimg.open(str(tmp_path / "remote.zarr"))
    np.testing.assert_array_equal(a.compute(), b.compute())
    pd.testing.assert_frame_equal(meta_a, meta_b)
    assert (meta_b["status"] == "ok").sum() == 40


@pytest.mark.slow
@pytest.mark.cluster
def test_kill_9_of_a_worker_mid_run_changes_nothing_in_the_output(
    tmp_path: Path, server: FaultServer, hand_made_cluster: HandMadeCluster
) -> None:
    urls = tmp_path / "urls.txt"
    names = ["photo.jpg", "big.jpg", "tall.png", "photo.webp"]
    urls.write_text("".join(server.url(f"/delay/{names[i % 4]}?ms=200&kill9={i}\n") for i in range(96)))
    common = ["--size", "40", "--chunk", "8", "--concurrency", "4", "--allow-private-network", *QUIET]
    out = tmp_path / "killed.zarr"
    run = subprocess.Popen([sys.executable, "-m", "daskimg", str(urls), str(out), *common,
                            "--scheduler", hand_made_cluster.address], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    done = out / "metadata" / "_done"
    deadline = time.monotonic() + 120
    while not (done.exists() and len(list(done.iterdir())) >= 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = hand_made_cluster.worker_pids()[0]
    assert run.poll() is None
    assert len(list(done.iterdir())) < 12
    os.kill(victim, signal.SIGKILL)  # mid-run: tasks in flight and fetched bytes held there are lost
    _, stderr = run.communicate(timeout=180)
    assert run.returncode == 0, stderr
    undisturbed = cli(str(urls), str(tmp_path / "ref.zarr"), *common)
    assert undisturbed.returncode == 0, undisturbed.stderr
    a, meta_a = daskimg.open(str(out))
    b, meta_b = daskimg.open(str(tmp_path / "ref.zarr"))
    np.testing.assert_array_equal(a.compute(), b.compute())
    pd.testing.assert_frame_equal(meta_a, meta_b)
    assert (meta_a["status"] == "ok").all()


def _started_with_sigint(cmd: list[str], disposition: Callable[[int, Any], Any] | signal.Handlers
                         ) -> subprocess.Popen[str]:
    """``cmd`` in a session of its own, started with SIGINT caught (it then starts at its default: exec
    resets a caught signal) or ignored (it stays ignored), whatever this test process has."""
    previous = signal.signal(signal.SIGINT, disposition)
    try:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "group"), [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c-to-the-group", "sigterm-to-the-command"])
def test_a_signal_stops_promptly_and_the_same_command_finishes_the_job(
    tmp_path: Path, server: FaultServer, client: Client, signum: int, group: bool
) -> None:
    """Ctrl-C reaches the terminal's whole process group; Kubernetes and spot instances send SIGTERM
    to the command alone. Either way the chunks already fetched are written, and nothing else is lost."""
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(server.url(f"/delay/photo.jpg?ms=300&sig={signum}-{i}\n") for i in range(160)))
    out = tmp_path / "out.zarr"
    cmd = [sys.executable, "-m", "daskimg", str(urls), str(out), "--size", "32", "--chunk", "8",
           "--concurrency", "2", "--allow-private-network", *QUIET]
    # Ctrl-C reaches the command even when this test runs with SIGINT ignored (a background job, nohup).
    run = _started_with_sigint(cmd, signal.default_int_handler)
    before = sum(server.hits.values())
    done = out / "metadata" / "_done"
    deadline = time.monotonic() + 120
    while not (done.exists() and len(list(done.iterdir())) >= 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert done.exists(), "no chunk was done in 120 s: nothing to test"
    assert len(list(done.iterdir())) >= 2, "no two chunks were done in 120 s: nothing to test"
    if group:
        os.killpg(run.pid, signum)
    else:
        os.kill(run.pid, signum)
    stopped = time.monotonic()
    at_signal = len(list(done.iterdir()))
    _, stderr = run.communicate(timeout=60)
    assert time.monotonic() - stopped < 60  # the grace for fetched chunks is 10 s; a loaded machine is slower
    assert run.returncode == 128 + signum, f"{at_signal} chunks done at the signal; stderr: {stderr[-2000:]}"
    assert "Traceback" not in stderr
    assert "Warning" not in stderr
    assert stderr.strip().splitlines()[-1] == "daskimg: interrupted; run the same command again to resume"
    finished = len(list(done.iterdir()))
    assert at_signal <= finished < 20
    fetched_before_the_stop = sum(server.hits.values()) - before

    hits = sum(server.hits.values())
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert sum(server.hits.values()) - hits == 160 - 8 * finished  # only what was not done is fetched
    assert sum(server.hits.values()) - hits > 0
    # What the stop threw away: at most the chunks still fetching, a window of 8 chunks of 8 rows.
    assert fetched_before_the_stop - 8 * finished <= 8 * 8
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert third.returncode == 0
    assert "0 rows processed" in third.stdout

    images, meta = daskimg.open(str(out))
    assert (meta["status"] == "ok").all()
    undisturbed = (daskimg.read_urls(str(urls), chunk=8).fetch(allow_private_network=True)
                   .preprocess(size=32).to_zarr(str(tmp_path / "ref.zarr"), client=client, progress=False))
    assert undisturbed.complete
    np.testing.assert_array_equal(images.compute(), daskimg.open(str(tmp_path / "ref.zarr"))[0].compute())


@pytest.mark.slow
def test_a_command_started_with_sigint_ignored_runs_through_ctrl_c(tmp_path: Path, server: FaultServer) -> None:
    """A shell script's background jobs start with SIGINT ignored: Ctrl-C is for the script, not for them.
    It stays ignored in the command and its workers, at every moment of the run."""
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(server.url(f"/delay/photo.jpg?ms=100&bg={i}\n") for i in range(48)))
    cmd = [sys.executable, "-m", "daskimg", str(urls), str(tmp_path / "out.zarr"), "--size", "32", "--chunk", "8",
           "--concurrency", "2", "--allow-private-network", *QUIET]
    run = _started_with_sigint(cmd, signal.SIG_IGN)
    while run.poll() is None:
        os.killpg(run.pid, signal.SIGINT)
        time.sleep(0.1)
    stdout, stderr = run.communicate()
    assert run.returncode == 0, stderr[-2000:]
    assert "48 rows processed" in stdout


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_at_any_moment_never_leaves_a_chunk_marked_done_that_is_incomplete(
    tmp_path: Path, server: FaultServer, client: Client, seed: int
) -> None:
    import random

    import pyarrow.parquet as pq
    import zarr

    rng = random.Random(seed)
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(server.url(f"/delay/photo.jpg?ms=40&kill={seed}-{i}\n") for i in range(120)))
    out = tmp_path / "out.zarr"
    cmd = [sys.executable, "-m", "daskimg", str(urls), str(out), "--size", "24", "--chunk", "8",
           "--concurrency", "4", "--allow-private-network", *QUIET]
    for _ in range(3):
        run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(1.5, 5.0))  # somewhere between start-up and the end of the run
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(30)
        if not (out / "metadata" / "_done").exists():
            continue
        images = zarr.open_array(str(out), path="images", mode="r")
        for name in os.listdir(out / "metadata" / "_done"):  # markers only (files are written elsewhere first)
            k = int(name)
            part = pq.read_table(out / "metadata" / f"part-{k:08d}.parquet")
            assert part.column("index").to_pylist() == list(range(8 * k, min(8 * k + 8, 120)))
            assert np.asarray(images[8 * k : 8 * k + 8]).shape == (min(8, 120 - 8 * k), 24, 24, 3)  # it decodes
    finished = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert finished.returncode == 0, finished.stderr
    assert not (out / ".daskimg-tmp").exists()  # what a kill left mid-write is gone
    result, meta = daskimg.open(str(out))
    assert (meta["status"] == "ok").all()
    assert meta["index"].tolist() == list(range(120))
    reference = (daskimg.read_urls(str(urls), chunk=8).fetch(allow_private_network=True)
                 .preprocess(size=24).to_zarr(str(tmp_path / "ref.zarr"), client=client, progress=False))
    assert reference.complete
    np.testing.assert_array_equal(result.compute(), daskimg.open(str(tmp_path / "ref.zarr"))[0].compute())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium (.ci/run installs it)")
def test_a_browser_opening_and_closing_the_dashboard_prints_nothing_into_the_run(
    tmp_path: Path, server: FaultServer
) -> None:
    urls = tmp_path / "urls.txt"
    # The last URL is answered only once the browser is done: the run streams until then, however slow
    # the browser's visits are on a loaded machine (the first one also builds the dashboard).
    gate = server.gate(f"browser-{tmp_path.name}")
    urls.write_text("".join(server.url(f"/img/photo.jpg?browser={i}\n") for i in range(16))
                    + server.url(f"/held/photo.jpg?key=browser-{tmp_path.name}\n"))
    port = free_port()
    run = subprocess.Popen(
        [sys.executable, "-m", "daskimg", str(urls), str(tmp_path / "out.zarr"), "--size", "32", "--chunk", "8",
         "--timeout", "300", "--deadline", "300", "--defer-after", "0", "--allow-private-network", "--no-progress",
         "--dashboard-address", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "out.zarr" / "metadata").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        # Busy cores, as in a run that decodes: Bokeh then takes longer to set a page's session up than the
        # browser stays, and the page is closed before its session began.
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        try:
            pages = []
            for page, seconds in [("status", 1), ("status", 2), ("workers", 3), ("status", 4)]:
                browser = subprocess.run(
                    ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
                     f"--virtual-time-budget={seconds * 1000}", "--dump-dom", f"http://127.0.0.1:{port}/{page}"],
                    capture_output=True, text=True, timeout=120,
                )
                pages.append("<title>Dask" in browser.stdout and "bokeh.min.js" in browser.stdout)
        finally:
            for hog in busy:
                hog.kill()
                hog.wait()
        assert run.poll() is None, "the run ended before the browser was done: nothing was tested"
    finally:
        gate.set()  # the run can end now
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert pages == [True] * 4  # the dashboard's pages, with Bokeh's scripts that open a session
    lines = stderr.strip().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["daskimg", "daskimg"], stderr  # the job, the link
    assert "ok 17" in stdout
