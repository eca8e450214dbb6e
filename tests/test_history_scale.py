"""A long history costs nothing it does not have to: one finished job is found through the
positions file (no JSON but its own line), `list --limit` reads the start of the history only,
readers hold the lock only to take a snapshot, and `purge` copies the history without the lock,
losing none of the jobs that workers append meanwhile.

The targets with a million finished jobs are measured by bench/bench.py (the history scenario);
these tests prove the behaviour behind them, with real processes where other processes matter.

These tests of folder mechanics use FolderStore's privates where they must.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import queuectl
from conftest import ROOT, Queue, fast, wait_until

DAY = 86400.0


def finished(n: int, state: str = "completed", prefix: str = "h", age_days: float = 30.0) -> list[dict]:
    """n finished jobs, one a second, the first `age_days` ago."""
    start = time.time() - age_days * DAY
    jobs = []
    for i in range(n):
        stamp = queuectl.iso(start + i)
        jobs.append({"id": f"{prefix}{i:06d}", "command": f"echo {i}", "state": state, "attempts": 1,
                     "max_retries": 3, "priority": 0, "created_at": stamp, "updated_at": stamp,
                     "finished_at": stamp, "exit_code": 0 if state == "completed" else 1, "error": None})
    return jobs


def write_history(home: Path, jobs: list[dict], name: str = "processed.json") -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / name).write_bytes(queuectl.render_array(queuectl.dump_line(job).encode() for job in jobs))


def positions(home: Path, name: str = "processed.pos") -> bytes:
    return (home / name).read_bytes()


# -- one job among many: the positions file -------------------------------------------


def test_any_finished_job_is_found_through_its_position_after_appends_and_a_purge(queue: Queue) -> None:
    jobs = finished(5000)
    write_history(queue.home, jobs)
    for job_id in ("h000000", "h002500", "h004999"):
        assert queue.json("show", job_id)["id"] == job_id
    records = positions(queue.home)
    assert records[:8] == queuectl.POSITIONS_MAGIC and len(records) == 16 * 5001, "one record per job"

    store = queuectl.FolderStore(str(queue.home))
    with store._locked():
        store._append(queuectl.PROCESSED_FILE,
                      [queuectl.dump_line(job) for job in finished(10, prefix="new", age_days=0.001)])
    assert queue.json("show", "new000009")["id"] == "new000009"
    assert len(positions(queue.home)) == 16 * 5011, "the appended jobs' records were appended"

    queue.ok("purge", "--older-than", f"{30 * DAY - 2500:.0f}s", "--yes")  # the oldest ~2,500 go
    assert queue.run("show", "h000000").returncode == 1
    assert queue.json("show", "h004999")["id"] == "h004999"
    assert queue.json("show", "new000000")["id"] == "new000000"
    left = json.loads((queue.home / "processed.json").read_text())
    assert len(positions(queue.home)) == 16 * (len(left) + 1), "the purged file's positions were written anew"


@pytest.mark.parametrize("damage", ["deleted", "another file's", "cut short", "wrong offsets"])
def test_a_positions_file_that_does_not_fit_is_never_trusted(queue: Queue, damage: str) -> None:
    jobs = finished(3000)
    write_history(queue.home, jobs)
    assert queue.json("show", "h001234")["id"] == "h001234"  # builds the caches
    path = queue.home / "processed.pos"
    data = path.read_bytes()
    if damage == "deleted":
        path.unlink()
    elif damage == "another file's":
        path.write_bytes(queuectl.positions_header(12345) + data[16:])
    elif damage == "cut short":
        path.write_bytes(data[:16 * 1000])
    else:  # every record points at the first job's line
        first = data[16 + 8:16 + 16]
        path.write_bytes(data[:16] + b"".join(data[i:i + 8] + first for i in range(16, len(data), 16)))
    for job_id in ("h000000", "h001234", "h002999"):
        assert queue.json("show", job_id)["id"] == job_id, damage
    assert queue.run("show", "nosuch").returncode == 1


def test_list_with_a_limit_reads_only_the_start_of_the_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_history(tmp_path, finished(20_000))
    write_history(tmp_path, finished(100, "dead", "d"), "failed.json")
    store = queuectl.FolderStore(str(tmp_path))
    store.finished_count("completed")  # the caches, as any earlier command leaves them
    parsed = []
    real = queuectl.HistoryView._checked
    monkeypatch.setattr(queuectl.HistoryView, "_checked",
                        lambda view, name, line: parsed.append(1) or real(view, name, line))
    monkeypatch.setattr(store, "_repair_history", lambda *args: pytest.fail("parsed a whole history file"))
    assert [job["id"] for job in store.jobs(None, 20)] == [f"h{i:06d}" for i in range(20)]
    assert [job["id"] for job in store.jobs("dead", 3)] == ["d000000", "d000001", "d000002"]
    assert [job["id"] for job in store.jobs("completed", 2, newest_first=True)] == ["h019999", "h019998"]
    assert len(parsed) <= 3 * 500, f"{len(parsed)} lines parsed for 25 jobs"


def test_a_crash_duplicate_is_listed_once_as_its_newest_copy(tmp_path: Path) -> None:
    """A dlq retry cut short leaves the dead copy in failed.json and the job pending again."""
    dead = finished(3, "dead", "d")
    write_history(tmp_path, dead, "failed.json")
    again = dict(dead[1], state="pending", attempts=0, updated_at=queuectl.iso(time.time()))
    for key in ("finished_at", "exit_code"):
        again.pop(key)
    write_history(tmp_path, [again], "queue.json")
    store = queuectl.FolderStore(str(tmp_path))
    assert [(job["id"], job["state"]) for job in store.jobs()] == [
        ("d000001", "pending"), ("d000000", "dead"), ("d000002", "dead")]
    assert [job["id"] for job in store.jobs("dead")] == ["d000000", "d000002"]
    assert store.get("d000001")["state"] == "pending"


# -- readers do not hold the lock while they read ---------------------------------------

# Runs a queuectl command in which reading the history (a finished job's line, or the jobs one
# by one) stops at its first step until the file `go` exists; `reading` says it got there.
PAUSED_READER = """
import os, sys, time
sys.path.insert(0, {root!r})
import queuectl

def pause():
    open({reading!r}, "w").close()
    while not os.path.exists({go!r}):
        time.sleep(0.01)

for name in ("find", "lines", "backward"):
    real = getattr(queuectl.HistoryView, name)
    def paused(self, *args, real=real, **kwargs):
        if queuectl.HistoryView.paused_once:
            return real(self, *args, **kwargs)
        queuectl.HistoryView.paused_once = True
        pause()
        return real(self, *args, **kwargs)
    setattr(queuectl.HistoryView, name, paused)
queuectl.HistoryView.paused_once = False
sys.exit(queuectl.main(["--home", {home!r}, *sys.argv[1:]]))
"""


@pytest.mark.parametrize("command", [["stats"], ["show", "h001000"], ["list", "--state", "completed"],
                                     ["purge", "--older-than", "1d", "--yes"]])
def test_a_reader_of_the_history_holds_no_lock_while_it_reads(queue: Queue, tmp_path: Path,
                                                            command: list[str]) -> None:
    write_history(queue.home, finished(2000))
    queue.ok("status")
    reading, go = tmp_path / "reading", tmp_path / "go"
    reader = subprocess.Popen([sys.executable, "-c", PAUSED_READER.format(
        root=str(ROOT), reading=str(reading), go=str(go), home=str(queue.home)), *command],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    queue.procs.append(reader)
    wait_until(reading.exists, 15, what=f"{command[0]} to start reading the history")
    # While it is in the middle of its read, other commands take the lock and write.
    queue.ok("enqueue", "--id", "meanwhile", "--command", "true", timeout=5)
    queue.ok("config", "set", "poll_interval", "0.1", timeout=5)
    go.touch()
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err.decode()
    assert queue.json("show", "meanwhile")["state"] == "pending"
    if command[0] == "purge":
        assert b"Purged 2000 job(s)" in out, out


def test_purge_while_workers_append_loses_no_job(queue: Queue, tmp_path: Path) -> None:
    """Workers finish jobs (appending to processed.json) all through a purge that copies the
    history without the lock: the purge is held in the middle of its copy while they append
    hundreds of results, then goes on. The old jobs go, every new one stays, none twice."""
    old = finished(60_000, age_days=30)
    write_history(queue.home, old)
    fast(queue)
    queue.ok("status")
    new = [f"n{i:04d}" for i in range(800)]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"id": job_id, "command": "sleep 0.01"}) + "\n" for job_id in new))
    queue.ok("enqueue", "--file", str(jobs))
    size = (queue.home / "processed.json").stat().st_size

    def finished_new() -> int:
        with open(queue.home / "processed.json", "rb") as handle:
            handle.seek(size - 3)
            return handle.read().count(b'{"id":"n')

    workers = [queue.start_worker("--count", "2", "--burst", log=tmp_path / f"w{n}.out") for n in range(2)]
    wait_until(lambda: finished_new() >= 20, 30, what="workers to finish jobs")
    reading, go = tmp_path / "reading", tmp_path / "go"
    script = PAUSED_READER.format(root=str(ROOT), reading=str(reading), go=str(go), home=str(queue.home))
    purge = subprocess.Popen([sys.executable, "-c", script, "purge", "--older-than", "1d", "--yes"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    queue.procs.append(purge)
    wait_until(reading.exists, 15, what="the purge to start copying")
    before = finished_new()
    wait_until(lambda: finished_new() >= before + 200, 30, what="workers to finish 200 jobs during the purge")
    go.touch()
    out, err = purge.communicate(timeout=120)
    assert purge.returncode == 0, err.decode()
    assert b"Purged 60000 job(s)" in out, out
    for worker in workers:
        assert worker.wait(timeout=60) == 0
    done = json.loads((queue.home / "processed.json").read_text())
    ids = [job["id"] for job in done]
    assert sorted(ids) == new, f"{len(ids)} jobs left, {len(set(ids))} distinct; expected the {len(new)} new ones"
    assert queue.json("show", "n0799")["state"] == "completed"
    assert queue.run("show", "h000000").returncode == 1


def test_stats_counts_every_finished_job_in_one_pass(queue: Queue) -> None:
    write_history(queue.home, finished(3000))
    write_history(queue.home, finished(30, "dead", "d"), "failed.json")
    write_history(queue.home, finished(7, "cancelled", "c"), "cancelled.json")
    data = queue.json("stats")
    assert data["finished"] == {"completed": 3000, "dead": 30, "cancelled": 7}
    recent = queue.json("stats", "--since", "1h")
    assert recent["finished"] == {"completed": 0, "dead": 0, "cancelled": 0}
    assert os.path.exists(queue.home / "failed.pos")


def test_percentiles_of_many_numbers_are_exact_without_sorting_them_all() -> None:
    import random
    from array import array

    rng = random.Random(7)
    values = [rng.paretovariate(0.7) for _ in range(120_000)] + [0.25] * 30_000  # outliers and ties
    ordered = sorted(values)
    got = queuectl.percentiles(array("d", values), 0.5, 0.95, 0.0, 1.0)
    assert got == [ordered[74_999], ordered[142_499], ordered[0], ordered[-1]]
    assert queuectl.percentiles(array("d"), 0.5) == [None]


def test_a_text_filter_skips_unparsed_only_lines_that_cannot_match(tmp_path: Path) -> None:
    jobs = finished(3000)
    jobs[10]["command"] = "echo Ｋ ＫELVIN \u212aelvin"  # the Kelvin sign lowercases to an ASCII k
    jobs[20]["error"] = 'said "quoted" \\ back'
    jobs[2990]["command"] = "echo Needle"
    write_history(tmp_path, jobs)
    store = queuectl.FolderStore(str(tmp_path))

    def page(query: str) -> list[str]:
        return [job["id"] for job in queuectl.dashboard_jobs(store, "completed", query, 5)]

    assert page("kelvin") == ["h000010"]
    assert page('"quoted"') == ["h000020"] and queuectl.text_hint('"quoted"') is None
    assert page("needle") == ["h002990"]
    assert page("ECHO 299") == [f"h00{n}" for n in range(2999, 2994, -1)]
    assert page("nothing like it") == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to see this process's open files")
def test_purge_on_windows_holds_no_file_open_that_it_replaces(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows cannot replace a file that is open, not even by the process that opened it (on
    Linux the old file stays open until the lock is released: its blocks are freed after it)."""
    write_history(tmp_path, finished(3000))
    store = queuectl.FolderStore(str(tmp_path))
    store.finished_count("completed")
    real = queuectl.replace_with_retry
    replaced = []

    def replace(src: str, dst: str, *args, **kwargs) -> None:
        try:
            target = os.stat(dst)
        except FileNotFoundError:
            target = None
        for fd in os.listdir("/proc/self/fd"):
            try:
                st = os.stat(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            assert target is None or not os.path.samestat(st, target), f"{dst} is open while it is replaced"
        replaced.append(os.path.basename(dst))
        real(src, dst, *args, **kwargs)

    monkeypatch.setattr(queuectl, "replace_with_retry", replace)
    assert store.purge(["completed"], time.time() - 20 * DAY, apply=True, platform="win32") == {"completed": 3000}
    assert {"processed.json", "processed.pos"} <= set(replaced)
