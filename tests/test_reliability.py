"""Reliability: hand-edited and hostile state files, a full disk, writes cut short by a crash at
each write point, file permissions, and the lease of a worker on another host.

The fault tests run queuectl in this process with a fault injected at one of its write points,
then load the folder again from scratch (a fresh Store, and the command line) and check that no
job was lost, none is counted twice, and every file still parses.
(Recovery within 5 s after kill -9 on one host is test_workers.py's
test_a_job_of_a_killed_worker_returns_to_pending_and_finishes.)

These tests of folder mechanics use FolderStore's privates where they must.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

import queuectl
from conftest import Queue, wait_until

DEAD_PID = 999_999_999  # above every system's pid_max: a worker that is certainly not running
STATE_FILES = ("queue.json", "processed.json", "failed.json")
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes and fsync of folders")


# -- helpers --------------------------------------------------------------------------------------


class Identity:
    """What Store.worker_round needs to know of a worker process."""

    def __init__(self, pid: int = DEAD_PID, host: str = queuectl.HOST) -> None:
        self.pid, self.host = pid, host


class Crash(BaseException):
    """The process dying at a write point: no queuectl handler turns it into a message."""


class OsProxy:
    """queuectl's view of the os module, with some functions replaced (the rest of the
    process, pytest included, keeps the real ones)."""

    def __init__(self, **replaced: Callable[..., Any]) -> None:
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


@contextmanager
def patched(**attributes: Any) -> Iterator[None]:
    """Replace module attributes of queuectl for the duration of a block."""
    saved = {name: getattr(queuectl, name) for name in attributes}
    for name, value in attributes.items():
        setattr(queuectl, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(queuectl, name, value)


def job(job_id: str, command: str = "true", **fields: Any) -> dict[str, Any]:
    return queuectl.normalize_job({"id": job_id, "command": command, **fields}, dict(queuectl.DEFAULT_CONFIG))


def seeded(home: Path, ids: tuple[str, ...] = ("j0", "j1", "j2"), **fields: Any) -> queuectl.FolderStore:
    store = queuectl.FolderStore(str(home))
    store.enqueue([job(job_id, f"echo {job_id}", **fields) for job_id in ids])
    return store


def ran(job_id: str, attempt: int = 1, exit_code: int = 0) -> queuectl.Outcome:
    """The result a worker thread reports for one attempt."""
    return queuectl.Outcome(job_id, attempt, exit_code=exit_code,
                            error=None if exit_code == 0 else f"exit code {exit_code}",
                            worker="Worker-1", started=queuectl.now_ts(), duration=0.01)


def snapshot(home: Path) -> dict[str, bytes]:
    """Every data file under the data folder, by relative path (not the lock file, nor the
    history index and positions: caches that any reader may bring up to date)."""
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*"))
            if p.is_file() and p.name not in (queuectl.LOCK_FILE, queuectl.HISTORY_INDEX_FILE)
            and p.suffix != ".pos"}


def cli(queue: Queue, *args: str) -> tuple[int, str, str]:
    """queuectl ARGS on the queue's folder: `worker` in a process of its own, anything else
    through queuectl.main in this process (a fresh Store each time, without a Python start-up)."""
    if args[0] == "worker":
        proc = queue.run(*args)
        return proc.returncode, proc.stdout, proc.stderr
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = queuectl.main(["--home", str(queue.home), *args])
    return code, out.getvalue(), err.getvalue()


def ok(queue: Queue, *args: str) -> str:
    code, out, err = cli(queue, *args)
    assert code == 0, f"queuectl {' '.join(args)} -> {code}\n{out}{err}"
    return out


def cli_json(queue: Queue, *args: str) -> Any:
    return json.loads(ok(queue, *args, "--json"))


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def refused(queue: Queue, *args: str, words: tuple[str, ...] = ()) -> str:
    """The command exits 1 with one error line holding `words`, and no data file changed."""
    before = snapshot(queue.home)
    code, out, err = cli(queue, *args)
    assert code == 1, f"queuectl {' '.join(args)} -> {code}\n{out}{err}"
    line = one_error_line(err)
    for word in words:
        assert word in line, line
    assert snapshot(queue.home) == before, f"queuectl {' '.join(args)} changed a data file"
    return line


def parsed_files(home: Path) -> dict[str, list[dict[str, Any]]]:
    """The three state files, each of which must parse as a JSON array (a missing one is empty)."""
    result = {}
    for name in STATE_FILES:
        path = home / name
        result[name] = json.loads(path.read_bytes()) if path.exists() else []
        assert isinstance(result[name], list), name
    return result


def ids_in_files(home: Path) -> Counter:
    return Counter(job["id"] for jobs in parsed_files(home).values() for job in jobs)


def listed(queue: Queue) -> dict[str, dict[str, Any]]:
    """`list --json` by id; fails if any job is listed twice."""
    jobs = cli_json(queue, "list")
    twice = [job_id for job_id, n in Counter(job["id"] for job in jobs).items() if n > 1]
    assert not twice, f"listed more than once: {twice}\n{json.dumps(jobs, indent=1)}"
    return {job["id"]: job for job in jobs}


def counted(queue: Queue) -> dict[str, int]:
    return cli_json(queue, "status")["counts"]


def write_lines(path: Path, jobs: list[Any]) -> None:
    """A state file in queuectl's own layout (one job a line), whatever the jobs hold."""
    path.write_bytes(queuectl.render_array([json.dumps(j, separators=(",", ":")).encode() for j in jobs]))


def record(job_id: str, state: str = "pending", **fields: Any) -> dict[str, Any]:
    return {"id": job_id, "command": f"echo {job_id}", "state": state, "attempts": 0, **fields}


def enospc(*args: Any, **kwargs: Any) -> Any:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# -- 1. hostile files -----------------------------------------------------------------------------

EVERY_COMMAND = (("status",), ("list",), ("enqueue", "--id", "fresh", "--command", "echo fresh"),
                 ("worker", "start", "--burst"))


@pytest.mark.parametrize("content, words", [
    pytest.param(b"[1, 2]", "a JSON object", id="an-array"),
    pytest.param(b'"max_retries=5"', "a JSON object", id="a-string"),
    pytest.param(b"", "config.json", id="empty"),
    pytest.param(b"\x80\x81\xfe", "UTF-8", id="not-utf8"),
    pytest.param(b"[" * 100_000, "config.json", id="nested-too-deep"),
    pytest.param(b'{"max_retries": "many"}', "max_retries", id="a-word-for-a-number"),
    pytest.param(b'{"max_retries": true}', "max_retries", id="a-boolean"),
    pytest.param(b'{"max_retries": 2.5}', "max_retries", id="a-fraction-for-a-count"),
    pytest.param(b'{"backoff_base": NaN}', "backoff_base", id="nan"),
    pytest.param(b'{"lease_timeout": 0}', "lease_timeout", id="out-of-range"),
    pytest.param(b'{"poll_interval": null}', "poll_interval", id="null"),
    pytest.param(b'{"colour": "blue"}', "colour", id="unknown-key"),
])
def test_a_hostile_config_file_stops_every_command_and_is_kept(queue: Queue, content: bytes, words: str) -> None:
    seeded(queue.home, ("waiting",))
    (queue.home / "config.json").write_bytes(content)
    for args in (("status",), ("worker", "start", "--burst"), ("config", "set", "max_retries", "5")):
        refused(queue, *args, words=(str(queue.home / "config.json"), words))
    assert not list(queue.home.glob("logs/*")), "a job ran under a config.json that does not parse"


QUEUE_DAMAGE = {
    "an-object": (b'{"id":"a","command":"echo a","state":"pending","attempts":0}', "a JSON array"),
    "null": (b"null", "a JSON array"),
    "numbers": (b"[\n1,\n2\n]\n", "queue.json"),
    "a-job-that-is-a-list": (b'[\n["a","echo a"]\n]\n', "queue.json"),
    "not-utf8": (b'[\n{"id":"a","command":"echo \xff","state":"pending","attempts":0}\n]\n', "UTF-8"),
    "id-a-number": (b'[\n{"id":5,"command":"echo a","state":"pending","attempts":0}\n]\n', "id"),
    "command-null": (b'[\n{"id":"a","command":null,"state":"pending","attempts":0}\n]\n', "command"),
    "max-retries-a-fraction": (b'[\n{"id":"a","command":"x","state":"pending","attempts":0,"max_retries":1.5}\n]\n',
                               "max_retries"),
    "started-at-a-number": (b'[\n{"id":"a","command":"x","state":"processing","attempts":1,"started_at":17}\n]\n',
                            "started_at"),
    "an-unknown-state": (b'[\n{"id":"a","command":"echo a","state":"running","attempts":0}\n]\n', "'running'"),
    "a-history-state": (b'[\n{"id":"a","command":"echo a","state":"completed","attempts":1}\n]\n', "'completed'"),
    "a-state-missing": (b'[\n{"id":"a","command":"echo a","attempts":0}\n]\n', "state"),
    "one-id-twice": (b'[\n{"id":"a","command":"echo a","state":"pending","attempts":0},\n'
                     b'{"id":"a","command":"echo b","state":"pending","attempts":0}\n]\n', "'a' appears twice"),
}


@pytest.mark.parametrize("name", list(QUEUE_DAMAGE))
def test_a_hand_edited_queue_file_stops_every_command_and_is_kept(queue: Queue, name: str) -> None:
    content, words = QUEUE_DAMAGE[name]
    (queue.home / "queue.json").write_bytes(content)
    for args in EVERY_COMMAND:
        refused(queue, *args, words=(str(queue.home / "queue.json"), words))
    assert not list(queue.home.glob("logs/*")), "a job ran from a queue.json queuectl cannot trust"


@pytest.mark.parametrize("name, state, commands", [
    ("processed.json", "pending", [("list",), ("list", "--state", "completed"), ("show", "h")]),
    ("processed.json", "finished", [("list",), ("show", "h")]),
    ("failed.json", "zombie", [("list",), ("dlq", "list"), ("dlq", "retry", "--all"), ("show", "h")]),
    ("failed.json", "completed", [("dlq", "list"), ("dlq", "retry", "h")]),
])
def test_a_history_job_in_a_state_that_does_not_belong_there_is_reported(
        queue: Queue, name: str, state: str, commands: list[tuple[str, ...]]) -> None:
    """Commands that read the records of a history file refuse a record they cannot place."""
    write_lines(queue.home / "queue.json", [record("p")])
    write_lines(queue.home / name, [record("h", state, attempts=1)])
    for args in commands:
        refused(queue, *args, words=(str(queue.home / name), repr(state)))


def test_unknown_fields_of_a_hand_edited_job_are_kept_through_every_move(queue: Queue) -> None:
    """queuectl refuses unknown fields on input (a typo must not vanish), but a job record that a
    person extended by hand in queue.json is accepted as it is: its extra fields are neither
    dropped when the file is rewritten nor when the job moves to the history."""
    later = queuectl.iso(time.time() + 3600)
    jobs = [record("runs", owner="ops", meta={"ticket": 7, "tags": ["a", "b"]}),
            record("waits", run_at=later, note="kept while others change")]
    (queue.home / "queue.json").write_text(json.dumps(jobs, indent=2), "utf-8")  # as an editor saves it
    assert listed(queue)["runs"]["meta"] == {"ticket": 7, "tags": ["a", "b"]}
    ok(queue, "config", "set", "poll_interval", "0.05")
    ok(queue, "worker", "start", "--burst")
    done = queue.file("processed.json")
    assert [(j["id"], j["state"], j["owner"], j["meta"]) for j in done] == [
        ("runs", "completed", "ops", {"ticket": 7, "tags": ["a", "b"]})]
    waiting = queue.file("queue.json")
    assert [(j["id"], j["note"], j["run_at"]) for j in waiting] == [("waits", "kept while others change", later)]
    assert cli_json(queue, "show", "runs")["owner"] == "ops"


def test_a_missing_state_file_is_an_empty_one_and_the_others_are_kept(queue: Queue) -> None:
    store = seeded(queue.home, ("done", "other"))
    store.worker_round([], 1, Identity())
    store.worker_round([ran("done")], 0, Identity())
    history = (queue.home / "processed.json").read_bytes()
    (queue.home / "queue.json").unlink()
    counts = counted(queue)
    assert (counts["pending"], counts["completed"]) == (0, 1)
    refused(queue, "enqueue", "--id", "done", "--command", "true", words=("already exists", "processed.json"))
    ok(queue, "enqueue", "--id", "new", "--command", "true")
    assert [j["id"] for j in queue.file("queue.json")] == ["new"]
    assert (queue.home / "processed.json").read_bytes() == history


@pytest.mark.parametrize("name", ["queue.json", "processed.json", "config.json"])
def test_a_state_file_that_is_a_folder_is_one_clear_error(queue: Queue, name: str) -> None:
    if name != "queue.json":
        write_lines(queue.home / "queue.json", [record("p")])
    (queue.home / name).mkdir()
    for args in (("status",), ("list",), ("worker", "start", "--burst")):
        refused(queue, *args, words=(str(queue.home / name),))
    assert (queue.home / name).is_dir()


@contextmanager
def read_only(home: Path) -> Iterator[None]:
    """The folder read-only: by its mode, or for root (whom modes do not stop) by a
    read-only bind mount of it."""
    if os.geteuid() != 0:
        home.chmod(0o500)
        try:
            yield
        finally:
            home.chmod(0o700)
        return
    mount = subprocess.run(["sh", "-c", f'mount --bind "{home}" "{home}" && mount -o remount,ro,bind "{home}"'],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        subprocess.run(["umount", str(home)], capture_output=True)
        pytest.skip(f"root cannot make a read-only bind mount here: {mount.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(home)], check=True)


@posix_only
def test_a_read_only_data_folder_is_one_clear_error_and_nothing_changes(queue: Queue, tmp_path: Path) -> None:
    home = tmp_path / "read-only"
    queue.ok("--home", str(home), "config", "set", "max_retries", "2")
    with read_only(home):
        before = snapshot(home)
        for args, path in [(("enqueue", "--id", "a", "--command", "true"), home / "queue.json"),
                           (("config", "set", "max_retries", "5"), home / "config.json"),
                           (("worker", "start", "--burst"), home / "logs")]:
            proc = queue.run("--home", str(home), *args)
            assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
            line = one_error_line(proc.stderr)
            assert str(path) in line, line
        assert queue.run("--home", str(home), "status").returncode == 0, "reading needs no write access"
        assert snapshot(home) == before
        assert sorted(p.name for p in home.iterdir()) == ["config.json"]  # POSIX locks the folder itself


@pytest.fixture
def ready(queue: Queue) -> Queue:
    """A folder with a pending job, a dead one, a config file and an orphan of a dead worker,
    its history index built (so that only the command's own writes remain)."""
    ok(queue, "config", "set", "max_retries", "1")  # so that config.json exists
    store = seeded(queue.home, ("pending1", "dead1", "orphan"), max_retries=1)
    store.worker_round([], 3, Identity())  # a worker claims all three, hands one back and fails one; then dies
    store.worker_round([queuectl.Outcome("pending1", 1, "released"), ran("dead1", exit_code=1)], 0, Identity())
    queuectl.FolderStore(str(queue.home)).finished_count("dead")  # writes history.idx
    assert queue.states() == {"pending1": "pending", "dead1": "dead", "orphan": "processing"}
    return queue


@pytest.mark.parametrize("args, point, name", [
    (("enqueue", "--id", "new", "--command", "true"), "write", "queue.json"),
    (("enqueue", "--id", "new", "--command", "true"), "fsync", "queue.json"),
    (("config", "set", "max_retries", "5"), "fsync", "config.json"),
    (("config", "set", "max_retries", "5"), "replace", "config.json"),
    (("dlq", "retry", "--all"), "write", "queue.json"),
    (("dlq", "retry", "--all"), "fsync", "queue.json"),
    (("dlq", "retry", "--all"), "replace", "failed.json"),
    (("status",), "fsync", "queue.json"),
    (("status",), "replace", "queue.json"),
])
def test_a_full_disk_is_one_error_naming_the_file_and_changes_no_data_file(
        ready: Queue, capsys: pytest.CaptureFixture, args: tuple[str, ...], point: str, name: str) -> None:
    home = ready.home
    before = snapshot(home)
    # replace_with_retry took os.replace as a default argument at import: replace it, not os.replace
    faults = {"write": {"os": OsProxy(write=enospc)}, "fsync": {"os": OsProxy(fsync=enospc)},
              "replace": {"replace_with_retry": enospc}}[point]
    with patched(**faults):
        code = queuectl.main(["--home", str(home), *args])
    out, err = capsys.readouterr()
    assert code == 1, f"{' '.join(args)} with ENOSPC at {point} -> {code}\n{out}{err}"
    line = one_error_line(err)
    assert str(home / name) in line and "No space left on device" in line, line
    after = snapshot(home)
    changed = sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n))
    assert changed == [], f"{' '.join(args)} reported an error yet changed {changed}"


# -- 2. writes cut short by a crash ---------------------------------------------------------------


def check_each_job_once(queue: Queue, expected: set[str]) -> dict[str, dict[str, Any]]:
    """Through the command line: every job listed once; after `status` (in a process of its own;
    it settles the jobs of dead workers) every job in exactly one state file, every file parsing,
    and the counts adding up."""
    jobs = listed(queue)
    assert set(jobs) == expected
    counts = queue.json("status")["counts"]
    in_files = ids_in_files(queue.home)
    assert set(in_files) == expected and set(in_files.values()) == {1}, f"in the files: {dict(in_files)}"
    assert sum(counts.values()) == len(expected), counts
    return listed(queue)


def test_a_crash_before_the_replace_leaves_the_previous_queue_file(queue: Queue) -> None:
    store = seeded(queue.home)
    before = (queue.home / "queue.json").read_bytes()
    written = []

    def crash_before_replace(src: str, dst: str, *args: Any, **kwargs: Any) -> None:
        written.append(json.loads(Path(src).read_bytes()))  # the temp file is whole at this point
        os.link(src, f"{dst}.{DEAD_PID}.1.tmp")  # what a real crash leaves behind
        raise Crash(dst)

    with patched(replace_with_retry=crash_before_replace), pytest.raises(Crash):
        store.worker_round([], 1, Identity())
    assert written and written[0][0]["state"] == "processing", "the fault came before the temp file was written"
    assert (queue.home / "queue.json").read_bytes() == before
    fresh = queuectl.FolderStore(str(queue.home))
    assert [(j["id"], j["state"], j["attempts"]) for j in fresh.jobs()] == [
        ("j0", "pending", 0), ("j1", "pending", 0), ("j2", "pending", 0)]
    jobs = check_each_job_once(queue, {"j0", "j1", "j2"})
    assert {j["state"] for j in jobs.values()} == {"pending"}
    ok(queue, "enqueue", "--id", "j3", "--command", "true")  # the leftover temp file is in nobody's way


def test_a_crash_after_the_replace_of_a_claim_returns_the_job_to_pending(queue: Queue) -> None:
    store = seeded(queue.home)

    def crash_after_replace(src: str, dst: str, *args: Any, **kwargs: Any) -> None:
        os.replace(src, dst)
        raise Crash(dst)

    with patched(replace_with_retry=crash_after_replace), pytest.raises(Crash):
        store.worker_round([], 1, Identity())
    fresh = queuectl.FolderStore(str(queue.home))
    assert fresh.get("j0")["state"] == "processing" and fresh.get("j0")["pid"] == DEAD_PID
    jobs = check_each_job_once(queue, {"j0", "j1", "j2"})
    # The attempt never started (no scratch file says it did): back to pending, not counted.
    assert (jobs["j0"]["state"], jobs["j0"]["attempts"]) == ("pending", 0)


@pytest.mark.parametrize("exit_code, history, state", [(0, "processed.json", "completed"),
                                                        (1, "failed.json", "dead")])
def test_a_crash_between_the_history_append_and_the_queue_write(
        queue: Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exit_code: int, history: str,
        state: str) -> None:
    """A finished job is appended to its history file first; a crash before queue.json is
    rewritten leaves it in both. It shows once, as its history copy, and never runs again."""
    trace = tmp_path / "trace"
    store = queuectl.FolderStore(str(queue.home))
    store.enqueue([job(j, f"echo {j} >> {shlex.quote(str(trace))}", max_retries=1) for j in ("j0", "j1", "j2")])
    store.worker_round([], 1, Identity())
    real_append = queuectl.FolderStore._append

    def append_then_crash(self: queuectl.FolderStore, name: str, lines: list[str]) -> None:
        real_append(self, name, lines)
        if name == history:
            raise Crash(name)

    monkeypatch.setattr(queuectl.FolderStore, "_append", append_then_crash)
    with pytest.raises(Crash):
        store.worker_round([ran("j0", exit_code=exit_code)], 0, Identity())
    monkeypatch.undo()
    files = parsed_files(queue.home)
    assert [j["state"] for j in files["queue.json"] if j["id"] == "j0"] == ["processing"]
    assert [j["id"] for j in files[history]] == ["j0"]

    fresh = queuectl.FolderStore(str(queue.home))
    assert [(j["id"], j["state"]) for j in fresh.jobs() if j["id"] == "j0"] == [("j0", state)]
    jobs = listed(queue)  # before anything settles it
    assert jobs["j0"]["state"] == state
    jobs = check_each_job_once(queue, {"j0", "j1", "j2"})
    assert (jobs["j0"]["state"], jobs["j1"]["state"], jobs["j2"]["state"]) == (state, "pending", "pending")
    assert counted(queue)[state] == 1
    ok(queue, "worker", "start", "--burst")
    assert sorted(trace.read_text().split()) == ["j1", "j2"], "j0 had finished: it must not run again"
    jobs = check_each_job_once(queue, {"j0", "j1", "j2"})
    assert jobs["j0"]["state"] == state


def test_a_crash_between_the_two_writes_of_a_dlq_retry_leaves_one_job(queue: Queue, tmp_path: Path) -> None:
    """dlq retry writes queue.json first (the job, pending again), then failed.json without it.
    After a crash between the two, the job must show once and run once; the newer, pending copy
    is its latest state."""
    trace = tmp_path / "trace"
    store = queuectl.FolderStore(str(queue.home))
    store.enqueue([job("d", f"echo d >> {shlex.quote(str(trace))}", max_retries=1)])
    store.worker_round([], 1, Identity())
    store.worker_round([ran("d", exit_code=1)], 0, Identity())
    assert queue.states() == {"d": "dead"}

    def crash_before_replace(src: str, dst: str, *args: Any, **kwargs: Any) -> None:
        if dst.endswith("failed.json"):
            raise Crash(dst)
        os.replace(src, dst)

    with patched(replace_with_retry=crash_before_replace), pytest.raises(Crash):
        queuectl.FolderStore(str(queue.home)).dlq_retry(None)
    assert ids_in_files(queue.home) == {"d": 2}, "the crash should leave the job in both files"

    assert listed(queue)["d"]["state"] == "pending"
    counts = counted(queue)
    assert (counts["pending"], counts["dead"]) == (1, 0), counts
    ok(queue, "worker", "start", "--burst")
    assert trace.read_text().split() == ["d"]
    jobs = check_each_job_once(queue, {"d"})
    assert jobs["d"]["state"] == "completed"


def torn_write(keep: Callable[[int], int]) -> Callable[[int, bytes], int]:
    """os.write that writes only the first keep(len) bytes, then the process dies."""
    def write(fd: int, data: bytes) -> int:
        os.write(fd, data[:keep(len(data))])
        raise Crash(f"after {keep(len(data))} of {len(data)} bytes")
    return write


CUTS = {
    "first-byte": lambda n: 1,
    "two-bytes": lambda n: 2,
    "half": lambda n: n // 2,
    "before-the-closing-bracket": lambda n: n - 3,  # the job's line whole, "\n]\n" not written
    "all-but-the-last-byte": lambda n: n - 1,
}


def whole_job_written(cut: str, payload: bytes) -> bool:
    """Did the cut keep the appended job's line whole? (payload: 2 bytes, the line, "\\n]\\n")"""
    return CUTS[cut](len(payload)) >= len(payload) - 3


@pytest.mark.parametrize("cut", list(CUTS))
def test_an_enqueue_torn_by_a_crash_is_repaired_and_keeps_every_whole_job(queue: Queue, cut: str) -> None:
    store = seeded(queue.home)
    new = job("n1", "echo n1")
    payload = (",\n" + queuectl.dump_line(new) + "\n]\n").encode()
    with patched(os=OsProxy(write=torn_write(CUTS[cut]))), pytest.raises(Crash):
        store.enqueue([new])
    expected = {"j0", "j1", "j2"} | ({"n1"} if whole_job_written(cut, payload) else set())

    fresh = queuectl.FolderStore(str(queue.home))
    assert [j["id"] for j in fresh.jobs()] == sorted(expected)
    json.loads((queue.home / "queue.json").read_bytes())  # repaired on that load
    jobs = check_each_job_once(queue, expected)
    assert {j["state"] for j in jobs.values()} == {"pending"}
    if "n1" not in expected:
        ok(queue, "enqueue", "--id", "n1", "--command", "echo n1")  # the torn job can be enqueued again


@pytest.mark.parametrize("earlier_history", [True, False], ids=["onto-history", "new-file"])
@pytest.mark.parametrize("cut", list(CUTS))
def test_a_completion_torn_by_a_crash_is_repaired_and_nothing_is_lost(
        queue: Queue, cut: str, earlier_history: bool) -> None:
    store = seeded(queue.home)
    expected = {"j0", "j1", "j2"}
    if earlier_history:
        store.enqueue([job("h0")])
        store.worker_round([], 4, Identity())  # h0 completes, the others are handed back unstarted
        store.worker_round([ran("h0")] + [queuectl.Outcome(j, 1, "released") for j in sorted(expected)], 0,
                         Identity())
        expected.add("h0")
    _, claimed, _ = store.worker_round([], 1, Identity())
    assert [j["id"] for j in claimed] == ["j0"]
    payloads = []

    def write(fd: int, data: bytes) -> int:
        payloads.append(data)
        return torn_write(CUTS[cut])(fd, data)

    with patched(os=OsProxy(write=write)), pytest.raises(Crash):
        store.worker_round([ran("j0")], 0, Identity())
    whole = whole_job_written(cut, payloads[0])

    fresh = queuectl.FolderStore(str(queue.home))
    states = {j["id"]: j["state"] for j in fresh.jobs()}
    assert states["j0"] == ("completed" if whole else "processing")
    assert set(states) == expected
    jobs = check_each_job_once(queue, expected)
    for name in ("processed.json", "queue.json"):
        json.loads((queue.home / name).read_bytes())
    assert (jobs["j0"]["state"], jobs["j0"]["attempts"]) == (("completed", 1) if whole else ("pending", 0))
    if earlier_history:
        assert jobs["h0"]["state"] == "completed"


# -- 3. permissions -------------------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: every mode checked below is the one queuectl asked for, not the umask's."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


PROBE = """
import json, os, stat, sys
folder = os.path.join(sys.argv[1], "workers")
modes = {name: stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) for name in os.listdir(folder)}
modes["."] = stat.S_IMODE(os.stat(folder).st_mode)
open(sys.argv[2], "w").write(json.dumps(modes))
"""


@posix_only
def test_the_data_folder_and_every_file_in_it_are_private(queue: Queue, tmp_path: Path, open_umask: None) -> None:
    home = tmp_path / "created-by-queuectl"
    seen = tmp_path / "workers-modes.json"
    queue.ok("--home", str(home), "config", "set", "poll_interval", "0.05")
    queue.ok("--home", str(home), "enqueue", "--id", "talks", "--command", "echo hello; echo oops >&2")
    queue.ok("--home", str(home), "enqueue", "--id", "fails", "--command", "echo bad; exit 3", "--max-retries", "1")
    probe = f"{shlex.quote(sys.executable)} -c {shlex.quote(PROBE)} {shlex.quote(str(home))} {shlex.quote(str(seen))}"
    queue.ok("--home", str(home), "enqueue", "--id", "probe", "--command", probe)
    queue.ok("--home", str(home), "worker", "start", "--burst")
    queue.ok("--home", str(home), "status")  # writes history.idx

    mode = {str(p.relative_to(home)): p.stat().st_mode & 0o777 for p in [home, *home.rglob("*")]}
    expected = {".": 0o700, "logs": 0o700, "workers": 0o700, "config.json": 0o600, "queue.json": 0o600,
                "processed.json": 0o600, "failed.json": 0o600,
                "logs/talks.log": 0o600, "logs/fails.log": 0o600}
    assert {name: mode.get(name) for name in expected} == expected
    public = {name: oct(m) for name, m in mode.items() if m & 0o077}
    assert public == {}, f"readable by others: {public}"
    queue.ok("--home", str(home), "purge", "--state", "dead", "--yes")  # writes a new failed.json beside the old
    mode = {str(p.relative_to(home)): p.stat().st_mode & 0o777 for p in [home, *home.rglob("*")]}
    assert mode["failed.json"] == mode["failed.pos"] == 0o600
    assert {name: oct(m) for name, m in mode.items() if m & 0o077} == {}

    during = json.loads(seen.read_text())  # workers/ while the probe job ran
    assert during.pop(".") == 0o700
    assert any(n.endswith(".json") for n in during) and any(n.endswith(".out") for n in during), during
    assert {name: oct(m) for name, m in during.items() if m != 0o600} == {}


@pytest.mark.parametrize("job_id", ["../x", "a/b", "..", ".", "x/../../escape", "/tmp/abs", "..\\x", ""])
def test_a_job_id_that_names_a_path_is_refused_at_enqueue(queue: Queue, tmp_path: Path, job_id: str) -> None:
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([{"id": "fine", "command": "true"}, {"id": job_id, "command": "echo x"}]))
    before = sorted(tmp_path.rglob("*"))
    refused(queue, "enqueue", "--file", str(jobs), words=("id",))
    refused(queue, "enqueue", "--json", json.dumps({"id": job_id, "command": "echo x"}), words=("id",))
    assert sorted(tmp_path.rglob("*")) == before, "nothing created, inside the data folder or out of it"
    assert not (queue.home / "queue.json").exists(), "all or nothing: 'fine' must not be enqueued either"


@posix_only
def test_a_hand_edited_id_that_names_a_path_still_writes_only_inside_logs(queue: Queue, tmp_path: Path) -> None:
    """ids are checked at enqueue; one written into queue.json by hand bypasses that check and
    must still not steer the log (or any other file) out of logs/."""
    target = tmp_path / "escaped"
    ids = ["../escaped", "../../escaped", "..", f"{target}", "logs/../../escaped", "a/b"]
    write_lines(queue.home / "queue.json", [record(j, command="echo out; exit 1", max_retries=1) for j in ids])
    outside = sorted(p for p in tmp_path.rglob("*") if queue.home not in p.parents and p != queue.home)
    ok(queue, "worker", "start", "--burst")
    assert sorted(p for p in tmp_path.rglob("*") if queue.home not in p.parents and p != queue.home) == outside
    assert not target.exists()
    logs = sorted(queue.home.joinpath("logs").iterdir())
    assert len(logs) == len(ids) and all(p.is_file() and p.suffix == ".log" for p in logs), logs
    assert {j["id"] for j in queue.file("failed.json")} == set(ids)


# -- 4. the lease of a worker on another host -----------------------------------------------------


def test_a_job_of_a_silent_worker_on_another_host_is_recovered_after_the_lease(queue: Queue) -> None:
    lease = 2.0
    ok(queue, "config", "set", "lease_timeout", str(int(lease)))
    store = queuectl.FolderStore(str(queue.home))
    store.enqueue([job("remote", "echo remote")])
    far = Identity(4242, "elsewhere")
    _, claimed, _ = store.worker_round([], 1, far)
    assert [(j["id"], j["host"], j["attempts"]) for j in claimed] == [("remote", "elsewhere", 1)]
    # What the remote worker left in the shared folder: the started attempt's scratch file, a heartbeat.
    scratch = Path(store._worker_file(far.host, far.pid, ".Worker-1.out"))
    header = queuectl.attempt_header("remote", 1, time.time(), "Worker-1", far)
    beat = time.time()
    store.heartbeat({"pid": far.pid, "host": far.host, "threads": 1, "started_at": queuectl.iso(beat),
                           "heartbeat_at": queuectl.iso(beat), "home": store.location})
    scratch.write_bytes(header + b"partial output\n")

    # Each `status`: seconds since the heartbeat when it started and when it ended, the job's
    # state after it, and the workers it showed.
    seen: list[tuple[float, float, str, list[tuple[str, int]]]] = []

    def status_state() -> str:
        started = time.time() - beat
        workers = [(w["host"], w["pid"]) for w in cli_json(queue, "status")["workers"]]
        state = {j["id"]: j for j in queue.file("queue.json")}["remote"]["state"]
        seen.append((started, time.time() - beat, state, workers))
        return state

    assert status_state() == "processing"
    time.sleep(max(0.0, beat + lease * 0.6 - time.time()))
    assert status_state() == "processing", f"recovered {seen[-1][0]:.2f} s after the heartbeat (lease {lease} s)"
    wait_until(lambda: status_state() == "pending", timeout=lease + 3, interval=0.1,
               what="the job of the silent remote worker to return to pending")
    within_lease = [s for s in seen if s[1] < lease - 0.05]
    assert len(within_lease) >= 2 and all(state == "processing" and workers == [("elsewhere", 4242)]
                                          for _, _, state, workers in within_lease), \
        f"recovered (or not shown alive) before the lease ran out: {seen}"
    assert seen[-1][1] >= lease, seen

    job_now = cli_json(queue, "show", "remote")
    assert (job_now["state"], job_now["attempts"]) == ("pending", 1), "the attempt that was cut off counts"
    assert "elsewhere" in job_now["error"] and "pid" not in job_now and "host" not in job_now
    log = (queue.home / "logs" / "remote.log").read_text()
    assert "partial output" in log and "the worker died" in log
    assert not Path(store._worker_file(far.host, far.pid)).exists() and not scratch.exists()
    assert queue.json("status")["workers"] == []  # and in a process of its own
