"""Faults on the worker's own side, and the signals a terminal sends: real `worker start` processes.

A worker that cannot write its scratch files or heartbeat (a file where workers/ was, a full disk),
whose data folder was deleted, or whose terminal was closed must neither lose a result nor burn
the queue into the DLQ; and a stop it was asked for is announced at once.
"""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import (SCRIPT, Queue, fast, job_of, kill_leftover, process_gone, q, read_pid, wait_for_state,
                      wait_running, wait_until)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals, ptys and mounts")


def enqueue(queue: Queue, job_id: str, command: str, *extra: str) -> None:
    queue.ok("enqueue", "--id", job_id, "--command", command, *extra)


@pytest.fixture(autouse=True)
def open_the_gate(tmp_path: Path) -> Iterator[None]:
    """Whatever a test did, its gated commands end with it (none is left looping for ever)."""
    yield
    (tmp_path / "gate").touch()


def gated(started: Path, gate: Path) -> str:
    """A command that notes its start (one line per run), then waits for the test to open the gate."""
    return f"echo run >> {q(started)}; while [ ! -e {q(gate)} ]; do sleep 0.05; done"


def start_worker(queue: Queue, *args: str, tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    """A worker with stdout and stderr in separate files (to see which lines go to stderr)."""
    out, err = tmp_path / "worker.out", tmp_path / "worker.err"
    proc = subprocess.Popen([sys.executable, SCRIPT, "worker", "start", *args], env=queue.env(),
                            cwd=str(queue.home.parent), stdout=open(out, "wb"), stderr=open(err, "wb"),
                            start_new_session=True)
    queue.procs.append(proc)
    return proc, out, err


def replace_with_file(folder: Path) -> bool:
    """rm -rf the folder and put a regular file at its path (the worker may write into it meanwhile)."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.write_text("not a folder\n")
    except OSError:
        return False
    return True


def no_job_burnt(queue: Queue) -> None:
    """No job reached the DLQ or counted an attempt that never ran."""
    assert queue.file("failed.json") == []
    for job in queue.file("queue.json"):
        assert job["state"] == "pending" and job["attempts"] == 0, job


@pytest.fixture
def mount_tmpfs() -> Iterator:
    """mount(DIR): a 64 KB tmpfs at DIR (skipped where mounting is not allowed); unmounted at teardown."""
    mounted: list[Path] = []

    def mount(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(path)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last block."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


# -- 3. the worker's own files cannot be written ----------------------------------------------


def test_a_file_in_place_of_workers_sends_no_job_to_the_dlq_and_a_burst_worker_exits_1(
        queue: Queue, tmp_path: Path) -> None:
    fast(queue, max_retries=1)
    started, gate = tmp_path / "started", tmp_path / "gate"
    enqueue(queue, "first", gated(started, gate))
    worker, out, err = start_worker(queue, "--burst", "--count", "2", tmp_path=tmp_path)
    wait_running(queue, "first", worker)
    wait_until(lambda: replace_with_file(queue.home / "workers"), 10, what="workers/ to become a file")
    for n in range(3):  # the idle thread needs a scratch file of its own for these
        enqueue(queue, f"later{n}", "echo later")
    gate.touch()

    assert worker.wait(timeout=20) == 1, out.read_text() + err.read_text()
    message = err.read_text()
    assert "workers" in message and "Not a directory" in message, message
    assert "worker error" not in out.read_text() + message
    assert "Traceback" not in message
    assert queue.states() == {"first": "completed", "later0": "pending", "later1": "pending",
                              "later2": "pending"}
    no_job_burnt(queue)
    assert "executing: echo later" not in out.read_text(), "a job that never started was announced"


def test_a_worker_whose_workers_folder_was_deleted_makes_it_again_where_recovery_finds_its_jobs(
        queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    enqueue(queue, "first", "true")
    worker, out, err = start_worker(queue, tmp_path=tmp_path)
    wait_for_state(queue, "first", "completed")
    shutil.rmtree(queue.home / "workers")  # the worker's scratch file (kept for reuse) is gone with it
    started, gate = tmp_path / "started", tmp_path / "gate"
    enqueue(queue, "second", gated(started, gate))
    try:
        wait_running(queue, "second", worker)  # its scratch file is at its path again, with the attempt's header
        worker.kill()
        worker.wait(timeout=10)
        queue.ok("status")  # recovery: the attempt had started, so it counts, and its command is killed
    finally:
        gate.touch()  # no command left waiting, whatever happened
    job = job_of(queue, "second")
    assert job["state"] == "pending" and job["attempts"] == 1, job
    assert "died during attempt 1" in job["error"], job
    assert stat.S_IMODE((queue.home / "workers").stat().st_mode) == 0o700


def test_a_worker_that_cannot_renew_its_heartbeat_kills_its_command_before_its_lease_runs_out(
        queue: Queue, tmp_path: Path) -> None:
    fast(queue, lease_timeout=4)
    pid_file, gate = tmp_path / "command.pid", tmp_path / "gate"
    enqueue(queue, "long", f"echo $$ > {q(pid_file)}; while [ ! -e {q(gate)} ]; do sleep 0.05; done")
    worker, out, err = start_worker(queue, tmp_path=tmp_path)
    try:
        wait_running(queue, "long", worker)
        command = wait_until(lambda: read_pid(pid_file), 10, what="the command to write its pid")
        wait_until(lambda: replace_with_file(queue.home / "workers"), 10, what="workers/ to become a file")
        swapped = time.monotonic()
        wait_until(lambda: process_gone(command), 10, what="the worker to kill its command")
        # Others take a job over once its worker's heartbeat is older than the lease (4 s).
        assert time.monotonic() - swapped < 4.0, "the command outlived the lease"
        assert worker.wait(timeout=20) == 1, out.read_text() + err.read_text()
    finally:
        gate.touch()
    assert "heartbeat" in err.read_text() and "killed its running commands" in err.read_text(), err.read_text()
    job = job_of(queue, "long")
    assert job["state"] == "pending" and job["attempts"] == 0, job
    assert queue.file("failed.json") == []


@pytest.mark.parametrize("workers_elsewhere", [False, True], ids=["one-disk", "workers-on-another-disk"])
def test_a_burst_worker_on_a_full_disk_exits_1_with_the_reason_and_changes_no_job(
        queue: Queue, tmp_path: Path, mount_tmpfs, workers_elsewhere: bool) -> None:
    home = mount_tmpfs(tmp_path / "disk")
    if workers_elsewhere:  # its heartbeat and scratch files can be written; queue.json cannot
        mount_tmpfs(home / "workers")
    full = Queue(home)
    fast(full)
    for n in range(3):
        enqueue(full, f"job{n}", "echo hello")
    before = (home / "queue.json").read_bytes()
    fill(home)
    worker, out, err = start_worker(full, "--burst", tmp_path=tmp_path)

    assert worker.wait(timeout=30) == 1, out.read_text() + err.read_text()
    message = err.read_text()
    assert "No space left on device" in message and str(home) in message, message
    assert message.count("No space left on device") <= 2, message
    assert "executing" not in out.read_text()
    assert (home / "queue.json").read_bytes() == before
    assert not (home / "failed.json").exists()


def test_a_worker_whose_scratch_disk_is_full_stops_claiming_and_resumes_when_space_is_free(
        queue: Queue, tmp_path: Path, mount_tmpfs) -> None:
    fast(queue)
    workers = mount_tmpfs(queue.home / "workers")
    filler = fill(workers)
    for n in range(3):
        enqueue(queue, f"job{n}", "echo hello")
    worker, out, err = start_worker(queue, tmp_path=tmp_path)

    wait_until(lambda: "No space left on device" in err.read_text(), 15, what="the worker to say its disk is full")
    assert worker.poll() is None, "a long-running worker waits for the fault to clear"
    assert "workers" in err.read_text(), err.read_text()
    no_job_burnt(queue)
    assert "worker error" not in out.read_text() + err.read_text()

    filler.unlink()
    for n in range(3):
        wait_for_state(queue, f"job{n}", "completed", timeout=20)
    assert [job["attempts"] for job in queue.file("processed.json")] == [1, 1, 1]
    assert queue.file("failed.json") == []
    assert err.read_text().count("No space left on device") == 1, "the message is rate-limited"
    queue.ok("worker", "stop", "--wait")
    assert worker.wait(timeout=20) == 0


def test_a_burst_worker_whose_scratch_disk_is_full_exits_1_and_counts_no_attempt(
        queue: Queue, tmp_path: Path, mount_tmpfs) -> None:
    fast(queue)
    fill(mount_tmpfs(queue.home / "workers"))
    for n in range(3):
        enqueue(queue, f"job{n}", "echo hello")
    worker, out, err = start_worker(queue, "--burst", tmp_path=tmp_path)

    assert worker.wait(timeout=20) == 1, out.read_text() + err.read_text()
    assert "No space left on device" in err.read_text()
    assert set(queue.states().values()) == {"pending"}
    no_job_burnt(queue)


# -- 4. the worker's terminal is closed ---------------------------------------------------------


def test_closing_the_workers_terminal_records_its_running_job_once_and_the_worker_exits_0(
        queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    started, gate = tmp_path / "started", tmp_path / "gate"
    enqueue(queue, "long", gated(started, gate) + "; echo finished")
    master, slave = os.openpty()

    def controlling_terminal() -> None:  # as a shell starts a program: its terminal is the pty
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = queue.env()
    env.pop("PYTHONUNBUFFERED")  # buffered, as in a terminal
    worker = subprocess.Popen([sys.executable, SCRIPT, "worker", "start"], stdin=slave, stdout=slave,
                              stderr=slave, env=env, cwd=str(queue.home), preexec_fn=controlling_terminal)
    queue.procs.append(worker)
    os.close(slave)
    seen = bytearray()

    def printed(text: bytes) -> bool:
        while select.select([master], [], [], 0)[0]:
            try:
                seen.extend(os.read(master, 65536))
            except OSError:
                break
        return text in seen

    wait_until(lambda: printed(b"executing"), 15, what="the worker to print on its terminal")
    wait_running(queue, "long", worker)
    os.close(master)  # the terminal window is closed: SIGHUP, and the terminal is gone
    gate.touch()

    assert worker.wait(timeout=20) == 0
    assert started.read_text().split() == ["run"]
    job = job_of(queue, "long")
    assert job["state"] == "completed" and job["attempts"] == 1, job
    queue.ok("worker", "start", "--burst")  # recovery finds nothing to run again
    assert started.read_text().split() == ["run"]
    assert [job["id"] for job in queue.file("processed.json")] == ["long"]


def test_a_worker_whose_output_pipe_was_closed_runs_and_records_every_job(queue: Queue, tmp_path: Path) -> None:
    """`queuectl worker start --burst | head -1`: the reader goes away (EPIPE), the worker does not."""
    fast(queue)
    started, gate = tmp_path / "started", tmp_path / "gate"
    enqueue(queue, "first", gated(started, gate))
    for n in range(3):
        enqueue(queue, f"later{n}", "echo later")
    env = queue.env()
    env.pop("PYTHONUNBUFFERED")
    worker = subprocess.Popen([sys.executable, SCRIPT, "worker", "start", "--burst"], env=env,
                              cwd=str(queue.home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
    queue.procs.append(worker)
    assert worker.stdout.readline() == b"Worker-1 started.\n"
    worker.stdout.close()
    worker.stderr.close()
    wait_running(queue, "first", worker)
    gate.touch()

    assert worker.wait(timeout=20) == 0
    assert set(queue.states().values()) == {"completed"}
    assert [job["attempts"] for job in queue.file("processed.json")] == [1, 1, 1, 1]


def long_job_running(queue: Queue, tmp_path: Path) -> tuple[Path, subprocess.Popen, Path, Path]:
    """A worker running the gated job `long`, with `next` waiting behind it: (gate, worker, stdout, stderr)."""
    fast(queue)
    started, gate = tmp_path / "started", tmp_path / "gate"
    enqueue(queue, "long", gated(started, gate))
    enqueue(queue, "next", "echo next")
    worker, out, err = start_worker(queue, tmp_path=tmp_path)
    wait_running(queue, "long", worker)
    return gate, worker, out, err


@pytest.mark.parametrize("signame", ["SIGHUP", "SIGTERM"])
def test_sighup_and_sigterm_say_at_once_that_the_worker_finishes_its_running_job(
        queue: Queue, tmp_path: Path, signame: str) -> None:
    gate, worker, out, err = long_job_running(queue, tmp_path)

    worker.send_signal(getattr(signal, signame))
    wait_until(lambda: signame in err.read_text(), 10, what=f"the worker to say it got {signame}")
    assert "finishing" in err.read_text() and worker.poll() is None
    gate.touch()

    assert worker.wait(timeout=20) == 0, out.read_text() + err.read_text()
    assert queue.states() == {"long": "completed", "next": "pending"}
    assert job_of(queue, "long")["attempts"] == 1


# -- 14. the data folder vanishes ---------------------------------------------------------------


def test_a_worker_whose_data_folder_was_deleted_says_so_stops_and_does_not_recreate_it(
        queue: Queue, tmp_path: Path) -> None:
    gate, worker, out, err = long_job_running(queue, tmp_path)

    def deleted() -> bool:  # the worker may be writing its heartbeat meanwhile
        shutil.rmtree(queue.home, ignore_errors=True)
        return not queue.home.exists()

    wait_until(deleted, 10, what="the data folder to be deleted")
    wait_until(lambda: "was deleted" in err.read_text(), 10, what="the worker to say its folder is gone")
    assert str(queue.home) in err.read_text()
    gate.touch()

    assert worker.wait(timeout=20) == 1, out.read_text() + err.read_text()
    assert not queue.home.exists(), "the worker re-created the folder it lost"
    assert "Traceback" not in err.read_text()


def test_every_folder_queuectl_creates_is_owner_only_at_every_level(queue: Queue, tmp_path: Path) -> None:
    home = tmp_path / "a" / "b" / "c"
    old = os.umask(0o022)
    try:
        for args in (["enqueue", "--id", "hello", "--command", "echo hello"], ["worker", "start", "--burst"]):
            done = subprocess.run([sys.executable, SCRIPT, "--home", str(home), *args], cwd=str(tmp_path),
                                  capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
    finally:
        os.umask(old)
    for folder in (tmp_path / "a", tmp_path / "a" / "b", home, home / "logs", home / "workers"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, f"{folder} is {oct(folder.stat().st_mode)}"


# -- 17. a stop is announced at once ---------------------------------------------------------


def test_one_ctrl_c_says_at_once_that_the_worker_stops_after_its_running_job(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    started, gate = tmp_path / "started", tmp_path / "gate"
    enqueue(queue, "long", gated(started, gate))
    worker, out, err = start_worker(queue, tmp_path=tmp_path)
    wait_running(queue, "long", worker)

    os.killpg(worker.pid, signal.SIGINT)
    wait_until(lambda: "Ctrl+C again" in err.read_text(), 10, what="the worker to announce the stop")
    assert "1 running job" in err.read_text(), err.read_text()
    assert worker.poll() is None and job_of(queue, "long")["state"] == "processing"
    gate.touch()

    assert worker.wait(timeout=20) == 0, out.read_text() + err.read_text()
    assert job_of(queue, "long")["state"] == "completed"


# -- 20. messages ---------------------------------------------------------------------------------


def test_an_interrupted_job_is_reported_with_its_worker_thread(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    for n in (1, 2):
        enqueue(queue, f"long{n}", "sleep 30")
    worker, out, err = start_worker(queue, "--count", "2", tmp_path=tmp_path)
    wait_running(queue, "long1", worker)
    wait_running(queue, "long2", worker)

    os.killpg(worker.pid, signal.SIGINT)
    wait_until(lambda: "Ctrl+C again" in err.read_text(), 10, what="the first Ctrl+C to be seen")
    os.killpg(worker.pid, signal.SIGINT)

    assert worker.wait(timeout=20) == 130
    text = out.read_text()
    for n in (1, 2):
        line = next(line for line in text.splitlines() if f"long{n} returned to pending" in line)
        assert line.startswith("Worker-1 interrupted") or line.startswith("Worker-2 interrupted"), line


def test_status_counts_processes_and_threads_in_good_english(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    one, _, _ = start_worker(queue, tmp_path=tmp_path)
    wait_until(lambda: "1 process, 1 thread)" in queue.ok("status"), 15, what="status to show one worker")
    (tmp_path / "second").mkdir()
    two, _, _ = start_worker(queue, "--count", "7", tmp_path=tmp_path / "second")
    wait_until(lambda: "2 processes, 8 threads)" in queue.ok("status"), 15, what="status to show both workers")
    queue.ok("worker", "stop", "--wait")
    assert one.wait(timeout=20) == 0 and two.wait(timeout=20) == 0


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds processes in /proc (Linux)")


@linux_only
def test_kill_marked_kills_one_attempt_or_every_attempt_of_one_worker_and_nothing_else() -> None:
    import queuectl

    def marked(mark: str) -> subprocess.Popen:
        return subprocess.Popen(["sleep", "60"], env=dict(os.environ, QUEUECTL_ATTEMPT=mark), start_new_session=True)

    procs = {mark: marked(mark) for mark in ("a#1@h:1", "xa#1@h:1", "b#2@h:1", "a#1@h:12", "a#1@oh:1")}
    try:
        queuectl.kill_marked("a#1@h:1")
        assert procs["a#1@h:1"].wait(5) == -signal.SIGKILL
        assert all(proc.poll() is None for mark, proc in procs.items() if mark != "a#1@h:1")
        queuectl.kill_marked("@h:1")  # every attempt of worker h:1 (as its guardian does)
        for mark in ("xa#1@h:1", "b#2@h:1"):
            assert procs[mark].wait(5) == -signal.SIGKILL
        assert procs["a#1@h:12"].poll() is None and procs["a#1@oh:1"].poll() is None, "another worker's"
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


@linux_only
def test_a_worker_killed_with_9_leaves_no_command_running(queue: Queue, tmp_path: Path) -> None:
    """Nobody else runs: no recovery kills the command. Its guardian does, at once."""
    enqueue(queue, "long", f"echo $$ > {q(tmp_path / 'pid')}; exec sleep 60")
    worker = queue.start_worker()
    wait_running(queue, "long", worker)
    pid = wait_until(lambda: read_pid(tmp_path / "pid"), what="the command's pid")
    try:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        assert wait_until(lambda: process_gone(pid), 3, what="the guardian to kill the command")
    finally:
        kill_leftover(pid)


@linux_only
def test_a_worker_that_stops_gracefully_leaves_what_its_jobs_started_on_purpose(queue: Queue,
                                                                                tmp_path: Path) -> None:
    """The guardian kills only when its worker dies without a word: a background process a job
    left behind (late output) outlives a worker that stopped properly."""
    fast(queue)
    enqueue(queue, "leaver", f"(sleep 60 & echo $! > {q(tmp_path / 'pid')})")
    worker = queue.start_worker("--burst")
    assert worker.wait(30) == 0
    pid = wait_until(lambda: read_pid(tmp_path / "pid"), what="the background process's pid")
    try:  # the worker waits for its guardian to end before it exits: had it killed, it has by now
        assert not process_gone(pid), "a job's background process was killed at a graceful exit"
    finally:
        os.kill(pid, signal.SIGKILL)
