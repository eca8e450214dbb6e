"""A job's log tells the truth: each attempt is framed by a byte count, written whole or not at
all, once, under a number of its own; late output and long outputs are shown in bounded memory.

Real worker processes on a real data folder: kill -9, SIGSTOP past the lease, Ctrl+C twice, a
recovery killed halfway, a file-size limit that makes writes fail like a full disk. Conditions
are waited for with deadlines, and every process a test starts is killed at its end.

These tests of folder mechanics use FolderStore's privates where they must.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (ROOT, SCRIPT, Queue, fast, job_of, kill_group, q, wait_for_state, wait_running,
                      wait_until)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses POSIX signals, rlimits and /proc")

TITLE = re.compile(r"^=== (attempt \d+|uncounted run)(, started \S+ by Worker-\d+ \(pid \d+ on .+\))?: (.*)$", re.M)
MB = 1024 * 1024


def enqueue(queue: Queue, job_id: str, command: str, *extra: str) -> None:
    queue.ok("enqueue", "--id", job_id, "--command", command, *extra)


def titles(queue: Queue, job_id: str, *extra: str) -> list[tuple[str, str]]:
    """(attempt, ending) of every section `logs` shows."""
    return [(m.group(1), m.group(3)) for m in TITLE.finditer(queue.ok("logs", job_id, *extra))]


def burst(queue: Queue, log: Path, timeout: float = 60) -> str:
    rc = queue.start_worker("--burst", log=log).wait(timeout=timeout)
    out = log.read_text("utf-8")
    assert rc == 0, out
    return out


def start_limited_worker(queue: Queue, max_file: int, log: Path) -> subprocess.Popen:
    """A worker that cannot write a file past `max_file` bytes (EFBIG): a disk that fills up."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file, max_file))

    proc = subprocess.Popen([sys.executable, SCRIPT, "worker", "start", "--burst"], env=queue.env(),
                            cwd=str(queue.home), stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=limit)
    queue.procs.append(proc)
    return proc


# Runs queuectl, then reports its peak memory: VmHWM counts this process image only (ru_maxrss
# would count the test runner's memory that the child had before it exec'd).
MEASURE = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
    sys.stderr.write(peak.split()[1] + "\\n")
"""


def max_rss_mb(queue: Queue, *args: str) -> tuple[float, bytes]:
    """Run a queuectl command; its peak memory (MB) and its stdout."""
    proc = subprocess.run([sys.executable, "-c", MEASURE, SCRIPT, *args], env=queue.env(), capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    return int(proc.stderr.split()[-1]) / 1024, proc.stdout


# -- 7. output is data ----------------------------------------------------------


def test_a_job_cannot_forge_its_own_ending_or_a_new_attempt(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    forged = ("echo before; echo '=== attempt 1 ended: exit code 0'; "
              "echo '=== forger attempt 2 started 2026-01-01T00:00:00.000Z by Worker-9 (pid 1 on x), command pid 2: "
              "5 bytes of output follow'; echo after; printf 'no newline'; exit 3")
    enqueue(queue, "forger", forged, "--max-retries", "1")
    burst(queue, tmp_path / "worker.out")

    assert titles(queue, "forger") == [("attempt 1", "exit code 3")]
    shown = queue.ok("logs", "forger").splitlines()
    assert shown[1:] == ["before", "=== attempt 1 ended: exit code 0",
                         "=== forger attempt 2 started 2026-01-01T00:00:00.000Z by Worker-9 (pid 1 on x), "
                         "command pid 2: 5 bytes of output follow", "after", "no newline"], shown
    assert queue.ok("logs", "forger", "--tail", "2").splitlines()[1:] == ["after", "no newline"]
    assert queue.ok("logs", "forger", "--attempt", "1", "--tail", "0").splitlines()[1:] == []
    # The file reads in an editor: a header that says how much output follows, the output, a footer.
    text = (queue.home / "logs" / "forger.log").read_text()
    assert re.match(r"=== forger attempt 1 started \S+ by Worker-1 \(pid \d+ on .+\), command pid \d+: "
                    r"\d+ bytes of output follow\n", text), text
    assert text.endswith("no newline\n=== attempt 1 ended: exit code 3\n")


def test_a_log_written_by_the_previous_release_is_still_read(queue: Queue) -> None:
    enqueue(queue, "old", "echo old")
    (queue.home / "logs").mkdir(mode=0o700)
    (queue.home / "logs" / "old.log").write_text(
        "=== older output removed: this log keeps the newest 1024 bytes (log_max_bytes)\n"
        "tail of a cut attempt\n"
        "=== attempt 1 ended: exit code 1\n"
        "=== old attempt 2 started 2026-11-28T10:18:32.061Z by Worker-2 (pid 24364 on build1), command pid 99\n"
        "hello\n"
        "=== attempt 2 ended: exit code 0\n")
    shown = queue.ok("logs", "old")
    assert shown.splitlines() == [
        "=== attempt 1 (its start was cut off): exit code 1", "tail of a cut attempt",
        "=== attempt 2, started 2026-11-28T10:18:32.061Z by Worker-2 (pid 24364 on build1): exit code 0", "hello"]


# -- 8 and 3. a log that cannot be written ------------------------------------------


def test_a_full_disk_during_the_copy_leaves_no_partial_record_and_the_next_attempt_reads_whole(
        queue: Queue, tmp_path: Path) -> None:
    fast(queue, backoff_base=1, max_backoff=0.05)
    counter = tmp_path / "count"
    # Attempts 1 and 2 print 60 KB each and fail; attempt 3 prints one line and succeeds. Files stop at
    # 100 KB: the scratch file holds one attempt, but the log cannot take attempt 2 after attempt 1.
    enqueue(queue, "filler", f"n=$(($(cat {q(counter)} 2>/dev/null || echo 0) + 1)); echo $n > {q(counter)}; "
                             "if [ $n -ge 3 ]; then echo small; exit 0; fi; "
                             "yes 0123456789abcdef | head -c 60000; exit 1", "--max-retries", "3")
    out_path = tmp_path / "worker.out"
    worker = start_limited_worker(queue, 100_000, out_path)
    assert worker.wait(timeout=60) == 0, out_path.read_text()

    out = out_path.read_text()
    job = wait_for_state(queue, "filler", "completed")
    assert job["attempts"] == 3 and job["exit_code"] == 0 and "warning" not in job, job
    assert re.search(r"^Worker-1 warning: filler: its output could not be kept: File too large: \S+/logs/filler\.log$",
                     out, re.M), out
    assert "worker error" not in out, out
    data = (queue.home / "logs" / "filler.log").read_bytes()
    assert len(data) < 100_000
    assert titles(queue, "filler") == [("attempt 1", "exit code 1"), ("attempt 3", "exit code 0")]
    assert queue.ok("logs", "filler", "--attempt", "3").splitlines()[1:] == ["small"]
    assert data.endswith(b"small\n=== attempt 3 ended: exit code 0\n")


def test_a_removed_logs_folder_is_made_again_and_the_job_completes(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    worker = queue.start_worker(log=tmp_path / "worker.out")
    try:
        enqueue(queue, "first", "echo first")
        wait_for_state(queue, "first", "completed")
        subprocess.run(["rm", "-rf", str(queue.home / "logs")], check=True)
        enqueue(queue, "hello", "echo hello")
        job = wait_for_state(queue, "hello", "completed")
    finally:
        queue.ok("worker", "stop", "--wait", timeout=30)
        worker.wait(timeout=30)
    assert job["attempts"] == 1 and "warning" not in job, job
    assert (queue.home / "logs").stat().st_mode & 0o777 == 0o700
    assert queue.ok("logs", "hello").splitlines()[1:] == ["hello"]


def test_output_that_cannot_be_kept_is_a_warning_and_the_job_keeps_its_result(
        queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    out_path = tmp_path / "worker.out"
    worker = queue.start_worker(log=out_path)
    try:
        enqueue(queue, "first", "echo first")
        wait_for_state(queue, "first", "completed")
        subprocess.run(["rm", "-rf", str(queue.home / "logs")], check=True)
        (queue.home / "logs").write_text("not a folder")  # nothing can be written under it, even by root
        enqueue(queue, "hello", "echo hello")
        enqueue(queue, "bad", "echo oops; exit 4", "--max-retries", "1")
        hello = wait_for_state(queue, "hello", "completed")
        bad = wait_for_state(queue, "bad", "dead")
        (queue.home / "logs").unlink()
        enqueue(queue, "after", "echo after")
        wait_for_state(queue, "after", "completed")
    finally:
        queue.ok("worker", "stop", "--wait", timeout=30)
        worker.wait(timeout=30)
    out = out_path.read_text()
    assert hello["attempts"] == 1 and hello["output"] == "hello\n", hello
    assert re.fullmatch(r"its output could not be kept: File exists: \S+/logs", hello["warning"]), hello
    assert bad["error"] == "exit code 4" and "could not be kept" in bad["warning"], bad
    assert re.search(r"^Worker-1 warning: hello: its output could not be kept", out, re.M), out
    assert re.search(r"^Worker-1 finished: hello$", out, re.M), out
    assert "worker error" not in out, out
    assert queue.ok("logs", "after").splitlines()[1:] == ["after"]


# -- 2. a recovery that dies halfway ---------------------------------------------------


RECOVER_AND_DIE = """
import os, sys, time
sys.path.insert(0, {root!r})
import queuectl

def die_before_saving(self, durable=True):
    open({flag!r}, "w").close()
    time.sleep(120)  # killed here: what it decided never reaches queue.json

queuectl.FolderStore._save_queue = die_before_saving
queuectl.FolderStore({home!r}).recover_orphans()
"""


def test_a_recovery_killed_before_it_saved_leaves_the_evidence_and_the_run_is_counted_once(
        queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    trace = tmp_path / "runs"
    enqueue(queue, "victim", f"echo run >> {q(trace)}; echo partial output; "
                             f"if [ $(wc -l < {q(trace)}) -ge 2 ]; then echo done; else exec sleep 60; fi")
    worker_a = queue.start_worker(log=tmp_path / "a.out")
    wait_running(queue, "victim", worker_a)
    os.kill(worker_a.pid, signal.SIGKILL)
    worker_a.wait(timeout=10)

    # Recoverer B: kills A's command, copies its output into the log, and is killed before it saves.
    flag = tmp_path / "b-reached-the-save"
    recoverer = subprocess.Popen([sys.executable, "-c", RECOVER_AND_DIE.format(
        root=str(ROOT), flag=str(flag), home=str(queue.home))], start_new_session=True)
    queue.procs.append(recoverer)
    wait_until(flag.exists, 15, what="the recoverer to reach its save")
    kill_group(recoverer)
    assert job_of(queue, "victim")["state"] == "processing", "B's decision must not have reached the queue"

    burst(queue, tmp_path / "c.out")  # C recovers again, from the same evidence, then runs the job
    job = wait_for_state(queue, "victim", "completed")
    runs = trace.read_text().splitlines()
    assert job["attempts"] == len(runs) == 2, (job, runs)
    assert titles(queue, "victim") == [("attempt 1", "the worker died"), ("attempt 2", "exit code 0")]
    log = (queue.home / "logs" / "victim.log").read_text()
    assert log.count("partial output") == 2 and len(re.findall(r"^=== victim attempt 1 started", log, re.M)) == 1
    assert not list((queue.home / "workers").glob("*.out")), "the evidence goes once the decision is saved"


# A recovery in which worker A (pid {victim}) dies for real just after the recovery's look number
# {look} at whether it is alive (if it looks that often).
RECOVER_WHILE_A_DIES = """
import os, signal, sys
sys.path.insert(0, {root!r})
import queuectl

looks = 0
real_pid_alive = queuectl.pid_alive

def pid_alive(pid, platform=sys.platform):
    global looks
    alive = real_pid_alive(pid, platform)
    if pid == {victim} and alive:
        looks += 1
        if looks == {look}:
            os.kill(pid, signal.SIGKILL)
            while real_pid_alive(pid, platform):
                pass
    return alive

queuectl.pid_alive = pid_alive
store = queuectl.FolderStore({home!r})
with store._locked():
    store._load_queue()
    store._recover(store.config(), queuectl.now_ts(), None)
"""


@pytest.mark.parametrize("look", [1, 2, 3])
def test_a_worker_that_dies_while_another_recovers_has_every_run_counted(
        queue: Queue, tmp_path: Path, look: int) -> None:
    """One recovery judges each worker once: A dying halfway through it must not get some of its
    jobs taken and the scratch files removed that its other jobs' runs are counted by."""
    fast(queue)
    for job_id in ("one", "two"):
        trace = tmp_path / f"runs-{job_id}"
        enqueue(queue, job_id, f"echo run >> {q(trace)}; "
                               f"if [ $(wc -l < {q(trace)}) -ge 2 ]; then echo done; else exec sleep 60; fi")
    worker_a = queue.start_worker("--count", "2", log=tmp_path / "a.out")
    for job_id in ("one", "two"):
        wait_running(queue, job_id, worker_a)
        wait_until((tmp_path / f"runs-{job_id}").exists, 15, what=f"{job_id} to start")

    recoverer = subprocess.run([sys.executable, "-c", RECOVER_WHILE_A_DIES.format(
        root=str(ROOT), victim=worker_a.pid, look=look, home=str(queue.home))], capture_output=True, timeout=60)
    assert recoverer.returncode == 0, recoverer.stderr.decode()
    if worker_a.poll() is None:  # the recovery looked fewer times than that: A dies after it
        os.kill(worker_a.pid, signal.SIGKILL)
    worker_a.wait(timeout=10)

    burst(queue, tmp_path / "c.out")  # C recovers what is left, then runs both jobs again
    for job_id in ("one", "two"):
        job = wait_for_state(queue, job_id, "completed")
        runs = (tmp_path / f"runs-{job_id}").read_text().splitlines()
        assert job["attempts"] == len(runs) == 2, (job_id, job, runs)
        assert titles(queue, job_id) == [("attempt 1", "the worker died"), ("attempt 2", "exit code 0")]


# -- 9. late output ------------------------------------------------------------------


def test_late_output_shows_only_what_came_after_the_attempt_and_is_capped(queue: Queue, tmp_path: Path) -> None:
    fast(queue, log_max_bytes=4096)
    enqueue(queue, "leaver", "echo own output; (sleep 0.5; seq -f 'late %g' 1 20000; echo late end) &")
    burst(queue, tmp_path / "worker.out")
    late_files = wait_until(lambda: list((queue.home / "logs" / "late").glob("leaver.1.*late.log")), 10,
                            what="the late output file")
    wait_until(lambda: b"late end" in late_files[0].read_bytes(), 15, what="the leftover process to finish")

    shown = queue.ok("logs", "leaver")
    own, _, late = shown.partition("=== output written after attempt 1 ended, by processes it left running:\n")
    assert own.splitlines()[1:] == ["own output"], shown[:300]
    lines = late.splitlines()
    assert re.fullmatch(r"=== \d+ bytes of older output removed \(log_max_bytes\)", lines[0]), lines[:2]
    assert re.fullmatch(r"late \d+", lines[1]) and lines[-2:] == ["late 20000", "late end"], lines[:2]
    assert len(late.encode()) <= 4096 + 100
    assert "own output" not in late and "attempt 1 started" not in late
    assert queue.ok("logs", "leaver", "--tail", "1").splitlines()[-1] == "late end"


def test_late_output_is_kept_within_log_max_bytes_on_disk_by_any_running_worker(queue: Queue, tmp_path: Path) -> None:
    """The leftover process holds the file open and writes at its own offset: a running worker
    frees the blocks before the newest log_max_bytes in place (Linux), so the disk use stays
    capped and the process writes on, unaware. The worker that ran the attempt has exited: any
    worker does it."""
    fast(queue, log_max_bytes=65536)
    gate = tmp_path / "gate"
    enqueue(queue, "spewer", f"echo own output; (sleep 0.3; head -c 4000000 /dev/zero | tr '\\0' x; "
                             f"while [ ! -e {q(gate)} ]; do sleep 0.05; done; echo; echo late end) &")
    burst(queue, tmp_path / "burst.out")  # runs the attempt, retires its scratch file and exits
    worker = queue.start_worker(log=tmp_path / "worker.out")
    try:
        late = wait_until(lambda: list((queue.home / "logs" / "late").glob("spewer.1.*late.log")), 10,
                          what="the late output file")[0]
        wait_until(lambda: late.stat().st_size >= 4_000_000, 20, what="4 MB of late output")
        wait_until(lambda: late.stat().st_blocks * 512 <= 65536 + 2 * 4096, 15,
                   what=f"the worker to free the late output's older blocks ({late.stat().st_blocks * 512} bytes used)")
        gate.touch()
        wait_until(lambda: late.read_bytes().endswith(b"late end\n"), 10, what="the leftover process to finish")
    finally:
        gate.touch()
        queue.ok("worker", "stop", "--wait")
        worker.wait(timeout=30)
    assert late.stat().st_size > 4_000_000, "the file keeps its size: the writer's offset is untouched"
    shown = queue.ok("logs", "spewer").split("by processes it left running:\n")[1]
    assert "\0" not in shown and shown.endswith("x\nlate end\n"), shown[-100:]
    removed, _, rest = shown.partition("\n")
    assert re.fullmatch(r"=== (\d+) bytes of older output removed \(log_max_bytes\)", removed), removed
    assert int(removed.split()[1]) + len(rest) == late.stat().st_size - int(late.name.split(".")[2]), \
        "the bytes removed and shown add up to all the late output"
    assert 60_000 <= len(rest) <= 65536


# -- 10. one attempt number, one section -------------------------------------------------


def test_a_worker_suspended_past_its_lease_writes_no_second_section_for_its_attempt(
        queue: Queue, tmp_path: Path) -> None:
    fast(queue, lease_timeout=2)
    mark = tmp_path / "mark"
    enqueue(queue, "napper", f"if [ -e {q(mark)} ]; then echo second; else touch {q(mark)}; echo first; "
                             "exec sleep 60; fi")
    worker = queue.start_worker(log=tmp_path / "worker.out")
    try:
        wait_running(queue, "napper", worker)
        os.kill(worker.pid, signal.SIGSTOP)
        # Past the lease, any command recovers its job (and kills its command).
        wait_until(lambda: queue.ok("status") and job_of(queue, "napper")["state"] == "pending", 15,
                   interval=0.2, what="the suspended worker's job to be recovered")
        os.kill(worker.pid, signal.SIGCONT)  # its command's result (-9) is stale: not recorded, not logged
        job = wait_for_state(queue, "napper", "completed")
    finally:
        os.kill(worker.pid, signal.SIGCONT)
        queue.ok("worker", "stop", "--wait", timeout=30)
        worker.wait(timeout=30)
    assert job["attempts"] == 2, job
    assert titles(queue, "napper") == [("attempt 1", "the worker died"), ("attempt 2", "exit code 0")]


def test_a_run_interrupted_by_ctrl_c_twice_does_not_reuse_the_next_attempts_number(
        queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    mark = tmp_path / "mark"
    enqueue(queue, "stopped", f"if [ -e {q(mark)} ]; then echo second; else touch {q(mark)}; echo first; "
                              "exec sleep 60; fi")
    worker = queue.start_worker(log=tmp_path / "worker.out")
    wait_running(queue, "stopped", worker)

    def interrupted() -> bool:  # Ctrl+C until it exits: the first stops gracefully, a later one kills
        os.killpg(worker.pid, signal.SIGINT)
        try:
            worker.wait(timeout=0.3)
        except subprocess.TimeoutExpired:
            return False
        return True

    wait_until(interrupted, 15, interval=0, what="the worker to exit after Ctrl+C twice")
    assert worker.returncode == 130
    assert job_of(queue, "stopped")["attempts"] == 0
    burst(queue, tmp_path / "again.out")
    job = wait_for_state(queue, "stopped", "completed")
    assert job["attempts"] == 1
    assert titles(queue, "stopped") == [("uncounted run", "interrupted by Ctrl+C; not counted as an attempt"),
                                        ("attempt 1", "exit code 0")]
    assert queue.ok("logs", "stopped", "--attempt", "1").splitlines()[1:] == ["second"]


# -- 12. long outputs in bounded memory ----------------------------------------------------


def test_logs_reads_a_huge_output_in_bounded_memory_while_it_runs_and_after(queue: Queue, tmp_path: Path) -> None:
    fast(queue, log_max_bytes=80 * MB)
    go = tmp_path / "go"
    line = "x" * 999
    enqueue(queue, "huge", f"yes {line} | head -c {60 * MB}; echo; echo last line; "
                           f"while [ ! -e {q(go)} ]; do sleep 0.05; done")
    worker = queue.start_worker(log=tmp_path / "worker.out")
    try:
        job = wait_running(queue, "huge", worker)
        import queuectl

        scratch = Path(queuectl.FolderStore(str(queue.home))._live_output(job))
        wait_until(lambda: scratch.stat().st_size > 60 * MB, 30, what="the job to print 60 MB")
        running_rss, out = max_rss_mb(queue, "logs", "huge", "--tail", "2")
        shown = out.decode().splitlines()
        assert len(shown) == 3 and shown[0].endswith(": running") and shown[2] == "last line", out[-200:]
        go.touch()
        wait_for_state(queue, "huge", "completed", timeout=30)
    finally:
        go.touch()
        queue.ok("worker", "stop", "--wait", timeout=30)
        worker.wait(timeout=30)
    finished_rss, out = max_rss_mb(queue, "logs", "huge", "--tail", "1")
    assert out.decode().splitlines()[1:] == ["last line"]
    streamed_rss, out = max_rss_mb(queue, "logs", "huge")
    assert len(out) > 60 * MB and out.endswith(b"last line\n")
    assert max(running_rss, finished_rss, streamed_rss) < 45, (running_rss, finished_rss, streamed_rss)


def test_logs_follow_with_tail_starts_at_the_last_lines_printed_so_far(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    go = tmp_path / "go"
    enqueue(queue, "tailed", f"seq 1 100000; while [ ! -e {q(go)} ]; do sleep 0.05; done; echo after")
    worker = queue.start_worker(log=tmp_path / "worker.out")
    try:
        job = wait_running(queue, "tailed", worker)
        import queuectl

        scratch = Path(queuectl.FolderStore(str(queue.home))._live_output(job))
        wait_until(lambda: scratch.read_bytes().endswith(b"\n100000\n"), 15, what="the job to print its lines")
        follow = subprocess.Popen([sys.executable, SCRIPT, "logs", "tailed", "--follow", "--tail", "2"],
                                  env=queue.env(), stdout=subprocess.PIPE, start_new_session=True)
        queue.procs.append(follow)
        first = [follow.stdout.readline() for _ in range(3)]
        go.touch()
        rest = follow.communicate(timeout=20)[0]
    finally:
        go.touch()
        queue.ok("worker", "stop", "--wait", timeout=30)
        worker.wait(timeout=30)
    assert first[0].endswith(b": running\n") and first[1:] == [b"99999\n", b"100000\n"], first
    assert rest == b"after\n=== attempt 1 ended: exit code 0\n", rest


def test_a_record_cut_short_by_a_crash_is_replaced_by_the_next_one_not_glued_to(queue: Queue, tmp_path: Path) -> None:
    fast(queue, backoff_base=2, max_backoff=2)
    mark = tmp_path / "mark"
    enqueue(queue, "again", f"if [ -e {q(mark)} ]; then echo second; else touch {q(mark)}; echo first; exit 1; fi",
            "--max-retries", "2")
    worker = queue.start_worker("--burst", log=tmp_path / "worker.out")
    wait_for_state(queue, "again", "failed")
    log = queue.home / "logs" / "again.log"
    data = log.read_bytes()
    log.write_bytes(data[:-10])  # what a writer killed in the middle of its footer leaves
    assert titles(queue, "again")[0][1] == "its record is cut short: the log ends inside it"
    assert worker.wait(timeout=30) == 0
    assert titles(queue, "again") == [("attempt 2", "exit code 0")]
    assert log.read_bytes().endswith(b"second\n=== attempt 2 ended: exit code 0\n")
