"""The command line's user stories, run once on a data folder and once on PostgreSQL.

One parametrised fixture, `queue`, puts each test on both stores: "folder" is a temporary data
folder, "postgres" a brand-new database of the test's own (the `pg_url` fixture) named by a URL
that carries a password (trust authentication ignores it). Every command is a real `python
queuectl.py` process; everything any of them prints (commands, workers, `logs --follow`, the
dashboard's answers) is kept and searched for the password when the test ends: a queue's
location is shown with its password as ***, never in clear. Where the stores differ by nature
(where a job's output is kept), each store's form is asserted explicitly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from conftest import POSTGRES_URL, SCRIPT, Queue, kill_leftover, needs, process_gone, q, read_pid, wait_until
from test_dashboard import Dashboard
from test_operate import LineReader, popen

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX shells, signals and process groups")

SECRET = "s3cret"


def with_password(url: str, password: str) -> str:
    """The URL with this password for its user (postgres if it names none)."""
    parts = urlsplit(url)
    address = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:{password}@{address}"))


class StoreQueue(Queue):
    """A queue on one store (`kind`: folder or postgres) that keeps what every command printed."""

    def __init__(self, home: Path, location: str | None, kind: str) -> None:
        super().__init__(home, location)
        self.kind = kind
        self.printed: list[str] = []
        self.logs: list[Path] = []
        self.readers: list[LineReader] = []
        self._store: Any = None

    @property
    def shown(self) -> str:
        """The queue's location as queuectl prints it: a URL's password as ***."""
        return self.location.replace(f":{SECRET}@", ":***@")

    def run(self, *args: str, input: str | bytes | None = None, timeout: float = 60,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        proc = self.raw(*args, input=input, timeout=timeout, cwd=cwd)
        proc.stdout = proc.stdout.decode("utf-8", "replace")
        proc.stderr = proc.stderr.decode("utf-8", "replace")
        return proc

    def raw(self, *args: str, input: str | bytes | None = None, timeout: float = 60,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        """One command to completion, its stdout and stderr as bytes (stdin: empty, not a terminal)."""
        data = input.encode() if isinstance(input, str) else (input or b"")
        proc = subprocess.run([sys.executable, SCRIPT, *args], input=data, capture_output=True,
                              env=self.env(), cwd=str(cwd or self.home), timeout=timeout)
        self.printed += [proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")]
        return proc

    def start_worker(self, *args: str, log: Path | None = None) -> subprocess.Popen:
        log = log or self.home.parent / f"worker-{len(self.logs) + 1}.out"
        self.logs.append(log)
        return super().start_worker(*args, log=log)

    def follow(self, *args: str) -> tuple[subprocess.Popen, LineReader]:
        """A command in the background whose stdout lines are read as they arrive."""
        proc = popen(self, *args)
        reader = LineReader(proc)
        self.readers.append(reader)
        return proc, reader

    def store(self) -> Any:
        """The queue's store, opened in this process: to poll it quickly between commands."""
        if self._store is None:
            import queuectl

            self._store = queuectl.open_store(self.location)
        return self._store

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self.store().get(job_id)

    def set(self, **settings: Any) -> None:
        """Settings a test needs, written through the store (faster than a command each)."""
        import queuectl

        for key, value in settings.items():
            self.store().set_config(key, queuectl.validate_config_value(key, value))

    def everything_printed(self) -> str:
        texts = self.printed + ["\n".join(reader.texts()) for reader in self.readers]
        texts += [log.read_text("utf-8", "replace") for log in self.logs if log.exists()]
        return "\n".join(texts)

    def cleanup(self) -> None:
        super().cleanup()
        if self._store is not None:
            self._store.close()


@pytest.fixture(params=["folder", "postgres"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreQueue]:
    """A fresh queue with quick polling and a short lease, on the store the parameter names."""
    if request.param == "folder":
        home, location = tmp_path / "data", None
    else:
        home, location = tmp_path / "work", with_password(request.getfixturevalue("pg_url"), SECRET)
    home.mkdir()
    queue = StoreQueue(home, location, request.param)
    queue.set(poll_interval=0.05, lease_timeout=3)
    yield queue
    queue.cleanup()
    assert SECRET not in queue.everything_printed(), "a command printed the queue's password"


# -- helpers ------------------------------------------------------------------


def enqueue(queue: StoreQueue, job_id: str, command: str, *extra: str) -> None:
    queue.ok("enqueue", "--id", job_id, "--command", command, *extra)


def burst(queue: StoreQueue, *args: str) -> str:
    """Run a burst worker to its end; returns what it printed."""
    worker = queue.start_worker("--burst", *args)
    rc = worker.wait(timeout=60)
    out = queue.logs[-1].read_text("utf-8", "replace")
    assert rc == 0, out
    return out


def ids(jobs: list[dict[str, Any]]) -> list[str]:
    return [job["id"] for job in jobs]


def state_of(queue: StoreQueue, job_id: str) -> str | None:
    job = queue.job(job_id)
    return job and job["state"]


def wait_for_file(path: Path, timeout: float = 20) -> None:
    wait_until(path.exists, timeout, what=f"{path.name} to be written by a job")


def fields(show: str) -> dict[str, str]:
    """`show`'s `key : value` lines (until the output tail)."""
    result = {}
    for line in show.split("output (last part):\n")[0].splitlines():
        key, _, value = line.partition(":")
        result[key.strip()] = value.strip()
    return result


def stop(queue: StoreQueue, worker: subprocess.Popen) -> int:
    queue.ok("worker", "stop", "--wait", timeout=30)
    return worker.wait(timeout=30)


# -- enqueue ------------------------------------------------------------------


def test_enqueue_adds_a_pending_job_and_refuses_a_taken_id_naming_its_state(queue: StoreQueue) -> None:
    assert queue.ok("enqueue", "--id", "job1", "--command", "echo hi") == "Enqueued job: job1\n"
    [job] = queue.json("list")
    assert (job["id"], job["state"], job["attempts"], job["command"]) == ("job1", "pending", 0, "echo hi")

    taken = queue.run("enqueue", "--id", "job1", "--command", "echo again")
    assert taken.returncode == 1 and taken.stdout == ""
    assert len(taken.stderr.splitlines()) == 1 and "'job1'" in taken.stderr and "pending" in taken.stderr

    burst(queue)
    taken = queue.run("enqueue", "--id", "job1", "--command", "echo again")
    assert taken.returncode == 1 and "completed" in taken.stderr, taken.stderr
    assert queue.json("show", "job1")["command"] == "echo hi", "a refused enqueue must change nothing"


def test_enqueue_file_is_all_or_nothing(queue: StoreQueue, tmp_path: Path) -> None:
    enqueue(queue, "old", "echo old")

    def lines(*jobs: dict[str, Any]) -> str:
        return "\n".join(json.dumps(job) for job in jobs) + "\n"

    taken = tmp_path / "taken.json"
    taken.write_text(lines({"id": "f1", "command": "echo 1"}, {"id": "f2", "command": "echo 2"},
                           {"id": "old", "command": "echo taken"}))
    proc = queue.run("enqueue", "--file", str(taken))
    assert proc.returncode == 1 and proc.stdout == ""
    assert "'old'" in proc.stderr and "pending" in proc.stderr, proc.stderr
    assert ids(queue.json("list")) == ["old"], "nothing of a refused file may be enqueued"

    typo = queue.run("enqueue", "--file", "-", input=lines({"id": "f1", "command": "echo 1"},
                                                           {"id": "f2", "comand": "echo 2"}))
    assert typo.returncode == 1 and "comand" in typo.stderr and typo.stdout == ""
    assert ids(queue.json("list")) == ["old"]

    good = queue.ok("enqueue", "--file", "-", input=lines({"id": "f1", "command": "echo 1"},
                                                          {"id": "f2", "command": "echo 2"}))
    assert good == "Enqueued job: f1\nEnqueued job: f2\n"
    assert ids(queue.json("list")) == ["old", "f1", "f2"]


# -- workers ------------------------------------------------------------------


def test_a_burst_worker_of_four_threads_completes_every_job_exactly_once(queue: StoreQueue, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    names = [f"j{n:02}" for n in range(16)]
    jobs = [{"id": name, "command": f"echo $QUEUECTL_ATTEMPT >> {q(runs / name)}; sleep 0.3"} for name in names]
    queue.ok("enqueue", "--file", "-", input="\n".join(json.dumps(job) for job in jobs))

    out = burst(queue, "--count", "4")

    assert all(f"Worker-{n} started." in out for n in range(1, 5)), out
    for name in names:
        [line] = (runs / name).read_text().splitlines()  # one run, no more
        assert line.startswith(f"{name}#1@"), line
    completed = queue.json("list", "--state", "completed")
    assert sorted(ids(completed)) == names
    assert {job["attempts"] for job in completed} == {1}
    assert {job["worker"] for job in completed} == {f"Worker-{n}" for n in range(1, 5)}, "four threads ran jobs"
    counts = queue.json("status")["counts"]
    assert counts == {"pending": 0, "processing": 0, "failed": 0, "completed": 16, "dead": 0, "cancelled": 0}


def test_worker_stop_wait_returns_once_the_running_worker_has_finished_its_job_and_exited(
        queue: StoreQueue, tmp_path: Path) -> None:
    started = tmp_path / "started"
    enqueue(queue, "busy", f"touch {q(started)}; sleep 1")
    worker = queue.start_worker()
    wait_for_file(started)
    reaper = threading.Thread(target=worker.wait, daemon=True)  # a zombie is no worker: reap it as a shell would
    reaper.start()

    stop = queue.run("worker", "stop", "--wait", timeout=30)

    assert stop.returncode == 0, stop.stderr
    assert worker.returncode is not None, "stop --wait returned while the worker still ran"
    assert stop.stdout == "Asked 1 worker process(es) to stop after their current jobs.\nAll workers have stopped.\n"
    reaper.join(timeout=10)
    assert worker.returncode == 0
    assert state_of(queue, "busy") == "completed"
    assert queue.json("status")["workers"] == []
    enqueue(queue, "after", "true")
    burst(queue)
    assert state_of(queue, "after") == "completed", "a new worker must not obey the old stop"


# -- status, list, show --------------------------------------------------------


def test_status_shows_counts_workers_and_where_the_queue_is_without_its_password(
        queue: StoreQueue, tmp_path: Path) -> None:
    queue.set(max_retries=1)
    enqueue(queue, "done", "true")
    enqueue(queue, "bad", "exit 3")
    burst(queue)
    enqueue(queue, "later", "true", "--delay", "1h")
    go, started = tmp_path / "go", tmp_path / "started"
    enqueue(queue, "running", f"touch {q(started)}; while [ ! -e {q(go)} ]; do sleep 0.05; done")
    worker = queue.start_worker("--count", "2")
    wait_for_file(started)

    status = queue.json("status")
    assert status["home"] == queue.shown
    assert status["counts"] == {"pending": 1, "processing": 1, "failed": 0, "completed": 1, "dead": 1, "cancelled": 0}
    assert status["scheduled"] == 1
    [entry] = status["workers"]
    assert entry["pid"] == worker.pid and entry["threads"] == 2 and entry["host"] and entry["heartbeat_at"]

    text = queue.ok("status").splitlines()
    assert text[:7] == ["Pending Jobs   : 1   (1 scheduled)", "Processing Jobs: 1", "Completed Jobs : 1",
                        "Failed Jobs    : 0", "Dead Jobs (DLQ): 1", "Cancelled Jobs : 0",
                        "Worker State   : Running (1 process, 2 threads)"]
    if queue.kind == "folder":
        assert text[7] == f"Data folder    : {queue.home}"
    else:
        assert text[7] == f"Queue at       : {queue.shown}" and ":***@" in text[7]

    go.touch()
    assert stop(queue, worker) == 0
    assert queue.json("status")["workers"] == []
    assert queue.ok("status").splitlines()[6] == "Worker State   : Stopped"


def test_list_shows_active_jobs_first_then_finished_ones_by_state_and_limit(queue: StoreQueue) -> None:
    enqueue(queue, "done1", "true")
    enqueue(queue, "done2", "true")
    burst(queue)
    enqueue(queue, "p1", "echo one")
    enqueue(queue, "p2", "echo two", "--priority", "5")

    assert ids(queue.json("list")) == ["p1", "p2", "done1", "done2"]
    assert ids(queue.json("list", "--state", "pending")) == ["p1", "p2"]
    assert ids(queue.json("list", "--state", "completed")) == ["done1", "done2"]
    assert ids(queue.json("list", "--state", "processed", "--limit", "1")) == ["done1"]
    assert ids(queue.json("list", "--limit", "3")) == ["p1", "p2", "done1"]
    assert queue.json("list", "--state", "dead") == []

    table = queue.ok("list", "--state", "pending").splitlines()
    assert table[0].split() == ["ID", "STATE", "ATTEMPTS", "PRIORITY", "NEXT", "RUN", "/", "FINISHED", "COMMAND"]
    assert [row.split()[:4] for row in table[1:]] == [["p1", "pending", "0", "0"], ["p2", "pending", "0", "5"]]
    assert queue.ok("list", "--state", "cancelled") == "No cancelled jobs.\n"


def test_show_prints_every_field_and_where_the_jobs_output_is_kept(queue: StoreQueue) -> None:
    enqueue(queue, "shown", "echo hello", "--priority", "5")
    burst(queue)

    text = queue.ok("show", "shown")

    shown = fields(text)
    assert (shown["id"], shown["state"], shown["priority"], shown["attempts"], shown["exit_code"]) == \
        ("shown", "completed", "5", "1", "0")
    assert shown["command"] == "echo hello" and shown["worker"] == "Worker-1"
    assert text.endswith("output (last part):\nhello\n")
    log_line = next(line for line in text.splitlines() if line.startswith("log "))
    if queue.kind == "folder":
        assert log_line.split(": ", 1)[1] == str(queue.home / "logs" / "shown.log")
        assert b"hello\n" in (queue.home / "logs" / "shown.log").read_bytes()
    else:
        assert log_line.split(": ", 1)[1] == f"{queue.shown} (the output of shown is kept in the database)"
    job = queue.json("show", "shown")
    assert job == queue.json("list", "--state", "completed")[0]
    assert job["output"] == "hello\n" and job["state"] == "completed"
    missing = queue.run("show", "nosuch")
    assert missing.returncode == 1 and "nosuch" in missing.stderr


# -- logs -------------------------------------------------------------------------


def test_logs_tail_and_attempt_pick_lines_and_attempts(queue: StoreQueue) -> None:
    queue.set(max_retries=2, max_backoff=0)  # the retry is due at once
    enqueue(queue, "twice", "echo try $QUEUECTL_ATTEMPT | cut -d@ -f1; echo middle; echo last >&2; exit 1")
    burst(queue)

    every = queue.ok("logs", "twice").splitlines()
    assert len(every) == 8, every
    assert every[0].startswith("=== attempt 1, started ") and every[0].endswith(": exit code 1")
    assert every[4].startswith("=== attempt 2, started ") and every[4].endswith(": exit code 1")
    assert every[1:4] == ["try twice#1", "middle", "last"] and every[5:8] == ["try twice#2", "middle", "last"]

    assert queue.ok("logs", "twice", "--tail", "1").splitlines()[1::2] == ["last", "last"]
    second = queue.ok("logs", "twice", "--attempt", "2").splitlines()
    assert second[0] == every[4] and second[1:] == ["try twice#2", "middle", "last"]
    assert queue.ok("logs", "twice", "--attempt", "1", "--tail", "2").splitlines() == [every[0], "middle", "last"]
    beyond = queue.run("logs", "twice", "--attempt", "3")
    assert beyond.returncode == 1 and "2 attempt(s)" in beyond.stderr


def test_output_with_a_nul_byte_and_invalid_utf8_comes_back_the_same_on_both_stores(queue: StoreQueue) -> None:
    enqueue(queue, "binary", r"printf 'a\000b\377c\n'")
    burst(queue)

    logs = queue.raw("logs", "binary")

    assert logs.returncode == 0, logs.stderr
    title, output = logs.stdout.split(b"\n", 1)
    assert title.startswith(b"=== attempt 1, started ") and title.endswith(b": exit code 0")
    assert output == b"a\x00b\xef\xbf\xbdc\n", "the NUL kept, the invalid byte shown as U+FFFD"
    assert queue.json("show", "binary")["output"] == "a\x00b\ufffdc\n"
    if queue.kind == "folder":  # what is kept is the bytes as printed
        assert b"\na\x00b\xffc\n" in (queue.home / "logs" / "binary.log").read_bytes()
    else:
        import pgtools

        [(data,)] = pgtools.admin("SELECT string_agg(c.data, ''::bytea ORDER BY c.at) FROM queuectl.chunks c"
                                  " JOIN queuectl.runs r USING (run) WHERE r.job_id = 'binary'", url=queue.location)
        assert bytes(data) == b"a\x00b\xffc\n"


def test_logs_follow_prints_a_running_jobs_lines_as_they_come(queue: StoreQueue, tmp_path: Path,
                                                              request: pytest.FixtureRequest) -> None:
    go = tmp_path / "go"
    enqueue(queue, "chatty", f"echo first; while [ ! -e {q(go)} ]; do sleep 0.05; done; echo second")
    worker = queue.start_worker()
    follow, reader = queue.follow("logs", "chatty", "--follow")

    wait_until(lambda: "first" in reader.texts(), 10, what="the first line while the job runs")
    assert state_of(queue, "chatty") == "processing" and follow.poll() is None
    title = reader.texts()[0]
    assert title.startswith("=== attempt 1, started ") and title.endswith(": running")
    assert queue.ok("logs", "chatty").splitlines() == [title, "first"], "plain logs shows what it printed so far"
    go.touch()

    assert follow.wait(timeout=20) == 0
    reader.thread.join(timeout=10)
    assert reader.texts()[1:] == ["first", "second", "=== attempt 1 ended: exit code 0"]
    assert stop(queue, worker) == 0


# -- cancel, wait -----------------------------------------------------------------


def test_cancel_of_a_pending_job_records_it_cancelled_and_it_never_runs(queue: StoreQueue, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    enqueue(queue, "skip", f"touch {q(ran)}")

    assert queue.ok("cancel", "skip") == "Cancelled job: skip (was pending)\n"

    assert ids(queue.json("list", "--state", "cancelled")) == ["skip"]
    again = queue.run("cancel", "skip")
    assert again.returncode == 1 and "cancelled" in again.stderr
    burst(queue)
    assert not ran.exists() and state_of(queue, "skip") == "cancelled"


def test_cancel_of_a_running_job_kills_its_process_tree_within_seconds(queue: StoreQueue, tmp_path: Path) -> None:
    shell_pid, child_pid = tmp_path / "sh.pid", tmp_path / "child.pid"
    enqueue(queue, "long", f"echo $$ > {q(shell_pid)}; sleep 60 & echo $! > {q(child_pid)}; wait")
    worker = queue.start_worker()
    try:
        child = wait_until(lambda: read_pid(child_pid), 20, what="the job's child process")
        shell = read_pid(shell_pid)
        started = time.monotonic()

        cancel = queue.run("cancel", "long")

        assert cancel.returncode == 0, cancel.stderr
        assert cancel.stdout == "Cancelled job: long (was processing; its command was killed)\n"
        wait_until(lambda: process_gone(child) and process_gone(shell), 5, what="the job's processes to be killed")
        assert time.monotonic() - started < 6
    finally:
        kill_leftover(read_pid(child_pid))
    job = queue.json("show", "long")
    assert job["state"] == "cancelled" and job["attempts"] == 1
    assert worker.poll() is None, "the worker goes on"
    assert stop(queue, worker) == 0


def test_wait_exits_0_when_all_completed_1_when_one_is_dead_and_124_on_timeout(queue: StoreQueue) -> None:
    queue.set(max_retries=1)
    enqueue(queue, "ok", "true")
    enqueue(queue, "bad", "exit 3")
    waiting, reader = queue.follow("wait", "ok", "--timeout", "60")
    burst(queue)

    assert waiting.wait(timeout=20) == 0
    reader.thread.join(timeout=10)
    assert reader.texts() == ["All 1 job(s) completed."]
    both = queue.run("wait", "ok", "bad")
    assert (both.returncode, both.stdout) == (1, "2 job(s) finished: 1 completed, 1 dead, 0 cancelled.\n")
    enqueue(queue, "idle", "true")
    timed_out = queue.run("wait", "idle", "--timeout", "0.3")
    assert (timed_out.returncode, timed_out.stdout) == (124, "Timed out after 0.3 s: 1 of 1 job(s) not finished "
                                                             "(1 pending).\n")
    unknown = queue.run("wait", "nosuch")
    assert unknown.returncode == 1 and "nosuch" in unknown.stderr


# -- dlq, purge, stats, config ----------------------------------------------------


def test_dlq_retry_sends_a_dead_job_back_with_its_attempts_reset(queue: StoreQueue, tmp_path: Path) -> None:
    fixed = tmp_path / "fixed"
    queue.set(max_retries=1)
    enqueue(queue, "flop", f"test -e {q(fixed)}")
    burst(queue)

    [dead] = queue.json("dlq", "list")
    assert (dead["id"], dead["state"], dead["attempts"]) == ("flop", "dead", 1)
    assert queue.ok("dlq", "list").splitlines()[1].split()[:3] == ["flop", "dead", "1"]
    refused = queue.run("dlq", "retry", "nosuch")
    assert refused.returncode == 1 and "nosuch" in refused.stderr

    assert queue.ok("dlq", "retry", "flop") == "Requeued job: flop\n"

    job = queue.json("show", "flop")
    assert (job["state"], job["attempts"]) == ("pending", 0)
    assert queue.json("dlq", "list") == []
    fixed.touch()
    burst(queue)
    job = queue.json("show", "flop")
    assert (job["state"], job["attempts"]) == ("completed", 1)


def test_purge_deletes_finished_jobs_by_state_and_age_only_when_confirmed(queue: StoreQueue) -> None:
    queue.set(max_retries=1)
    enqueue(queue, "done", "echo done")
    enqueue(queue, "dead", "echo broken; exit 1")
    enqueue(queue, "gone", "true")
    queue.ok("cancel", "gone")
    burst(queue)
    enqueue(queue, "waiting", "true", "--delay", "1h")
    everything = ["waiting", "done", "dead", "gone"]
    assert ids(queue.json("list")) == everything

    unconfirmed = queue.run("purge")
    assert unconfirmed.returncode == 1 and "--yes" in unconfirmed.stderr
    assert queue.ok("purge", "--older-than", "1h", "--yes") == "Nothing to purge.\n"
    assert ids(queue.json("list")) == everything

    assert queue.ok("purge", "--state", "dead", "--yes") == "Purged 1 job(s) (1 dead).\n"
    assert ids(queue.json("list")) == ["waiting", "done", "gone"]
    assert queue.run("logs", "dead").returncode == 1, "its output goes with it"
    if queue.kind == "folder":
        assert not (queue.home / "logs" / "dead.log").exists()

    purged = queue.ok("purge", "--older-than", "0s", "--yes")
    assert purged == "Purged 2 job(s) (1 completed, 0 dead, 1 cancelled).\n"
    assert ids(queue.json("list")) == ["waiting"], "active jobs are never purged"
    enqueue(queue, "done", "echo again")  # a purged id is free again


def test_stats_json_counts_finished_jobs_and_the_backlog(queue: StoreQueue) -> None:
    queue.set(max_retries=1)
    enqueue(queue, "ok1", "true")
    enqueue(queue, "ok2", "true")
    enqueue(queue, "bad", "exit 2")
    burst(queue)
    enqueue(queue, "later", "true", "--delay", "1h")

    stats = queue.json("stats")

    assert stats["finished"] == {"completed": 2, "dead": 1, "cancelled": 0}
    assert stats["success_rate"] == round(2 / 3, 4)
    assert stats["attempts"] == {"mean": 1.0, "max": 1}
    assert stats["backlog"] == {"pending": 1, "processing": 0, "failed": 0, "oldest_due_age": None}
    assert stats["run_time"]["p50"] is not None and stats["queue_wait"]["p50"] is not None
    assert stats["window"]["seconds"] > 0 and stats["throughput_per_minute"] > 0
    assert queue.json("stats", "--since", "1h")["finished"] == stats["finished"]
    assert "Finished       : 2 completed, 1 dead, 0 cancelled" in queue.ok("stats").splitlines()


def test_config_set_get_show_keep_a_setting_with_the_queue(queue: StoreQueue, tmp_path: Path) -> None:
    assert queue.ok("config", "set", "max-retries", "5") == "max_retries = 5\n"

    assert queue.ok("config", "get", "max_retries") == "5\n"
    assert queue.json("config", "get", "max-retries") == 5
    assert "max_retries   = 5" in queue.ok("config", "show").splitlines()
    assert queue.json("config", "show")["max_retries"] == 5
    refused = queue.run("config", "set", "max_retries", "many")
    assert refused.returncode == 1 and "many" in refused.stderr
    assert queue.ok("config", "get", "max_retries") == "5\n"
    enqueue(queue, "j", "true")
    assert queue.json("show", "j")["max_retries"] == 5, "copied into each job at enqueue"

    elsewhere = tmp_path / "elsewhere"  # a second process, in another folder, told where the queue is
    elsewhere.mkdir()
    again = queue.run("--home", queue.location, "config", "get", "max_retries", cwd=elsewhere)
    assert (again.returncode, again.stdout) == (0, "5\n"), again.stderr
    if queue.kind == "folder":
        assert json.loads((queue.home / "config.json").read_text())["max_retries"] == 5
    else:
        import pgtools

        kept = pgtools.admin("SELECT value FROM queuectl.config WHERE key = 'max_retries'", url=queue.location)
        assert kept == [(5,)]
        assert list(queue.home.iterdir()) == [] and list(elsewhere.iterdir()) == [], "no file is written"


# -- db, dashboard ----------------------------------------------------------------


def test_db_status_says_what_schema_the_queue_has(queue: StoreQueue) -> None:
    status = queue.json("db", "status")
    text = queue.ok("db", "status")
    migrate = queue.ok("db", "migrate")

    if queue.kind == "folder":
        assert status == {"home": queue.shown, "installed": None, "known": None, "pending": []}
        assert text == f"The queue in {queue.home} is a folder of files: it has no schema, and nothing to migrate.\n"
        assert migrate == f"The queue in {queue.home} is a folder of files: nothing to migrate.\n"
    else:
        import queuectl_pg

        known = queuectl_pg.KNOWN_VERSION
        assert status == {"home": queue.shown, "installed": known, "known": known, "pending": []}
        assert text == f"Schema version {known} is installed in {queue.shown}: up to date.\n"
        assert migrate == f"Schema version {known} is installed in {queue.shown}: nothing to migrate.\n"


def test_dashboard_api_status_and_job_detail_are_what_the_cli_shows(queue: StoreQueue) -> None:
    worker = queue.start_worker()
    enqueue(queue, "shown", "echo from-shown")
    wait_until(lambda: state_of(queue, "shown") == "completed", 20, what="the job to complete")
    dash = Dashboard(queue)
    try:
        assert dash.match["home"] == queue.shown
        status = dash.get("/api/status")
        workers = dash.get("/api/workers")
        detail = dash.get("/api/jobs/shown")
        missing = dash.get("/api/jobs/nosuch")
        queue.printed += [dash.first_line, dash.stderr()] + [answer.body.decode() for answer in
                                                               (status, workers, detail, missing)]
    finally:
        dash.close()

    cli = queue.json("status")
    assert status.status == 200 and status.json()["home"] == cli["home"] == queue.shown
    assert status.json()["counts"] == cli["counts"] and cli["counts"]["completed"] == 1
    assert [w["pid"] for w in status.json()["workers"]] == [w["pid"] for w in cli["workers"]] == [worker.pid]
    [mine] = [w for w in workers.json() if w["pid"] == worker.pid]
    assert mine["alive"] is True and mine["home"] == queue.shown
    assert detail.status == 200 and detail.json()["job"] == queue.json("show", "shown")
    if queue.kind == "folder":
        assert detail.json()["log"] == str(queue.home / "logs" / "shown.log")
    else:
        assert detail.json()["log"] == f"{queue.shown} (the output of shown is kept in the database)"
    assert "from-shown\n" in detail.json()["log_tail"]
    assert missing.status == 404 and "nosuch" in missing.json()["error"]
    assert stop(queue, worker) == 0


# -- the password of a queue in PostgreSQL ------------------------------------------


@needs(importlib.util.find_spec("psycopg2") is not None, "psycopg2 is not installed")
def test_an_unreachable_server_is_one_error_line_without_the_password(tmp_path: Path) -> None:
    import pgtools

    nowhere = with_password(pgtools.with_address(POSTGRES_URL, "127.0.0.1", 1), SECRET)  # nothing listens on port 1
    queue = StoreQueue(tmp_path, nowhere, "postgres")

    proc = queue.run("status")

    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: cannot reach the PostgreSQL server at {queue.shown}: ")
    assert len(proc.stderr.splitlines()) == 1 and SECRET not in proc.stderr


def test_a_password_given_as_a_url_parameter_is_not_shown_either(pg_url: str, tmp_path: Path) -> None:
    import pgtools

    queue = StoreQueue(tmp_path, f"{pg_url}?password={SECRET}", "postgres")

    status = queue.json("status")

    assert pgtools.database_of(pg_url) in status["home"]
    assert SECRET not in queue.everything_printed()
