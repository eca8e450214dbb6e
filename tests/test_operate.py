"""Operating a queue: logs (--follow, --attempt, --tail), cancel, purge, stats and wait.

Real `queuectl` processes on a real data folder, as a user meets them. Conditions are waited
for with deadlines (never a fixed sleep hoping something happened), and every process a test
starts (workers, `logs --follow`, the commands jobs leave behind) is stopped at its end.
Histories with known answers (for `stats` and `purge --older-than`) are written by hand in
the layout queuectl writes: a JSON array, one job per line.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import (SCRIPT, Queue, fast, kill_leftover, process_gone, q, read_pid, wait_for_state, wait_running,
                      wait_until)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals, process groups and ptys")

HEADER = re.compile(r"=== attempt (\d+), started (\S+) by (Worker-\d+) \(pid (\d+) on (.+)\): (.*)\Z")


# -- helpers ------------------------------------------------------------------


def enqueue(queue: Queue, job_id: str, command: str, *extra: str) -> None:
    queue.ok("enqueue", "--id", job_id, "--command", command, *extra)


def stop_worker(queue: Queue, worker: subprocess.Popen) -> int:
    queue.ok("worker", "stop", "--wait", timeout=30)
    return worker.wait(timeout=30)


def burst(queue: Queue, log: Path, timeout: float = 30) -> str:
    """Run a burst worker to the end; returns its output."""
    rc = queue.start_worker("--burst", log=log).wait(timeout=timeout)
    out = log.read_text("utf-8")
    assert rc == 0, out
    return out


def popen(queue: Queue, *args: str, stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE,
          stdin: Any = subprocess.DEVNULL) -> subprocess.Popen:
    """A queuectl command in the background, in its own session (killed at teardown), with
    the default SIGINT disposition whatever the test runner inherited. Without
    PYTHONUNBUFFERED: what reaches a pipe as it happens is queuectl's own doing."""
    env = queue.env()
    env.pop("PYTHONUNBUFFERED", None)
    proc = subprocess.Popen([sys.executable, SCRIPT, *args], env=env, cwd=str(queue.home),
                            stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    queue.procs.append(proc)
    return proc


class LineReader:
    """Reads a process's stdout in a thread; each line with the wall-clock time it arrived."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for raw in iter(proc.stdout.readline, b""):
            self.lines.append((time.time(), raw.decode("utf-8", "replace").rstrip("\n")))

    def texts(self) -> list[str]:
        return [text for _, text in self.lines]

    def arrival(self, text: str) -> float:
        return next(stamp for stamp, line in self.lines if line == text)


def epoch(text: str) -> float:
    """Epoch seconds of an ISO UTC time such as 2026-11-20T10:00:00.000Z."""
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso(ts: float) -> str:
    """UTC ISO-8601 with milliseconds, as queuectl writes it."""
    millis = int(round(ts * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + f".{millis % 1000:03d}Z"


def write_jobs(path: Path, jobs: list[dict[str, Any]]) -> None:
    """A state file in queuectl's layout: a JSON array, one job per line, id first."""
    lines = [json.dumps({"id": job["id"], **job}, separators=(",", ":")) for job in jobs]
    path.write_text("[\n" + ",\n".join(lines) + "\n]\n" if lines else "[\n]\n", "utf-8")


def record(job_id: str, state: str, created: float, finished: float | None = None, attempts: int = 1,
           **times: float) -> dict[str, Any]:
    """A job record; times are epoch seconds, written as ISO (started_at=..., first_started_at=...);
    duration=... is kept as a number."""
    job: dict[str, Any] = {"id": job_id, "command": f"echo {job_id}", "state": state, "attempts": attempts,
                           "max_retries": 3, "priority": 0, "created_at": iso(created),
                           "updated_at": iso(finished if finished is not None else created)}
    for key, value in times.items():
        job[key] = value if key == "duration" else iso(value)
    if finished is not None:
        job["finished_at"] = iso(finished)
    return job


def file_bytes(queue: Queue) -> dict[str, bytes]:
    """Every file of the data folder that a purge could change, byte for byte."""
    result = {}
    for name in ("queue.json", "processed.json", "failed.json", "cancelled.json"):
        path = queue.home / name
        result[name] = path.read_bytes() if path.exists() else b"<missing>"
    logs = queue.home / "logs"
    if logs.is_dir():
        for path in sorted(logs.iterdir()):
            result[f"logs/{path.name}"] = path.read_bytes()
    return result


def ids_in(queue: Queue, name: str) -> list[str]:
    return [job["id"] for job in queue.file(name)]


# -- logs -------------------------------------------------------------------------


def test_logs_shows_every_attempt_under_its_header_with_stdout_and_stderr_in_order(
        queue: Queue, tmp_path: Path) -> None:
    fast(queue, backoff_base=1, max_retries=2)
    enqueue(queue, "flaky", "echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 4")
    worker = queue.start_worker("--burst", log=tmp_path / "worker.out")
    assert worker.wait(timeout=30) == 0

    proc = queue.run("logs", "flaky")

    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 10, proc.stdout
    headers = [HEADER.fullmatch(lines[0]), HEADER.fullmatch(lines[5])]
    assert all(headers), proc.stdout
    assert [h.group(1) for h in headers] == ["1", "2"]
    assert [h.group(6) for h in headers] == ["exit code 4", "exit code 4"]
    assert {h.group(3) for h in headers} == {"Worker-1"}
    assert {int(h.group(4)) for h in headers} == {worker.pid}
    assert lines[1:5] == ["out1", "err1", "out2", "err2"], "stdout and stderr must interleave in write order"
    assert lines[6:10] == ["out1", "err1", "out2", "err2"]
    [dead] = queue.file("failed.json")
    assert headers[1].group(2) == dead["started_at"], "the header gives the attempt's start time"
    assert epoch(headers[1].group(2)) - epoch(headers[0].group(2)) >= 0.9, "backoff_base 1: a second apart"


def test_logs_attempt_and_tail_select_one_attempt_and_its_last_lines(queue: Queue, tmp_path: Path) -> None:
    fast(queue, backoff_base=1, max_retries=2)
    enqueue(queue, "twice", 'echo "try $QUEUECTL_ATTEMPT" | cut -d@ -f1; echo middle; echo last >&2; exit 1')
    burst(queue, tmp_path / "worker.out")

    second = queue.run("logs", "twice", "--attempt", "2")
    assert second.returncode == 0, second.stderr
    lines = second.stdout.splitlines()
    assert HEADER.fullmatch(lines[0]) and HEADER.fullmatch(lines[0]).group(1) == "2", second.stdout
    assert lines[1:] == ["try twice#2", "middle", "last"]

    tail = queue.run("logs", "twice", "--tail", "1")
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.splitlines()
    assert [HEADER.fullmatch(line).group(1) for line in lines[0::2]] == ["1", "2"], tail.stdout
    assert lines[1::2] == ["last", "last"], "--tail 1 keeps each attempt's last line"

    both = queue.run("logs", "twice", "--attempt", "1", "--tail", "2")
    assert both.returncode == 0
    assert both.stdout.splitlines()[1:] == ["middle", "last"]
    assert HEADER.fullmatch(both.stdout.splitlines()[0]).group(1) == "1"

    beyond = queue.run("logs", "twice", "--attempt", "3")
    assert beyond.returncode == 1
    assert beyond.stdout == ""
    assert len(beyond.stderr.splitlines()) == 1 and "2 attempt(s)" in beyond.stderr


@pytest.mark.parametrize("command", ["logs", "cancel", "wait"])
def test_an_unknown_id_is_one_error_line(queue: Queue, command: str) -> None:
    enqueue(queue, "known", "echo hi")
    proc = queue.run(command, "nosuchjob")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and "nosuchjob" in proc.stderr


def test_logs_of_a_job_that_has_not_run_or_ran_silently_says_so(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    enqueue(queue, "later", "echo later", "--delay", "1h")
    enqueue(queue, "quiet", "true")
    burst(queue, tmp_path / "worker.out")

    pending = queue.run("logs", "later")
    assert (pending.returncode, pending.stdout) == (0, "Job later has not run yet (pending).\n")
    silent = queue.run("logs", "quiet")
    assert (silent.returncode, silent.stdout) == (0, "Job quiet printed nothing (completed after 1 attempt(s)).\n")


def test_logs_header_names_a_timeout_as_the_attempts_ending(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    enqueue(queue, "slow", "echo before; exec sleep 10", "--timeout", "0.5", "--max-retries", "1")
    burst(queue, tmp_path / "worker.out")

    lines = queue.ok("logs", "slow").splitlines()
    assert lines[1:] == ["before"]
    header = HEADER.fullmatch(lines[0])
    assert header and header.group(6).startswith("timed out after 0.5 s"), lines[0]


def test_logs_follow_streams_lines_as_they_are_printed_and_exits_when_the_job_ends(
        queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    enqueue(queue, "ticker", "for i in 1 2 3 4; do echo tick $i; sleep 0.5; done")
    worker = queue.start_worker(log=tmp_path / "worker.out")
    try:
        wait_running(queue, "ticker", worker)
        # Without --follow, a running attempt shows what it printed so far, under a 'running' header.
        now = queue.ok("logs", "ticker").splitlines()
        assert HEADER.fullmatch(now[0]) and now[0].endswith(": running"), now

        follow = popen(queue, "logs", "ticker", "--follow")
        reader = LineReader(follow)
        rc = follow.wait(timeout=20)
        exited = time.time()
        reader.thread.join(timeout=5)
        job = wait_for_state(queue, "ticker", "completed")
    finally:
        stop_worker(queue, worker)

    assert rc == 0, follow.stderr.read()
    texts = reader.texts()
    assert texts[1:] == ["tick 1", "tick 2", "tick 3", "tick 4", "=== attempt 1 ended: exit code 0"], texts
    header = HEADER.fullmatch(texts[0])
    assert header and header.group(1) == "1" and header.group(6) == "running", texts[0]
    finished = epoch(job["finished_at"])
    first, last = reader.arrival("tick 1"), reader.arrival("tick 4")
    assert first <= finished - 1.0, f"the first line came {finished - first:.2f} s before the job ended"
    assert last - first >= 1.0, f"lines came {last - first:.2f} s apart: all at the end, not as printed"
    assert exited - finished < 3.0, f"follow exited {exited - finished:.2f} s after the job ended"


def test_logs_follow_on_a_pending_job_waits_for_it_to_start_then_streams_it(
        queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    enqueue(queue, "queued", "echo first; sleep 1; echo second")
    err = tmp_path / "follow.err"
    with open(err, "wb") as err_file:
        follow = popen(queue, "logs", "queued", "--follow", stderr=err_file)
    reader = LineReader(follow)
    wait_until(lambda: "Waiting for job queued to start (pending)" in err.read_text(), 10,
               what="follow to say it waits")
    assert follow.poll() is None, "follow must wait for a pending job, not exit"
    worker = queue.start_worker(log=tmp_path / "worker.out")
    try:
        rc = follow.wait(timeout=20)
        reader.thread.join(timeout=5)
    finally:
        stop_worker(queue, worker)
    assert rc == 0, err.read_text()
    texts = reader.texts()
    assert HEADER.fullmatch(texts[0]) and texts[0].endswith(": running"), texts
    assert texts[1:] == ["first", "second", "=== attempt 1 ended: exit code 0"]


def test_logs_follow_on_a_pending_job_that_runs_quickly_still_prints_its_output(
        queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    worker = queue.start_worker(log=tmp_path / "worker.out")
    try:
        ids = [f"quick{n}" for n in range(1, 6)]  # all five caught mid-run by chance: vanishingly rare
        for job_id in ids:
            enqueue(queue, job_id, f"echo said {job_id}", "--delay", "1")
        follows = {job_id: popen(queue, "logs", job_id, "--follow") for job_id in ids}
        outputs = {job_id: proc.communicate(timeout=20)[0].decode() for job_id, proc in follows.items()}
    finally:
        stop_worker(queue, worker)
    for job_id, out in outputs.items():
        assert follows[job_id].returncode == 0
        assert f"said {job_id}" in out.splitlines(), f"logs {job_id} --follow printed {out!r}"


def test_ctrl_c_stops_logs_follow_at_once_with_exit_130(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    enqueue(queue, "long", "echo hello; exec sleep 30")
    worker = queue.start_worker(log=tmp_path / "worker.out")
    try:
        wait_running(queue, "long", worker)
        follow = popen(queue, "logs", "long", "--follow")
        reader = LineReader(follow)
        wait_until(lambda: "hello" in reader.texts(), 10, what="follow to stream the first line")
        assert follow.poll() is None
        sent = time.monotonic()
        os.killpg(follow.pid, signal.SIGINT)  # what a terminal's Ctrl+C sends
        rc = follow.wait(timeout=10)
        took = time.monotonic() - sent
        assert rc == 130, follow.stderr.read()
        assert took < 2.0, f"follow took {took:.2f} s to stop after Ctrl+C"
    finally:
        queue.run("cancel", "long")
        stop_worker(queue, worker)


def test_ctrl_c_stops_logs_follow_waiting_for_a_pending_job(queue: Queue, tmp_path: Path) -> None:
    enqueue(queue, "never", "echo never")
    err = tmp_path / "follow.err"
    with open(err, "wb") as err_file:
        follow = popen(queue, "logs", "never", "--follow", stderr=err_file)
    wait_until(lambda: "Waiting for job never" in err.read_text(), 10, what="follow to wait")
    sent = time.monotonic()
    os.killpg(follow.pid, signal.SIGINT)
    assert follow.wait(timeout=10) == 130
    assert time.monotonic() - sent < 2.0



def test_log_max_bytes_keeps_the_newest_output_of_every_attempt(queue: Queue, tmp_path: Path) -> None:
    fast(queue, log_max_bytes=2048, backoff_base=1, max_backoff=0.05)
    # Each attempt prints 400 numbered lines (about 5 KB) and fails; 3 attempts are ~15 KB of output.
    enqueue(queue, "chatty", "seq -f 'line %g' 1 400; exit 1", "--max-retries", "3")
    burst(queue, tmp_path / "worker.out")
    log = queue.home / "logs" / "chatty.log"
    data = log.read_bytes()
    assert len(data) <= 2048
    text = data.decode()
    assert text.startswith("=== older output removed: this log keeps the newest 2048 bytes (log_max_bytes)\n")
    assert text.endswith("line 400\n=== attempt 3 ended: exit code 1\n")  # the newest output is kept
    assert "line 1\n" not in text
    shown = queue.ok("logs", "chatty")  # the cut log still reads as attempts
    assert shown.splitlines()[-1] == "line 400" and ": exit code 1" in shown


def test_one_attempt_larger_than_log_max_bytes_keeps_its_header_and_its_end(queue: Queue, tmp_path: Path) -> None:
    fast(queue, log_max_bytes=4096)
    enqueue(queue, "big", "seq -f 'row %g' 1 5000")
    burst(queue, tmp_path / "worker.out")
    text = (queue.home / "logs" / "big.log").read_text()
    assert len(text.encode()) <= 4096
    first, second = text.splitlines()[:2]
    assert first.startswith("=== big attempt 1 started ")
    assert re.search(r": \d+ bytes of output follow \(\d+ older bytes removed: log_max_bytes\)\Z", first), first
    assert re.fullmatch(r"row \d+", second)  # a whole line
    assert text.endswith("row 5000\n=== attempt 1 ended: exit code 0\n")
    shown = queue.ok("logs", "big").splitlines()
    assert HEADER.fullmatch(shown[0]) and re.fullmatch(r"=== \d+ bytes of older output removed \(log_max_bytes\)",
                                                       shown[1]), shown[:2]
    assert queue.ok("logs", "big", "--tail", "1").splitlines()[-1] == "row 5000"

# -- cancel -----------------------------------------------------------------------


def test_cancel_a_pending_job_moves_it_to_cancelled_and_keeps_its_id_taken(queue: Queue) -> None:
    enqueue(queue, "p1", "echo p1")
    enqueue(queue, "other", "echo other")

    proc = queue.run("cancel", "p1")

    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "Cancelled job: p1 (was pending)\n", "")
    listed = queue.json("list", "--state", "cancelled")
    assert [(job["id"], job["state"]) for job in listed] == [("p1", "cancelled")]
    [stored] = queue.file("cancelled.json")
    assert stored["id"] == "p1" and stored["state"] == "cancelled" and stored["attempts"] == 0
    assert ids_in(queue, "queue.json") == ["other"]
    again = queue.run("enqueue", "--id", "p1", "--command", "echo again")
    assert again.returncode == 1 and "cancelled" in again.stderr, again.stderr
    assert ids_in(queue, "queue.json") == ["other"]


def test_cancel_a_running_job_kills_its_process_tree_and_it_is_never_retried(
        queue: Queue, tmp_path: Path) -> None:
    fast(queue, max_retries=3)
    pid_file, trace = tmp_path / "grandchild.pid", tmp_path / "runs"
    inner = f"sleep 300 & echo $! > {q(pid_file)}; wait"
    enqueue(queue, "victim", f"echo run >> {q(trace)}; sh -c {shlex.quote(inner)}")
    out_path = tmp_path / "worker.out"
    worker = queue.start_worker("--count", "2", log=out_path)
    try:
        wait_running(queue, "victim", worker)
        grandchild = wait_until(lambda: read_pid(pid_file), 10, what="the command's grandchild to start")

        started = time.monotonic()
        proc = queue.run("cancel", "victim")
        took = time.monotonic() - started

        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "Cancelled job: victim (was processing; its command was killed)\n"
        assert took < 5, f"cancel took {took:.1f} s"
        wait_until(lambda: process_gone(grandchild), 5, what=f"grandchild pid {grandchild} to be killed")
        job = wait_for_state(queue, "victim", "cancelled", timeout=5)
        assert job["attempts"] == 1
        assert "victim" not in ids_in(queue, "queue.json")

        enqueue(queue, "after", "echo after")
        wait_for_state(queue, "after", "completed")
        rc = stop_worker(queue, worker)
    finally:
        kill_leftover(read_pid(pid_file))

    out = out_path.read_text()
    assert rc == 0, out
    assert trace.read_text().split() == ["run"], "a cancelled job must never run again"
    assert "(attempt 2)" not in out
    assert re.search(r"^Worker-\d cancelled: victim$", out, re.M), out
    assert re.search(r"^Worker-\d finished: after$", out, re.M), "the worker must keep running other jobs"
    assert re.fullmatch(r"Summary: 1 completed, 0 failed attempt\(s\), 0 dead, 1 cancelled in \d+\.\d s\.",
                        out.splitlines()[-1]), out
    assert queue.states() == {"victim": "cancelled", "after": "completed"}
    header = HEADER.fullmatch(queue.ok("logs", "victim").splitlines()[0])
    assert header and header.group(6) == "cancelled"


def test_cancel_a_finished_job_fails_and_names_its_state(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    enqueue(queue, "done", "true")
    enqueue(queue, "broken", "exit 3", "--max-retries", "1")
    burst(queue, tmp_path / "worker.out")

    for job_id, state in (("done", "completed"), ("broken", "dead")):
        proc = queue.run("cancel", job_id)
        assert proc.returncode == 1
        assert proc.stdout == ""
        assert len(proc.stderr.splitlines()) == 1 and state in proc.stderr, proc.stderr
    assert queue.states() == {"done": "completed", "broken": "dead"}
    assert queue.file("cancelled.json") == []


def test_cancel_with_mixed_ids_cancels_the_valid_ones_and_exits_1(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    enqueue(queue, "done", "true")
    burst(queue, tmp_path / "worker.out")
    enqueue(queue, "a", "echo a")
    enqueue(queue, "b", "echo b", "--delay", "1h")
    enqueue(queue, "keep", "echo keep")

    proc = queue.run("cancel", "a", "ghost", "done", "b")

    assert proc.returncode == 1
    assert proc.stdout.splitlines() == ["Cancelled job: a (was pending)", "Cancelled job: b (was pending)"]
    errors = proc.stderr.splitlines()
    assert len(errors) == 2 and "ghost" in errors[0] and "completed" in errors[1], errors
    assert queue.states() == {"done": "completed", "a": "cancelled", "b": "cancelled", "keep": "pending"}


# -- purge --------------------------------------------------------------------------


def finished_history(queue: Queue, tmp_path: Path) -> None:
    """One job of each finished state (completed and dead ones with logs), plus a pending one."""
    fast(queue)
    enqueue(queue, "ok", "echo fine")
    enqueue(queue, "bad", "echo broken; exit 3", "--max-retries", "1")
    enqueue(queue, "cx", "echo never")
    enqueue(queue, "pend", "echo later", "--delay", "1h")
    queue.ok("cancel", "cx")
    burst(queue, tmp_path / "worker.out")
    assert queue.states() == {"ok": "completed", "bad": "dead", "cx": "cancelled", "pend": "pending"}
    assert (queue.home / "logs" / "ok.log").exists() and (queue.home / "logs" / "bad.log").exists()


def test_purge_without_yes_and_without_a_terminal_deletes_nothing(queue: Queue, tmp_path: Path) -> None:
    finished_history(queue, tmp_path)
    before = file_bytes(queue)

    proc = queue.run("purge")

    assert proc.returncode == 1
    assert len(proc.stderr.splitlines()) == 1 and "--yes" in proc.stderr, proc.stderr
    assert file_bytes(queue) == before


def test_purge_yes_removes_finished_jobs_and_their_logs_but_not_active_ones(
        queue: Queue, tmp_path: Path) -> None:
    finished_history(queue, tmp_path)
    queue_before = (queue.home / "queue.json").read_bytes()

    proc = queue.run("purge", "--yes")

    assert (proc.returncode, proc.stdout) == (0, "Purged 3 job(s) (1 completed, 1 dead, 1 cancelled).\n")
    for name in ("processed.json", "failed.json", "cancelled.json"):
        assert queue.file(name) == [], name
    assert not (queue.home / "logs" / "ok.log").exists()
    assert not (queue.home / "logs" / "bad.log").exists()
    assert (queue.home / "queue.json").read_bytes() == queue_before, "active jobs are never touched"
    assert queue.states() == {"pend": "pending"}
    assert queue.run("show", "ok").returncode == 1
    again = queue.run("purge", "--yes")
    assert (again.returncode, again.stdout) == (0, "Nothing to purge.\n")


def test_purge_state_removes_only_that_state(queue: Queue, tmp_path: Path) -> None:
    finished_history(queue, tmp_path)
    processed = (queue.home / "processed.json").read_bytes()
    ok_log = (queue.home / "logs" / "ok.log").read_bytes()

    proc = queue.run("purge", "--state", "dead", "--yes")

    assert (proc.returncode, proc.stdout) == (0, "Purged 1 job(s) (1 dead).\n")
    assert queue.states() == {"ok": "completed", "cx": "cancelled", "pend": "pending"}
    assert not (queue.home / "logs" / "bad.log").exists()
    assert (queue.home / "logs" / "ok.log").read_bytes() == ok_log
    assert (queue.home / "processed.json").read_bytes() == processed

    proc = queue.run("purge", "--state", "dlq", "--yes")
    assert (proc.returncode, proc.stdout) == (0, "Nothing to purge.\n")
    proc = queue.run("purge", "--state", "cancelled", "--yes")
    assert (proc.returncode, proc.stdout) == (0, "Purged 1 job(s) (1 cancelled).\n")
    assert queue.states() == {"ok": "completed", "pend": "pending"}


def test_purge_state_pending_is_a_usage_error(queue: Queue, tmp_path: Path) -> None:
    finished_history(queue, tmp_path)
    before = file_bytes(queue)
    for state in ("pending", "processing", "failed", "bogus"):
        proc = queue.run("purge", "--state", state, "--yes")
        assert proc.returncode == 2, (state, proc.stderr)
    assert file_bytes(queue) == before


def test_purge_older_than_removes_only_jobs_that_finished_before_then(queue: Queue) -> None:
    now = time.time()
    day = 86400.0
    old_done = record("old-done", "completed", now - 11 * day, now - 10 * day, started_at=now - 10 * day - 5)
    new_done = record("new-done", "completed", now - 120, now - 60, started_at=now - 65)
    old_dead = record("old-dead", "dead", now - 9 * day, now - 8 * day, attempts=3)
    new_dead = record("new-dead", "dead", now - 7 * day, now - 6 * day, attempts=3)
    old_cx = record("old-cx", "cancelled", now - 31 * day, now - 30 * day, attempts=0)
    write_jobs(queue.home / "processed.json", [old_done, new_done])
    write_jobs(queue.home / "failed.json", [old_dead, new_dead])
    write_jobs(queue.home / "cancelled.json", [old_cx])
    # Active jobs that were created long ago: never touched, whatever their age.
    waiting = record("waiting", "pending", now - 40 * day)
    busy = {**record("busy", "processing", now - 40 * day, started_at=now - 39 * day), "pid": 999999999,
            "host": "elsewhere"}
    write_jobs(queue.home / "queue.json", [waiting, busy])
    logs = queue.home / "logs"
    logs.mkdir()
    ids = ["old-done", "new-done", "old-dead", "new-dead", "old-cx", "waiting", "busy"]
    for job_id in ids:
        (logs / f"{job_id}.log").write_text(f"output of {job_id}\n")
    queue_before = (queue.home / "queue.json").read_bytes()

    nothing = queue.run("purge", "--older-than", "60d", "--yes")
    assert (nothing.returncode, nothing.stdout) == (0, "Nothing to purge.\n")

    proc = queue.run("purge", "--older-than", "7d", "--yes")

    assert (proc.returncode, proc.stdout) == (0, "Purged 3 job(s) (1 completed, 1 dead, 1 cancelled).\n")
    assert queue.file("processed.json") == [new_done]
    assert queue.file("failed.json") == [new_dead]
    assert queue.file("cancelled.json") == []
    assert sorted(path.name for path in logs.iterdir() if path.is_file()) == sorted(
        f"{job_id}.log" for job_id in ("new-done", "new-dead", "waiting", "busy"))
    assert (queue.home / "queue.json").read_bytes() == queue_before

    proc = queue.run("purge", "--state", "completed", "--older-than", "30s", "--yes")
    assert (proc.returncode, proc.stdout) == (0, "Purged 1 job(s) (1 completed).\n")
    assert queue.file("processed.json") == [] and queue.file("failed.json") == [new_dead]


def test_purge_with_nothing_to_purge_says_so(queue: Queue) -> None:
    proc = queue.run("purge")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "Nothing to purge.\n", "")
    enqueue(queue, "pend", "echo later")
    proc = queue.run("purge", "--yes")
    assert (proc.returncode, proc.stdout) == (0, "Nothing to purge.\n")
    assert queue.states() == {"pend": "pending"}


def purge_at_a_terminal(queue: Queue, answer: bytes) -> subprocess.CompletedProcess:
    """`purge` with a pty as its stdin (a terminal), answering the prompt."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, SCRIPT, "purge"], env=queue.env(), cwd=str(queue.home),
                                stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.close(slave)
        slave = -1
        os.write(master, answer)
        out, err = proc.communicate(timeout=30)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())


def test_purge_at_a_terminal_asks_and_no_keeps_everything(queue: Queue, tmp_path: Path) -> None:
    finished_history(queue, tmp_path)
    before = file_bytes(queue)

    proc = purge_at_a_terminal(queue, b"n\n")

    assert proc.returncode == 1, proc.stderr
    assert "Delete 3 finished job(s) (1 completed, 1 dead, 1 cancelled) and their logs" in proc.stdout
    assert "[y/N]" in proc.stdout
    assert proc.stdout.endswith("Nothing was deleted.\n")
    assert file_bytes(queue) == before


def test_purge_at_a_terminal_yes_deletes(queue: Queue, tmp_path: Path) -> None:
    finished_history(queue, tmp_path)

    proc = purge_at_a_terminal(queue, b"y\n")

    assert proc.returncode == 0, proc.stderr
    assert "[y/N]" in proc.stdout
    assert proc.stdout.endswith("Purged 3 job(s) (1 completed, 1 dead, 1 cancelled).\n")
    assert queue.states() == {"pend": "pending"}
    assert not (queue.home / "logs" / "ok.log").exists()


def test_purge_at_a_terminal_ctrl_d_deletes_nothing_without_a_traceback(queue: Queue, tmp_path: Path) -> None:
    finished_history(queue, tmp_path)
    before = file_bytes(queue)

    proc = purge_at_a_terminal(queue, b"\x04")  # Ctrl+D at the start of a line: end of input

    assert file_bytes(queue) == before
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) <= 1, proc.stderr


# -- stats ------------------------------------------------------------------------------


def stats_history(queue: Queue) -> float:
    """A hand-built history with known answers; returns the base time (epoch seconds).

    Two hours ago: c1, c2 completed and d1 dead. In the last ten minutes: c3, c4 completed,
    x1 cancelled while running (the longest run, the most attempts: neither counts) and x2
    cancelled while pending. Backlog: two due pending jobs (the oldest created 60 s ago), one
    scheduled for later (created long ago) and one failed job waiting for its retry.
    """
    b = float(int(time.time()))
    write_jobs(queue.home / "processed.json", [
        # wait 2, run 3.0 (duration)
        record("c1", "completed", b - 7300, b - 7295, 1, first_started_at=b - 7298, started_at=b - 7298,
               duration=3.0),
        # wait 1 (first start), run 9.5: the duration field, not finished - started (10)
        record("c2", "completed", b - 7290, b - 7270, 2, first_started_at=b - 7289, started_at=b - 7280,
               duration=9.5),
        # wait 4 (one attempt: started_at), run 1.0 (no duration: finished - started)
        record("c3", "completed", b - 600, b - 595, 1, started_at=b - 596),
        # no wait (two attempts, no first start), run 6.25
        record("c4", "completed", b - 500, b - 483.5, 2, started_at=b - 490, duration=6.25),
    ])
    write_jobs(queue.home / "failed.json", [
        # wait 1, run 7.5, attempts 3; the last finish of the completed and dead jobs
        record("d1", "dead", b - 7260, b - 7240, 3, first_started_at=b - 7259, started_at=b - 7250,
               duration=7.5),
    ])
    write_jobs(queue.home / "cancelled.json", [
        # wait 8 (a wait counts for every finished job that started)
        record("x1", "cancelled", b - 400, b - 250, 4, first_started_at=b - 392, started_at=b - 391,
               duration=141.0),
        record("x2", "cancelled", b - 300, b - 295, 0),
    ])
    write_jobs(queue.home / "queue.json", [
        record("due-old", "pending", b - 60, attempts=0),
        record("due-new", "pending", b - 10, attempts=0),
        {**record("later", "pending", b - 1000, attempts=0), "run_at": iso(b + 3600)},
        {**record("retry", "failed", b - 2000, attempts=1, started_at=b - 1990), "run_at": iso(b + 3600)},
    ])
    return b


def test_stats_json_on_a_known_history_gives_exact_numbers(queue: Queue) -> None:
    b = stats_history(queue)

    data = queue.json("stats")
    age = data["backlog"].pop("oldest_due_age")

    assert data == {
        "window": {"since": iso(b - 7300), "until": iso(b - 483.5), "seconds": 6816.5},
        "finished": {"completed": 4, "dead": 1, "cancelled": 2},
        "success_rate": 0.8,
        "attempts": {"mean": 1.8, "max": 3},
        "run_time": {"p50": 6.25, "p95": 9.5, "max": 9.5},
        "queue_wait": {"p50": 2.0, "p95": 8.0},
        "throughput_per_minute": round(5 * 60 / 6816.5, 3),
        "backlog": {"pending": 3, "processing": 0, "failed": 1},
    }
    assert 60 <= age < 65, f"oldest_due_age {age}: the job created 60 s ago is the oldest due one"


def test_stats_since_counts_only_jobs_finished_in_the_window(queue: Queue) -> None:
    stats_history(queue)

    asked = time.time()
    data = queue.json("stats", "--since", "1h")
    age = data["backlog"].pop("oldest_due_age")
    window = data.pop("window")

    assert data == {
        "finished": {"completed": 2, "dead": 0, "cancelled": 2},
        "success_rate": 1.0,
        "attempts": {"mean": 1.5, "max": 2},
        "run_time": {"p50": 1.0, "p95": 6.25, "max": 6.25},
        "queue_wait": {"p50": 4.0, "p95": 8.0},
        "throughput_per_minute": round(2 * 60 / 3600, 3),
        "backlog": {"pending": 3, "processing": 0, "failed": 1},
    }
    assert window["seconds"] == 3600.0
    assert abs(epoch(window["until"]) - asked) < 5
    assert abs(epoch(window["since"]) - (asked - 3600)) < 5
    assert 60 <= age < 65


def test_stats_percentiles_are_nearest_rank(queue: Queue) -> None:
    b = float(int(time.time())) - 10000
    write_jobs(queue.home / "processed.json", [
        record(f"j{n:02d}", "completed", b + 100 * n, b + 100 * n + 50, 1, first_started_at=b + 100 * n + n / 2,
               started_at=b + 100 * n + n / 2, duration=float(n))
        for n in range(1, 21)])

    data = queue.json("stats")

    assert data["run_time"] == {"p50": 10.0, "p95": 19.0, "max": 20.0}
    assert data["queue_wait"] == {"p50": 5.0, "p95": 9.5}
    assert data["attempts"] == {"mean": 1.0, "max": 1}
    assert data["window"]["seconds"] == 100 * 19 + 50
    assert data["throughput_per_minute"] == round(20 * 60 / 1950, 3)


def test_stats_human_output_has_every_line(queue: Queue) -> None:
    b = stats_history(queue)

    lines = queue.ok("stats").splitlines()

    assert lines[0] == f"Window         : {iso(b - 7300)} to {iso(b - 483.5)}"
    assert lines[1:7] == [
        "Finished       : 4 completed, 1 dead, 2 cancelled",
        "Success rate   : 80.0% (completed / (completed + dead))",
        "Attempts/job   : mean 1.8, max 3",
        "Run time       : p50 6.250 s, p95 9.500 s, max 9.500 s",
        "Queue wait     : p50 2.000 s, p95 8.000 s",
        f"Throughput     : {round(5 * 60 / 6816.5, 3):g} jobs/min",
    ]
    assert re.fullmatch(r"Backlog        : 3 pending, 0 processing, 1 failed; oldest due job waiting 6\d\.\d{3} s",
                        lines[7]), lines[7]
    assert len(lines) == 8


def test_stats_on_an_empty_folder_gives_nulls_not_a_crash(queue: Queue) -> None:
    data = queue.json("stats")
    assert data == {
        "window": {"since": None, "until": None, "seconds": None},
        "finished": {"completed": 0, "dead": 0, "cancelled": 0},
        "success_rate": None,
        "attempts": {"mean": None, "max": None},
        "run_time": {"p50": None, "p95": None, "max": None},
        "queue_wait": {"p50": None, "p95": None},
        "throughput_per_minute": None,
        "backlog": {"pending": 0, "processing": 0, "failed": 0, "oldest_due_age": None},
    }
    proc = queue.run("stats")
    assert proc.returncode == 0 and proc.stderr == ""
    assert "Success rate   : - (completed / (completed + dead))" in proc.stdout.splitlines()
    assert "Throughput     : - jobs/min" in proc.stdout.splitlines()
    since = queue.run("stats", "--since", "1h", "--json")
    assert since.returncode == 0 and json.loads(since.stdout)["throughput_per_minute"] == 0.0
    enqueue(queue, "later", "echo later", "--delay", "1h")
    backlog = queue.json("stats")["backlog"]
    assert backlog == {"pending": 1, "processing": 0, "failed": 0, "oldest_due_age": None}, \
        "a job scheduled for later is not due"


# -- wait ---------------------------------------------------------------------------


def test_wait_returns_0_once_every_job_has_completed(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    enqueue(queue, "w1", "sleep 0.3; echo one")
    enqueue(queue, "w2", "sleep 0.6; echo two")
    worker = queue.start_worker("--count", "2", log=tmp_path / "worker.out")
    try:
        proc = queue.run("wait", "w1", "w2", "--timeout", "20")
        states = queue.states()
    finally:
        stop_worker(queue, worker)
    assert (proc.returncode, proc.stdout) == (0, "All 2 job(s) completed.\n"), proc.stderr
    assert states == {"w1": "completed", "w2": "completed"}


def test_wait_returns_1_when_a_job_ends_dead(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    enqueue(queue, "good", "sleep 0.2")
    enqueue(queue, "bad", "exit 3", "--max-retries", "1")
    worker = queue.start_worker("--count", "2", log=tmp_path / "worker.out")
    try:
        proc = queue.run("wait", "good", "bad", "--timeout", "20")
    finally:
        stop_worker(queue, worker)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == "2 job(s) finished: 1 completed, 1 dead, 0 cancelled.\n"
    assert queue.states() == {"good": "completed", "bad": "dead"}


def test_wait_returns_1_when_a_job_it_waits_for_is_cancelled(queue: Queue, tmp_path: Path) -> None:
    enqueue(queue, "doomed", "echo never")
    err = tmp_path / "wait.err"
    with open(err, "wb") as err_file:
        waiter = popen(queue, "wait", "doomed", "--timeout", "20", stderr=err_file)
    queue.ok("cancel", "doomed")
    cancelled = time.monotonic()
    out, _ = waiter.communicate(timeout=20)
    assert waiter.returncode == 1, err.read_text()
    assert time.monotonic() - cancelled < 5
    assert out.decode() == "1 job(s) finished: 0 completed, 0 dead, 1 cancelled.\n"


def test_wait_times_out_with_exit_124(queue: Queue) -> None:
    enqueue(queue, "stuck", "echo stuck")
    started = time.monotonic()
    proc = queue.run("wait", "stuck", "--timeout", "0.5")
    took = time.monotonic() - started
    assert proc.returncode == 124, proc.stderr
    assert proc.stdout.startswith("Timed out"), proc.stdout
    assert "1 pending" in proc.stdout
    assert 0.5 <= took < 5, f"wait --timeout 0.5 took {took:.2f} s"
    assert queue.states() == {"stuck": "pending"}


def test_wait_for_an_unknown_id_fails(queue: Queue) -> None:
    enqueue(queue, "real", "echo real")
    for ids in (["ghost"], ["real", "ghost"]):
        proc = queue.run("wait", *ids, "--timeout", "5")
        assert proc.returncode == 1, ids
        assert proc.stdout == ""
        assert len(proc.stderr.splitlines()) == 1 and "ghost" in proc.stderr


def test_wait_without_ids_and_nothing_active_returns_at_once(queue: Queue, tmp_path: Path) -> None:
    proc = queue.run("wait")
    assert (proc.returncode, proc.stdout) == (0, "No pending or processing jobs.\n")
    fast(queue)
    enqueue(queue, "old", "true")
    burst(queue, tmp_path / "worker.out")
    proc = queue.run("wait", "--timeout", "5")
    assert (proc.returncode, proc.stdout) == (0, "No pending or processing jobs.\n")


def test_wait_without_ids_waits_for_every_active_job(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    gate = tmp_path / "go"
    enqueue(queue, "gated", f"while [ ! -e {q(gate)} ]; do sleep 0.05; done", "--priority", "5")
    enqueue(queue, "plain", "echo plain")
    waiter = popen(queue, "wait", "--timeout", "30")
    worker = queue.start_worker(log=tmp_path / "worker.out")
    try:
        wait_running(queue, "gated", worker)
        assert waiter.poll() is None, "wait returned while a job was still pending"
        gate.touch()
        out, err = waiter.communicate(timeout=20)
        states = queue.states()
    finally:
        gate.touch()
        stop_worker(queue, worker)
    assert waiter.returncode == 0, err.decode()
    assert out.decode() == "All 2 job(s) completed.\n"
    assert states == {"gated": "completed", "plain": "completed"}
