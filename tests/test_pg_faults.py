"""Faults a queue in PostgreSQL must survive, shown with real processes: `python queuectl.py`
workers (some on a second host: a process with a hostname of its own), jobs that note what they
do in a trace file, and the server, its connections and the network failing under them.

A job's command appends lines to the test's trace: `start`, `tick` (every 50 ms while a long job
runs) and `end`, each with its attempt's mark ($QUEUECTL_ATTEMPT, `job#attempt@host:pid`), the
time and the command's pid. From the trace a test reads how often each job ran, on which host,
and whether two runs of one job ever overlapped in time: a run lasts from its start to its last
line, so a run that went on after another began shows as a tick after that start.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pgtools
import pytest
from conftest import IN_CI, ROOT, SCRIPT, Queue, kill_leftover, needs, process_gone, q, wait_until
from pgtools import Proxy

from queuectl import HOST, _epoch

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals and /proc")

OTHER_HOST = "queuectl-host-b"
_refusal = pgtools.unshare_refusal() if sys.platform.startswith("linux") else "not Linux"
on_two_hosts = needs(_refusal is None, f"a second host needs a UTS namespace: {_refusal}")
restarts_allowed = pytest.mark.skipif(
    not (IN_CI or os.environ.get("QUEUECTL_TEST_RESTART") == "1"),
    reason="restarts the PostgreSQL server (every user of it loses its connections): runs in CI, "
           "or with QUEUECTL_TEST_RESTART=1")

TICK = 0.05  # seconds between two ticks of a long job


# -- the queue, its workers and whatever they leave running ------------------------------------


class PgQueue(Queue):
    """A queue in a database of the test's own; commands run from a scratch folder, and a worker
    may run on another host or reach the server through a proxy."""

    def __init__(self, url: str, folder: Path) -> None:
        super().__init__(folder)
        self.url = url

    def env(self, url: str | None = None) -> dict[str, str]:
        env = super().env()
        env["QUEUECTL_HOME"] = url or self.url
        return env

    def worker(self, *args: str, name: str, host: str | None = None, url: str | None = None,
               **environment: str) -> subprocess.Popen:
        """`worker start ARGS` in the background (its stdout and stderr in NAME.out and NAME.err),
        on another host if asked, reaching the server at `url` if given, with more environment."""
        argv = [sys.executable, SCRIPT, "worker", "start", *args]
        with open(self.home / f"{name}.out", "wb") as out, open(self.home / f"{name}.err", "wb") as err:
            options: dict[str, Any] = dict(env={**self.env(url), **environment}, cwd=str(self.home), stdout=out,
                                           stderr=err, start_new_session=True)
            proc = pgtools.on_host(host, argv, **options) if host else subprocess.Popen(argv, **options)
        self.procs.append(proc)
        return proc

    def said(self, name: str, stream: str = "err") -> str:
        return (self.home / f"{name}.{stream}").read_text("utf-8", "replace")

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return pgtools.admin(statement, params, url=self.url)

    def jobs(self) -> dict[str, dict[str, Any]]:
        return {doc["id"]: doc for (doc,) in self.sql("SELECT doc FROM queuectl.jobs")}

    def counts(self) -> dict[str, int]:
        return dict(self.sql("SELECT state, count(*) FROM queuectl.jobs GROUP BY state"))

    def enqueue_all(self, commands: dict[str, str]) -> None:
        """Every job in one `enqueue --file`."""
        path = self.home / "jobs.json"
        path.write_text(json.dumps([{"id": job_id, "command": command} for job_id, command in commands.items()]))
        self.ok("enqueue", "--file", str(path))

    def runs_recorded(self, job_id: str) -> list[tuple[int, str, int, str | None]]:
        """(attempt, host, worker pid, how it ended) of each run the queue recorded for a job."""
        return self.sql("SELECT attempt, host, pid, ending FROM queuectl.runs WHERE job_id = %s AND NOT late "
                        "ORDER BY run", (job_id,))


def processes_of(database: str) -> list[int]:
    """Every process whose QUEUECTL_HOME names this database: the workers a test started, and the
    commands of their jobs (a killed worker's command outlives it)."""
    wanted = b"/" + database.encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                entries = handle.read().split(b"\0")
        except OSError:
            continue
        if any(entry.startswith(b"QUEUECTL_HOME=") and entry.split(b"?")[0].endswith(wanted) for entry in entries):
            found.append(int(name))
    return found


@pytest.fixture
def pg_queue(pg_url: str, tmp_path: Path) -> Iterator[PgQueue]:
    """A PostgreSQL queue whose jobs run in bash (for $EPOCHREALTIME). At the end no process of
    it is left: workers, stopped ones, and commands their killed workers left behind."""
    queue = PgQueue(pg_url, tmp_path)
    queue.ok("config", "set", "shell", "bash")
    try:
        yield queue
    finally:
        queue.cleanup()
        database = pgtools.database_of(pg_url)
        for pid in processes_of(database):
            kill_leftover(pid)
        wait_until(lambda: not [pid for pid in processes_of(database) if not process_gone(pid)], 10,
                   what="every process of the test's queue to end")


# -- jobs that leave a trace -------------------------------------------------------------------


def note(trace: Path, event: str, extra: str = "$$") -> str:
    return f'echo "{event} $QUEUECTL_ATTEMPT $EPOCHREALTIME {extra}" >> {q(trace)}'


def traced(trace: Path, seconds: float) -> str:
    """A short job: it notes its start, sleeps, notes its end."""
    return f"{note(trace, 'start')}; sleep {seconds}; {note(trace, 'end')}"


def gated(trace: Path, gate: Path, child: bool = False) -> str:
    """A long job: it ticks until the test opens the gate (a file), then ends. With `child`, it
    also starts a process of its own (its pid noted) that would outlive a kill of the shell alone."""
    spawn = f"(sleep 300) & {note(trace, 'child', '$!')}; " if child else ""
    return (f"{note(trace, 'start')}; {spawn}while [ ! -e {q(gate)} ]; do {note(trace, 'tick')}; sleep {TICK}; "
            f"done; {note(trace, 'end')}")


@dataclass
class Run:
    """One run of a job's command, as its trace lines tell it."""

    job_id: str
    attempt: int
    host: str
    worker_pid: int
    pid: int  # the command's (its shell's) pid
    start: float
    last: float  # the time of its last line
    ended: bool
    child: int | None = None


def runs_in(trace: Path) -> dict[str, list[Run]]:
    """job id -> its runs, in the order they started."""
    runs: dict[str, Run] = {}
    lines = trace.read_text().splitlines() if trace.exists() else []
    for line in lines:
        fields = line.split()
        if len(fields) != 4:
            continue
        event, mark, at, pid = fields[0], fields[1], float(fields[2]), int(fields[3])
        job, _, worker = mark.rpartition("@")
        job_id, _, attempt = job.rpartition("#")
        host, _, worker_pid = worker.rpartition(":")
        if event == "start":
            runs[mark] = Run(job_id, int(attempt), host, int(worker_pid), pid, at, at, False)
        elif mark in runs:
            run = runs[mark]
            run.last = max(run.last, at)
            run.ended = run.ended or event == "end"
            if event == "child":
                run.child = pid
    result: dict[str, list[Run]] = {}
    for run in sorted(runs.values(), key=lambda run: run.start):
        result.setdefault(run.job_id, []).append(run)
    return result


def runs_of(trace: Path, job_id: str) -> list[Run]:
    return runs_in(trace).get(job_id, [])


def assert_never_two_runs_at_once(runs: dict[str, list[Run]]) -> None:
    for job_id, job_runs in runs.items():
        for before, after in zip(job_runs, job_runs[1:]):
            assert before.last < after.start, (
                f"{job_id}: attempt {before.attempt} on {before.host} still ran {before.last - after.start:.3f} s "
                f"after attempt {after.attempt} started on {after.host}")


def long_job(queue: PgQueue, trace: Path, gate: Path) -> Run:
    """Enqueue the job "long" (gated: it ticks until the gate opens) and wait for its first run."""
    queue.ok("enqueue", "--id", "long", "--command", gated(trace, gate))
    return run_number(trace, "long", 1)


def run_number(trace: Path, job_id: str, number: int, timeout: float = 15.0) -> Run:
    """Wait until the job's command has started for the number-th time."""
    return wait_until(lambda: next(iter(runs_of(trace, job_id)[number - 1:number]), None), timeout,
                      what=f"run {number} of {job_id} to start")


def status_hosts(queue: PgQueue) -> set[str]:
    return {worker["host"] for worker in queue.json("status")["workers"]}


def signal_group(pid: int, how: signal.Signals) -> None:
    """Signal the process group a worker or a command leads (a command's whole tree) or, failing
    that, the one process."""
    try:
        os.killpg(pid, how)
    except OSError:
        try:
            os.kill(pid, how)
        except OSError:
            pass


# -- many workers, many hosts, many kills ------------------------------------------------------


@on_two_hosts
def test_workers_on_two_hosts_run_each_job_exactly_once_and_status_lists_both(
        pg_queue: PgQueue, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    pg_queue.ok("config", "set", "poll_interval", "0.1")
    here = pg_queue.worker("--count", "4", name="here")
    there = pg_queue.worker("--count", "4", name="there", host=OTHER_HOST)
    wait_until(lambda: status_hosts(pg_queue) == {HOST, OTHER_HOST}, 20, what="both hosts' workers in status")
    ids = [f"job{n:03}" for n in range(200)]
    pg_queue.enqueue_all({job_id: traced(trace, 0.02) for job_id in ids})

    wait_until(lambda: pg_queue.counts().get("completed") == len(ids), 90, interval=0.2, what="every job to complete")
    status = pg_queue.json("status")
    assert {w["host"] for w in status["workers"]} == {HOST, OTHER_HOST}
    assert sum(w["threads"] for w in status["workers"]) == 8
    runs = runs_in(trace)
    assert sorted(runs) == ids
    twice = {job_id: [f"{r.host}#{r.attempt}" for r in job_runs] for job_id, job_runs in runs.items()
             if len(job_runs) != 1}
    assert not twice, f"jobs that ran more than once: {twice}"
    assert all(job_runs[0].ended for job_runs in runs.values())
    assert {job["attempts"] for job in pg_queue.jobs().values()} == {1}
    assert {job_runs[0].host for job_runs in runs.values()} == {HOST, OTHER_HOST}, "one host ran every job"

    pg_queue.ok("worker", "stop", "--wait", timeout=30)
    assert here.wait(10) == 0 and there.wait(10) == 0


def test_kill_9_torture_loses_no_job_and_counts_every_started_run(pg_queue: PgQueue, tmp_path: Path) -> None:
    """300 short jobs, two workers of 4 threads; ten times one of them is killed -9 at a random
    moment of the drain, and a replacement starts at once. Every job completes; a job's attempts are
    its runs that started: those in the trace, plus a run killed in the instant between its start
    being recorded and its command starting (the queue counts it: it cannot tell); a job claimed
    ahead and never started is not counted."""
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    trace = tmp_path / "trace"
    pg_queue.ok("config", "set", "poll_interval", "0.1")
    pg_queue.ok("config", "set", "max_retries", "50")  # no job may go dead because it was in many kills' way
    ids = [f"job{n:03}" for n in range(300)]
    pg_queue.enqueue_all({job_id: traced(trace, 0.03) for job_id in ids})
    workers = [pg_queue.worker("--count", "4", name=f"w{n}") for n in range(2)]
    killed: set[int] = set()
    for kill in range(10):
        # a random moment, spread over the drain: after a share of the jobs is done, plus up to 0.3 s
        share = 25 * (kill + 1)
        wait_until(lambda share=share: pg_queue.counts().get("completed", 0) >= share, 60, interval=0.02,
                   what=f"{share} jobs done before kill {kill + 1} (seed {seed})")
        time.sleep(rng.uniform(0.0, 0.3))
        victim = workers.pop(rng.randrange(len(workers)))
        victim.kill()
        victim.wait(10)
        killed.add(victim.pid)
        workers.append(pg_queue.worker("--count", "4", name=f"w{kill + 2}"))

    wait_until(lambda: pg_queue.counts().get("completed") == len(ids), 60, interval=0.2,
               what=f"every job to complete after 10 kills (seed {seed})")
    assert pg_queue.counts() == {"completed": len(ids)}
    runs = runs_in(trace)
    assert sorted(runs) == ids
    assert_never_two_runs_at_once(runs)
    between = 0
    for job_id, job in pg_queue.jobs().items():
        traced_attempts = {run.attempt for run in runs[job_id]}
        assert runs[job_id][-1].ended, f"{job_id}: its last run did not end (seed {seed})"
        # Counted but not in the trace: only a run whose worker the test killed as it started it.
        untraced = {attempt for attempt, host, pid, ending in pg_queue.runs_recorded(job_id)
                    if attempt not in traced_attempts and pid in killed and ending == "the worker died"}
        between += len(untraced)
        assert traced_attempts | untraced == set(range(1, job["attempts"] + 1)), (
            f"{job_id}: {job['attempts']} attempts counted, runs started {sorted(traced_attempts)}, "
            f"killed as they started {sorted(untraced)} (seed {seed})")
    assert between <= len(killed)


# -- a worker that dies, freezes or loses the server while it runs a job -----------------------


def test_a_killed_workers_running_job_is_recovered_on_the_same_host_within_5_s(
        pg_queue: PgQueue, tmp_path: Path) -> None:
    """The default lease is 30 s, but on its own host a worker whose pid is gone is dead at once:
    another worker there stops what is left of its command and runs the job again."""
    trace, gate = tmp_path / "trace", tmp_path / "gate"
    first = pg_queue.worker(name="first")
    run1 = long_job(pg_queue, trace, gate)
    assert run1.worker_pid == first.pid
    pg_queue.worker(name="second")
    wait_until(lambda: len(pg_queue.json("status")["workers"]) == 2, what="the second worker's heartbeat")

    first.kill()
    killed_at = time.time()
    run2 = run_number(trace, "long", 2, timeout=10)
    assert run2.start - killed_at < 5.0, f"recovered after {run2.start - killed_at:.1f} s"
    assert process_gone(run1.pid)
    gate.touch()
    wait_until(lambda: pg_queue.jobs()["long"]["state"] == "completed", what="the job to complete")
    runs = runs_in(trace)
    assert_never_two_runs_at_once(runs)
    assert [run.attempt for run in runs["long"]] == [1, 2] and pg_queue.jobs()["long"]["attempts"] == 2
    assert pg_queue.runs_recorded("long")[0][3] == "the worker died"


@on_two_hosts
def test_a_dead_hosts_running_job_is_recovered_from_another_host_once_its_lease_expires(
        pg_queue: PgQueue, tmp_path: Path) -> None:
    """Host B's worker and its command die together (the machine is gone); this host cannot see
    B's pids, so it takes the job over when B's lease (3 s) has expired, and not before."""
    trace, gate = tmp_path / "trace", tmp_path / "gate"
    pg_queue.ok("config", "set", "lease_timeout", "3")
    there = pg_queue.worker(name="there", host=OTHER_HOST)
    run1 = long_job(pg_queue, trace, gate)
    assert run1.host == OTHER_HOST
    pg_queue.worker(name="here")
    wait_until(lambda: status_hosts(pg_queue) == {HOST, OTHER_HOST}, what="this host's worker's heartbeat")

    beat = pg_queue.sql("SELECT extract(epoch FROM heartbeat_at)::float8 FROM queuectl.workers WHERE host = %s",
                  (OTHER_HOST,))[0][0]
    there.kill()
    signal_group(run1.pid, signal.SIGKILL)
    run2 = run_number(trace, "long", 2, timeout=15)
    assert run2.host == HOST
    # B's last heartbeat (the server's clock, the same as this machine's) was at most one beat
    # before the kill; the job waited for its lease, and then for at most two recovery rounds.
    assert run2.start - beat >= 3.0, f"taken over {run2.start - beat:.1f} s after B's last heartbeat"
    assert run2.start - beat < 3.0 + 3.0, f"recovered {run2.start - beat:.1f} s after B's last heartbeat"
    gate.touch()
    wait_until(lambda: pg_queue.jobs()["long"]["state"] == "completed", what="the job to complete")
    assert pg_queue.jobs()["long"]["attempts"] == 2
    assert_never_two_runs_at_once(runs_in(trace))


@on_two_hosts
def test_a_command_left_by_a_worker_killed_on_another_host_stops_before_its_job_runs_again(
        pg_queue: PgQueue, tmp_path: Path) -> None:
    """Only the worker dies (kill -9, the OOM killer); its host lives on, and nobody there will
    recover the job. Its guardian kills the command at once, before this host takes the job over
    when the lease expires: the two runs never overlap."""
    trace, gate = tmp_path / "trace", tmp_path / "gate"
    pg_queue.ok("config", "set", "lease_timeout", "3")
    there = pg_queue.worker(name="there", host=OTHER_HOST)
    run1 = long_job(pg_queue, trace, gate)
    pg_queue.worker(name="here")
    wait_until(lambda: status_hosts(pg_queue) == {HOST, OTHER_HOST}, what="this host's worker's heartbeat")

    there.kill()  # the worker only: its host lives on
    wait_until(lambda: process_gone(run1.pid), 2, what="the dead worker's guardian to kill its command")
    run2 = run_number(trace, "long", 2, timeout=15)
    wait_until(lambda: process_gone(run1.pid) or runs_of(trace, "long")[0].last > run2.start, 5,
               what="the first run to end or to tick on")
    assert_never_two_runs_at_once(runs_in(trace))


@on_two_hosts
def test_a_worker_frozen_past_its_lease_kills_its_command_when_it_wakes_and_its_result_is_dropped(
        pg_queue: PgQueue, tmp_path: Path) -> None:
    """Host A freezes (its worker and its command stopped, as in a paused VM) past its 2 s lease;
    host B takes the job over. When A's worker wakes it kills its command before that can run on
    and carries on, and what it would say about the job counts for nothing: B's run is the job's
    one completion."""
    host_a = "queuectl-host-a"
    trace, gate = tmp_path / "trace", tmp_path / "gate"
    pg_queue.ok("config", "set", "lease_timeout", "2")
    frozen = pg_queue.worker(name="frozen", host=host_a)
    run1 = long_job(pg_queue, trace, gate)
    assert run1.host == host_a
    signal_group(frozen.pid, signal.SIGSTOP)
    signal_group(run1.pid, signal.SIGSTOP)
    pg_queue.worker(name="b")

    run2 = run_number(trace, "long", 2, timeout=15)
    assert run2.host == HOST
    signal_group(frozen.pid, signal.SIGCONT)  # the worker wakes first; its command is still stopped
    woke = time.monotonic()
    wait_until(lambda: process_gone(run1.pid), 5, what="the woken worker to kill its command")
    assert time.monotonic() - woke < 2.0
    signal_group(run1.pid, signal.SIGCONT)
    gate.touch()
    wait_until(lambda: pg_queue.jobs()["long"]["state"] == "completed", what="B's run to complete the job")
    # A graceful stop: whatever the woken worker still had to say about its attempt has been said.
    pg_queue.ok("worker", "stop", "--wait", timeout=30)
    assert frozen.wait(10) == 0
    job = pg_queue.jobs()["long"]
    assert job["attempts"] == 2 and job["exit_code"] == 0
    recorded = pg_queue.runs_recorded("long")
    # attempt 1 ended as recovery found it; the woken worker's word on it was refused (B's attempt 2
    # succeeded and printed nothing: like a folder's log, the database keeps no record of such a run)
    assert [(attempt, host) for attempt, host, _, _ in recorded] == [(1, host_a)]
    assert recorded[0][3] == "the worker died"
    runs = runs_in(trace)
    assert_never_two_runs_at_once(runs)
    assert [(run.host, run.ended) for run in runs["long"]] == [(host_a, False), (HOST, True)]
    assert "Traceback" not in pg_queue.said("frozen")


@on_two_hosts
def test_a_worker_cut_off_from_the_server_kills_its_command_before_its_lease_expires(
        pg_queue: PgQueue, tmp_path: Path) -> None:
    """A worker on another host reaches the server through a proxy that stops forwarding (a cut
    cable: its calls hang, nothing fails). Its lease watch kills its command before the 3 s lease
    runs out; a worker here takes the job over; the two runs never overlap. When the cable is
    back, the cut-off worker exits with one error line, no traceback."""
    trace, gate = tmp_path / "trace", tmp_path / "gate"
    lease = 3.0
    pg_queue.ok("config", "set", "lease_timeout", str(lease))
    with Proxy.to(pg_queue.url) as proxy:
        cut_off = pg_queue.worker(name="cut_off", host=OTHER_HOST, url=proxy.url(pg_queue.url))
        run1 = long_job(pg_queue, trace, gate)
        assert run1.host == OTHER_HOST
        pg_queue.worker(name="here")
        wait_until(lambda: status_hosts(pg_queue) == {HOST, OTHER_HOST}, what="this host's worker's heartbeat")

        proxy.blackhole()
        cut_at = time.time()
        wait_until(lambda: process_gone(run1.pid), lease + 2, interval=0.02,
                   what="the cut-off worker to kill its command")
        killed_at = time.time()
        run2 = run_number(trace, "long", 2, timeout=15)
        assert run2.host == HOST
        assert killed_at - cut_at < lease, f"its command was killed {killed_at - cut_at:.1f} s after the cut"
        assert killed_at < run2.start
        assert_never_two_runs_at_once(runs_in(trace))

        proxy.resume()
        code = cut_off.wait(30)
    gate.touch()
    wait_until(lambda: pg_queue.jobs()["long"]["state"] == "completed", what="the job to complete")
    assert pg_queue.jobs()["long"]["attempts"] == 2
    said = pg_queue.said("cut_off")
    errors = [line for line in said.splitlines() if line.startswith("error:")]
    assert "Traceback" not in said and len(errors) == 1, said
    assert code == 1


# -- the server and its connections ------------------------------------------------------------


def with_password(url: str, password: str) -> str:
    """The URL with a password (trust authentication ignores it; the point is that none is shown)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    user = parts.username or "postgres"
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port or 5432}"))


def stop_server() -> None:
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", pgtools.server_version(), "main", "stop"],
                   check=True, capture_output=True, timeout=60)


def start_server() -> None:
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", pgtools.server_version(), "main", "start"],
                   check=True, capture_output=True, timeout=60)
    wait_until(pgtools.server_answers, 60, interval=0.1, what="PostgreSQL to answer again")


@restarts_allowed
def test_workers_finish_every_job_through_a_server_restart_and_a_command_meanwhile_says_so(
        pg_queue: PgQueue, tmp_path: Path) -> None:
    """The server restarts mid-drain, then is down for a while: the workers reconnect and finish
    every job, each run once; a one-shot command while it is down prints one sentence naming the
    server (its password hidden) and exits 1."""
    trace = tmp_path / "trace"
    pg_queue.url = with_password(pg_queue.url, "s3cret-pw")
    pg_queue.ok("config", "set", "poll_interval", "0.1")
    ids = [f"job{n:03}" for n in range(150)]
    pg_queue.enqueue_all({job_id: traced(trace, 0.05) for job_id in ids})
    workers = [pg_queue.worker("--count", "3", name=f"w{n}") for n in range(2)]

    def done() -> int:
        return len([run for job_runs in runs_in(trace).values() for run in job_runs if run.ended])

    wait_until(lambda: done() >= 30, 30, what="30 jobs done")
    pgtools.restart_server()
    wait_until(lambda: done() >= 70, 30, what="70 jobs done after the restart")
    stop_server()
    try:
        proc = pg_queue.run("status")
    finally:
        start_server()
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(
        "error: cannot reach the PostgreSQL server at postgresql://postgres:***@127.0.0.1:5432/"), proc.stderr
    assert "s3cret-pw" not in proc.stderr and "Traceback" not in proc.stderr

    wait_until(lambda: pg_queue.counts().get("completed") == len(ids), 60, interval=0.2,
               what="every job to complete after the restarts")
    assert pg_queue.counts() == {"completed": len(ids)}
    runs = runs_in(trace)
    assert sorted(runs) == ids and all(len(job_runs) == 1 for job_runs in runs.values())
    assert all(worker.poll() is None for worker in workers)
    for n in range(2):
        assert "Traceback" not in pg_queue.said(f"w{n}") and "s3cret-pw" not in pg_queue.said(f"w{n}")


def allow_connections(queue: PgQueue, allowed: bool) -> None:
    """Open or close the queue's database to new connections; closing also ends those it has.
    To its clients that is a server that is down, while the server goes on serving everyone else."""
    from psycopg2 import sql

    database = pgtools.database_of(queue.url)
    pgtools.admin(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
        sql.Identifier(database), sql.SQL("true" if allowed else "false")))
    if not allowed:
        pgtools.admin("SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity WHERE datname = %s",
                      (database,))


def test_a_worker_waits_out_a_database_it_cannot_reach_and_a_command_meanwhile_says_so(
        pg_queue: PgQueue, tmp_path: Path) -> None:
    """The queue's database refuses every connection for 3 s (longer than a worker answers its
    looks at the stop request and its settings from what it read last) while a job runs and ends:
    the worker stays up, records the result once it can, and claims again; a one-shot command
    meanwhile prints one sentence naming the server, without the URL's password, and exits 1."""
    trace, gate = tmp_path / "trace", tmp_path / "gate"
    pg_queue.url = with_password(pg_queue.url, "s3cret-pw")
    worker = pg_queue.worker("--count", "2", name="w")
    long_job(pg_queue, trace, gate)

    allow_connections(pg_queue, False)
    try:
        proc = pg_queue.run("status")
        gate.touch()  # the job ends while its result cannot be recorded
        down_until = time.monotonic() + 3.0
        while time.monotonic() < down_until:
            assert worker.poll() is None, pg_queue.said("w")
            time.sleep(0.1)
    finally:
        allow_connections(pg_queue, True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(
        "error: cannot reach the PostgreSQL server at postgresql://postgres:***@127.0.0.1:5432/"), proc.stderr
    assert "s3cret-pw" not in proc.stderr

    wait_until(lambda: pg_queue.jobs()["long"]["state"] == "completed", 15, what="the result to be recorded")
    pg_queue.ok("enqueue", "--id", "next", "--command", traced(trace, 0))
    wait_until(lambda: pg_queue.jobs()["next"]["state"] == "completed", 15, what="a new job to be claimed and run")
    assert [len(job_runs) for job_runs in runs_in(trace).values()] == [1, 1]
    assert pg_queue.jobs()["long"]["attempts"] == 1 and worker.poll() is None
    said = pg_queue.said("w")
    assert "Traceback" not in said and "s3cret-pw" not in said


def listening(queue: PgQueue) -> list[int]:
    """The backends of the queue's database that LISTEN for its workers."""
    return [pid for (pid,) in queue.sql(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'queuectl listen' "
        "AND query LIKE 'LISTEN %%'")]


def pickup_time(queue: PgQueue, trace: Path, job_id: str) -> float:
    """Seconds from `enqueue` returning to the job's command starting."""
    queue.ok("enqueue", "--id", job_id, "--command", traced(trace, 0))
    returned = time.time()
    return run_number(trace, job_id, 1).start - returned


def test_a_worker_whose_connections_are_terminated_carries_on_and_listens_again(
        pg_queue: PgQueue, tmp_path: Path) -> None:
    """pg_terminate_backend of both its connections: the worker reconnects for its rounds and for
    LISTEN, so with a poll interval of 10 s a new job still starts at once."""
    trace = tmp_path / "trace"
    pg_queue.ok("config", "set", "poll_interval", "10")
    worker = pg_queue.worker("--count", "2", name="w")
    before = wait_until(lambda: listening(pg_queue), what="the worker to LISTEN")
    assert pickup_time(pg_queue, trace, "before") < 1.0

    assert pgtools.terminate_backends(pg_queue.url) >= 2
    wait_until(lambda: listening(pg_queue) and listening(pg_queue) != before, 10, what="the worker to LISTEN again")
    # Once it has reconnected, it is woken by the notification, not by a round every 10 s.
    times = [pickup_time(pg_queue, trace, f"after{n}") for n in range(3)]
    assert max(times) < 0.4, times  # a round without a notification comes only every second
    wait_until(lambda: pg_queue.counts().get("completed") == 4, what="every job to complete")
    assert worker.poll() is None
    assert "Traceback" not in pg_queue.said("w")


# -- from this host to a job on another --------------------------------------------------------


@on_two_hosts
@pytest.mark.parametrize("listen", ["on", "off"])
def test_a_cancel_here_kills_the_process_tree_of_a_job_running_on_another_host(
        pg_queue: PgQueue, tmp_path: Path, listen: str) -> None:
    trace, gate = tmp_path / "trace", tmp_path / "gate"
    pg_queue.ok("config", "set", "listen", listen)
    worker = pg_queue.worker(name="there", host=OTHER_HOST)
    pg_queue.ok("enqueue", "--id", "long", "--command", gated(trace, gate, child=True))
    run = wait_until(lambda: next((r for r in runs_of(trace, "long") if r.child), None), 15,
                     what="the job and its child to start on the other host")
    assert run.host == OTHER_HOST

    asked = time.monotonic()
    out = pg_queue.ok("cancel", "long")
    assert out == "Cancelled job: long (was processing; its command was killed)\n"
    wait_until(lambda: process_gone(run.pid) and process_gone(run.child), 5, what="the job's process tree to die")
    assert time.monotonic() - asked < 5.0
    job = pg_queue.jobs()["long"]
    assert job["state"] == "cancelled" and job["attempts"] == 1
    assert worker.poll() is None


@on_two_hosts
def test_logs_follow_here_streams_a_job_running_on_another_host_while_it_runs(
        pg_queue: PgQueue, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    pg_queue.worker(name="there", host=OTHER_HOST)
    count = 12
    pg_queue.ok("enqueue", "--id", "talker", "--command",
          f"{note(trace, 'start')}; for ((i = 1; i <= {count}; i++)); do echo \"line $i $EPOCHREALTIME\"; "
          f"sleep 0.25; done; {note(trace, 'end')}")
    follow = subprocess.Popen([sys.executable, SCRIPT, "logs", "talker", "--follow"], env=pg_queue.env(),
                              cwd=str(pg_queue.home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
    pg_queue.procs.append(follow)
    arrivals: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: arrivals.extend((time.time(), line.decode()) for line in follow.stdout),
                              daemon=True)
    reader.start()
    assert follow.wait(30) == 0
    reader.join(5)

    run = runs_of(trace, "talker")[0]
    assert run.host == OTHER_HOST and run.ended
    lines = [(at, text.split()) for at, text in arrivals if text.startswith("line ")]
    assert [int(fields[1]) for _, fields in lines] == list(range(1, count + 1))
    # Streamed: lines reached this host while the job ran, each soon after it was printed.
    while_running = [fields[1] for at, fields in lines if at < run.last]
    assert len(while_running) >= count // 2, f"only lines {while_running} arrived before the job ended"
    delays = [round(at - float(fields[2]), 2) for at, fields in lines if at < run.last]
    assert max(delays) < 1.6, delays  # it reaches the database every second
    assert arrivals[-1][1] == "=== attempt 1 ended: exit code 0\n"


# -- commands that must not make things worse --------------------------------------------------


def test_an_enqueue_retried_with_the_same_id_never_makes_two_jobs(pg_queue: PgQueue) -> None:
    """After an enqueue whose commit outcome was unknown (the connection dropped at COMMIT), the
    user runs it again: the job that did get in is found, and there is still one."""
    assert pg_queue.ok("enqueue", "--id", "once", "--command", "true") == "Enqueued job: once\n"
    again = pg_queue.run("enqueue", "--id", "once", "--command", "true")
    assert again.returncode == 1
    assert again.stderr == "error: job 'once' already exists (pending); nothing was enqueued.\n"
    assert [job["id"] for job in pg_queue.json("list")] == ["once"]


def test_a_folder_queue_never_imports_the_postgresql_driver_or_store(tmp_path: Path) -> None:
    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
import queuectl
for argv in (["enqueue", "--id", "a", "--command", "true"], ["status"], ["worker", "start", "--burst"], ["list"]):
    assert queuectl.main(argv) == 0, argv
print(sorted(name for name in sys.modules if name.split(".")[0] in ("psycopg2", "psycopg", "queuectl_pg")))
"""
    env = dict(os.environ, QUEUECTL_HOME=str(tmp_path / "data"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"
    assert "Enqueued job: a" in proc.stdout and "finished: a" in proc.stdout


def test_the_driver_is_imported_without_pythons_ssl_module_which_still_imports_after(pg_queue: PgQueue) -> None:
    """A one-shot command does not pay for `import ssl` (half the driver's import time), and
    leaves nothing behind that would stop a later `import ssl` in the same process."""
    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
import queuectl
assert queuectl.main(["enqueue", "--id", "a", "--command", "true"]) == 0
print("psycopg2" in sys.modules, "ssl" in sys.modules)
import ssl
print(ssl.OPENSSL_VERSION.split()[0])
"""
    env = dict(os.environ, QUEUECTL_HOME=pg_queue.url)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-2:] == ["True False", "OpenSSL"]
    assert [job["id"] for job in pg_queue.json("list")] == ["a"]


def skewed(queue: PgQueue, seconds: float, name: str) -> subprocess.Popen:
    """A worker whose clock is `seconds` off (time.time shifted by a sitecustomize of its own),
    as on a host whose clock is wrong."""
    folder = queue.home / f"clock-{name}"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import time\n"
        f"_real, _skew = time.time, {seconds!r}\n"
        "time.time = lambda: _real() + _skew\n")
    return queue.worker(name=name, PYTHONPATH=str(folder))


def test_a_worker_whose_clock_is_an_hour_ahead_runs_a_delayed_job_when_the_server_says_it_is_due(
        pg_queue: PgQueue, tmp_path: Path) -> None:
    """Time is the server's: a worker an hour ahead does not take a job due in 3 s for due now."""
    trace = tmp_path / "trace"
    ahead = skewed(pg_queue, 3600.0, "ahead")
    wait_until(lambda: any(w["pid"] == ahead.pid for w in pg_queue.json("status")["workers"]), 15,
               what="the skewed worker's heartbeat")
    pg_queue.ok("enqueue", "--id", "later", "--delay", "3", "--command", note(trace, "start"))
    wait_until(lambda: pg_queue.jobs()["later"]["state"] == "completed", 20, what="the delayed job to run")
    job = pg_queue.jobs()["later"]
    waited = _epoch(job["started_at"]) - _epoch(job["created_at"])
    assert 3.0 <= waited < 6.0, f"started {waited:.2f} s after it was enqueued, by the server's clock"
    assert runs_in(trace)["later"][0].worker_pid == ahead.pid


def test_a_worker_whose_clock_is_an_hour_behind_is_not_taken_for_dead(pg_queue: PgQueue, tmp_path: Path) -> None:
    """Its heartbeat is stamped by the server, so another worker (recovering every second, with a
    3 s lease) never takes its running job over."""
    trace, gate = tmp_path / "trace", tmp_path / "gate"
    pg_queue.ok("config", "set", "lease_timeout", "3")
    behind = skewed(pg_queue, -3600.0, "behind")
    long_job(pg_queue, trace, gate)
    assert pg_queue.jobs()["long"]["pid"] == behind.pid
    pg_queue.worker(name="other")
    runs = wait_until(lambda: (lambda r: r if r[-1].last - r[0].start > 6.0 else None)(runs_in(trace)["long"]),
                      20, what="the job to tick for two leases")
    assert len(runs) == 1, "the job ran again elsewhere"
    status = {w["pid"]: w for w in pg_queue.json("status")["workers"]}
    assert behind.pid in status, "the worker an hour behind is listed alive"
    gate.touch()
    wait_until(lambda: pg_queue.jobs()["long"]["state"] == "completed", what="the job to complete")
    assert pg_queue.jobs()["long"]["attempts"] == 1
