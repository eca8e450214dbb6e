"""Defects an outside test campaign found (issue "Tried to break it"), each proved with real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (SCRIPT, Queue, fast, kill_group, kill_leftover, process_gone, q, read_pid, wait_for_state,
                      wait_running, wait_until)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc, sessions and SIGKILL")


def test_deleting_the_lock_file_while_processes_run_loses_and_doubles_nothing(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    runs = tmp_path / "runs"
    workers = [queue.start_worker("--count", "4") for _ in range(2)]
    # A tidy user (or a tmp cleaner) removing the lock file every 10 ms while 4 enqueuers add 60 jobs each.
    remover = subprocess.Popen(["sh", "-c", f"while :; do rm -f {q(queue.home / 'queuectl.lock')}; sleep 0.01; done"],
                               start_new_session=True)
    enqueuers = []
    for n in range(4):
        script = (f"for i in $(seq 60); do {q(Path(sys.executable))} {q(Path(SCRIPT))} enqueue --id e{n}-$i "
                  f"--command \"echo e{n}-$i >> {q(runs)}\" >/dev/null && echo e{n}-$i; done")
        enqueuers.append(subprocess.Popen(["sh", "-c", script], env=queue.env(), stdout=subprocess.PIPE, text=True,
                                          start_new_session=True))
    try:
        acknowledged = set()
        for proc in enqueuers:
            out, _ = proc.communicate(timeout=120)
            acknowledged |= set(out.split())
        assert len(acknowledged) == 240

        def drained() -> bool:
            return len(queue.file("processed.json")) >= 240 and not queue.file("queue.json")

        wait_until(drained, 60, what="all 240 jobs to complete")
    finally:
        kill_group(remover)
        for proc in workers + enqueuers:
            kill_group(proc)
    completed = [job["id"] for job in queue.file("processed.json")]
    assert sorted(completed) == sorted(acknowledged)  # none lost, none recorded twice
    ran = runs.read_text().split()
    assert sorted(ran) == sorted(acknowledged)  # every job ran exactly once


def test_a_job_that_enqueues_a_follow_up_reaches_its_own_queue(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    follow_up = f"{q(Path(sys.executable))} {q(Path(SCRIPT))} enqueue --id second --command true"
    queue.ok("enqueue", "--id", "first", "--command", follow_up)
    env = queue.env()
    del env["QUEUECTL_HOME"]  # the worker knows its queue from --home only, and runs in another folder
    worker = subprocess.run([sys.executable, SCRIPT, "--home", str(queue.home), "worker", "start", "--burst"],
                            env=env, cwd=str(elsewhere), capture_output=True, timeout=60)
    assert worker.returncode == 0, worker.stderr
    assert {job["id"] for job in queue.file("processed.json")} == {"first", "second"}
    assert not (elsewhere / "queue.json").exists()


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_timeout_and_cancel_kill_children_that_left_the_session(queue: Queue, tmp_path: Path, how: str) -> None:
    fast(queue)
    pid_file = tmp_path / "escaped.pid"
    command = f"setsid sh -c 'echo $$ > {q(pid_file)}; exec sleep 60' & sleep 60"
    extra = ["--timeout", "1", "--max-retries", "1"] if how == "timeout" else []
    queue.ok("enqueue", "--id", "esc", "--command", command, *extra)
    queue.start_worker()
    pid = wait_until(lambda: read_pid(pid_file), 15, what="the escaped child to start")
    try:
        if how == "cancel":
            queue.ok("cancel", "esc")
        wait_for_state(queue, "esc", "dead" if how == "timeout" else "cancelled")
        wait_until(lambda: process_gone(pid), 5, what="the child that called setsid to be killed")
    finally:
        kill_leftover(pid)


@pytest.mark.parametrize("name", ["queue.json", "processed.json", "failed.json", "cancelled.json", "config.json",
                                  "stop.flag"])
def test_a_state_file_replaced_by_a_fifo_is_an_error_not_a_hang(queue: Queue, name: str) -> None:
    queue.ok("enqueue", "--id", "a", "--command", "true")
    path = queue.home / name
    if path.exists():
        path.unlink()
    os.mkfifo(path)
    for command in (["status"], ["show", "a"], ["enqueue", "--id", "b", "--command", "true"]):
        proc = queue.run(*command, timeout=20)
        assert proc.returncode == 1
        assert proc.stderr == f"error: {path} is a FIFO, not a regular file; nothing was changed. " \
                              "Move it away, then run the command again.\n"


def test_a_long_command_is_shown_by_its_start_on_the_worker_console(queue: Queue) -> None:
    fast(queue)
    (queue.home / "long.json").write_text(json.dumps({"id": "long", "command": "true " + "x" * 100_000}))
    queue.ok("enqueue", "--file", str(queue.home / "long.json"))
    console = queue.ok("worker", "start", "--burst")
    assert len(console) < 2_000 and "Worker-1 executing: true xxx" in console, console[:300]


def test_a_command_too_long_to_start_is_refused_at_enqueue(queue: Queue) -> None:
    (queue.home / "huge.json").write_text(json.dumps({"id": "huge", "command": "echo " + "x" * 200_000}))
    proc = queue.run("enqueue", "--file", str(queue.home / "huge.json"))
    assert proc.returncode == 1
    assert proc.stderr == (f"error: {queue.home / 'huge.json'}: the command line would be 200,005 bytes, "
                           "and this system starts at most 131,071; put the command in a script file and "
                           "enqueue a command that runs it.\n")
    assert queue.file("queue.json") == []
    longest = "echo " + "x" * (131_071 - 5)  # exactly the limit: accepted, and it runs
    (queue.home / "long.json").write_text(json.dumps({"id": "long", "command": longest}))
    queue.ok("enqueue", "--file", str(queue.home / "long.json"))
    fast(queue)
    queue.ok("worker", "start", "--burst")
    assert [job["id"] for job in queue.file("processed.json")] == ["long"]


@pytest.mark.parametrize("shell, platform, length, fits", [
    ("auto", "linux", 131_071, True), ("auto", "linux", 131_072, False),
    ("powershell", "linux", 40_000, True), ("powershell", "linux", 60_000, False),
    ("auto", "win32", 8_178, True), ("auto", "win32", 8_179, False),
    ("cmd", "win32", 8_178, True), ("cmd", "win32", 8_179, False),
    ("bash", "win32", 32_000, True), ("bash", "win32", 33_000, False),
    ("powershell", "win32", 11_000, True), ("powershell", "win32", 13_000, False),
])
def test_the_longest_command_each_platform_and_shell_can_start(shell: str, platform: str, length: int,
                                                               fits: bool) -> None:
    import queuectl

    assert (queuectl.command_too_long("x" * length, shell, platform) is None) == fits


def run_on_terminal(queue: Queue, *args: str) -> bytes:
    """What queuectl prints when its stdout is a terminal (a pty)."""
    import fcntl
    import pty
    import struct
    import termios

    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))  # wide enough for the command
    try:
        proc = subprocess.Popen([sys.executable, SCRIPT, *args], env=queue.env(), stdout=side,
                                stderr=subprocess.PIPE)
        os.close(side)
        side = -1
        out = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the program closed the terminal
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        return out
    finally:
        os.close(main)
        if side >= 0:
            os.close(side)


def test_escape_sequences_from_a_job_never_reach_the_terminal_raw(queue: Queue) -> None:
    fast(queue)
    title = "printf '\\033]0;pwned\\007\\033[2J\\342\\200\\256'"  # retitle, clear screen, reorder text
    queue.ok("enqueue", "--id", "esc", "--command", title + "; echo '\x1b[31mred'")
    console = run_on_terminal(queue, "worker", "start", "--burst")  # it prints the command and its output
    assert b"executing: printf" in console and b"\x1b" not in console, console
    for args in (("show", "esc"), ("list",), ("list", "--state", "completed")):
        shown = run_on_terminal(queue, *args)
        assert b"\x1b" not in shown and "\u202e".encode() not in shown, (args, shown)
        assert b"\\x1b" in shown, (args, shown)
    assert "\x1b]0;pwned\x07" in queue.ok("show", "esc")  # a pipe or a file gets the text as it is


def test_the_last_time_iso_8601_can_say_is_accepted_and_the_range_is_named(queue: Queue) -> None:
    queue.ok("enqueue", "--id", "last", "--command", "true", "--run-at", "9999-12-31T23:59:59Z")
    assert queue.file("queue.json")[0]["run_at"] == "9999-12-31T23:59:59.000Z"
    proc = queue.run("enqueue", "--id", "early", "--command", "true", "--run-at", "1969-12-31T23:59:59Z")
    assert proc.returncode == 1
    assert proc.stderr == ("error: run_at '1969-12-31T23:59:59Z' is out of range; use a time from "
                           "1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z.\n")


def test_a_hand_reformatted_queue_file_is_not_called_a_cut_short_write(queue: Queue) -> None:
    queue.ok("enqueue", "--id", "a", "--command", "true")
    path = queue.home / "queue.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=2))  # what an editor's "format" does
    proc = queue.run("status")
    assert proc.returncode == 0
    assert proc.stderr == f"note: rewrote {path} in queuectl's layout (it was edited into another layout).\n"
    path.write_text(path.read_text()[:-4])  # a torn append: the last line cut short
    proc = queue.run("status")
    assert proc.stderr == f"note: rewrote {path} in queuectl's layout (a write had been cut short).\n"


def test_cancel_reports_a_cancelled_job_that_another_command_purged_at_once(queue: Queue, monkeypatch,
                                                                              capsys) -> None:
    import time

    import queuectl

    fast(queue)
    queue.ok("enqueue", "--id", "long", "--command", "sleep 60")
    worker = queue.start_worker()
    wait_running(queue, "long", worker)
    real_sleep = time.sleep
    purged: list[int] = []

    def purge_in_the_gap(seconds: float) -> None:
        """cancel's pause between two looks: the worker records the cancel, and a purge removes it."""
        monkeypatch.setattr(time, "sleep", real_sleep)  # once (subprocess sleeps too)
        deadline = time.monotonic() + 15
        while queue.states().get("long") != "cancelled" and time.monotonic() < deadline:
            real_sleep(0.02)
        purged.append(queue.run("purge", "--state", "cancelled", "--yes").returncode)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", purge_in_the_gap)
    code = queuectl.main(["--home", str(queue.home), "cancel", "long"])
    out, err = capsys.readouterr()
    assert purged == [0] and "long" not in queue.states()
    assert (code, err) == (0, "")
    assert out == "Cancelled job: long (was processing; its command was killed) (purged since)\n"


def test_recovery_kills_the_children_of_a_dead_workers_command_that_left_the_session(queue: Queue,
                                                                                     tmp_path: Path) -> None:
    import signal

    fast(queue)
    pid_file = tmp_path / "escaped.pid"
    command = f"setsid sh -c 'echo $$ > {q(pid_file)}; exec sleep 60' & sleep 60"
    queue.ok("enqueue", "--id", "esc", "--command", command, "--max-retries", "1")
    worker = queue.start_worker()
    pid = wait_until(lambda: read_pid(pid_file), 15, what="the escaped child to start")
    try:
        wait_running(queue, "esc", worker)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        queue.ok("worker", "start", "--burst")  # recovers the dead worker's job: dead, its tree killed
        assert queue.states()["esc"] == "dead"
        wait_until(lambda: process_gone(pid), 5, what="the child that called setsid to be killed")
    finally:
        kill_leftover(pid)
