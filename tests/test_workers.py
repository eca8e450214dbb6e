"""Workers as a user meets them: real `queuectl worker start` processes on a real data folder.

Every test drives queuectl through its command line, waits for conditions with a deadline
(never a fixed sleep hoping a worker finished), and leaves no process running.
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
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import (SCRIPT, Queue, fast, job_of, job_snapshot, kill_leftover, process_gone, q, read_pid,
                      wait_for_state, wait_running, wait_until)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals and process groups")

PY = shlex.quote(sys.executable)


# -- helpers ------------------------------------------------------------------


def enqueue(queue: Queue, job_id: str, command: str, *extra: str) -> None:
    queue.ok("enqueue", "--id", job_id, "--command", command, *extra)


def enqueue_many(queue: Queue, jobs: list[dict[str, Any]]) -> None:
    path = queue.home.parent / "jobs.jsonl"
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs), "utf-8")
    queue.ok("enqueue", "--file", str(path))


def completed_count(queue: Queue) -> int:
    """Jobs in processed.json, read without the lock (-1 when caught mid-append)."""
    jobs = job_snapshot(queue)
    return -1 if jobs is None else sum(job["state"] == "completed" for job in jobs.values())


def nothing_processing(queue: Queue) -> None:
    processing = [job["id"] for job in queue.file("queue.json") if job["state"] == "processing"]
    assert processing == [], f"jobs left in processing: {processing}"


def finish(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """Wait for a worker to exit on its own, within a deadline."""
    return proc.wait(timeout=timeout)


def attempt_starts(queue: Queue, job_id: str) -> list[float]:
    """Start times of every attempt, from the `=== [ID] attempt N started TIME` headers of its log."""
    text = (queue.home / "logs" / f"{job_id}.log").read_text("utf-8")
    stamps = re.findall(r"^=== (?:\S+ )?attempt (\d+) started (\S+)", text, re.M)
    assert [int(n) for n, _ in stamps] == list(range(1, len(stamps) + 1)), text
    return [datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() for _, stamp in stamps]


def lines_of(path: Path) -> list[str]:
    return path.read_text("utf-8").split() if path.exists() else []


# -- one job, start to finish -----------------------------------------------------


def test_a_job_that_succeeds_is_reported_stored_and_logged(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    enqueue(queue, "job1", "echo Hello World")
    out_path = tmp_path / "worker.out"

    rc = finish(queue.start_worker("--burst", log=out_path))

    out = out_path.read_text("utf-8")
    assert rc == 0, out
    lines = out.splitlines()
    for line in ("Worker-1 started.", "Started 1 worker(s).", "Worker-1 executing: echo Hello World (attempt 1)",
                 "Hello World", "Worker-1 finished: job1", "All workers stopped gracefully."):
        assert line in lines, f"missing {line!r} in worker output:\n{out}"
    assert lines.index("Started 1 worker(s).") < lines.index("Worker-1 executing: echo Hello World (attempt 1)")
    assert lines.index("Hello World") < lines.index("Worker-1 finished: job1")
    assert lines[-2] == "All workers stopped gracefully."
    assert re.fullmatch(r"Summary: 1 completed, 0 failed attempt\(s\), 0 dead, 0 cancelled in \d+\.\d s\.", lines[-1])

    [job] = queue.file("processed.json")
    assert job["id"] == "job1" and job["state"] == "completed"
    assert job["exit_code"] == 0 and job["attempts"] == 1
    assert job["output"] == "Hello World\n"
    assert queue.file("queue.json") == []
    assert "Hello World\n" in (queue.home / "logs" / "job1.log").read_text("utf-8")


# -- retries, backoff, the DLQ -----------------------------------------------------


def test_a_failing_job_is_retried_with_exponential_backoff_then_dead(queue: Queue, tmp_path: Path) -> None:
    fast(queue, backoff_base=2, max_retries=3)
    enqueue(queue, "flaky", "echo trying; exit 3")
    enqueue(queue, "once", "exit 1", "--max-retries", "0")
    out_path = tmp_path / "worker.out"

    rc = finish(queue.start_worker("--burst", "--count", "2", log=out_path), timeout=40)

    out = out_path.read_text("utf-8")
    assert rc == 0, out
    dead = {job["id"]: job for job in queue.file("failed.json")}
    assert set(dead) == {"flaky", "once"}, out
    assert dead["flaky"]["state"] == "dead" and dead["flaky"]["attempts"] == 3
    assert dead["flaky"]["exit_code"] == 3 and "exit code 3" in dead["flaky"]["error"]
    assert dead["flaky"]["output"] == "trying\n"
    assert dead["once"]["attempts"] == 1, "max_retries 0 must behave like 1: one attempt, then the DLQ"
    assert queue.file("queue.json") == [] and queue.file("processed.json") == []
    assert "failed: flaky (exit code 3); moved to the DLQ after 3 attempt(s)" in out

    starts = attempt_starts(queue, "flaky")
    assert len(starts) == 3
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    assert 1.9 <= gaps[0] <= 3.0, f"first retry came after {gaps[0]:.2f} s, expected about 2 s"
    assert 3.9 <= gaps[1] <= 5.5, f"second retry came after {gaps[1]:.2f} s, expected about 4 s"
    assert len(attempt_starts(queue, "once")) == 1


def test_dlq_retry_runs_a_dead_job_again_until_it_completes(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    marker = tmp_path / "ready"
    enqueue(queue, "needs-marker", f"test -e {q(marker)} && echo found it", "--max-retries", "1")
    assert finish(queue.start_worker("--burst", log=tmp_path / "first.out")) == 0
    assert queue.states() == {"needs-marker": "dead"}

    marker.touch()
    assert "Requeued job: needs-marker" in queue.ok("dlq", "retry", "needs-marker")
    [requeued] = queue.file("queue.json")
    assert requeued["state"] == "pending" and requeued["attempts"] == 0

    assert finish(queue.start_worker("--burst", log=tmp_path / "second.out")) == 0
    assert queue.states() == {"needs-marker": "completed"}
    [job] = queue.file("processed.json")
    assert job["attempts"] == 1 and job["exit_code"] == 0 and job["output"] == "found it\n"
    assert queue.file("failed.json") == []


# -- which job runs when --------------------------------------------------------------


def test_higher_priority_runs_first_then_the_oldest(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    results = tmp_path / "order.txt"
    enqueue_many(queue, [{"id": name, "command": f"echo {name} >> {q(results)}", "priority": prio}
                         for name, prio in [("low", 0), ("high", 10), ("mid", 5), ("high2", 10), ("neg", -1)]])

    assert finish(queue.start_worker("--burst", log=tmp_path / "worker.out")) == 0

    assert lines_of(results) == ["high", "high2", "mid", "low", "neg"]


def test_burst_worker_does_not_run_a_job_scheduled_later(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    results = tmp_path / "ran.txt"
    enqueue(queue, "now", f"echo now >> {q(results)}")
    enqueue(queue, "in-a-minute", f"echo in-a-minute >> {q(results)}", "--delay", "60s")
    enqueue(queue, "at-a-time", f"echo at-a-time >> {q(results)}", "--run-at",
            datetime.fromtimestamp(time.time() + 3600).astimezone().isoformat())

    started = time.monotonic()
    assert finish(queue.start_worker("--burst", log=tmp_path / "worker.out"), timeout=20) == 0
    assert time.monotonic() - started < 10, "a burst worker must exit, not wait for a job due later"

    assert lines_of(results) == ["now"]
    states = queue.states()
    assert states == {"now": "completed", "in-a-minute": "pending", "at-a-time": "pending"}
    for job in queue.file("queue.json"):
        assert job["attempts"] == 0 and job.get("run_at")


def test_delayed_job_runs_once_its_delay_has_passed(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    ran_at = tmp_path / "ran_at.txt"
    worker = queue.start_worker(log=tmp_path / "worker.out")
    before = time.time()
    enqueue(queue, "later", f"{PY} -c 'import time; print(time.time())' > {q(ran_at)}", "--delay", "2s")

    wait_for_state(queue, "later", "completed", timeout=15)

    ran = float(ran_at.read_text())
    assert ran - before >= 2.0, f"ran {ran - before:.2f} s after enqueue; --delay 2s was not honoured"
    assert ran - before <= 5.0, f"ran {ran - before:.2f} s after enqueue; far later than its delay"
    queue.ok("worker", "stop", "--wait")
    assert finish(worker) == 0


# -- timeouts -----------------------------------------------------------------------


def test_timeout_kills_the_whole_process_tree_and_counts_as_a_failed_attempt(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    pid_file = tmp_path / "grandchild.pid"
    inner = f"sleep 30 & echo $! > {q(pid_file)}; wait"
    enqueue(queue, "slow", f"sh -c {shlex.quote(inner)}", "--timeout", "1", "--max-retries", "1")

    started = time.monotonic()
    worker = queue.start_worker("--burst", log=tmp_path / "worker.out")
    try:
        assert finish(worker, timeout=20) == 0
        assert time.monotonic() - started < 15
        grandchild = read_pid(pid_file)
        assert grandchild, "the command never started its grandchild"
        wait_until(lambda: process_gone(grandchild), 5, what=f"grandchild pid {grandchild} to be killed")
    finally:
        kill_leftover(read_pid(pid_file))

    [job] = queue.file("failed.json")
    assert job["id"] == "slow" and job["state"] == "dead"
    assert job["attempts"] == 1
    assert "timed out after 1 s" in job["error"]


# -- many workers, many jobs ------------------------------------------------------------


def test_two_processes_of_four_threads_run_200_jobs_exactly_once(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    results = tmp_path / "results.txt"
    ids = [f"j{n:03d}" for n in range(200)]
    workers = [queue.start_worker("--count", "4", log=tmp_path / f"worker{n}.out") for n in (1, 2)]
    wait_until(lambda: {w["pid"] for w in queue.json("status")["workers"]} == {w.pid for w in workers}, 10,
               what="both workers to be up")

    # $PPID of the job's shell is the worker process that ran it.
    enqueue_many(queue, [{"id": job_id, "command": f"sleep 0.02; echo {job_id} $PPID >> {q(results)}"}
                         for job_id in ids])
    wait_until(lambda: completed_count(queue) == 200, 60, what="all 200 jobs to complete")
    queue.ok("worker", "stop", "--wait")
    for worker in workers:
        assert finish(worker) == 0

    runs = [line.split() for line in results.read_text().splitlines()]
    counts = Counter(job_id for job_id, _ in runs)
    assert sorted(counts) == ids
    assert [job_id for job_id, n in counts.items() if n != 1] == [], "a job ran more than once"
    processed = queue.file("processed.json")
    assert len(processed) == 200
    assert all(job["state"] == "completed" and job["attempts"] == 1 for job in processed)
    assert queue.file("queue.json") == [] and queue.file("failed.json") == []
    assert {int(pid) for _, pid in runs} == {worker.pid for worker in workers}, "both processes should run jobs"


def test_enqueueing_from_four_processes_while_a_worker_runs_loses_nothing(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    results = tmp_path / "results.txt"
    worker = queue.start_worker("--count", "2", log=tmp_path / "worker.out")
    loop = ('for i in $(seq 1 25); do '
            '"$PY" "$SCRIPT" enqueue --id "p$P-$i" --command "echo p$P-$i >> $RESULTS" >/dev/null || exit 1; '
            'done')
    enqueuers = []
    try:
        for p in range(1, 5):
            env = dict(queue.env(), PY=sys.executable, SCRIPT=SCRIPT, P=str(p), RESULTS=q(results))
            enqueuers.append(subprocess.Popen(["sh", "-c", loop], env=env, cwd=str(queue.home),
                                              stderr=subprocess.PIPE, start_new_session=True))
        for proc in enqueuers:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()
    finally:
        for proc in enqueuers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    ids = sorted(f"p{p}-{i}" for p in range(1, 5) for i in range(1, 26))
    wait_until(lambda: completed_count(queue) == 100, 30, what="all 100 jobs to complete")
    queue.ok("worker", "stop", "--wait")
    assert finish(worker) == 0

    assert sorted(lines_of(results)) == ids, "every job must run exactly once"
    assert sorted(job["id"] for job in queue.file("processed.json")) == ids
    assert all(job["attempts"] == 1 for job in queue.file("processed.json"))
    assert queue.file("queue.json") == []


# -- crashes ------------------------------------------------------------------------------


def test_a_job_of_a_killed_worker_returns_to_pending_and_finishes(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    first_pid = tmp_path / "first-attempt.pid"
    # The first attempt hangs (its pid is kept to clean up); the second one succeeds.
    command = (f"if [ -e {q(first_pid)} ]; then echo second attempt; "
               f"else echo $$ > {q(first_pid)}; exec sleep 30; fi")
    enqueue(queue, "k9", command, "--max-retries", "3")
    victim = queue.start_worker(log=tmp_path / "victim.out")
    rescuer_out = tmp_path / "rescuer.out"
    try:
        wait_running(queue, "k9", victim)
        wait_until(lambda: read_pid(first_pid), 10, what="the first attempt to start")
        rescuer = queue.start_worker(log=rescuer_out)
        wait_until(lambda: any(w["pid"] == rescuer.pid for w in queue.json("status")["workers"]), 10,
                   what="the second worker's heartbeat")

        killed = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
        wait_until(lambda: (job_of(queue, "k9") or {"pid": victim.pid}).get("pid") != victim.pid, 10,
                   what="the job to leave the dead worker")
        recovered_after = time.monotonic() - killed
        job = wait_for_state(queue, "k9", "completed", timeout=10)
        completed_after = time.monotonic() - killed
    finally:
        kill_leftover(read_pid(first_pid))

    assert recovered_after < 5, f"recovery took {recovered_after:.1f} s"
    assert completed_after < 5, f"the job completed {completed_after:.1f} s after the crash"
    assert job["attempts"] == 2, "the crashed attempt must count"
    assert job["output"] == "second attempt\n"
    queue.ok("worker", "stop", "--wait")
    assert finish(rescuer) == 0
    assert "Recovered job k9 from a dead worker" in rescuer_out.read_text(), "the other worker should recover it"
    nothing_processing(queue)


# -- stopping ------------------------------------------------------------------------------




def test_recovery_after_kill_9_takes_under_5_s_with_default_settings(queue: Queue, tmp_path: Path) -> None:
    """No config changes at all: poll_interval 0.5, lease_timeout 30."""
    pids = tmp_path / "pids"
    enqueue(queue, "slow", f"echo $$ >> {q(pids)}; exec sleep 30")
    victim = queue.start_worker()
    wait_running(queue, "slow", victim)
    rescuer = queue.start_worker("--count", "2")
    wait_until(lambda: any(w["pid"] == rescuer.pid for w in queue.json("status")["workers"]), 10,
               what="the second worker's heartbeat")
    killed = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    job = wait_until(lambda: (lambda j: j if j and j.get("pid") == rescuer.pid else None)(job_of(queue, "slow")),
                     10, what="the other worker to take the job over")
    took = time.monotonic() - killed
    try:
        assert took < 5, f"recovery took {took:.1f} s"
        assert job["attempts"] == 2
        # The claim is recorded before the command starts: wait for it before the workers stop.
        wait_until(lambda: len(lines_of(pids)) == 2, 10, what="the second run to start")
    finally:
        queue.cleanup()
        for pid in lines_of(pids):
            kill_leftover(int(pid))


def test_the_command_of_a_killed_worker_is_stopped_before_the_job_runs_again(queue: Queue, tmp_path: Path) -> None:
    """A command runs in its own session, so it outlives a worker killed with -9. Recovery must
    kill it before the job runs again: never two runs of one job at the same time."""
    fast(queue)
    trace = tmp_path / "trace"
    enqueue(queue, "twice", f"echo start $$ >> {q(trace)}; echo partial output; sleep 2; echo end $$ >> {q(trace)}")
    victim = queue.start_worker()
    wait_running(queue, "twice", victim)
    wait_until(lambda: len(lines_of(trace)) == 2, 10, what="the first attempt to start")
    first = lines_of(trace)[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    rescuer = queue.start_worker("--burst")
    assert finish(rescuer) == 0
    job = wait_for_state(queue, "twice", "completed")
    lines = trace.read_text().splitlines()
    assert f"end {first}" not in lines, f"the first attempt kept running after its worker died: {lines}"
    assert lines == [f"start {first}", lines[1], "end " + lines[1].split()[1]], lines
    assert job["attempts"] == 2
    log = (queue.home / "logs" / "twice.log").read_text()
    assert "partial output" in log and "the worker died" in log, "the killed attempt's output is kept in the log"



def test_jobs_claimed_ahead_are_handed_back_when_a_long_job_blocks_the_threads(queue: Queue, tmp_path: Path) -> None:
    """A worker claims short jobs ahead of its threads; when its only thread then runs a long
    job, another worker must not sit idle while those claimed jobs wait."""
    fast(queue)
    trace = tmp_path / "ran-by"
    short = [{"id": f"a{n}", "command": f"echo $PPID >> {q(trace)}"} for n in range(30)]
    long = [{"id": "long", "command": f"echo $PPID >> {q(trace)}; sleep 4"}]
    after = [{"id": f"b{n}", "command": f"echo $PPID >> {q(trace)}"} for n in range(30)]
    enqueue_many(queue, short + long + after)
    first = queue.start_worker("--count", "1")
    wait_running(queue, "long", first)
    second = queue.start_worker()
    wait_until(lambda: len(lines_of(trace)) == 61, 15, what="every job to run")
    ran_by_second = [line for line in lines_of(trace) if line == str(second.pid)]
    assert len(ran_by_second) >= 20, f"the second worker ran {len(ran_by_second)} of the 30 later jobs"
    assert job_of(queue, "long")["state"] == "processing", "the later jobs ran while the long one still ran"
    queue.ok("worker", "stop", "--wait")
    assert finish(first) == 0 and finish(second) == 0
    assert completed_count(queue) == 61


def test_a_worker_keeps_going_through_a_damaged_config_and_runs_nothing_twice(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    trace = tmp_path / "trace"
    enqueue(queue, "steady", f"echo start >> {q(trace)}; sleep 2; echo end >> {q(trace)}")
    out = tmp_path / "worker.out"
    worker = queue.start_worker(log=out)
    wait_running(queue, "steady", worker)
    config = queue.home / "config.json"
    good = config.read_bytes()
    config.write_text('{"max_retries": ')
    wait_until(lambda: "retrying" in out.read_text(), 10, what="the worker to report the damaged file")
    assert worker.poll() is None, "the worker must not exit and leave its command running"
    config.write_bytes(good)
    job = wait_for_state(queue, "steady", "completed")
    assert job["attempts"] == 1
    assert lines_of(trace) == ["start", "end"]
    queue.ok("worker", "stop", "--wait")
    assert finish(worker) == 0


def test_worker_stop_lets_the_running_job_finish_then_the_worker_exits(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    enqueue(queue, "current", "sleep 1.5; echo finished")
    enqueue(queue, "next", "echo next")
    out_path = tmp_path / "worker.out"
    worker = queue.start_worker(log=out_path)
    wait_running(queue, "current", worker)

    stop = queue.run("worker", "stop")
    assert stop.returncode == 0 and "Asked 1 worker process(es) to stop" in stop.stdout
    rc = finish(worker, timeout=20)

    out = out_path.read_text()
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[-2] == "All workers stopped gracefully." and lines[-1].startswith("Summary: 1 completed,")
    assert queue.states() == {"current": "completed", "next": "pending"}
    [done] = queue.file("processed.json")
    assert done["exit_code"] == 0 and done["output"] == "finished\n"
    assert not (queue.home / "stop.flag").exists(), "the stop flag must be cleared"
    nothing_processing(queue)

    rc = finish(queue.start_worker("--burst", log=tmp_path / "again.out"))
    assert rc == 0 and queue.states()["next"] == "completed", "a new worker must not obey the old stop"


def test_a_stale_stop_flag_does_not_stop_a_new_worker(queue: Queue, tmp_path: Path) -> None:
    import queuectl

    fast(queue)
    queuectl.FolderStore(str(queue.home)).request_stop()  # as left by a stop whose worker then crashed
    assert (queue.home / "stop.flag").exists()
    enqueue(queue, "after-stop", "echo ran")

    assert finish(queue.start_worker("--burst", log=tmp_path / "worker.out")) == 0

    assert queue.states() == {"after-stop": "completed"}


def test_worker_stop_wait_returns_after_the_worker_has_exited(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    enqueue(queue, "busy", "sleep 1")
    worker = queue.start_worker(log=tmp_path / "worker.out")
    wait_running(queue, "busy", worker)

    # Reap the worker the moment it exits, as the shell that started it would: a zombie is no
    # worker, and a `stop --wait` that watches the pid must be able to see it go.
    reaper = threading.Thread(target=worker.wait, daemon=True)
    reaper.start()
    stop = queue.run("worker", "stop", "--wait", timeout=30)

    exited = worker.returncode is not None
    assert stop.returncode == 0, stop.stderr
    assert exited, "worker stop --wait returned while the worker process was still running"
    reaper.join(timeout=10)
    assert worker.returncode == 0
    assert queue.states() == {"busy": "completed"}
    assert not (queue.home / "stop.flag").exists()
    nothing_processing(queue)


def test_worker_stop_without_workers_says_none_run(queue: Queue) -> None:
    stop = queue.run("worker", "stop")
    assert stop.returncode == 0
    assert "No workers are running." in stop.stdout


# -- signals -------------------------------------------------------------------------------


def test_one_ctrl_c_finishes_the_running_job_then_exits(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    enqueue(queue, "sleeper", "sleep 2; echo woke")
    enqueue(queue, "waiting", "echo never")
    out_path = tmp_path / "worker.out"
    worker = queue.start_worker(log=out_path)
    wait_running(queue, "sleeper", worker)

    os.killpg(worker.pid, signal.SIGINT)  # what a terminal's Ctrl+C sends to the worker's group
    rc = finish(worker, timeout=20)

    out = out_path.read_text()
    assert rc == 0, out
    assert "All workers stopped gracefully." in out
    assert queue.states() == {"sleeper": "completed", "waiting": "pending"}
    [job] = queue.file("processed.json")
    assert job["exit_code"] == 0 and job["attempts"] == 1 and job["output"] == "woke\n"
    nothing_processing(queue)


def test_two_ctrl_c_kill_the_command_tree_and_return_the_job_uncounted(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    child_pid = tmp_path / "child.pid"
    enqueue(queue, "long", f"sleep 30 & echo $! > {q(child_pid)}; wait")
    out_path = tmp_path / "worker.out"
    worker = queue.start_worker(log=out_path)
    try:
        wait_running(queue, "long", worker)
        child = wait_until(lambda: read_pid(child_pid), 10, what="the command's child to start")

        started = time.monotonic()
        os.killpg(worker.pid, signal.SIGINT)
        # Signals of one kind are not queued: give the handler time to see the first one.
        time.sleep(0.3)
        os.killpg(worker.pid, signal.SIGINT)
        rc = finish(worker, timeout=15)
        assert time.monotonic() - started < 10, "the second Ctrl+C must not wait for the command"
        wait_until(lambda: process_gone(child), 5, what=f"the command's child pid {child} to be killed")
    finally:
        kill_leftover(read_pid(child_pid))

    assert rc == 130, out_path.read_text()
    [job] = queue.file("queue.json")
    assert job["id"] == "long" and job["state"] == "pending"
    assert job["attempts"] == 0, "an attempt interrupted by Ctrl+C must not count"
    assert queue.file("processed.json") == [] and queue.file("failed.json") == []
    nothing_processing(queue)


def test_sigterm_is_a_graceful_stop(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    enqueue(queue, "sleeper", "sleep 1.5; echo done")
    out_path = tmp_path / "worker.out"
    worker = queue.start_worker(log=out_path)
    wait_running(queue, "sleeper", worker)

    worker.send_signal(signal.SIGTERM)
    rc = finish(worker, timeout=20)

    assert rc == 0, out_path.read_text()
    assert "All workers stopped gracefully." in out_path.read_text()
    assert queue.states() == {"sleeper": "completed"}
    nothing_processing(queue)


# -- output, status --------------------------------------------------------------------------


def test_megabytes_of_output_do_not_stall_and_only_a_tail_is_kept(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    script = "import sys; sys.stdout.write('x' * 5000000 + '\\nEND\\n')"
    enqueue(queue, "chatty", f"{PY} -c {shlex.quote(script)}")
    out_path = tmp_path / "worker.out"

    assert finish(queue.start_worker("--burst", log=out_path), timeout=30) == 0

    [job] = queue.file("processed.json")
    assert job["exit_code"] == 0
    assert job["output"].endswith("\nEND\n")
    assert len(job["output"].encode()) <= 4096
    assert (queue.home / "logs" / "chatty.log").stat().st_size > 5_000_000
    assert out_path.stat().st_size < 20_000, "the worker's console should show a tail, not megabytes"


def test_status_json_shows_a_running_worker(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    worker = queue.start_worker("--count", "3", log=tmp_path / "worker.out")

    status = wait_until(lambda: (s := queue.json("status"))["workers"] and s, 10, what="the worker in status")

    [entry] = status["workers"]
    assert entry["pid"] == worker.pid and entry["threads"] == 3
    assert entry["host"] and entry["started_at"] and entry["heartbeat_at"]
    queue.ok("worker", "stop", "--wait")
    assert finish(worker) == 0
    assert queue.json("status")["workers"] == []
