"""A hypothesis state machine drives the Store in-process against an in-memory model.

After every step the state files, a fresh Store and the model must agree: every job id
is in exactly one file, in the state and with the attempts the model expects.
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
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import queuectl

FILE_OF_STATE = {
    "pending": queuectl.QUEUE_FILE,
    "processing": queuectl.QUEUE_FILE,
    "failed": queuectl.QUEUE_FILE,
    "completed": queuectl.PROCESSED_FILE,
    "dead": queuectl.FAILED_FILE,
}


class FakeWorker:
    """A worker on another host: without a heartbeat file it lives for the lease after its claim."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.host = "model-host"


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.home = tempfile.mkdtemp(prefix="queuectl-sm-")
        # A clock that only moves forward; the expire rule jumps it past the lease.
        self.offset = 0.0
        self.real_now_ts = queuectl.now_ts
        queuectl.now_ts = lambda: time.time() + self.offset
        self.store = queuectl.Store(self.home)
        self.store.set_config("backoff_base", 1)
        self.store.set_config("max_backoff", 0)
        self.workers = [FakeWorker(os.getpid() + 1000), FakeWorker(os.getpid() + 1001)]
        self.next_id = 0
        # model: id -> {"state", "attempts", "max_retries", "worker" (pid of the claim or None)}
        self.model: dict[str, dict] = {}

    def teardown(self) -> None:
        queuectl.now_ts = self.real_now_ts
        shutil.rmtree(self.home, ignore_errors=True)

    # -- helpers -------------------------------------------------------------

    def ids_in(self, *states: str) -> list[str]:
        return sorted(job_id for job_id, job in self.model.items() if job["state"] in states)

    def new_id(self) -> str:
        self.next_id += 1
        return f"j{self.next_id}"

    def snapshot(self) -> dict[str, bytes | None]:
        result = {}
        for name in (queuectl.QUEUE_FILE, queuectl.PROCESSED_FILE, queuectl.FAILED_FILE):
            try:
                with open(os.path.join(self.home, name), "rb") as handle:
                    result[name] = handle.read()
            except FileNotFoundError:
                result[name] = None
        return result

    def worker_by_pid(self, pid: int) -> FakeWorker:
        return next(w for w in self.workers if w.pid == pid)

    # -- rules ---------------------------------------------------------------

    @rule(size=st.integers(1, 3), max_retries=st.integers(0, 3), priority=st.integers(-1, 1))
    def enqueue(self, size: int, max_retries: int, priority: int) -> None:
        config = self.store.config()
        raws = [{"id": self.new_id(), "command": "true", "max_retries": max_retries, "priority": priority}
                for _ in range(size)]
        jobs = [queuectl.normalize_job(raw, config) for raw in raws]
        self.store.enqueue(jobs)
        for job in jobs:
            self.model[job["id"]] = {"state": "pending", "attempts": 0, "max_retries": max_retries, "worker": None}

    @precondition(lambda self: self.model)
    @rule(data=st.data(), with_new=st.booleans())
    def enqueue_duplicate(self, data: st.DataObject, with_new: bool) -> None:
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

    @rule(want=st.integers(1, 3), which=st.integers(0, 1))
    def claim(self, want: int, which: int) -> None:
        worker = self.workers[which]
        due = self.ids_in("pending", "failed")
        recorded, claimed, _ = self.store.checkpoint([], want, worker)
        assert recorded == []
        assert len(claimed) == min(want, len(due)), (claimed, due)
        assert len({job["id"] for job in claimed}) == len(claimed)
        for job in claimed:
            expected = self.model[job["id"]]
            assert job["id"] in due
            assert job["state"] == "processing"
            assert job["attempts"] == expected["attempts"] + 1
            assert (job["pid"], job["host"]) == (worker.pid, worker.host)
            expected.update(state="processing", attempts=expected["attempts"] + 1, worker=worker.pid)

    @precondition(lambda self: self.ids_in("processing"))
    @rule(data=st.data(), exit_code=st.sampled_from([0, 1]))
    def finish(self, data: st.DataObject, exit_code: int) -> None:
        job_id = data.draw(st.sampled_from(self.ids_in("processing")), label="job")
        expected = self.model[job_id]
        worker = self.worker_by_pid(expected["worker"])
        outcome = queuectl.Outcome(job_id, expected["attempts"], kind="ran", exit_code=exit_code,
                                   error=None, worker="w1", started=queuectl.now_ts())
        recorded, claimed, _ = self.store.checkpoint([outcome], 0, worker)
        assert claimed == []
        if exit_code == 0:
            state = "completed"
        elif expected["attempts"] >= max(1, expected["max_retries"]):
            state = "dead"
        else:
            state = "failed"
        assert [(job["id"], what) for job, what in recorded] == [(job_id, state)]
        event(f"finish -> {state}")
        expected.update(state=state, worker=None)

    @precondition(lambda self: self.ids_in("processing"))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.ids_in("processing")), label="job")
        expected = self.model[job_id]
        worker = self.worker_by_pid(expected["worker"])
        outcome = queuectl.Outcome(job_id, expected["attempts"], kind="released")
        recorded, claimed, _ = self.store.checkpoint([outcome], 0, worker)
        assert [(job["id"], what) for job, what in recorded] == [(job_id, "released")]
        expected.update(state="pending", attempts=max(0, expected["attempts"] - 1), worker=None)

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
        recorded, claimed, _ = self.store.checkpoint([outcome], 0, worker)
        assert recorded == [] and claimed == []

    @precondition(lambda self: self.ids_in("processing"))
    @rule()
    def expire_leases(self) -> None:
        """Every claim outlives its lease; recovery hands the jobs back. No scratch file shows
        that an attempt started, so it is not counted."""
        self.offset += self.store.config()["lease_timeout"] + 10
        processing = self.ids_in("processing")
        recovered = self.store.recover_orphans()
        assert sorted(job["id"] for job in recovered) == processing
        for job_id in processing:
            expected = self.model[job_id]
            expected.update(state="pending", attempts=max(0, expected["attempts"] - 1), worker=None)

    @precondition(lambda self: self.ids_in("dead"))
    @rule(data=st.data())
    def dlq_retry_one(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.ids_in("dead")), label="job")
        assert self.store.dlq_retry([job_id]) == [job_id]
        self.model[job_id].update(state="pending", attempts=0)

    @rule()
    def dlq_retry_all(self) -> None:
        dead = self.ids_in("dead")
        assert sorted(self.store.dlq_retry(None)) == dead
        event("dlq retry all: " + ("some" if dead else "none"))
        for job_id in dead:
            self.model[job_id].update(state="pending", attempts=0)

    @precondition(lambda self: self.ids_in("pending", "processing", "failed", "completed"))
    @rule(data=st.data())
    def dlq_retry_not_dead(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.ids_in("pending", "processing", "failed", "completed")), label="job")
        before = self.snapshot()
        with pytest.raises(queuectl.QueueError):
            self.store.dlq_retry([job_id])
        assert self.snapshot() == before, "a refused dlq retry changed the files"

    # -- invariants ----------------------------------------------------------

    @invariant()
    def files_agree_with_model(self) -> None:
        where: dict[str, list[tuple[str, dict]]] = {}
        for name in (queuectl.QUEUE_FILE, queuectl.PROCESSED_FILE, queuectl.FAILED_FILE):
            path = os.path.join(self.home, name)
            if not os.path.exists(path):
                continue
            with open(path, "rb") as handle:
                jobs = json.loads(handle.read().decode("utf-8"))
            assert isinstance(jobs, list), name
            for job in jobs:
                where.setdefault(job["id"], []).append((name, job))
        assert set(where) == set(self.model)
        for job_id, expected in self.model.items():
            copies = where[job_id]
            assert len(copies) == 1, f"{job_id} is in {[name for name, _ in copies]}"
            name, job = copies[0]
            assert name == FILE_OF_STATE[expected["state"]], (job_id, name, expected)
            assert job["state"] == expected["state"], (job_id, job, expected)
            assert job["attempts"] == expected["attempts"], (job_id, job, expected)
            if expected["state"] == "processing":
                assert job["pid"] == expected["worker"]

    @invariant()
    def counts_agree_with_model(self) -> None:
        counts = self.store.counts()
        for state in queuectl.STATES:
            assert counts[state] == len(self.ids_in(state)), (state, counts)
        assert counts["scheduled"] == 0

    @invariant()
    def a_fresh_store_sees_the_model(self) -> None:
        fresh = queuectl.Store(self.home)
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


StoreMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
TestStoreStateMachine = StoreMachine.TestCase
