"""The folder store's bookkeeping that the CLI tests cannot see directly: the history
index, the lock, and reads that must not parse what they do not need. These tests of folder
mechanics use FolderStore's privates (_locked, _history_view, ...) on purpose."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import queuectl


def history(home: Path, ids: list[str], name: str = "processed.json") -> None:
    lines = [queuectl.dump_line({"id": i, "command": "echo " + "x" * 60, "state": "completed", "attempts": 1}).encode()
             for i in ids]
    (home / name).write_bytes(queuectl.render_array(lines))


def test_history_index_counts_and_finds_ids_across_megabyte_regions(tmp_path: Path) -> None:
    ids = [f"h{n}" for n in range(30_000)]  # about 3 MB: several read regions
    history(tmp_path, ids)
    store = queuectl.FolderStore(str(tmp_path))
    assert store.finished_count("completed") == 30_000
    assert (tmp_path / "history.idx").exists()
    probe = ["h0", "h29999", "h12345", "absent", "h30000"]
    assert store._ids_in_history(probe) == {"h0": "completed", "h29999": "completed", "h12345": "completed"}


def test_history_index_reads_only_what_was_appended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    history(tmp_path, [f"h{n}" for n in range(1000)])
    queuectl.FolderStore(str(tmp_path)).finished_count("completed")  # builds the index
    store = queuectl.FolderStore(str(tmp_path))
    store._append("processed.json", [queuectl.dump_line({"id": "late", "command": "x", "state": "completed",
                                                          "attempts": 1})])
    offsets = []
    real = queuectl._regions
    monkeypatch.setattr(queuectl, "_regions",
                        lambda handle, offset, *end: offsets.append(offset) or real(handle, offset, *end))
    fresh = queuectl.FolderStore(str(tmp_path))
    assert fresh.finished_count("completed") == 1001
    assert fresh._ids_in_history(["late", "h7", "nope"]) == {"late": "completed", "h7": "completed"}
    size = (tmp_path / "processed.json").stat().st_size
    assert offsets and offsets[0] > size - 200, f"the whole file was read again: offsets {offsets}"


def test_history_index_notices_a_file_rewritten_in_place(tmp_path: Path) -> None:
    history(tmp_path, ["a1", "a2", "a3"])
    assert queuectl.FolderStore(str(tmp_path)).finished_count("completed") == 3
    path = tmp_path / "processed.json"
    text = path.read_text().replace("a3", "b3")  # same size, same inode
    with open(path, "r+") as handle:
        handle.write(text)
    store = queuectl.FolderStore(str(tmp_path))
    assert store._ids_in_history(["b3", "a3"]) == {"b3": "completed"}


def test_a_damaged_line_in_appended_history_is_reported(tmp_path: Path) -> None:
    history(tmp_path, ["a1", "a2"])
    queuectl.FolderStore(str(tmp_path)).finished_count("completed")
    path = tmp_path / "processed.json"
    data = path.read_bytes()
    path.write_bytes(data[:-3] + b',\n{"id":"a3",\n{"id":"a4","command":"x","state":"completed"}\n]\n')
    with pytest.raises(queuectl.CorruptFileError, match="processed.json"):
        queuectl.FolderStore(str(tmp_path)).finished_count("completed")


def hold_lock(home: Path) -> subprocess.Popen:
    """Another process that holds the queue's lock until killed."""
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time, queuectl; queuectl.PosixFileLock(sys.argv[1]).acquire(); "
                               "print('held', flush=True); time.sleep(30)",
                               str(home / "queuectl.lock")], stdout=subprocess.PIPE, text=True,
                              cwd=str(Path(queuectl.__file__).parent))
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_the_posix_lock_excludes_another_process_and_times_out(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path)
    try:
        lock = queuectl.PosixFileLock(str(tmp_path / "queuectl.lock"))
        started = time.monotonic()
        with pytest.raises(queuectl.LockTimeout):
            lock.acquire(timeout=0.3)
        assert time.monotonic() - started >= 0.3
    finally:
        holder.kill()
        holder.wait()
    lock.acquire(timeout=5)  # free once the holder is gone
    lock.release()


@pytest.mark.skipif(os.name != "posix", reason="flock is POSIX")
def test_the_lock_is_the_data_folder_so_deleting_files_cannot_open_it(tmp_path: Path) -> None:
    holder = hold_lock(tmp_path)
    try:
        for path in tmp_path.iterdir():  # what a tmp cleaner or a tidy user would do
            path.unlink()
        (tmp_path / "queuectl.lock").write_text("")
        with pytest.raises(queuectl.LockTimeout):
            queuectl.PosixFileLock(str(tmp_path / "queuectl.lock")).acquire(timeout=0.3)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.skipif(os.name != "posix", reason="flock is POSIX")
def test_a_replaced_data_folder_is_locked_anew(tmp_path: Path) -> None:
    home = tmp_path / "q"
    home.mkdir()
    lock = queuectl.PosixFileLock(str(home / "queuectl.lock"))
    lock.acquire(timeout=1)
    lock.release()
    home.rmdir()
    home.mkdir()
    lock.acquire(timeout=1)
    try:
        assert os.fstat(lock._fd).st_ino == home.stat().st_ino
    finally:
        lock.release()


@pytest.mark.skipif(os.name != "posix", reason="flock is POSIX")
def test_where_a_folder_cannot_be_locked_the_lock_file_is(tmp_path: Path, monkeypatch) -> None:
    import errno
    import fcntl

    real = fcntl.flock

    def nfs_like(fd: int, operation: int) -> None:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EBADF, "Bad file descriptor")
        real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", nfs_like)
    lock = queuectl.PosixFileLock(str(tmp_path / "queuectl.lock"))
    lock.acquire(timeout=1)
    try:
        assert os.fstat(lock._fd).st_ino == (tmp_path / "queuectl.lock").stat().st_ino
    finally:
        lock.release()


def test_windows_takes_filelock_and_posix_takes_flock(tmp_path: Path) -> None:
    import filelock

    assert isinstance(queuectl.make_file_lock(str(tmp_path / "l"), "win32"), filelock.BaseFileLock)
    assert isinstance(queuectl.make_file_lock(str(tmp_path / "l"), "linux"), queuectl.PosixFileLock)


class Identity:
    def __init__(self, pid: int, host: str = queuectl.HOST) -> None:
        self.pid, self.host = pid, host


def test_a_late_result_from_a_worker_that_lost_its_claim_is_ignored(tmp_path: Path) -> None:
    """Worker A was taken for dead (its lease ran out), B claimed the job again; when A's
    result finally arrives it must not overwrite B's claim."""
    store = queuectl.FolderStore(str(tmp_path))
    config = store.config()
    store.enqueue([queuectl.normalize_job({"id": "j", "command": "true"}, config)])
    a, b = Identity(1_000_001), Identity(1_000_002)
    _, claimed, _ = store.worker_round([], 1, a)
    assert claimed[0]["attempts"] == 1
    with store._locked():  # what recovery does once A counts as dead
        store._load_queue()
        job = queuectl.requeued(store._jobs["j"], queuectl.now_ts(), counted=True)  # the folder store's privates:
        store._keep_active(job)
        store._file_for_claim(job)
        store._save_queue()
    _, claimed, _ = store.worker_round([], 1, b)
    assert claimed[0]["attempts"] == 2 and claimed[0]["pid"] == b.pid
    late = queuectl.Outcome("j", 1, exit_code=0, worker="Worker-1", started=queuectl.now_ts())
    recorded, _, _ = store.worker_round([late], 0, a)
    assert recorded == []
    job = queuectl.FolderStore(str(tmp_path)).get("j")
    assert job["state"] == "processing" and job["pid"] == b.pid
    mine = queuectl.Outcome("j", 2, exit_code=0, worker="Worker-1", started=queuectl.now_ts())
    recorded, _, _ = store.worker_round([mine], 0, b)
    assert [what for _, what in recorded] == ["completed"]


def test_the_id_filter_has_few_false_positives_for_ids_that_look_alike(tmp_path: Path) -> None:
    """ids such as later-063301 and hist-0000001 differ in a few characters; a weak hash put
    8% of such ids in the filter, and each such miss costs a read of the whole history."""
    history(tmp_path, [f"hist-{n:07d}" for n in range(20_000)])
    index = queuectl.FolderStore(str(tmp_path))._history_index("processed.json")
    assert all(index.might_hold(f"hist-{n:07d}") for n in range(0, 20_000, 97))
    false_positives = sum(index.might_hold(f"later-{n:06d}") for n in range(60_000, 80_000))
    assert false_positives <= 20, f"{false_positives} of 20,000 absent ids looked present"


def test_a_failed_write_does_not_leave_the_cache_ahead_of_the_file(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A round whose queue.json write fails (disk full) must not leave its claims in the
    process's cache: the next round would think them written and the jobs would be stuck."""
    store = queuectl.FolderStore(str(tmp_path))
    store.enqueue([queuectl.normalize_job({"id": "j", "command": "true"}, store.config())])
    worker = Identity(os.getpid())
    real = queuectl.atomic_write

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(queuectl, "atomic_write", full_disk)
    with pytest.raises(queuectl.QueueError, match="queue.json"):
        store.worker_round([], 1, worker)
    monkeypatch.setattr(queuectl, "atomic_write", real)
    _, claimed, _ = store.worker_round([], 1, worker)
    assert [job["id"] for job in claimed] == ["j"], "the job must still be claimable"


def finished_history(home: Path, count: int, name: str = "processed.json", state: str = "completed") -> list[dict]:
    """`count` jobs finished one second apart, ending now, in queuectl's layout."""
    now = time.time()
    jobs = [{"id": f"{state}{n}", "command": "echo " + "x" * 60, "state": state, "attempts": 1,
             "finished_at": queuectl.iso(now - count + n), "updated_at": queuectl.iso(now - count + n)}
            for n in range(count)]
    (home / name).write_bytes(queuectl.render_array(queuectl.dump_line(job).encode() for job in jobs))
    return jobs


def test_the_newest_finished_jobs_are_read_from_the_end_of_the_file(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = finished_history(tmp_path, 30_000)  # about 3.5 MB: lines cross the 1 MB read boundaries
    store = queuectl.FolderStore(str(tmp_path))
    monkeypatch.setattr(store, "_repair_history", lambda name: pytest.fail("parsed the whole history"))
    for limit in (0, 1, 200, 9_000, 30_000, 40_000):
        assert store.newest("completed", limit) == jobs[::-1][:limit]
    assert store.newest("dead", 5) == []  # no failed.json


def test_jobs_finished_since_a_time_are_read_from_the_end_of_the_file(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = finished_history(tmp_path, 20_000)
    store = queuectl.FolderStore(str(tmp_path))
    read = []
    real = queuectl.HistoryView.backward

    def backward(view: queuectl.HistoryView, name: str):
        for job in real(view, name):
            read.append(job)
            yield job

    monkeypatch.setattr(queuectl.HistoryView, "backward", backward)
    monkeypatch.setattr(queuectl.HistoryView, "forward", lambda *args: pytest.fail("read from the start"))
    since = time.time() - 3600
    assert sorted(j["id"] for j in store.finished_since(since)) == sorted(
        j["id"] for j in jobs if queuectl._epoch(j["finished_at"]) >= since)
    assert 3600 <= len(read) <= 3600 + 302  # the hour, and the 5 minutes of slack it reads beyond it


def test_a_history_file_in_another_layout_is_read_whole_and_still_right(tmp_path: Path) -> None:
    jobs = finished_history(tmp_path, 50)
    (tmp_path / "processed.json").write_text(json.dumps(jobs, indent=2))  # reformatted by a person
    store = queuectl.FolderStore(str(tmp_path))
    assert store.newest("completed", 3) == jobs[::-1][:3]
    (tmp_path / "failed.json").write_text("[\n]\n")
    assert store.newest("dead", 3) == []


def test_the_folder_store_implements_every_verb_of_the_store_contract() -> None:
    verbs = [name for name, value in vars(queuectl.BaseStore).items() if callable(value) and not name.startswith("_")]
    missing = [name for name in verbs if getattr(queuectl.FolderStore, name) is getattr(queuectl.BaseStore, name)]
    assert len(verbs) >= 30 and missing == [], missing
    with pytest.raises(NotImplementedError):
        queuectl.BaseStore().enqueue([])
