"""The local cluster daskimg starts: where its workers come from, also after one dies; and the client it yields."""

from __future__ import annotations

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


def _use(expected: Client) -> None:
    with run_client() as given:
        assert given is expected
        raise ValueError("the caller's own")


def test_an_error_in_the_callers_block_propagates_with_the_active_client(client: Client) -> None:
    with pytest.raises(ValueError, match="the caller's own"):
        _use(client)
