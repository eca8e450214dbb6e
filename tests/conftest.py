"""Shared helpers: run queuectl as a real process in a temporary data folder. (wait_running finds a
running attempt's scratch file through the folder store's private _live_output.)"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "queuectl.py")
sys.path.insert(0, str(ROOT))


# CI (.ci/run) sets QUEUECTL_CI=1: what a test needs is installed there, so it fails instead of skipping.
IN_CI = os.environ.get("QUEUECTL_CI") == "1"


# Where the PostgreSQL tests' server is (.ci/run starts it and sets this; the default is this
# project's development machine: trust authentication, a database `test`).
POSTGRES_URL = os.environ.get("QUEUECTL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def postgres_reachable(url: str = POSTGRES_URL, timeout: float = 2.0) -> bool:
    """Does a PostgreSQL server answer at the URL's host and port (its startup handshake)?"""
    import socket
    import struct
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=timeout) as sock:
            sock.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest: a server answers S or N
            return sock.recv(1) in (b"S", b"N")
    except OSError:
        return False


def needs(available: bool, reason: str) -> pytest.MarkDecorator:
    """Skip without a tool this machine does not have, except in CI, where the test runs and fails."""
    return pytest.mark.skipif(not available and not IN_CI, reason=reason)


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05,
               what: str = "condition") -> Any:
    """Poll until predicate() is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Queue:
    """A data folder plus ways to drive queuectl against it. `location`, when given, is where the
    queue lives instead (QUEUECTL_HOME, e.g. a postgresql:// URL); `home` is then only the
    commands' working folder."""

    def __init__(self, home: Path, location: str | None = None) -> None:
        self.home = home
        self.location = str(home) if location is None else location
        self.procs: list[subprocess.Popen] = []

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["QUEUECTL_HOME"] = self.location
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("NO_COLOR", None)
        return env

    def run(self, *args: str, input: str | bytes | None = None, timeout: float = 60,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run one queuectl command to completion (in the data folder, or `cwd`); returns text stdout/stderr."""
        data = input.encode() if isinstance(input, str) else input
        proc = subprocess.run([sys.executable, SCRIPT, *args], input=data, capture_output=True,
                              env=self.env(), cwd=str(cwd or self.home), timeout=timeout)
        proc.stdout = proc.stdout.decode("utf-8", "replace")
        proc.stderr = proc.stderr.decode("utf-8", "replace")
        return proc

    def ok(self, *args: str, **kwargs: Any) -> str:
        proc = self.run(*args, **kwargs)
        assert proc.returncode == 0, f"queuectl {' '.join(args)} -> {proc.returncode}\n{proc.stderr}"
        return proc.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def start_worker(self, *args: str, log: Path | None = None) -> subprocess.Popen:
        """Start `worker start ARGS` in the background; killed at teardown if still alive."""
        out = open(log, "wb") if log else subprocess.DEVNULL
        proc = subprocess.Popen([sys.executable, SCRIPT, "worker", "start", *args], env=self.env(),
                                cwd=str(self.home), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def file(self, name: str) -> Any:
        path = self.home / name
        return json.loads(path.read_text("utf-8")) if path.exists() else []

    def states(self) -> dict[str, str]:
        """id -> state over the four job files."""
        result = {}
        for name in ("queue.json", "processed.json", "failed.json", "cancelled.json"):
            for job in self.file(name):
                result[job["id"]] = job["state"]
        return result

    def cleanup(self) -> None:
        for proc in self.procs:
            kill_group(proc)


def job_snapshot(queue: Queue) -> dict[str, dict[str, Any]] | None:
    """id -> job over the four job files, read without the lock; None when a file was
    caught mid-write (the caller polls again)."""
    jobs: dict[str, dict[str, Any]] = {}
    for name in ("queue.json", "processed.json", "failed.json", "cancelled.json"):
        path = queue.home / name
        try:
            data = json.loads(path.read_text("utf-8")) if path.exists() else []
        except (ValueError, OSError):
            return None
        for job in data:
            jobs[job["id"]] = job
    return jobs


def job_of(queue: Queue, job_id: str) -> dict[str, Any] | None:
    jobs = job_snapshot(queue)
    return None if jobs is None else jobs.get(job_id)


def wait_for_state(queue: Queue, job_id: str, state: str, timeout: float = 15.0) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        job = job_of(queue, job_id)
        return job if job and job["state"] == state else None

    return wait_until(reached, timeout, what=f"job {job_id} to be {state}")


def wait_running(queue: Queue, job_id: str, worker: subprocess.Popen, timeout: float = 15.0) -> dict[str, Any]:
    """Until the job's command runs in this worker process: claimed by it, and its attempt's
    header (with the command's pid) written. A job only claimed ahead would be handed back
    unstarted by a graceful stop."""
    import queuectl

    def running() -> dict[str, Any] | None:
        job = job_of(queue, job_id)
        if not (job and job["state"] == "processing" and job.get("pid") == worker.pid):
            return None
        scratch = queuectl.FolderStore(str(queue.home))._live_output(job)
        try:
            header = Path(scratch).read_bytes().split(b"\n", 1)[0] if scratch else b""
        except OSError:
            return None
        return job if re.search(rb"command pid \d+", header) else None

    return wait_until(running, timeout, what=f"job {job_id} to run in worker pid {worker.pid}")


def process_gone(pid: int) -> bool:
    """True once pid has exited. A zombie counts as gone: a grandchild is reparented, and a
    PID 1 that does not reap orphans (as in this container) leaves a killed one a zombie for ever."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def kill_leftover(pid: int | None) -> None:
    """Cleanup: kill a process a test started through a job, with its process group."""
    if not pid:
        return
    try:
        group = os.getpgid(pid)
        if group != os.getpgrp():
            os.killpg(group, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def kill_group(proc: subprocess.Popen) -> None:
    """Kill a process started in its own session, with its whole group, and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def fast(queue: Queue, **settings: Any) -> None:
    """Quick polling, plus any other settings the test needs."""
    queue.ok("config", "set", "poll_interval", "0.05")
    for key, value in settings.items():
        queue.ok("config", "set", key, str(value))


def q(path: Path) -> str:
    """A path quoted for a POSIX shell command line."""
    return shlex.quote(str(path))


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """The session's template database (tests/pgtools.py): made once, with queuectl_pg's schema
    when there is one. Skips without a server, fails in CI."""
    import pgtools

    with pgtools.template_database() as name:
        yield name


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """The URL of a brand-new database of this test's own, dropped afterwards."""
    import pgtools

    with pgtools.fresh_database(pg_template) as url:
        yield url


@pytest.fixture
def queue(tmp_path: Path):
    q = Queue(tmp_path / "data")
    q.home.mkdir()
    yield q
    q.cleanup()
