"""A hypothesis state machine drives the folder store in-process against an in-memory model
(it reads the state files through FolderStore's private _path: folder mechanics).

After every step the state files, a fresh Store and the model must agree: every job id
is in exactly one of the job files (queue.json, processed.json, failed.json, cancelled.json),
in the state and with the attempts the model expects, and a purged id is in none.

Rules cover enqueue, claims, results, releases, lease expiry and recovery, dlq retry, cancel
(of waiting, processing, finished and unknown jobs; a processing job is only marked until its
worker reports, or its lease runs out) and purge (by state, with and without a cut-off time,
dry run or applied; a purged id may be enqueued again).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import queuectl

FILE_OF_STATE = {
    "pending": queuectl.QUEUE_FILE,
    "processing": queuectl.QUEUE_FILE,
    "failed": queuectl.QUEUE_FILE,
    "completed": queuectl.PROCESSED_FILE,
    "dead": queuectl.FAILED_FILE,
    "cancelled": queuectl.CANCELLED_FILE,
}
JOB_FILES = tuple(dict.fromkeys(FILE_OF_STATE.values()))
FINISHED = queuectl.FINISHED_STATES
TICK = 1000.0  # the clock rule's step: far more than any step of the machine takes in real time


def close_store(store: queuectl.FolderStore) -> None:
    """A Store keeps the queue.json it last wrote open (so that its inode is not reused), and
    queuectl one lock file per folder, for the life of the process. Hundreds of runs, each in
    its own folder, would otherwise run into a low open-file limit (256 by default on macOS)."""
    if store._pinned is not None:
        os.close(store._pinned)
        store._pinned = None


class FakeWorker:
    """A worker on another host: without a heartbeat file it lives for the lease after its claim."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.host = "model-host"


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.home = tempfile.mkdtemp(prefix="queuectl-sm-")
        # A clock that only moves forward; the expire and tick rules jump it.
        self.offset = 0.0
        self.real_now_ts = queuectl.now_ts
        queuectl.now_ts = lambda: time.time() + self.offset
        self.store = queuectl.FolderStore(self.home)
        self.store.set_config("backoff_base", 1)
        self.store.set_config("max_backoff", 0)
        self.workers = [FakeWorker(os.getpid() + 1000), FakeWorker(os.getpid() + 1001)]
        self.next_id = 0
        # model: id -> {"state", "attempts", "max_retries", "worker" (pid of the claim or None),
        #               "cancel" (a cancel was requested while processing),
        #               "finished" (the clock offset when it finished, for purge --older-than)}
        self.model: dict[str, dict] = {}
        self.purged: set[str] = set()  # purged ids that have not been enqueued again

    def teardown(self) -> None:
        queuectl.now_ts = self.real_now_ts
        close_store(self.store)
        lock = queuectl.FolderStore._process_locks.pop(self.store._path(queuectl.LOCK_FILE), None)
        if getattr(lock, "_fd", None) is not None:
            os.close(lock._fd)
        shutil.rmtree(self.home, ignore_errors=True)

    # -- helpers -------------------------------------------------------------

    def ids_in(self, *states: str) -> list[str]:
        return sorted(job_id for job_id, job in self.model.items() if job["state"] in states)

    def new_id(self) -> str:
        self.next_id += 1
        return f"j{self.next_id}"

    def snapshot(self) -> dict[str, bytes | None]:
        result = {}
        for name in JOB_FILES:
            try:
                with open(os.path.join(self.home, name), "rb") as handle:
                    result[name] = handle.read()
            except FileNotFoundError:
                result[name] = None
        return result

    def queued(self, job_id: str) -> dict:
        """A job's record in queue.json."""
        with open(os.path.join(self.home, queuectl.QUEUE_FILE), "rb") as handle:
            return next(job for job in json.loads(handle.read()) if job["id"] == job_id)

    def worker_by_pid(self, pid: int) -> FakeWorker:
        return next(w for w in self.workers if w.pid == pid)

    def settle(self, job_id: str, state: str, attempts: int | None = None) -> None:
        """The model's job leaves `processing` (or its waiting state) for `state`."""
        expected = self.model[job_id]
        expected.update(state=state, worker=None, cancel=False,
                        finished=self.offset if state in FINISHED else None)
        if attempts is not None:
            expected["attempts"] = attempts

    def cancel_requested(self) -> list[str]:
        """Processing jobs with a cancel request."""
        return sorted(job_id for job_id, job in self.model.items() if job["state"] == "processing" and job["cancel"])

    def expected_cancels(self, worker: FakeWorker) -> list[str]:
        return sorted(job_id for job_id, job in self.model.items()
                      if job["state"] == "processing" and job["worker"] == worker.pid and job["cancel"])

    def check_cancels(self, cancels: list[str], worker: FakeWorker) -> None:
        """worker_round's third value: this worker's processing jobs with a cancel request."""
        assert len(cancels) == len(set(cancels)), cancels
        assert sorted(cancels) == self.expected_cancels(worker), (cancels, worker.pid)

    def recover_all_processing(self, also_cancelled: str | None = None) -> None:
        """Every processing job's worker is dead: a job with a cancel request (or
        `also_cancelled`) is cancelled, the others go back to pending; no scratch file shows
        that their attempt started, so it is not counted either way."""
        for job_id in self.ids_in("processing"):
            expected = self.model[job_id]
            state = "cancelled" if expected["cancel"] or job_id == also_cancelled else "pending"
            self.settle(job_id, state, attempts=max(0, expected["attempts"] - 1))

    def expected_cancel_result(self, job_id: str) -> tuple[str, str]:
        expected = self.model.get(job_id)
        if expected is None:
            return ("unknown", "")
        if expected["state"] in ("pending", "failed"):
            return ("cancelled", expected["state"])
        if expected["state"] == "processing":
            return ("requested", "processing")
        return ("finished", expected["state"])

    # -- rules: enqueue --------------------------------------------------------

    @initialize(size=st.integers(0, 4), want=st.integers(0, 3), max_retries=st.integers(0, 2),
                cancel_one=st.booleans())
    def start_with_work(self, size: int, want: int, max_retries: int, cancel_one: bool) -> None:
        """Most runs start with jobs, some of them claimed (one maybe with a cancel request), so
        that the deeper paths (a cancel request, then a result, a release or a lease that runs
        out) are reached often."""
        if size:
            self.enqueue(size, max_retries, 0)
            if want:
                self.claim(want, 0)
            if cancel_one and self.ids_in("processing"):
                job_id = self.ids_in("processing")[0]
                assert self.store.cancel([job_id]) == {job_id: ("requested", "processing")}
                self.model[job_id]["cancel"] = True

    @rule(size=st.integers(1, 3), max_retries=st.integers(0, 3), priority=st.integers(-1, 1))
    def enqueue(self, size: int, max_retries: int, priority: int) -> None:
        config = self.store.config()
        raws = [{"id": self.new_id(), "command": "true", "max_retries": max_retries, "priority": priority}
                for _ in range(size)]
        jobs = [queuectl.normalize_job(raw, config) for raw in raws]
        self.store.enqueue(jobs)
        for job in jobs:
            self.model[job["id"]] = {"state": "pending", "attempts": 0, "max_retries": max_retries,
                                     "worker": None, "cancel": False, "finished": None}

    @precondition(lambda self: self.model)
    @rule(data=st.data(), with_new=st.booleans())
    def enqueue_duplicate(self, data: st.DataObject, with_new: bool) -> None:
        """An id that exists in any state (finished ones included) is refused, all or nothing."""
        duplicate = data.draw(st.sampled_from(sorted(self.model)), label="duplicate")
        raws = [{"id": duplicate, "command": "true"}]
        if with_new:
            raws.insert(0, {"id": f"fresh{self.next_id + 1}", "command": "true"})
        config = self.store.config()
        jobs = [queuectl.normalize_job(raw, config) for raw in raws]
        before = self.snapshot()
        with pytest.raises(queuectl.QueueError):
            self.store.enqueue(jobs)
        assert self.snapshot() == before, "a refused enqueue changed the files"

    # -- rules: workers ----------------------------------------------------------

    @rule(want=st.integers(1, 3), which=st.integers(0, 1))
    def claim(self, want: int, which: int) -> None:
        worker = self.workers[which]
        due = self.ids_in("pending", "failed")
        recorded, claimed, cancels = self.store.worker_round([], want, worker)
        assert recorded == []
        assert len(claimed) == min(want, len(due)), (claimed, due)
        assert len({job["id"] for job in claimed}) == len(claimed)
        for job in claimed:
            expected = self.model[job["id"]]
            assert job["id"] in due
            assert job["state"] == "processing"
            assert job["attempts"] == expected["attempts"] + 1
            assert (job["pid"], job["host"]) == (worker.pid, worker.host)
            assert "cancel_requested_at" not in job
            expected.update(state="processing", attempts=expected["attempts"] + 1, worker=worker.pid)
        self.check_cancels(cancels, worker)

    def report(self, job_id: str, kind: str, exit_code: int = 0) -> None:
        """The job's worker reports what became of it, and the model follows:
        - "ran": success completes it, even after a cancel request (it finished first); a
          failure cancels a job with a cancel request, else it fails or dies;
        - "cancelled": its worker killed it for a cancel request: cancelled;
        - "released" (never started) or "interrupted" (a second Ctrl+C): back to pending
          without counting the attempt, or cancelled if a cancel was requested."""
        expected = self.model[job_id]
        worker = self.worker_by_pid(expected["worker"])
        if kind == "ran":
            outcome = queuectl.Outcome(job_id, expected["attempts"], kind="ran", exit_code=exit_code,
                                       error=None if exit_code == 0 else f"exit code {exit_code}",
                                       worker="w1", started=queuectl.now_ts())
        elif kind == "cancelled":
            outcome = queuectl.Outcome(job_id, expected["attempts"], kind="cancelled", worker="w1",
                                       started=queuectl.now_ts())
        else:
            outcome = queuectl.Outcome(job_id, expected["attempts"], kind=kind)
        recorded, claimed, cancels = self.store.worker_round([outcome], 0, worker)
        assert claimed == []
        attempts = None
        if kind == "ran" and exit_code == 0:
            state = what = "completed"
        elif expected["cancel"]:
            state = what = "cancelled"
            if kind in ("released", "interrupted"):  # it never ran (or a second Ctrl+C killed it): not an attempt
                attempts = max(0, expected["attempts"] - 1)
        elif kind in ("released", "interrupted"):
            state, what, attempts = "pending", kind, max(0, expected["attempts"] - 1)
        elif expected["attempts"] >= max(1, expected["max_retries"]):
            state = what = "dead"
        else:
            state = what = "failed"
        assert [(job["id"], what) for job, what in recorded] == [(job_id, what)]
        assert recorded[0][0]["state"] == state
        event(f"{kind}{' after a cancel request' if expected['cancel'] else ''} -> {state}")
        self.settle(job_id, state, attempts)
        self.check_cancels(cancels, worker)

    @precondition(lambda self: self.ids_in("processing"))
    @rule(data=st.data(), exit_code=st.sampled_from([0, 1]))
    def finish(self, data: st.DataObject, exit_code: int) -> None:
        job_id = data.draw(st.sampled_from(self.ids_in("processing")), label="job")
        cancel = self.model[job_id]["cancel"]
        kind = data.draw(st.sampled_from(["ran", "cancelled"]), label="kind") if cancel else "ran"
        self.report(job_id, kind, exit_code)

    @precondition(lambda self: self.ids_in("processing"))
    @rule(data=st.data(), kind=st.sampled_from(["released", "interrupted"]))
    def release(self, data: st.DataObject, kind: str) -> None:
        job_id = data.draw(st.sampled_from(self.ids_in("processing")), label="job")
        self.report(job_id, kind)

    @precondition(lambda self: self.ids_in("processing"))
    @rule(data=st.data())
    def stale_outcome_is_ignored(self, data: st.DataObject) -> None:
        """An outcome for another attempt, or from the wrong worker, changes nothing."""
        job_id = data.draw(st.sampled_from(self.ids_in("processing")), label="job")
        expected = self.model[job_id]
        other = next(w for w in self.workers if w.pid != expected["worker"])
        wrong_worker = data.draw(st.booleans(), label="wrong_worker")
        if wrong_worker:
            outcome = queuectl.Outcome(job_id, expected["attempts"], exit_code=0, started=queuectl.now_ts())
            worker = other
        else:
            outcome = queuectl.Outcome(job_id, expected["attempts"] + 1, exit_code=0, started=queuectl.now_ts())
            worker = self.worker_by_pid(expected["worker"])
        before = self.snapshot()
        recorded, claimed, cancels = self.store.worker_round([outcome], 0, worker)
        assert recorded == [] and claimed == []
        assert self.snapshot() == before
        self.check_cancels(cancels, worker)

    @precondition(lambda self: self.ids_in("processing"))
    @rule()
    def expire_leases(self) -> None:
        """Every claim outlives its lease; recovery hands the jobs back, or cancels the ones
        with a cancel request."""
        self.offset += self.store.config()["lease_timeout"] + 10
        processing = self.ids_in("processing")
        event("expire leases" + (" with a cancel request" if self.cancel_requested() else ""))
        recovered = self.store.recover_orphans()
        assert sorted(job["id"] for job in recovered) == processing
        self.recover_all_processing()
        for job in recovered:
            assert job["state"] == self.model[job["id"]]["state"], (job, self.model[job["id"]])

    @precondition(lambda self: not self.ids_in("processing"))
    @rule()
    def tick(self) -> None:
        """Time passes (nothing is processing, so no lease runs out): later finishes are
        far apart from earlier ones, for purge --older-than."""
        self.offset += TICK

    # -- rules: the DLQ ----------------------------------------------------------

    @precondition(lambda self: self.ids_in("dead"))
    @rule(data=st.data())
    def dlq_retry_one(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.ids_in("dead")), label="job")
        assert self.store.dlq_retry([job_id]) == [job_id]
        self.model[job_id].update(state="pending", attempts=0, finished=None)

    @rule()
    def dlq_retry_all(self) -> None:
        dead = self.ids_in("dead")
        assert sorted(self.store.dlq_retry(None)) == dead
        event("dlq retry all: " + ("some" if dead else "none"))
        for job_id in dead:
            self.model[job_id].update(state="pending", attempts=0, finished=None)

    @precondition(lambda self: self.ids_in("pending", "processing", "failed", "completed", "cancelled"))
    @rule(data=st.data())
    def dlq_retry_not_dead(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.ids_in("pending", "processing", "failed", "completed",
                                                       "cancelled")), label="job")
        before = self.snapshot()
        with pytest.raises(queuectl.QueueError):
            self.store.dlq_retry([job_id])
        assert self.snapshot() == before, "a refused dlq retry changed the files"

    # -- rules: cancel -------------------------------------------------------------

    @precondition(lambda self: self.ids_in("pending", "failed"))
    @rule(data=st.data())
    def cancel_waiting(self, data: st.DataObject) -> None:
        """A pending or failed job moves to cancelled.json at once, with its attempts."""
        job_id = data.draw(st.sampled_from(self.ids_in("pending", "failed")), label="job")
        state = self.model[job_id]["state"]
        assert self.store.cancel([job_id]) == {job_id: ("cancelled", state)}
        event(f"cancel {state}")
        self.settle(job_id, "cancelled")

    @precondition(lambda self: self.ids_in("processing"))
    @rule(data=st.data(), then=st.sampled_from(["nothing", "success", "failure", "killed", "released",
                                                "interrupted"]))
    def cancel_processing(self, data: st.DataObject, then: str) -> None:
        """A processing job (of a live worker) is only marked; its worker hears of it at its
        next worker_round, and may report on the job right away (or a later rule does)."""
        job_id = data.draw(st.sampled_from(self.ids_in("processing")), label="job")
        expected = self.model[job_id]
        event("cancel processing" + (" again" if expected["cancel"] else ""))
        marked_before = self.queued(job_id)
        assert self.store.cancel([job_id]) == {job_id: ("requested", "processing")}
        expected["cancel"] = True
        marked = self.queued(job_id)
        # The mark is all that changes: not updated_at (README), and not the time of a first request.
        assert marked["updated_at"] == marked_before["updated_at"], (marked_before, marked)
        if "cancel_requested_at" in marked_before:
            assert marked == marked_before, (marked_before, marked)
        else:
            assert {k: v for k, v in marked.items() if k != "cancel_requested_at"} == marked_before
        worker = self.worker_by_pid(expected["worker"])
        before = self.snapshot()
        recorded, claimed, cancels = self.store.worker_round([], 0, worker)
        assert recorded == [] and claimed == []
        assert self.snapshot() == before, "a worker_round with nothing to do changed the files"
        self.check_cancels(cancels, worker)
        assert job_id in cancels
        if then != "nothing":
            kind, exit_code = {"success": ("ran", 0), "failure": ("ran", 1),
                               "killed": ("cancelled", 0)}.get(then, (then, 0))
            self.report(job_id, kind, exit_code)

    @precondition(lambda self: self.ids_in("processing"))
    @rule(data=st.data())
    def cancel_processing_of_a_dead_worker(self, data: st.DataObject) -> None:
        """Every lease has run out but nobody recovered yet: cancel settles the job at once,
        and recovers the other jobs of dead workers on the way."""
        self.offset += self.store.config()["lease_timeout"] + 10
        job_id = data.draw(st.sampled_from(self.ids_in("processing")), label="job")
        event("cancel processing of a dead worker" + (" (others too)" if len(self.ids_in("processing")) > 1 else ""))
        assert self.store.cancel([job_id]) == {job_id: ("cancelled", "processing")}
        self.recover_all_processing(also_cancelled=job_id)

    @rule(data=st.data())
    def cancel_finished_or_unknown(self, data: st.DataObject) -> None:
        """A finished, purged or never-seen id: reported, and nothing changes."""
        pool = self.ids_in(*FINISHED) + sorted(self.purged) + [f"j{self.next_id + 1}", "nosuch", "../j1", ""]
        job_id = data.draw(st.sampled_from(pool), label="job")
        before = self.snapshot()
        result = self.store.cancel([job_id])
        assert result == {job_id: self.expected_cancel_result(job_id)}, (result, self.model.get(job_id))
        event(f"cancel {result[job_id][0]}")
        assert self.snapshot() == before, "cancel of a finished or unknown job changed the files"

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def cancel_many(self, data: st.DataObject) -> None:
        """Several ids at once (repeats too): each gets its own answer."""
        pool = sorted(self.model) + sorted(self.purged) + ["nosuch"]
        ids = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=5), label="ids")
        expected = {job_id: self.expected_cancel_result(job_id) for job_id in ids}
        event("cancel many: " + ", ".join(sorted({what for what, _ in expected.values()})))
        assert self.store.cancel(ids) == expected
        for job_id, (what, _) in expected.items():
            if what == "cancelled":
                self.settle(job_id, "cancelled")
            elif what == "requested":
                self.model[job_id]["cancel"] = True

    # -- rules: purge ------------------------------------------------------------

    @rule(data=st.data(), states=st.lists(st.sampled_from(FINISHED), min_size=1, max_size=3, unique=True),
          apply=st.booleans(), older=st.booleans())
    def purge(self, data: st.DataObject, states: list[str], apply: bool, older: bool) -> None:
        """Finished jobs in these states (those that finished before a cut) leave their
        history files; active jobs and the other states are untouched."""
        cut = None
        before = None
        if older:
            cuts = sorted({job["finished"] for job in self.model.values() if job["state"] in FINISHED}
                          | {self.offset + TICK})
            cut = data.draw(st.sampled_from(cuts), label="cut")
            # Every offset step is at least 40 s, and a run of the machine takes well under 20 s.
            before = time.time() + cut - 20
        expected = sorted(job_id for job_id, job in self.model.items() if job["state"] in states
                          and (cut is None or job["finished"] < cut))
        snapshot = self.snapshot()
        counts = self.store.purge(states, before, apply)
        assert counts == {state: sum(self.model[job_id]["state"] == state for job_id in expected)
                          for state in states}, (counts, states, cut)
        after = self.snapshot()
        if apply:
            def ids(files: dict[str, bytes | None]) -> set[str]:
                return {job["id"] for state in states if (data := files[queuectl.HISTORY_FILE_OF[state]])
                        for job in json.loads(data)}
            assert sorted(ids(snapshot) - ids(after)) == expected, (states, cut)
        assert after[queuectl.QUEUE_FILE] == snapshot[queuectl.QUEUE_FILE], "purge touched queue.json"
        for state in FINISHED:
            if not apply or state not in states or not any(self.model[i]["state"] == state for i in expected):
                name = queuectl.HISTORY_FILE_OF[state]
                assert after[name] == snapshot[name], f"purge changed {name} (states {states}, apply {apply})"
        event(f"purge {'applied' if apply else 'dry run'}: {'some' if expected else 'none'}"
              f"{' (older than a cut)' if older else ''}")
        if apply:
            for job_id in expected:
                del self.model[job_id]
            self.purged.update(expected)

    @precondition(lambda self: self.purged)
    @rule(data=st.data(), with_taken=st.booleans())
    def enqueue_purged_again(self, data: st.DataObject, with_taken: bool) -> None:
        """A purged id is free again; a finished id that was not purged still is not."""
        job_id = data.draw(st.sampled_from(sorted(self.purged)), label="job")
        config = self.store.config()
        taken = self.ids_in(*FINISHED)
        if with_taken and taken:
            other = data.draw(st.sampled_from(taken), label="taken")
            jobs = [queuectl.normalize_job({"id": i, "command": "true"}, config) for i in (job_id, other)]
            before = self.snapshot()
            with pytest.raises(queuectl.QueueError, match=other):
                self.store.enqueue(jobs)
            assert self.snapshot() == before, "a refused enqueue changed the files"
        event("enqueue a purged id again" + (" (and a taken one first)" if with_taken and taken else ""))
        self.store.enqueue([queuectl.normalize_job({"id": job_id, "command": "true", "max_retries": 1}, config)])
        self.purged.discard(job_id)
        self.model[job_id] = {"state": "pending", "attempts": 0, "max_retries": 1, "worker": None,
                              "cancel": False, "finished": None}

    # -- invariants ----------------------------------------------------------

    @invariant()
    def files_agree_with_model(self) -> None:
        where: dict[str, list[tuple[str, dict]]] = {}
        for name in JOB_FILES:
            path = os.path.join(self.home, name)
            if not os.path.exists(path):
                continue
            with open(path, "rb") as handle:
                jobs = json.loads(handle.read().decode("utf-8"))
            assert isinstance(jobs, list), name
            for job in jobs:
                where.setdefault(job["id"], []).append((name, job))
        assert set(where) == set(self.model), (set(where) ^ set(self.model))
        for job_id, expected in self.model.items():
            copies = where[job_id]
            assert len(copies) == 1, f"{job_id} is in {[name for name, _ in copies]}"
            name, job = copies[0]
            assert name == FILE_OF_STATE[expected["state"]], (job_id, name, expected)
            assert job["state"] == expected["state"], (job_id, job, expected)
            assert job["attempts"] == expected["attempts"], (job_id, job, expected)
            if expected["state"] == "processing":
                assert job["pid"] == expected["worker"]
                assert ("cancel_requested_at" in job) == expected["cancel"], (job_id, job, expected)
            elif name == queuectl.QUEUE_FILE:
                assert "cancel_requested_at" not in job, (job_id, job)
            if expected["state"] == "cancelled":
                assert not {"pid", "host", "run_at"} & set(job), (job_id, job)
                assert job.get("finished_at") and job.get("error"), (job_id, job)

    @invariant()
    def counts_agree_with_model(self) -> None:
        counts = self.store.counts()
        for state in queuectl.STATES:
            assert counts[state] == len(self.ids_in(state)), (state, counts)
        assert counts["scheduled"] == 0

    @invariant()
    def a_fresh_store_sees_the_model(self) -> None:
        fresh = queuectl.FolderStore(self.home)
        try:
            self.check_fresh_store(fresh)
        finally:
            close_store(fresh)

    def check_fresh_store(self, fresh: queuectl.FolderStore) -> None:
        listed = fresh.jobs()
        ids = [job["id"] for job in listed]
        assert len(ids) == len(set(ids)), ids
        assert {job["id"]: (job["state"], job["attempts"]) for job in listed} == {
            job_id: (job["state"], job["attempts"]) for job_id, job in self.model.items()}
        for state in queuectl.STATES:
            assert sorted(job["id"] for job in fresh.jobs(state)) == self.ids_in(state), state
        for job_id, expected in self.model.items():
            job = self.store.get(job_id)
            assert job is not None and job["state"] == expected["state"], (job_id, job, expected)
        assert sorted(job["id"] for job in fresh.finished_since()) == self.ids_in(*FINISHED)
        assert sorted(job["id"] for job in fresh.active_jobs()) == self.ids_in(*queuectl.ACTIVE_STATES)
        asked = sorted(self.model) + sorted(self.purged)
        assert fresh.states_of(asked) == {job_id: job["state"] for job_id, job in self.model.items()}
        for job_id in self.purged:
            assert fresh.get(job_id) is None, job_id


StoreMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
TestStoreStateMachine = StoreMachine.TestCase


# -- a job cancelled before it started ------------------------------------------------


@pytest.mark.parametrize("how", ["released", "recovered"])
def test_a_job_cancelled_before_it_started_counts_no_attempt(tmp_path, monkeypatch, how: str) -> None:
    store = queuectl.FolderStore(str(tmp_path / "data"))
    store.enqueue([queuectl.normalize_job({"id": "j1", "command": "true"}, store.config())])
    worker = FakeWorker(os.getpid() + 1000)
    _, claimed, _ = store.worker_round([], 1, worker)
    assert [(job["id"], job["attempts"]) for job in claimed] == [("j1", 1)]
    assert store.cancel(["j1"]) == {"j1": ("requested", "processing")}
    if how == "released":  # claimed ahead, never started, handed back after the cancel
        recorded, _, _ = store.worker_round([queuectl.Outcome("j1", 1, kind="released")], 0, worker)
        assert [what for _, what in recorded] == ["cancelled"]
    else:  # its worker died before the attempt started (no scratch file shows a start)
        later = time.time() + store.config()["lease_timeout"] + 10
        monkeypatch.setattr(queuectl, "now_ts", lambda: later)
        assert [job["state"] for job in store.recover_orphans()] == ["cancelled"]
    job = queuectl.FolderStore(store.location).get("j1")
    assert job["state"] == "cancelled"
    assert job["attempts"] == 0, job
