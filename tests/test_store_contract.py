"""The store contract: one set of user stories for BaseStore's verbs, run against every store.

`store` is one fixture with a parameter per store (STORE_FACTORIES): the folder store, and
MemoryStore below, a queue kept in this process that applies the same rules (claimed_job,
settle_outcome, settle_orphan, cancelled_job, revived) and keeps nothing in files but the
worker's scratch files. A new store (PostgreSQL) joins by adding one entry to STORE_FACTORIES.
The last test runs a real worker pool on the memory store: the worker speaks only in verbs.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import queuectl
from queuectl import (FINISHED_STATES, Attempt, BaseStore, JobExists, LogRecord, NoSuchJob, Outcome, QueueError,
                      WorkerIdentity, iso, now_ts)

# -- a second store: the queue in memory ---------------------------------------------------------


class MemoryStore(BaseStore):
    """A queue that lives in this process's memory. It only keeps state: what becomes of a job is
    decided by the rule functions every store applies. Each attempt's output is kept as bytes; the
    scratch files commands write into are the worker's, real files in a private temporary folder."""

    def __init__(self) -> None:
        self.location = self.location_for_jobs = f"memory://{id(self):x}"  # a job that opens it is refused
        self.notes: list[str] = []
        self._lock = threading.RLock()  # the worker's threads and its main thread share the store
        self._active: dict[str, dict[str, Any]] = {}  # in queue order: enqueued (or revived) first, first
        self._finished: dict[str, dict[str, dict[str, Any]]] = {state: {} for state in FINISHED_STATES}
        self._outputs: dict[str, list[tuple[bytes, bytes, str, bool, int]]] = {}  # header, output, ending...
        self._late: dict[tuple[str, int], tuple[str, int]] = {}  # (id, attempt) -> (file, where it starts)
        self._config = dict(queuectl.DEFAULT_CONFIG)
        self._beats: dict[tuple[str, int], dict[str, Any]] = {}
        self._stop_at: float | None = None
        self._paused_at: float | None = None
        self._scratch_dir: str | None = None
        self._scratch: dict[tuple[str, int], set[str]] = {}  # each worker's scratch files
        self._version = self._seen = 0  # changes to the queue, and how many the last worker round saw
        self._watched: set[str] = set()  # the ids whose stop the last cancel requested
        self._endings: dict[str, str] = {}

    def prepare(self) -> None:
        """Nothing to get ready."""

    def close(self) -> None:
        if self._scratch_dir is not None:
            shutil.rmtree(self._scratch_dir, ignore_errors=True)

    def _find(self, job_id: str) -> dict[str, Any] | None:
        if job_id in self._active:
            return self._active[job_id]
        return next((jobs[job_id] for jobs in self._finished.values() if job_id in jobs), None)

    def _put(self, job: dict[str, Any]) -> None:
        """Keep a job as a rule made it: finished, or active (in its place in the queue)."""
        if job["state"] not in FINISHED_STATES:
            self._active[job["id"]] = job
            return
        self._active.pop(job["id"], None)
        self._finished[job["state"]][job["id"]] = job
        if job["id"] in self._watched:
            self._endings[job["id"]] = job["state"]
        for waiter in [waiter for waiter in self._active.values() if job["id"] in waiter.get("waiting_for", ())]:
            self._put(queuectl.dependency_ended(waiter, job["id"], job["state"], now_ts()))

    # -- the queue
    def enqueue(self, jobs: list[dict[str, Any]]) -> None:
        ids = [job["id"] for job in jobs]
        if len(set(ids)) != len(ids):
            raise QueueError("a job id appears twice in the input; nothing was enqueued.")
        with self._lock:
            for job in jobs:
                if (found := self._find(job["id"])) is not None:
                    raise JobExists(f"job {job['id']!r} already exists ({found['state']}); nothing was enqueued.")
            for job in queuectl.entering_jobs(jobs, self.states_of, now_ts()):
                self._put(dict(job))
            self._version += 1

    def restore(self, jobs: list[dict[str, Any]]) -> None:
        with self._lock:
            for job in jobs:
                if (found := self._find(job["id"])) is not None:
                    raise JobExists(f"job {job['id']!r} already exists ({found['state']}); nothing was imported.")
            for job in jobs:
                self._put(dict(job))
            self._version += 1

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._find(job_id)
            return dict(job) if job is not None else None

    def jobs(self, state: str | None = None, limit: int | None = None,
             where: Callable[[dict[str, Any]], bool] | None = None, newest_first: bool = False,
             hint: bytes | None = None) -> list[dict[str, Any]]:
        with self._lock:
            listed = [] if state in FINISHED_STATES else [job for job in self._active.values()
                                                          if state in (None, job["state"])]
            for finished in FINISHED_STATES if state is None else [state] if state in FINISHED_STATES else []:
                ordered = list(self._finished[finished].values())
                listed += reversed(ordered) if newest_first else ordered
            chosen = [dict(job) for job in listed if where is None or where(job)]
        return chosen[:limit] if limit is not None else chosen

    def newest(self, state: str, limit: int) -> list[dict[str, Any]]:
        return self.jobs(state, limit, newest_first=True)

    def counts(self) -> dict[str, int]:
        now = now_ts()
        with self._lock:
            counts = dict.fromkeys(queuectl.STATES, 0)
            counts["scheduled"] = counts["waiting"] = 0
            for job in self._active.values():
                counts[job["state"]] += 1
                counts["scheduled"] += job["state"] == "pending" and queuectl._epoch(job.get("run_at")) > now
                counts["waiting"] += bool(job.get("waiting_for"))
            counts.update((state, len(jobs)) for state, jobs in self._finished.items())
            return counts

    def finished_count(self, state: str) -> int:
        return len(self._finished[state])

    def states_of(self, ids: Iterable[str]) -> dict[str, str]:
        with self._lock:
            return {job_id: job["state"] for job_id in ids if (job := self._find(job_id)) is not None}

    def active_jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(job) for job in self._active.values()]

    def finished_since(self, since: float | None = None) -> Iterator[dict[str, Any]]:
        with self._lock:
            found = [dict(job) for jobs in self._finished.values() for job in jobs.values()
                     if since is None or queuectl._finished_at(job) >= since]
        yield from found

    def cancel(self, ids: list[str]) -> dict[str, tuple[str, str]]:
        with self._lock:
            now = now_ts()
            results: dict[str, tuple[str, str]] = {}
            for job_id in dict.fromkeys(ids):
                job = self._find(job_id)
                active, finished = (None, job) if job and job["state"] in FINISHED_STATES else (job, None)
                what, state, becomes = queuectl.cancel_decision(active, finished, now)
                results[job_id] = (what, state)
                if becomes is not None:
                    self._put(becomes)
            requested = {job_id for job_id, (what, _) in results.items() if what == "requested"}
            if requested:
                self._watched, self._endings = requested, {}
                for job in self._recover(now, None):  # a dead worker's job is cancelled now
                    if job["state"] == "cancelled" and job["id"] in requested:
                        results[job["id"]] = ("cancelled", "processing")
            self._version += 1
            return results

    def ended_since_cancel(self, ids: Iterable[str]) -> dict[str, str]:
        with self._lock:
            return {job_id: self._endings[job_id] for job_id in ids if job_id in self._endings}

    def dlq_retry(self, ids: list[str] | None) -> list[str]:
        with self._lock:
            dead = self._finished["dead"]
            wanted = list(dead) if ids is None else list(dict.fromkeys(ids))
            for job_id in wanted:
                if job_id not in dead:
                    job = self._find(job_id)
                    if job is None:
                        raise NoSuchJob(f"job {job_id!r} is not in the DLQ (no such job).")
                    raise QueueError(f"job {job_id!r} is not in the DLQ (it is {job['state']}).")
            now = now_ts()
            self._active.update((job_id, queuectl.revived(dead.pop(job_id), now)) for job_id in wanted)
            self._version += 1
            return wanted

    def requeue(self, ids: list[str]) -> list[str]:
        with self._lock:
            ids = list(dict.fromkeys(ids))
            for job_id in ids:
                refusal = queuectl.requeue_refusal(job_id, self._find(job_id))
                if refusal:
                    raise refusal
            back = queuectl.requeued_jobs([self._find(job_id) for job_id in ids], self.states_of, now_ts())
            for job in back:
                del self._finished[self._find(job["id"])["state"]][job["id"]]
                self._active[job["id"]] = job
            self._version += 1
            return ids

    def purge(self, states: Iterable[str], before: float | None, apply: bool) -> dict[str, int]:
        counts = {}
        with self._lock:
            for state in states:
                jobs = self._finished[state]
                doomed = [job_id for job_id, job in jobs.items()
                          if before is None or queuectl._finished_at(job) < before]
                counts[state] = len(doomed)
                for job_id in doomed if apply else []:
                    del jobs[job_id]
                    self._outputs.pop(job_id, None)
                    for path, _ in [self._late.pop(key) for key in list(self._late) if key[0] == job_id]:
                        queuectl._quietly(lambda path=path: os.unlink(path))
        return counts

    def recover_orphans(self) -> list[dict[str, Any]]:
        with self._lock:
            recovered = self._recover(now_ts(), None)
            self._version += bool(recovered)
            return recovered

    def _recover(self, now: float, me: WorkerIdentity | None) -> list[dict[str, Any]]:
        """Settle the jobs of dead workers (settle_orphan), then forget those workers."""
        processing = [job for job in self._active.values() if job["state"] == "processing"]
        dead = queuectl.dead_workers(self.workers(), processing, self._config["lease_timeout"], now)
        dead.discard((me.host, me.pid) if me else None)
        recovered = []
        for job in processing:
            if (job.get("host"), job.get("pid")) in dead:
                job, _ = queuectl.settle_orphan(job, self._salvage(job), now)
                self._put(job)
                recovered.append(job)
        for host, pid in dead:
            self.forget_worker(host, pid)
        return recovered

    def _salvage(self, job: dict[str, Any]) -> bool:
        """Keep what a dead worker's attempt wrote; whether that attempt had started at all."""
        path = self._attempt_scratch(job)
        if path is None:
            return False
        with open(path, "rb") as scratch:
            header = scratch.readline(queuectl.LOG_LINE_MAX)
            self._keep(job["id"], header, scratch.read(), "the worker died", True)
        return True

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def set_config(self, key: str, value: Any) -> None:
        self._config[key] = value

    def check(self) -> None:
        """Nothing stored can be damaged."""

    # -- workers
    def worker_round(self, outcomes: list[Outcome], want: int, worker: WorkerIdentity, recover: bool = False,
                     running: Iterable[tuple[str, int]] = ()
                     ) -> tuple[list[tuple[dict[str, Any], str]], list[dict[str, Any]], list[str]]:
        with self._lock:
            now = now_ts()
            recorded = []
            for outcome in outcomes:
                job = self._active.get(outcome.job_id)
                if queuectl.holds_claim(job, worker, outcome.attempt):
                    job, what = queuectl.settle_outcome(job, outcome, self._config, now, queuectl._chance)
                    self._put(job)
                    recorded.append((job, what))
            if recover:
                recorded += [(job, "recovered") for job in self._recover(now, worker)]
            due = [job for job in self._active.values() if queuectl.is_due(job, now)]
            due.sort(key=lambda job: -job.get("priority", 0))  # stable: the oldest first within a priority
            claimed = [] if self._paused_at is not None else [
                queuectl.claimed_job(job, worker, now) for job in due[:max(0, want)]]
            self._active.update((job["id"], job) for job in claimed)
            cancels = [job["id"] for job in self._active.values() if job.get("cancel_requested_at")
                       and queuectl.holds_claim(job, worker, job["attempts"])]
            cancels += [job_id for job_id, attempt in running
                        if not queuectl.holds_claim(self._active.get(job_id), worker, attempt)]
            self._version += bool(recorded or claimed)
            self._seen = self._version
            return [(dict(job), what) for job, what in recorded], [dict(job) for job in claimed], cancels

    def next_due(self) -> float | None:
        with self._lock:
            times = [queuectl._epoch(job["run_at"]) if job.get("run_at") else 0.0
                     for job in self._active.values() if job["state"] != "processing" and not job.get("waiting_for")]
        if not times:
            return None
        return 0.0 if min(times) <= now_ts() else min(times)

    def changed(self) -> bool:
        return self._version != self._seen

    def has_retries_waiting(self) -> bool:
        with self._lock:
            return any(job["state"] == "failed" for job in self._active.values())

    def heartbeat(self, info: dict[str, Any]) -> None:
        with self._lock:
            self._beats[info["host"], info["pid"]] = dict(info)

    def workers(self) -> list[dict[str, Any]]:
        lease, now = self._config["lease_timeout"], now_ts()
        with self._lock:
            beats = [dict(info) for info in self._beats.values()]
        for info in beats:
            beat = queuectl._epoch(info["heartbeat_at"])
            info["alive"] = queuectl.worker_alive(info["host"], info["pid"], beat, beat, lease, now)
        return beats

    def forget_worker(self, host: str, pid: int) -> None:
        with self._lock:
            self._beats.pop((host, pid), None)
            for path in self._scratch.pop((host, pid), set()):
                queuectl._quietly(lambda path=path: os.unlink(path))

    def request_stop(self) -> None:
        self._stop_at = now_ts()

    def stop_requested_at(self) -> float | None:
        return self._stop_at

    def clear_stop(self) -> None:
        self._stop_at = None

    def pause(self) -> float | None:
        with self._lock:
            since, self._paused_at = self._paused_at, self._paused_at or now_ts()
            return since

    def resume(self) -> bool:
        with self._lock:
            was, self._paused_at = self._paused_at, None
            return was is not None

    def paused_since(self) -> float | None:
        return self._paused_at

    def clock(self) -> float:
        return now_ts()

    def schema_versions(self) -> None:
        return None  # no schema

    def migrate(self, dry_run: bool = False) -> list[str]:
        return []

    def attempt_started(self, job: dict[str, Any], worker: WorkerIdentity, header: bytes) -> bool:
        """The scratch file's header is the evidence (as in the folder store)."""
        with self._lock:
            return queuectl.holds_claim(self._active.get(job["id"]), worker, job["attempts"])

    def on_change(self, wake: Callable[[], None]) -> None:
        """Nobody else changes this queue: the worker's own rounds see everything."""

    def begin_worker(self, worker: WorkerIdentity) -> None:
        """Nothing to make."""

    def lost(self) -> str | None:
        return None  # memory does not move

    # -- output
    def new_scratch(self, worker: WorkerIdentity, name: str) -> Any:
        with self._lock:
            if self._scratch_dir is None:
                self._scratch_dir = tempfile.mkdtemp(prefix="queuectl-memory-")
            host = re.sub(r"[^A-Za-z0-9._-]", "_", worker.host)[:64]
            path = os.path.join(self._scratch_dir, f"{host}-{worker.pid}.{name}.out")
            self._scratch.setdefault((worker.host, worker.pid), set()).add(path)
            return open(path, "w+b")

    def scratch_in_place(self, handle: Any) -> bool:
        with self._lock:
            return any(handle.name in paths for paths in self._scratch.values()) and os.path.exists(handle.name)

    def remove_scratch(self, handle: Any) -> None:
        with self._lock:
            for paths in self._scratch.values():
                paths.discard(handle.name)
        queuectl._quietly(lambda: os.unlink(handle.name))

    def _attempt_scratch(self, job: dict[str, Any]) -> str | None:
        """The scratch file of the worker that holds this job's current attempt."""
        for path in sorted(self._scratch.get((job.get("host"), job.get("pid")), ())):
            try:
                with open(path, "rb") as scratch:
                    record = queuectl.scratch_attempt(scratch.readline(queuectl.LOG_LINE_MAX))
            except OSError:
                continue
            if record is not None and record.job_id == job["id"] and record.number == job["attempts"]:
                return path
        return None

    def _keep(self, job_id: str, header: bytes, output: bytes, ending: str, counted: bool) -> None:
        header = header.rstrip(b" \n") + b"\n"
        if queuectl.scratch_attempt(header) is None:
            raise OSError(f"its scratch file does not start with an attempt header: {header[:80]!r}")
        kept = self._outputs.setdefault(job_id, [])
        if kept and kept[-1][0] == header:
            return  # already kept (recovery after the worker had kept it)
        removed = max(0, len(output) - int(self._config["log_max_bytes"]))
        kept.append((header, output[removed:], ending, counted, removed))

    def keep_output(self, job_id: str, attempt: int, worker: WorkerIdentity, header: bytes, source: Any,
                    start: int, end: int, ending: str, counted: bool = True) -> bool:
        with self._lock:
            if not queuectl.holds_claim(self._active.get(job_id), worker, attempt):
                return False
            source.seek(start)
            self._keep(job_id, header, source.read(end - start), ending, counted)
            return True

    def keep_late_output(self, job_id: str, attempt: int, scratch: Any, end: int) -> None:
        scratch.close()
        with self._lock:
            for paths in self._scratch.values():
                paths.discard(scratch.name)  # the file is the store's now: no worker reuses it
            self._late[job_id, attempt] = (scratch.name, end)

    def cap_late_output(self, limit: int) -> None:
        """Late output stays as its processes write it (a test's queue is short-lived)."""

    def log_location(self, job_id: str) -> str:
        return f"{self.location} (output of {job_id})"

    def attempt_logs(self, job_id: str) -> list[Attempt]:
        with self._lock:
            kept, late = list(self._outputs.get(job_id, [])), dict(self._late)
        attempts = []
        for header, output, ending, counted, removed in kept:
            record = queuectl.scratch_attempt(header)
            assert record is not None  # checked when it was kept
            record.output_start, record.output_end = 0, len(output)
            record.end, record.ending, record.counted, record.removed = len(output), ending, counted, removed
            attempt = Attempt(record, io.BytesIO(output))
            if counted and (job_id, record.number) in late:
                attempt.late = queuectl.open_late_output(*late[job_id, record.number])
            attempts.append(attempt)
        return attempts

    def running_attempt(self, job: dict[str, Any]) -> Attempt | None:
        with self._lock:
            path = self._attempt_scratch(job) if job.get("state") == "processing" else None
        if path is None:
            return None
        with open(path, "rb") as scratch:
            whole = scratch.read()
        header = whole[:whole.find(b"\n") + 1]
        record = queuectl.scratch_attempt(header)
        if record is None or (record.job_id, record.number) != (job["id"], job["attempts"]):
            return None  # its worker went on to another attempt meanwhile
        record.output_end = len(whole)
        return Attempt(record, io.BytesIO(whole), more=lambda offset: queuectl._read_live(path, header, offset))


# -- the stores every test runs against ----------------------------------------------------------

# name -> how to open an empty queue in a test's temporary folder. A store joins the contract with one
# entry here (PostgreSQL: a fresh schema on conftest.POSTGRES_URL, skipped where no server answers).
STORE_FACTORIES: dict[str, Callable[[pytest.FixtureRequest, Path], BaseStore]] = {
    "folder": lambda request, tmp: queuectl.FolderStore(str(tmp / "q")),
    "memory": lambda request, tmp: MemoryStore(),
    # a database of its own per test (conftest's pg_url), made from a template with the schema
    "postgres": lambda request, tmp: __import__("queuectl_pg").PostgresStore(request.getfixturevalue("pg_url")),
}


@pytest.fixture(params=list(STORE_FACTORIES))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BaseStore]:
    opened = STORE_FACTORIES[request.param](request, tmp_path)
    opened.prepare()
    yield opened
    opened.close()


def job(job_id: str, command: str = "true", **fields: Any) -> dict[str, Any]:
    """A new job as `enqueue` hands it to the store."""
    return queuectl.normalize_job({"id": job_id, "command": command, **fields}, queuectl.DEFAULT_CONFIG)


def dead_worker() -> WorkerIdentity:
    """A worker on this host whose process is gone: a reaped child's pid."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    worker = WorkerIdentity()
    worker.pid = child.pid
    return worker


def other_host_worker() -> WorkerIdentity:
    worker = WorkerIdentity()
    worker.host, worker.pid = "other-host", 4242
    return worker


def beat(store: BaseStore, worker: WorkerIdentity, at: float | None = None) -> None:
    stamp = iso(now_ts() if at is None else at)
    store.heartbeat({"pid": worker.pid, "host": worker.host, "threads": 1, "started_at": stamp,
                     "heartbeat_at": stamp})


def claim(store: BaseStore, want: int = 1, worker: WorkerIdentity | None = None) -> list[dict[str, Any]]:
    return store.worker_round([], want, worker or WorkerIdentity())[1]


def ran(claimed: dict[str, Any], exit_code: int | None = 0, kind: str = "ran") -> Outcome:
    """The outcome of a claimed job's attempt, as a worker thread reports it."""
    error = None if exit_code in (0, None) else f"exit code {exit_code}"
    return Outcome(claimed["id"], claimed["attempts"], kind, exit_code=exit_code, error=error,
                   output_tail="out\n", worker="Worker-1", started=now_ts(), duration=0.01)


def settle(store: BaseStore, claimed: dict[str, Any], exit_code: int | None = 0, kind: str = "ran",
           worker: WorkerIdentity | None = None) -> list[tuple[dict[str, Any], str]]:
    return store.worker_round([ran(claimed, exit_code, kind)], 0, worker or WorkerIdentity())[0]


def run_next(store: BaseStore, exit_code: int = 0) -> str:
    """Claim the next due job and record its attempt; what happened."""
    (claimed,) = claim(store)
    ((_, what),) = settle(store, claimed, exit_code)
    return what


def outputs(store: BaseStore, job_id: str) -> list[tuple[LogRecord, bytes]]:
    """Each recorded attempt of a job: its record and its output's bytes."""
    attempts = store.attempt_logs(job_id)
    found = []
    for attempt in attempts:
        record = attempt.record
        attempt.source.seek(record.output_start)
        found.append((record, attempt.source.read(record.output_end - record.output_start)))
    for attempt in attempts:  # (attempts may share one file)
        attempt.source.close()
        if attempt.late:
            attempt.late[0].close()
    return found


def start_attempt(store: BaseStore, claimed: dict[str, Any], worker: WorkerIdentity, output: bytes,
                  name: str = "1") -> tuple[Any, bytes]:
    """What a worker's Runner does as an attempt starts: its header, then the command's output,
    in a scratch file of the store's."""
    scratch = store.new_scratch(worker, name)
    header = queuectl.attempt_header(claimed["id"], claimed["attempts"], now_ts(), "Worker-1", worker)
    scratch.write(header)
    scratch.flush()
    assert store.attempt_started(claimed, worker, header)
    scratch.write(output)
    scratch.flush()
    return scratch, header


def running_job(store: BaseStore, job_id: str, output: bytes) -> tuple[WorkerIdentity, dict[str, Any], Any, bytes]:
    """A new job claimed by this process's worker, its attempt started and `output` printed so far:
    (the worker, the claimed job, its scratch file, the attempt's header)."""
    store.enqueue([job(job_id)])
    worker = WorkerIdentity()
    (claimed,) = claim(store, 1, worker)
    scratch, header = start_attempt(store, claimed, worker, output)
    return worker, claimed, scratch, header


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return value


# -- the contract ---------------------------------------------------------------------------------


def test_the_memory_store_implements_every_verb_of_the_store_contract() -> None:
    verbs = [name for name, value in vars(BaseStore).items() if callable(value) and not name.startswith("_")]
    missing = [name for name in verbs if getattr(MemoryStore, name) is getattr(BaseStore, name)]
    assert len(verbs) >= 30 and missing == [], missing


def test_enqueued_jobs_are_pending_and_get_returns_them(store: BaseStore) -> None:
    store.enqueue([job("a", "echo a", priority=2), job("b")])
    a = store.get("a")
    assert a is not None and (a["state"], a["attempts"], a["command"], a["priority"]) == ("pending", 0, "echo a", 2)
    assert store.get("nope") is None


def test_a_jobs_cwd_and_env_are_kept_through_its_claim_and_its_end(store: BaseStore) -> None:
    env = {"MODE": "fast", "EMPTY": "", "TEXT": "a b \u00e9"}
    store.enqueue([job("here", cwd="/srv/build", env=env)])
    (claimed,) = claim(store)
    assert (claimed["cwd"], claimed["env"]) == ("/srv/build", env)
    settle(store, claimed)
    done = store.get("here")
    assert done is not None and (done["state"], done["cwd"], done["env"]) == ("completed", "/srv/build", env)


def claimable(store: BaseStore) -> list[str]:
    """The ids a round would claim now (claimed, then handed back uncounted)."""
    claimed = claim(store, 100)
    store.worker_round([ran(job, kind="released") for job in claimed], 0, WorkerIdentity())
    return [job["id"] for job in claimed]


def test_a_chain_of_jobs_that_wait_for_each_other_runs_one_after_the_other(store: BaseStore) -> None:
    store.enqueue([job("c", after=["b"]), job("b", after="a"), job("a"), job("free")])  # any order in one bulk
    assert store.counts()["waiting"] == 2 and store.counts()["pending"] == 4
    assert store.get("c")["waiting_for"] == ["b"]
    assert claimable(store) == ["a", "free"]
    a, free = claim(store, 2)
    store.worker_round([ran(a), ran(free, kind="released")], 0, WorkerIdentity())
    assert "waiting_for" not in store.get("b") and store.get("c")["waiting_for"] == ["b"]
    assert sorted(claimable(store)) == ["b", "free"]
    store.enqueue([job("d", after=["a", "c"])])  # a completed already: it waits for c only
    assert store.get("d")["waiting_for"] == ["c"]
    assert store.counts()["waiting"] == 2


def test_a_waiting_job_is_not_due_whatever_its_run_at_says(store: BaseStore) -> None:
    """An idle worker must not take a waiting job for one that is due (it would poll without
    pause): it falls due once what it waits for has completed."""
    store.enqueue([job("first", delay="1h")])
    store.restore([{**job("then"), "after": ["first"], "waiting_for": ["first"],  # as an import brings it
                    "run_at": "2020-01-01T00:00:00.000Z"}])
    claim(store, 0)
    due = store.next_due()
    assert due is not None and due > now_ts() + 3000
    assert claimable(store) == []


def test_a_dead_or_cancelled_job_cancels_the_jobs_that_wait_for_it_down_the_chain(store: BaseStore) -> None:
    store.enqueue([job("a", max_retries=1), job("b", after=["a"]), job("c", after=["b"]), job("p"),
                   job("q", after=["p"]), job("other")])
    assert run_next(store, 1) == "dead"
    for job_id, blocker in (("b", "a, which is dead"), ("c", "b, which is cancelled")):
        found = store.get(job_id)
        assert found["state"] == "cancelled" and found["attempts"] == 0 and "waiting_for" not in found
        assert found["error"] == f"cancelled: it waits for {blocker}"
    store.cancel(["p"])
    assert store.get("q")["error"] == "cancelled: it waits for p, which is cancelled"
    store.enqueue([job("late", after=["a"])])  # waits for a dead job: cancelled at once, never runs
    assert store.get("late")["state"] == "cancelled"
    assert store.counts()["waiting"] == 0 and claimable(store) == ["other"]
    with pytest.raises(QueueError, match="waits for 'a', which is dead: requeue that one first, or with it"):
        store.requeue(["b"])
    assert store.requeue(["a", "b"]) == ["a", "b"]  # a dependency's requeue revives no job by itself
    assert store.get("b")["waiting_for"] == ["a"] and store.get("c")["state"] == "cancelled"


@pytest.mark.parametrize("jobs, message", [
    ([job("x", after=["nosuch"])], "job 'x' waits for 'nosuch', which is not in the queue"),
    ([job("x", after=["y"]), job("y", after=["x"])], "wait for each other"),
])
def test_a_job_that_waits_for_an_unknown_job_or_a_cycle_is_refused_and_nothing_is_enqueued(
        store: BaseStore, jobs: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(QueueError, match=message):
        store.enqueue([job("fine"), *jobs])
    assert store.counts()["pending"] == 0


def test_restore_adds_jobs_in_every_finished_and_active_state_all_or_nothing(store: BaseStore) -> None:
    def record(job_id: str, state: str, **extra: Any) -> dict[str, Any]:
        finished = {"finished_at": "2026-01-02T00:00:00.000Z"} if state in FINISHED_STATES else {}
        return {**job(job_id), "state": state, "attempts": 1 if state != "pending" else 0, **finished, **extra}

    jobs = [record("c", "completed", exit_code=0, output="hi\n"), record("d", "dead", error="exit code 1"),
            record("x", "cancelled"), record("f", "failed", run_at="2026-01-01T00:00:00.000Z"), record("p", "pending")]
    store.restore(jobs)
    assert store.states_of([job["id"] for job in jobs]) == {job["id"]: job["state"] for job in jobs}
    assert store.get("c")["output"] == "hi\n" and store.finished_count("completed") == 1
    assert sorted(claimed["id"] for claimed in claim(store, 5)) == ["f", "p"]
    with pytest.raises(JobExists):
        store.restore([record("new", "pending"), record("c", "completed")])
    assert store.get("new") is None


def test_enqueue_is_all_or_nothing_and_refuses_an_id_that_exists_in_any_state(store: BaseStore) -> None:
    store.enqueue([job("done"), job("dead", max_retries=1), job("failing"), job("gone"), job("running"),
                   job("waiting")])
    assert [run_next(store), run_next(store, 1), run_next(store, 1)] == ["completed", "dead", "failed"]
    store.cancel(["gone"])
    claim(store)
    existing = {"done": "completed", "dead": "dead", "failing": "failed", "gone": "cancelled",
                "running": "processing", "waiting": "pending"}
    assert store.states_of(existing) == existing
    for job_id in existing:
        with pytest.raises(JobExists):
            store.enqueue([job("new"), job(job_id)])
        assert store.get("new") is None, "a refused enqueue added nothing"
    with pytest.raises(QueueError):
        store.enqueue([job("twice"), job("twice")])
    assert store.get("twice") is None


def test_jobs_lists_active_jobs_first_then_finished_ones_in_the_order_they_finished(store: BaseStore) -> None:
    store.enqueue([job("c1"), job("c2"), job("d", max_retries=1), job("x"), job("p1"), job("p2")])
    assert [run_next(store), run_next(store), run_next(store, 1)] == ["completed", "completed", "dead"]
    store.cancel(["x"])
    assert [j["id"] for j in store.jobs()] == ["p1", "p2", "c1", "c2", "d", "x"]
    assert [j["id"] for j in store.jobs("pending")] == ["p1", "p2"]
    assert [j["id"] for j in store.jobs("completed")] == ["c1", "c2"]
    assert [j["id"] for j in store.jobs(limit=3)] == ["p1", "p2", "c1"]
    assert [j["id"] for j in store.jobs(where=lambda j: j["id"] in ("p2", "d"))] == ["p2", "d"]
    assert [j["id"] for j in store.newest("completed", 1)] == ["c2"]
    assert sorted(j["id"] for j in store.active_jobs()) == ["p1", "p2"]


def test_counts_states_of_and_finished_since_say_where_each_job_is(store: BaseStore) -> None:
    before = now_ts() - 1
    store.enqueue([job("c"), job("d", max_retries=1), job("p"), job("later", delay="1h")])
    assert [run_next(store), run_next(store, 1)] == ["completed", "dead"]
    assert store.counts() == {"pending": 2, "processing": 0, "failed": 0, "completed": 1, "dead": 1,
                              "cancelled": 0, "scheduled": 1, "waiting": 0}
    assert store.finished_count("completed") == 1 and store.finished_count("cancelled") == 0
    assert store.states_of(["c", "d", "p", "nope"]) == {"c": "completed", "d": "dead", "p": "pending"}
    assert sorted(j["id"] for j in store.finished_since(before)) == ["c", "d"]
    assert sorted(j["id"] for j in store.finished_since()) == ["c", "d"]
    assert list(store.finished_since(now_ts() + 3600)) == []


def test_a_worker_round_claims_the_highest_priority_then_the_oldest(store: BaseStore) -> None:
    store.enqueue([job("low1"), job("high1", priority=5), job("high2", priority=5), job("low2"),
                   job("urgent", priority=9)])
    order = [claim(store)[0]["id"] for _ in range(5)]
    assert order == ["urgent", "high1", "high2", "low1", "low2"]
    assert claim(store) == []
    running = store.get("high1")
    assert running is not None and (running["state"], running["attempts"]) == ("processing", 1)
    assert (running["pid"], running["host"]) == (os.getpid(), queuectl.HOST)


def test_a_worker_round_claims_no_more_than_it_wants(store: BaseStore) -> None:
    store.enqueue([job(f"j{n}") for n in range(5)])
    assert [j["id"] for j in claim(store, 3)] == ["j0", "j1", "j2"]
    assert store.counts()["processing"] == 3


def test_a_job_due_later_is_not_claimed_before_its_run_at(store: BaseStore) -> None:
    store.enqueue([job("later", delay="1h"), job("at", run_at=iso(now_ts() + 3600))])
    assert claim(store, 2) == []
    assert store.counts()["scheduled"] == 2
    due = store.next_due()
    assert due is not None and due > now_ts() + 3000


def test_next_due_changed_and_has_retries_waiting_are_what_an_idle_worker_polls(store: BaseStore) -> None:
    store.enqueue([job("now"), job("later", delay="1h")])
    claim(store, 0)
    assert store.next_due() == 0 and not store.changed() and not store.has_retries_waiting()
    (claimed,) = claim(store)
    assert store.next_due() > now_ts() + 3000
    settle(store, claimed, 1)
    assert store.has_retries_waiting()


def test_a_successful_attempt_completes_the_job(store: BaseStore) -> None:
    store.enqueue([job("ok")])
    (claimed,) = claim(store)
    ((recorded, what),) = settle(store, claimed, 0)
    assert what == "completed" and recorded["id"] == "ok"
    done = store.get("ok")
    assert done is not None and (done["state"], done["attempts"], done["exit_code"]) == ("completed", 1, 0)
    assert "pid" not in done and done["output"] == "out\n"


def test_a_failed_attempt_with_attempts_left_waits_its_backoff(store: BaseStore) -> None:
    store.enqueue([job("flaky", max_retries=3)])
    (claimed,) = claim(store)
    settled_at = now_ts()
    assert settle(store, claimed, 3)[0][1] == "failed"
    failed = store.get("flaky")
    assert failed is not None and (failed["state"], failed["attempts"], failed["error"]) == ("failed", 1, "exit code 3")
    wait = queuectl._epoch(failed["run_at"]) - settled_at
    assert 1.5 < wait < 2.5, "backoff_base ** attempts: 2 s after the first failure"
    assert claim(store) == [] and store.counts()["failed"] == 1


def test_a_job_that_keeps_failing_is_retried_after_its_backoff_then_dead_after_max_retries(store: BaseStore) -> None:
    store.set_config("max_backoff", 0.05)  # the backoff, capped short
    store.enqueue([job("broken", max_retries=2)])
    (first,) = claim(store)
    assert settle(store, first, 1)[0][1] == "failed"
    (second,) = wait_until(lambda: claim(store), what="the retry to fall due")
    assert second["attempts"] == 2
    ((_, what),) = settle(store, second, 1)
    assert what == "dead" and store.states_of(["broken"]) == {"broken": "dead"}
    assert store.jobs("dead")[0]["attempts"] == 2 and claim(store) == []


@pytest.mark.parametrize("kind", ["released", "interrupted"])
def test_an_attempt_that_never_really_ran_goes_back_to_pending_uncounted(store: BaseStore, kind: str) -> None:
    store.enqueue([job("j")])
    (claimed,) = claim(store)
    assert settle(store, claimed, None, kind)[0][1] == kind
    back = store.get("j")
    assert back is not None and (back["state"], back["attempts"]) == ("pending", 0)
    assert claim(store)[0]["attempts"] == 1


def test_an_outcome_is_recorded_only_while_the_attempt_is_its_workers_claim(store: BaseStore) -> None:
    store.enqueue([job("j")])
    (claimed,) = claim(store)
    assert settle(store, claimed, 0, worker=other_host_worker()) == []
    assert store.states_of(["j"]) == {"j": "processing"}
    assert settle(store, {**claimed, "attempts": 2}, 0) == []
    assert settle(store, claimed, 0)[0][1] == "completed"


def test_cancel_a_pending_job_cancels_it_at_once(store: BaseStore) -> None:
    store.enqueue([job("p")])
    assert store.cancel(["p"]) == {"p": ("cancelled", "pending")}
    cancelled = store.get("p")
    assert cancelled is not None
    assert (cancelled["state"], cancelled["error"]) == ("cancelled", "cancelled while pending")
    assert claim(store) == []


def test_cancel_a_running_job_asks_its_worker_whose_outcome_settles_it_cancelled(store: BaseStore) -> None:
    store.enqueue([job("r")])
    (claimed,) = claim(store)
    assert store.cancel(["r"]) == {"r": ("requested", "processing")}
    assert store.states_of(["r"]) == {"r": "processing"}
    assert store.worker_round([], 0, WorkerIdentity())[2] == ["r"], "the worker learns it in its next round"
    assert store.worker_round([], 0, other_host_worker())[2] == [], "another worker is not asked"
    assert settle(store, claimed, None, "cancelled")[0][1] == "cancelled"
    cancelled = store.get("r")
    assert cancelled is not None and cancelled["state"] == "cancelled" and cancelled["attempts"] == 1
    assert store.cancel(["r"]) == {"r": ("finished", "cancelled")}


def test_cancel_a_finished_or_unknown_job_says_so(store: BaseStore) -> None:
    store.enqueue([job("done")])
    run_next(store)
    assert store.cancel(["done", "nope"]) == {"done": ("finished", "completed"), "nope": ("unknown", "")}


def test_cancel_a_dead_workers_running_job_cancels_it_at_once(store: BaseStore) -> None:
    store.enqueue([job("orphan")])
    gone = dead_worker()
    beat(store, gone)
    claim(store, 1, gone)
    assert store.cancel(["orphan"]) == {"orphan": ("cancelled", "processing")}
    assert store.states_of(["orphan"]) == {"orphan": "cancelled"}


def test_how_a_cancelled_running_job_ended_stays_readable_after_a_purge(store: BaseStore) -> None:
    store.enqueue([job("r")])
    (claimed,) = claim(store)
    store.cancel(["r"])
    settle(store, claimed, None, "cancelled")
    assert store.purge(["cancelled"], None, apply=True) == {"cancelled": 1}
    assert store.states_of(["r"]) == {}
    assert store.ended_since_cancel(["r"]) == {"r": "cancelled"}


def test_dlq_retry_sends_dead_jobs_back_with_their_attempts_reset(store: BaseStore) -> None:
    store.enqueue([job("d1", max_retries=1), job("d2", max_retries=1), job("d3", max_retries=1)])
    assert [run_next(store, 1) for _ in range(3)] == ["dead", "dead", "dead"]
    assert store.dlq_retry(["d2"]) == ["d2"]
    back = store.get("d2")
    assert back is not None and (back["state"], back["attempts"]) == ("pending", 0)
    assert "finished_at" not in back and "exit_code" not in back
    assert sorted(store.dlq_retry(None)) == ["d1", "d3"]
    assert store.counts()["dead"] == 0 and len(claim(store, 5)) == 3


def test_requeue_sends_completed_dead_and_cancelled_jobs_back_with_their_fields_and_output(store: BaseStore) -> None:
    store.enqueue([job("done", "echo done", priority=3, env={"A": "1"}), job("dead", max_retries=1), job("gone"),
                   job("waiting")])
    worker = WorkerIdentity()
    (claimed,) = claim(store, 1, worker)
    scratch, header = start_attempt(store, claimed, worker, b"first run\n")
    store.keep_output("done", claimed["attempts"], worker, header, scratch, len(header), scratch.tell(), "exit code 0")
    settle(store, claimed, worker=worker)
    assert run_next(store, 1) == "dead"
    store.cancel(["gone"])
    assert store.states_of(["done", "dead", "gone"]) == {"done": "completed", "dead": "dead", "gone": "cancelled"}

    assert store.requeue(["done", "dead", "gone", "done"]) == ["done", "dead", "gone"]
    back = {job_id: store.get(job_id) for job_id in ("done", "dead", "gone")}
    for job_id, again in back.items():
        assert again is not None and (again["state"], again["attempts"]) == ("pending", 0), job_id
        assert not {"finished_at", "exit_code", "cancel_requested_at"} & set(again), again
    assert (back["done"]["command"], back["done"]["priority"], back["done"]["env"]) == ("echo done", 3, {"A": "1"})
    assert [output for _, output in outputs(store, "done")] == [b"first run\n"], "the old attempt's output stays"
    counts = store.counts()
    assert (counts["completed"], counts["dead"], counts["cancelled"], counts["pending"]) == (0, 0, 0, 4)
    assert [claimed["id"] for claimed in claim(store, 5)] == ["done", "waiting", "dead", "gone"]  # priority first


def test_requeue_refuses_an_active_or_unknown_job_and_then_changes_nothing(store: BaseStore) -> None:
    store.enqueue([job("done"), job("waiting")])
    assert run_next(store) == "completed"
    for ids, message in ((["done", "waiting"], "job 'waiting' is pending: only a completed, dead or cancelled"),
                         (["done", "nosuch"], "no job with id 'nosuch'")):
        with pytest.raises(QueueError) as refused:
            store.requeue(ids)
        assert message in str(refused.value) and "nothing was requeued" in str(refused.value)
        assert store.states_of(["done", "waiting"]) == {"done": "completed", "waiting": "pending"}
    with pytest.raises(NoSuchJob):
        store.requeue(["nosuch"])


def test_dlq_retry_refuses_a_job_that_is_not_dead(store: BaseStore) -> None:
    store.enqueue([job("p")])
    with pytest.raises(NoSuchJob):
        store.dlq_retry(["nope"])
    with pytest.raises(QueueError, match="pending"):
        store.dlq_retry(["p"])
    assert store.dlq_retry(None) == []


def test_purge_deletes_finished_jobs_by_state_and_age_and_leaves_active_ones(store: BaseStore) -> None:
    store.enqueue([job("c1"), job("c2"), job("d", max_retries=1), job("p")])
    assert [run_next(store), run_next(store), run_next(store, 1)] == ["completed", "completed", "dead"]
    assert store.purge(["completed", "dead"], now_ts() - 3600, apply=True) == {"completed": 0, "dead": 0}
    assert store.purge(["completed"], None, apply=False) == {"completed": 2}
    assert store.finished_count("completed") == 2, "a dry run deletes nothing"
    assert store.purge(["completed"], now_ts() + 1, apply=True) == {"completed": 2}
    assert store.states_of(["c1", "c2", "d", "p"]) == {"d": "dead", "p": "pending"}
    assert store.purge(list(FINISHED_STATES), None, apply=True) == {"completed": 0, "dead": 1, "cancelled": 0}
    assert store.states_of(["d", "p"]) == {"p": "pending"}


def test_purge_deletes_a_jobs_output_with_it(store: BaseStore) -> None:
    worker, claimed, scratch, header = running_job(store, "talks", b"said something\n")
    store.keep_output("talks", 1, worker, header, scratch, len(header), len(header) + 15, "exit code 0")
    settle(store, claimed, 0)
    assert len(outputs(store, "talks")) == 1
    store.purge(["completed"], None, apply=True)
    assert outputs(store, "talks") == []
    scratch.close()
    store.remove_scratch(scratch)


def test_recover_orphans_returns_a_dead_workers_unstarted_job_to_pending_uncounted(store: BaseStore) -> None:
    store.enqueue([job("orphan")])
    gone = dead_worker()
    beat(store, gone)
    claim(store, 1, gone)
    (recovered,) = store.recover_orphans()
    assert (recovered["id"], recovered["state"], recovered["attempts"]) == ("orphan", "pending", 0)
    assert store.states_of(["orphan"]) == {"orphan": "pending"}
    assert all(w["pid"] != gone.pid for w in store.workers()), "the dead worker is forgotten"
    assert store.recover_orphans() == []


def test_a_worker_round_with_recover_settles_a_dead_workers_started_attempt_and_keeps_its_output(
        store: BaseStore) -> None:
    store.enqueue([job("started"), job("last", max_retries=1)])
    gone = dead_worker()
    beat(store, gone)
    first, last = claim(store, 2, gone)
    scratch, _ = start_attempt(store, first, gone, b"half of it\n", "1")
    other, _ = start_attempt(store, last, gone, b"", "2")
    beat(store, gone)  # its last heartbeat: what it printed reaches any store by then
    recorded, claimed, _ = store.worker_round([], 0, WorkerIdentity(), recover=True)
    assert sorted((j["id"], j["state"], j["attempts"], what) for j, what in recorded) == [
        ("last", "dead", 1, "recovered"), ("started", "pending", 1, "recovered")]
    assert "died during attempt 1" in store.get("started")["error"]
    ((record, output),) = outputs(store, "started")
    assert (record.number, record.ending, output) == (1, "the worker died", b"half of it\n")
    for handle in (scratch, other):
        handle.close()


def test_a_live_workers_job_is_not_recovered(store: BaseStore) -> None:
    store.enqueue([job("mine"), job("theirs")])
    away = other_host_worker()
    beat(store, away)
    claim(store, 1)
    claim(store, 1, away)
    assert store.recover_orphans() == []
    assert store.worker_round([], 0, WorkerIdentity(), recover=True)[0] == []
    assert store.states_of(["mine", "theirs"]) == {"mine": "processing", "theirs": "processing"}


def test_a_stop_request_is_seen_until_cleared(store: BaseStore) -> None:
    store.begin_worker(WorkerIdentity())  # a worker process starts here first
    assert store.stop_requested_at() is None
    asked = now_ts()
    store.request_stop()
    when = store.stop_requested_at()
    assert when is not None and abs(when - asked) < 5
    store.clear_stop()
    assert store.stop_requested_at() is None


def test_a_paused_queue_is_claimed_from_by_no_worker_round_until_it_is_resumed(store: BaseStore) -> None:
    store.enqueue([job("a"), job("b")])
    (running,) = claim(store)
    assert store.paused_since() is None and store.resume() is False
    asked = now_ts()
    assert store.pause() is None
    since = store.paused_since()
    assert since is not None and abs(since - asked) < 5
    again = store.pause()
    assert again is not None and abs(again - since) < 0.1, "a second pause says when the first began"
    assert claim(store, 5) == [] and claim(store, 5, WorkerIdentity("elsewhere", 1)) == []
    ((_, what),) = settle(store, running)  # a running job still finishes
    assert what == "completed" and store.states_of(["b"]) == {"b": "pending"}
    assert store.resume() is True and store.paused_since() is None
    assert [claimed["id"] for claimed in claim(store, 5)] == ["b"]


def test_config_starts_at_the_defaults_and_set_config_changes_one_setting(store: BaseStore) -> None:
    assert store.config() == queuectl.DEFAULT_CONFIG
    store.set_config("max_retries", 5)
    assert store.config() == {**queuectl.DEFAULT_CONFIG, "max_retries": 5}


def test_a_heartbeat_lists_the_worker_until_it_is_forgotten(store: BaseStore) -> None:
    store.begin_worker(WorkerIdentity())  # a worker process starts here first
    me, gone, silent = WorkerIdentity(), dead_worker(), other_host_worker()
    beat(store, me)
    beat(store, gone)
    beat(store, silent, now_ts() - 3600)
    alive = {w["pid"]: w["alive"] for w in store.workers()}
    assert alive == {me.pid: True, gone.pid: False, silent.pid: False}
    store.forget_worker(gone.host, gone.pid)
    assert sorted(w["pid"] for w in store.workers()) == sorted([me.pid, silent.pid])


def test_an_attempts_output_survives_byte_for_byte_including_nul_and_invalid_utf8(store: BaseStore) -> None:
    payload = b"text\x00after a NUL \xff\xfe\xc3( not UTF-8\n\x00last line without a newline"
    worker, claimed, scratch, header = running_job(store, "bytes", payload)
    beat(store, worker)  # a heartbeat: what a running attempt printed reaches any store by then
    running = store.running_attempt(store.get("bytes"))
    assert running is not None and running.number == 1
    running.source.seek(running.record.output_start)
    assert running.source.read(running.record.output_end - running.record.output_start) == payload
    running.source.close()
    assert store.keep_output("bytes", 1, worker, header, scratch, len(header), len(header) + len(payload),
                             "exit code 0")
    settle(store, claimed, 0, worker=worker)
    ((record, output),) = outputs(store, "bytes")
    assert (record.number, record.counted, record.ending, record.job_id) == (1, True, "exit code 0", "bytes")
    assert output == payload
    assert store.running_attempt(store.get("bytes")) is None
    scratch.close()
    store.remove_scratch(scratch)


def test_an_interrupted_runs_output_is_kept_but_not_counted(store: BaseStore) -> None:
    worker, claimed, scratch, header = running_job(store, "j", b"partial\n")
    assert store.keep_output("j", 1, worker, header, scratch, len(header), len(header) + 8, "interrupted",
                             counted=False)
    ((record, output),) = outputs(store, "j")
    assert (record.counted, output) == (False, b"partial\n")
    scratch.close()
    store.remove_scratch(scratch)


def test_keep_output_is_refused_once_the_attempt_is_no_longer_the_workers_claim(store: BaseStore) -> None:
    worker, claimed, scratch, header = running_job(store, "j", b"x\n")
    end = len(header) + 2
    assert not store.keep_output("j", 1, other_host_worker(), header, scratch, len(header), end, "exit code 0")
    assert not store.keep_output("j", 2, worker, header, scratch, len(header), end, "exit code 0")
    settle(store, claimed, 0, worker=worker)
    assert not store.keep_output("j", 1, worker, header, scratch, len(header), end, "exit code 0")
    assert outputs(store, "j") == []
    scratch.close()
    store.remove_scratch(scratch)


def test_late_output_is_handed_out_with_its_attempt(store: BaseStore) -> None:
    worker, claimed, scratch, header = running_job(store, "bg", b"own output\n")
    end = len(header) + 11
    leftover = open(scratch.name, "ab")  # a process the command left running holds the file
    store.keep_output("bg", 1, worker, header, scratch, len(header), end, "exit code 0")
    store.keep_late_output("bg", 1, scratch, end)
    leftover.write(b"written after the attempt ended\n")
    leftover.close()
    settle(store, claimed, 0, worker=worker)
    (attempt,) = store.attempt_logs("bg")
    assert attempt.late is not None
    handle, start, stop = attempt.late
    handle.seek(start)
    assert handle.read(stop - start) == b"written after the attempt ended\n"
    handle.close()
    attempt.source.close()


def test_a_scratch_file_is_in_place_until_removed(store: BaseStore) -> None:
    store.begin_worker(WorkerIdentity())
    scratch = store.new_scratch(WorkerIdentity(), "1")
    assert isinstance(scratch.name, str) and store.scratch_in_place(scratch)
    store.remove_scratch(scratch)
    assert not store.scratch_in_place(scratch)
    scratch.close()


def test_running_attempt_is_none_for_a_job_that_is_not_running_and_log_location_is_text(store: BaseStore) -> None:
    store.enqueue([job("p")])
    assert store.running_attempt(store.get("p")) is None
    claim(store)
    assert store.running_attempt(store.get("p")) is None, "claimed, but its attempt has not started"
    assert isinstance(store.log_location("p"), str) and store.attempt_logs("p") == []


def test_a_store_in_place_is_not_lost_and_passes_its_check(store: BaseStore) -> None:
    store.begin_worker(WorkerIdentity())
    assert store.lost() is None
    store.enqueue([job("j")])
    store.check()
    assert store.lost() is None


# -- the worker speaks only in verbs -------------------------------------------------------------


def test_a_worker_pool_drains_the_memory_store_and_writes_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Ten jobs on the memory store, run by a real worker pool in this process: every job ends as it
    should, its output reaches attempt_logs, and nothing is written where a folder store keeps a queue
    (the current folder, QUEUECTL_HOME): the worker touches no state file behind the store's back."""
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("QUEUECTL_HOME", str(home))
    opened: list[str] = []

    def no_folder_store(self: queuectl.FolderStore, where: str) -> None:
        opened.append(where)
        raise AssertionError(f"the worker opened a folder store at {where}")

    monkeypatch.setattr(queuectl.FolderStore, "__init__", no_folder_store)
    store = MemoryStore()
    store.set_config("poll_interval", 0.05)
    store.enqueue([job(f"echo{n}", f"echo hello {n}") for n in range(9)]
                  + [job("fails", "echo oops; exit 3", max_retries=1)])
    try:
        assert queuectl.WorkerPool(store, count=2, burst=True, say=queuectl.Printer()).run() == 0
        assert store.states_of([f"echo{n}" for n in range(9)] + ["fails"]) == {
            **{f"echo{n}": "completed" for n in range(9)}, "fails": "dead"}
        for n in range(9):
            ((record, output),) = outputs(store, f"echo{n}")
            assert (record.number, record.ending, output) == (1, "exit code 0", f"hello {n}\n".encode())
        ((record, output),) = outputs(store, "fails")
        assert (record.ending, output) == ("exit code 3", b"oops\n")
        assert store.workers() == [] and store.stop_requested_at() is None
        assert store._scratch_dir is None or os.listdir(store._scratch_dir) == [], "scratch files left"
    finally:
        store.close()
    assert "Summary: 9 completed, 1 failed attempt(s), 1 dead" in capsys.readouterr().out
    assert list(cwd.iterdir()) == [] and not home.exists() and opened == []
