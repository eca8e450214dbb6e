"""Reliability under abuse, with real processes on a real data folder.

1. Kill torture: two worker processes run 300 short jobs while a random one of them is killed
   with SIGKILL ten times (and replaced each time). Nothing may be lost, stuck, torn or left
   running, and a job may run again only if a killed worker held it.
2. Races: eight processes enqueue 800 jobs while two workers drain them and a ninth process
   loops over `status --json`, `list --json` and `dlq retry --all`. Every job runs exactly once
   and every command succeeds with well-formed output.

Both wait for conditions with deadlines and kill everything they started (workers, the jobs'
commands, helper processes) in a `finally`. Set QUEUECTL_TORTURE_SEED to replay a kill schedule.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from conftest import Queue, SCRIPT, fast, kill_group, q, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses SIGKILL, sessions and /proc")

STATE_FILES = ("queue.json", "processed.json", "failed.json")


# -- helpers ----------------------------------------------------------------------------


def enqueue_many(queue: Queue, jobs: list[dict[str, Any]], path: Path) -> None:
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs), "utf-8")
    queue.ok("enqueue", "--file", str(path))


def snapshot(queue: Queue) -> dict[str, list[dict[str, Any]]] | None:
    """file name -> its jobs, read without the lock; None when a file was caught mid-append
    (the caller polls again)."""
    files = {}
    for name in STATE_FILES:
        path = queue.home / name
        try:
            files[name] = json.loads(path.read_text("utf-8")) if path.exists() else []
        except (ValueError, OSError):
            return None
    return files


def all_settled(queue: Queue, total: int) -> bool:
    """Every job is completed or dead, and nothing is left in queue.json."""
    files = snapshot(queue)
    return (files is not None and files["queue.json"] == []
            and len(files["processed.json"]) + len(files["failed.json"]) == total)


def is_zombie(pid: int) -> bool:
    """An exited process nobody reaped: this container's PID 1 does not reap orphans, so a
    killed command of a dead worker may stay a zombie for ever. A zombie runs nothing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def processes_of(home: Path, sleep_marker: str | None = None) -> dict[int, str]:
    """Live processes started for this data folder: their environment holds its QUEUECTL_HOME
    (workers, the jobs' shells and their children, helper processes), or, with sleep_marker,
    a `sleep` whose argument carries the marker. pid -> command line."""
    needle = f"QUEUECTL_HOME={home}".encode()
    pattern = re.compile(rf"\d\.\d{{3}}{sleep_marker}\d{{3}}\Z") if sleep_marker else None
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            environ = []
        ours = needle in environ
        if pattern and len(argv) >= 2 and argv[0].endswith(b"sleep"):
            ours = ours or bool(pattern.match(argv[1].decode("utf-8", "replace")))
        if ours and not is_zombie(pid):
            found[pid] = " ".join(a.decode("utf-8", "replace") for a in argv if a)
    return found


def kill_everything(queue: Queue, procs: list[subprocess.Popen], sleep_marker: str | None = None) -> None:
    """Cleanup: the processes we started (with their process groups), then whatever they left."""
    for proc in procs:
        kill_group(proc)
    for _ in range(3):  # a dying shell may start one more child: look again
        left = processes_of(queue.home, sleep_marker)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)


def lines_of(path: Path) -> list[str]:
    return path.read_text("utf-8").splitlines() if path.exists() else []


def parse_all_state_files(queue: Queue) -> dict[str, list[dict[str, Any]]]:
    """Every state file parses as a JSON array of jobs (a failure names the file)."""
    files = {}
    for name in STATE_FILES + ("config.json",):
        path = queue.home / name
        if not path.exists():
            files[name] = []
            continue
        text = path.read_text("utf-8")
        try:
            files[name] = json.loads(text)
        except ValueError as error:
            raise AssertionError(f"{name} does not parse as JSON ({error}):\n{text[-2000:]}") from None
    for name in STATE_FILES:
        assert isinstance(files[name], list), f"{name} is not a JSON array"
    return files


# -- 1. kill torture ----------------------------------------------------------------------

JOBS = 300
THREADS = 4
KILLS = 10


def test_kill_torture_loses_nothing_and_reruns_only_what_a_killed_worker_held(queue: Queue, tmp_path: Path) -> None:
    seed = int(os.environ.get("QUEUECTL_TORTURE_SEED") or int.from_bytes(os.urandom(4), "big"))
    rng = random.Random(seed)
    about = f"(seed {seed}; rerun with QUEUECTL_TORTURE_SEED={seed})"
    fast(queue)
    results = tmp_path / "results.txt"
    # Every sleep's argument is unique to this run (marker) and job (last three digits), so a
    # command that outlives the test can be found in /proc; its first four characters are the
    # job's random 0-200 ms.
    marker = f"{int.from_bytes(os.urandom(4), 'big') % 10**6:06d}"
    ids = [f"t{n:03d}" for n in range(JOBS)]
    # Each run appends "start ID <its shell's pid> <its worker's pid>" before its sleep and
    # "end ID <its shell's pid>" after it.
    sleeps = [rng.randrange(201) / 1000 for _ in ids]
    jobs = [{"id": job_id, "command": f"echo start {job_id} $$ $PPID >> {q(results)}; "
                                      f"sleep {sleeps[n]:.3f}{marker}{n:03d}; "
                                      f"echo end {job_id} $$ >> {q(results)}"}
            for n, job_id in enumerate(ids)]
    # The run cannot take less than its sleeps spread over every thread; the kills fall in the
    # first 70% of that, a random interval apart.
    pace = 0.7 * sum(sleeps) / (2 * THREADS) / KILLS
    enqueue_many(queue, jobs, tmp_path / "jobs.jsonl")
    max_retries = queue.file("queue.json")[0]["max_retries"]

    started = time.monotonic()
    worker_pids: list[int] = []

    def start_worker() -> subprocess.Popen:
        proc = queue.start_worker("--count", str(THREADS), log=tmp_path / f"worker-{len(worker_pids) + 1}.out")
        worker_pids.append(proc.pid)
        return proc

    def running_in(lines: list[str], worker_pid: int) -> int:
        """Runs in this worker that have started and not ended, as these results lines show."""
        fields = [line.split() for line in lines]
        ended = {(f[1], f[2]) for f in fields if f[0] == "end"}
        return sum(1 for f in fields if f[0] == "start" and len(f) == 4 and f[3] == str(worker_pid)
                   and (f[1], f[2]) not in ended)

    live = [start_worker(), start_worker()]
    killed: list[int] = []
    kill_line: dict[int, int] = {}  # killed worker pid -> how many results lines were written before the kill
    running_at_kill: list[int] = []  # how many commands of its victim ran at each kill

    def busy_workers() -> tuple[list[str], list[subprocess.Popen]] | None:
        lines = lines_of(results)
        busy = [proc for proc in live if running_in(lines, proc.pid)]
        return (lines, busy) if busy else None

    try:
        wait_until(lambda: lines_of(results), 20, what="the first job to start")
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.5 * pace, 1.5 * pace))  # the schedule, not a wait for something
            # A random one of the workers that run a command now (a fresh replacement may not yet).
            before, busy = wait_until(busy_workers, 10, interval=0.01,
                                      what=f"a worker running a command for kill {len(killed) + 1} {about}")
            victim = rng.choice(busy)
            live.remove(victim)
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(timeout=10)
            killed.append(victim.pid)
            kill_line[victim.pid] = len(before)
            running_at_kill.append(running_in(before, victim.pid))
            live.append(start_worker())
        kills_done = time.monotonic() - started
        # On this host a dead worker's jobs are recovered at once, not after the 30 s lease.
        wait_until(lambda: all_settled(queue, JOBS), 25, what=f"all {JOBS} jobs to be completed or dead {about}")
        queue.ok("worker", "stop", "--wait", timeout=30)
        exit_codes = [proc.wait(timeout=30) for proc in live]
        leftovers = processes_of(queue.home, marker)
    finally:
        kill_everything(queue, queue.procs, marker)
    elapsed = time.monotonic() - started

    assert exit_codes == [0, 0], f"the surviving workers did not stop cleanly: {exit_codes}"
    assert leftovers == {}, f"processes of this test still running after the end: {leftovers}"
    assert all(running_at_kill), f"a kill missed the run (commands running at each kill: {running_at_kill})"

    # The state files: each parses, no job is in two of them (or twice in one), nothing active.
    files = parse_all_state_files(queue)
    where = Counter(job["id"] for name in STATE_FILES for job in files[name])
    assert [job_id for job_id, n in where.items() if n > 1] == [], "a job is in two state files (or twice in one)"
    assert files["queue.json"] == [], "jobs left pending, processing or failed"
    final = {job["id"]: job for name in ("processed.json", "failed.json") for job in files[name]}
    assert sorted(final) == ids, "jobs lost or invented"
    for job in files["processed.json"]:
        assert job["state"] == "completed" and job["exit_code"] == 0, job
    for job in files["failed.json"]:
        assert job["state"] == "dead" and job["attempts"] == max_retries, (
            f"job {job['id']} is in the DLQ without using up its {max_retries} attempts: {job}")

    # What really ran, in the order the runs wrote it.
    runs: dict[str, list[tuple[int, int]]] = defaultdict(list)  # id -> [(shell pid, worker pid)]
    start_at: dict[tuple[str, int], int] = {}
    end_at: dict[tuple[str, int], int] = {}
    for index, line in enumerate(lines_of(results)):
        fields = line.split()
        if fields[0] == "start" and len(fields) == 4:
            runs[fields[1]].append((int(fields[2]), int(fields[3])))
            start_at[fields[1], int(fields[2])] = index
        else:
            assert fields[0] == "end" and len(fields) == 3, f"torn line {index} in results: {line!r}"
            end_at[fields[1], int(fields[2])] = index

    assert sorted(runs) == ids, f"jobs that never ran: {sorted(set(ids) - set(runs))}"
    for job_id, job in final.items():
        if job["state"] == "completed":
            assert any((job_id, shell) in end_at for shell, _ in runs[job_id]), (
                f"job {job_id} is completed but no run of it reached its end")

    problems = []
    # Never two runs of one job at once: no run starts while an earlier run of it still goes on
    # (a run of a killed worker must be killed by the recovery before the job runs again).
    overlaps = [(job_id, a, b) for job_id, shells in runs.items()
                for i, (a, _) in enumerate(shells) for b, _ in shells[i + 1:]
                if end_at.get((job_id, a), -1) > start_at[job_id, b]]
    if overlaps:
        headers = {job_id: re.findall(r"^=== .*$", (queue.home / "logs" / f"{job_id}.log").read_text("utf-8"), re.M)
                   for job_id, _, _ in overlaps if (queue.home / "logs" / f"{job_id}.log").exists()}
        problems.append(f"runs of one job overlapped (id, earlier shell, later shell): {overlaps}; "
                        f"their logs: {headers}")
    # A job runs again only after a kill: every run but a job's last was in a killed worker. (A
    # shell whose $PPID is no worker of ours started after its worker had died: a killed one.)
    reruns = [(job_id, shell, worker) for job_id, shells in runs.items() for shell, worker in shells[:-1]]
    stray = [(job_id, worker) for job_id, _, worker in reruns if worker in worker_pids and worker not in killed]
    if stray:
        problems.append(f"jobs ran more than once without a kill of their worker (id, worker pid): {stray}")
    per_kill = Counter(worker for _, _, worker in reruns)
    if len(reruns) > KILLS * THREADS:
        ended_before = [job_id for job_id, shell, worker in reruns
                        if (job_id, shell) in end_at and end_at[job_id, shell] < kill_line.get(worker, -1)]
        problems.append(
            f"{len(reruns)} duplicate runs after {KILLS} kills of {THREADS}-thread workers (at most "
            f"{KILLS * THREADS}); per killed pid: {dict(per_kill)}; {len(ended_before)} of them re-ran a job "
            f"whose command had already ended before its worker was killed: {ended_before}")
    # Every run is an attempt counted (a run in a killed worker counts too).
    undercounted = {job_id: (len(runs[job_id]), job["attempts"]) for job_id, job in final.items()
                    if len(runs[job_id]) > job["attempts"]}
    if undercounted:
        problems.append(f"jobs that ran more often than their attempts say (runs, attempts): {undercounted}")
    assert problems == [], "\n".join(problems) + f"\n{about}; commands running at each kill: {running_at_kill}"

    print(f"\nkill torture {about}: {KILLS} kills in {kills_done:.1f} s, all settled after {elapsed:.1f} s; "
          f"{len(reruns)} duplicate runs, per killed pid {sorted(per_kill.values(), reverse=True)}; "
          f"dead {len(files['failed.json'])}; commands running at each kill {running_at_kill}")


# -- 2. races ------------------------------------------------------------------------------

ENQUEUERS = 8
PER_ENQUEUER = 100

# The ninth process: status, list and dlq retry in a loop until told to stop. It writes one
# JSON line per command: what ran, its exit code and stderr, and what its output showed.
READER_LOOP = r"""
import json, os, subprocess, sys
script, stop, report = sys.argv[1:4]
with open(report, "w") as out:
    while not os.path.exists(stop):
        for args in (["status", "--json"], ["list", "--json"], ["dlq", "retry", "--all"]):
            proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
            entry = {"args": args, "rc": proc.returncode, "stderr": proc.stderr}
            if "--json" in args:
                try:
                    entry["value"] = json.loads(proc.stdout)
                except ValueError as error:
                    entry["bad_json"] = f"{error}: {proc.stdout[:2000]!r}"
                if args[0] == "list" and isinstance(entry.get("value"), list):
                    entry["value"] = [[job.get("id"), job.get("state")] for job in entry["value"]]
            else:
                entry["stdout"] = proc.stdout
            out.write(json.dumps(entry) + "\n")
            out.flush()
"""


def test_enqueue_status_list_and_dlq_retry_race_with_two_workers(queue: Queue, tmp_path: Path) -> None:
    fast(queue)
    results = tmp_path / "results.txt"
    ids = [f"p{p}-{i:03d}" for p in range(ENQUEUERS) for i in range(PER_ENQUEUER)]
    # One job per enqueuer fails once (max_retries 1: straight to the DLQ), so the reader's
    # `dlq retry --all` has something to race for; after the retry it succeeds.
    flaky = [f"flaky{p}" for p in range(ENQUEUERS)]
    markers = tmp_path / "markers"
    markers.mkdir()

    def flaky_command(job_id: str) -> str:
        mark = q(markers / job_id)
        return (f"if [ -e {mark} ]; then echo {job_id} $PPID >> {q(results)}; "
                f"else echo {job_id} failed >> {mark}; exit 3; fi")

    scripts = []
    for p in range(ENQUEUERS):
        lines = []
        for i in range(PER_ENQUEUER):
            job_id = f"p{p}-{i:03d}"
            lines.append(f'"$PY" "$SCRIPT" enqueue --id {job_id} '
                         f'--command {shlex.quote(f"echo {job_id} $PPID >> {q(results)}")} || failed {job_id}')
            if i == PER_ENQUEUER // 2:
                lines.append(f'"$PY" "$SCRIPT" enqueue --id flaky{p} --max-retries 1 '
                             f'--command {shlex.quote(flaky_command(f"flaky{p}"))} || failed flaky{p}')
        path = tmp_path / f"enqueuer-{p}.sh"
        path.write_text('failed() { echo "enqueue $1 exited $?" >&2; exit 1; }\n' + "\n".join(lines) + "\n")
        scripts.append(path)

    env = dict(queue.env(), PY=sys.executable, SCRIPT=SCRIPT)
    stop, report = tmp_path / "stop-reader", tmp_path / "reader.jsonl"
    helpers: list[subprocess.Popen] = []
    started = time.monotonic()
    try:
        workers = [queue.start_worker("--count", "2", log=tmp_path / f"worker-{k}.out") for k in range(2)]
        reader = subprocess.Popen([sys.executable, "-c", READER_LOOP, SCRIPT, str(stop), str(report)],
                                  env=env, cwd=str(queue.home), stdout=subprocess.DEVNULL,
                                  stderr=open(tmp_path / "reader.err", "wb"), start_new_session=True)
        helpers.append(reader)
        enqueuers = [subprocess.Popen(["sh", str(path)], env=env, cwd=str(queue.home),
                                      stdout=open(tmp_path / f"enqueuer-{p}.out", "wb"),
                                      stderr=open(tmp_path / f"enqueuer-{p}.err", "wb"), start_new_session=True)
                     for p, path in enumerate(scripts)]
        helpers.extend(enqueuers)
        enqueue_codes = [proc.wait(timeout=90) for proc in enqueuers]
        enqueued_after = time.monotonic() - started
        total = len(ids) + len(flaky)
        if all(code == 0 for code in enqueue_codes):
            wait_until(lambda: all_settled(queue, total), 60, what=f"all {total} jobs to complete")
        stop.touch()
        reader_code = reader.wait(timeout=30)
        queue.ok("worker", "stop", "--wait", timeout=30)
        worker_codes = [proc.wait(timeout=30) for proc in workers]
        leftovers = processes_of(queue.home)
    finally:
        kill_everything(queue, queue.procs + helpers)
    elapsed = time.monotonic() - started

    for p, code in enumerate(enqueue_codes):
        assert code == 0, f"enqueuer {p} failed:\n{(tmp_path / f'enqueuer-{p}.err').read_text()}"
        printed = lines_of(tmp_path / f"enqueuer-{p}.out")
        expected = [f"p{p}-{i:03d}" for i in range(PER_ENQUEUER)] + [f"flaky{p}"]
        assert sorted(printed) == sorted(f"Enqueued job: {job_id}" for job_id in expected), printed
    assert reader_code == 0, (tmp_path / "reader.err").read_text()
    assert worker_codes == [0, 0]
    assert leftovers == {}, f"processes of this test still running after the end: {leftovers}"

    # Every command the reader ran exited 0 and printed what it should.
    entries = [json.loads(line) for line in lines_of(report)]
    kinds = Counter(entry["args"][0] for entry in entries)
    assert min(kinds[kind] for kind in ("status", "list", "dlq")) >= 5, f"the reader ran too little: {kinds}"
    totals: list[int] = []
    listed: list[int] = []
    requeued: list[str] = []
    for entry in entries:
        command = "queuectl " + " ".join(entry["args"])
        assert entry["rc"] == 0 and entry["stderr"] == "", f"{command} -> {entry['rc']}: {entry['stderr']}"
        assert "bad_json" not in entry, f"{command} printed what is not JSON: {entry['bad_json']}"
        if entry["args"][0] == "status":
            counts = entry["value"]["counts"]
            assert set(counts) == {"pending", "processing", "failed", "completed", "dead", "cancelled"}, counts
            totals.append(sum(counts.values()))
        elif entry["args"][0] == "list":
            jobs = entry["value"]
            assert len({job_id for job_id, _ in jobs}) == len(jobs), f"list --json showed a job twice: {jobs}"
            listed.append(len(jobs))
        else:
            out = entry["stdout"].splitlines()
            assert out == ["The DLQ is empty."] or all(line.startswith("Requeued job: ") for line in out), out
            requeued += [line.split(": ", 1)[1] for line in out if line.startswith("Requeued job: ")]
    # Jobs only ever arrive (nothing here removes one): what status and list see never shrinks.
    assert totals == sorted(totals) and totals[-1] <= total, f"status totals went down: {totals}"
    assert listed == sorted(listed) and listed[-1] <= total, f"list --json lengths went down: {listed}"
    assert sorted(requeued) == sorted(flaky), f"dlq retry --all requeued {requeued}, expected each flaky job once"

    # Each job ran exactly once (the flaky ones once more, failing, before their retry).
    runs = Counter(line.split()[0] for line in lines_of(results))
    assert sorted(runs) == sorted(ids + flaky), f"jobs that never ran: {sorted(set(ids + flaky) - set(runs))}"
    assert [job_id for job_id, n in runs.items() if n != 1] == [], "a job ran more than once"
    for job_id in flaky:
        assert lines_of(markers / job_id) == [f"{job_id} failed"], f"{job_id} should have failed exactly once"
    files = parse_all_state_files(queue)
    assert files["queue.json"] == [] and files["failed.json"] == []
    processed = {job["id"]: job for job in files["processed.json"]}
    assert len(processed) == len(files["processed.json"]) == total and sorted(processed) == sorted(ids + flaky)
    assert all(job["state"] == "completed" and job["attempts"] == 1 for job in processed.values()), (
        [job for job in processed.values() if job["attempts"] != 1])
    final = queue.json("status")["counts"]
    assert final == {"pending": 0, "processing": 0, "failed": 0, "completed": total, "dead": 0, "cancelled": 0}, final

    print(f"\nraces: {total} jobs enqueued by {ENQUEUERS} processes in {enqueued_after:.1f} s, all done after "
          f"{elapsed:.1f} s; reader ran {dict(kinds)}")
