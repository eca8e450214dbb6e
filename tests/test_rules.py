"""The rules of what becomes of a job, as pure functions every store applies: one row per line of
DESIGN.md's state table. Each row gives the claimed job, what happened to its attempt, and what
the job must become."""

from __future__ import annotations

import pytest

import queuectl
from queuectl import Outcome

NOW = 1_800_000_000.0
CONFIG = dict(queuectl.DEFAULT_CONFIG, backoff_base=2, max_backoff=3600, failure_rate=0.0)


def claimed(attempts: int = 1, max_retries: int = 3, **extra) -> dict:
    """A job as a worker holds it: processing, its current attempt counted, its claim on it."""
    return {"id": "j", "command": "true", "state": "processing", "attempts": attempts, "max_retries": max_retries,
            "priority": 0, "created_at": "2027-01-15T08:00:00.000Z", "updated_at": "2027-01-15T08:00:00.000Z",
            "started_at": "2027-01-15T08:00:00.000Z", "pid": 42, "host": "h", **extra}


def ran(exit_code: int | None = 0, error: str | None = None, kind: str = "ran") -> Outcome:
    return Outcome("j", 1, kind, exit_code=exit_code, error=error, output_tail="out\n", worker="Worker-1",
                   started=NOW - 2, duration=1.5)


# (claimed job, outcome, what happens, state, attempts, error)
SETTLE = [
    ("success", claimed(), ran(0), "completed", "completed", 1, None),
    ("success although a cancel came: it finished first", claimed(cancel_requested_at="x"), ran(0),
     "completed", "completed", 1, None),
    ("failure with attempts left: retried later", claimed(1, 3), ran(3, "exit code 3"), "failed", "failed", 1,
     "exit code 3"),
    ("failure on the last attempt: the DLQ", claimed(3, 3), ran(3, "exit code 3"), "dead", "dead", 3, "exit code 3"),
    ("max_retries 0 still allows one attempt", claimed(1, 0), ran(1, "exit code 1"), "dead", "dead", 1,
     "exit code 1"),
    ("failure after a cancel was asked: never retried", claimed(1, 3, cancel_requested_at="x"),
     ran(3, "exit code 3"), "cancelled", "cancelled", 1, "cancelled; the attempt ended with exit code 3"),
    ("killed by cancel", claimed(1, 3), ran(None, None, "cancelled"), "cancelled", "cancelled", 1,
     "cancelled while running; its process tree was killed"),
    ("claimed ahead, handed back unstarted: not counted", claimed(2, 3), ran(None, None, "released"),
     "released", "pending", 1, None),
    ("handed back unstarted after a cancel: cancelled, not counted", claimed(1, 3, cancel_requested_at="x"),
     ran(None, None, "released"), "cancelled", "cancelled", 0, "cancelled before it started"),
    ("killed by a second Ctrl+C: not counted", claimed(1, 3), ran(None, "interrupted by Ctrl+C", "interrupted"),
     "interrupted", "pending", 0, "interrupted by Ctrl+C"),
]


@pytest.mark.parametrize("job, outcome, what, state, attempts, error", [row[1:] for row in SETTLE],
                         ids=[row[0] for row in SETTLE])
def test_settle_outcome(job: dict, outcome: Outcome, what: str, state: str, attempts: int, error: str | None) -> None:
    before = dict(job)
    settled, happened = queuectl.settle_outcome(job, outcome, CONFIG, NOW, chance=lambda: 1.0)
    assert (happened, settled["state"], settled["attempts"], settled.get("error")) == (what, state, attempts, error)
    assert job == before, "the rule changed the job it was given"
    assert "pid" not in settled and "host" not in settled, "the claim is dropped"
    assert settled["updated_at"] == queuectl.iso(NOW)
    if state in ("completed", "dead", "cancelled"):
        assert settled["finished_at"] == queuectl.iso(NOW)
    if state == "failed":
        assert settled["run_at"] == queuectl.iso(NOW + queuectl.backoff_delay(1, 2, 3600))
    if state == "pending":
        assert "run_at" not in settled and ("started_at" not in settled) == (attempts < job["attempts"])


def test_a_simulated_failure_takes_the_dice_only_for_a_success() -> None:
    config = dict(CONFIG, failure_rate=0.5)
    rolls = []
    dice = lambda: rolls.append(1) or 0.1  # noqa: E731 - below 0.5: fails
    settled, what = queuectl.settle_outcome(claimed(), ran(0), config, NOW, dice)
    assert (what, settled["error"]) == ("failed", "simulated failure (failure_rate=0.5)") and rolls == [1]
    queuectl.settle_outcome(claimed(), ran(3, "exit code 3"), config, NOW, dice)
    assert rolls == [1], "a real failure needs no dice"


def test_a_success_records_what_the_attempt_did() -> None:
    outcome = ran(0)
    outcome.warning = "its output could not be kept: disk full"
    settled, _ = queuectl.settle_outcome(claimed(warning="an older attempt's"), outcome, CONFIG, NOW, lambda: 1.0)
    assert {key: settled[key] for key in ("worker", "exit_code", "output", "duration", "warning")} == {
        "worker": "Worker-1", "exit_code": 0, "output": "out\n", "duration": 1.5,
        "warning": "its output could not be kept: disk full"}
    assert settled["started_at"] == settled["first_started_at"] == queuectl.iso(NOW - 2)
    again, _ = queuectl.settle_outcome(claimed(2, first_started_at="2027-01-01T00:00:00.000Z"), ran(0), CONFIG, NOW,
                                       lambda: 1.0)
    assert again["first_started_at"] == "2027-01-01T00:00:00.000Z" and "warning" not in again


# (claimed job, had its attempt started, what happens, state, attempts)
ORPHANS = [
    ("a crash counts as an attempt", claimed(1, 3), True, "pending", "pending", 1),
    ("a crash on the last attempt: the DLQ", claimed(3, 3), True, "dead", "dead", 3),
    ("claimed ahead, never started: not counted", claimed(2, 3), False, "pending", "pending", 1),
    ("claimed ahead on the last attempt: runs again", claimed(3, 3), False, "pending", "pending", 2),
    ("a cancel was asked: cancelled", claimed(1, 3, cancel_requested_at="x"), True, "cancelled", "cancelled", 1),
    ("a cancel was asked, never started: not counted", claimed(1, 3, cancel_requested_at="x"), False,
     "cancelled", "cancelled", 0),
]


@pytest.mark.parametrize("job, started, what, state, attempts", [row[1:] for row in ORPHANS],
                         ids=[row[0] for row in ORPHANS])
def test_settle_orphan(job: dict, started: bool, what: str, state: str, attempts: int) -> None:
    before = dict(job)
    settled, happened = queuectl.settle_orphan(job, started, NOW)
    assert (happened, settled["state"], settled["attempts"]) == (what, state, attempts)
    assert job == before and "pid" not in settled and "host" not in settled
    if what == "cancelled":
        assert settled["error"] == "cancelled; its worker had died"
    elif started:
        assert settled["error"] == f"the worker (pid 42 on h) died during attempt {attempts}"


def test_requeued_and_uncounted() -> None:
    job = claimed(2)
    unclaimed = {k: v for k, v in job.items() if k not in ("pid", "host")}
    pending = {**unclaimed, "state": "pending", "updated_at": queuectl.iso(NOW)}
    assert queuectl.requeued(job, NOW, counted=True) == pending
    back = queuectl.requeued(job, NOW, counted=False)
    assert back["attempts"] == 1 and "started_at" not in back
    assert queuectl.uncounted(claimed(0))["attempts"] == 0, "never below zero"


def test_a_claim_counts_the_new_attempt_and_names_its_worker() -> None:
    class Worker:
        pid, host = 7, "w"

    due = {**claimed(1), "state": "failed", "run_at": "2027-01-15T08:00:02.000Z", "pid": None}
    due.pop("host")
    job = queuectl.claimed_job(due, Worker(), NOW)
    assert {k: job[k] for k in ("state", "attempts", "pid", "host", "started_at", "updated_at")} == {
        "state": "processing", "attempts": 2, "pid": 7, "host": "w", "started_at": queuectl.iso(NOW),
        "updated_at": queuectl.iso(NOW)}
    assert "run_at" not in job and due["attempts"] == 1


def test_dlq_retry_revives_a_dead_job_with_all_its_attempts() -> None:
    dead = {**claimed(3, 3), "state": "dead", "finished_at": "x", "exit_code": 3, "error": "exit code 3"}
    job = queuectl.revived(dead, NOW)
    assert (job["state"], job["attempts"], job["updated_at"]) == ("pending", 0, queuectl.iso(NOW))
    assert not {"finished_at", "started_at", "exit_code"} & set(job) and job["error"] == "exit code 3"
    assert dead["state"] == "dead"


def copy(state: str, updated_at: str) -> dict:
    return {"id": "j", "command": "true", "state": state, "attempts": 1, "updated_at": updated_at}


EARLY, LATE = "2027-01-15T08:00:00.000Z", "2027-01-15T08:00:00.001Z"

# (why, copy, other, is copy newer?) -- a crash between two writes can leave a job in two places
NEWER = [
    ("a later update wins", copy("pending", LATE), copy("completed", EARLY), True),
    ("an earlier one does not", copy("completed", EARLY), copy("pending", LATE), False),
    ("a tie: the finished copy wins (finishing writes it first)", copy("dead", EARLY), copy("processing", EARLY), True),
    ("a tie: the active copy does not", copy("processing", EARLY), copy("dead", EARLY), False),
    ("a tie of two finished copies: neither", copy("dead", EARLY), copy("completed", EARLY), False),
    ("no other copy", copy("pending", EARLY), None, True),
    ("a hand-edited timestamp counts as the epoch", copy("pending", EARLY), copy("completed", 5), True),
]


@pytest.mark.parametrize("job, other, newer", [row[1:] for row in NEWER], ids=[row[0] for row in NEWER])
def test_newer_copy(job: dict, other: dict | None, newer: bool) -> None:
    assert queuectl.newer_copy(job, other) is newer


def test_newest_copy_is_the_latest_state_and_the_first_of_equals() -> None:
    first, second = copy("completed", EARLY), copy("dead", EARLY)
    assert queuectl.newest_copy([copy("processing", EARLY), first, second]) is first
    assert queuectl.newest_copy([first, copy("pending", LATE)])["state"] == "pending"
    assert queuectl.newest_copy([]) is None


# (why, active copy, finished copy, what happens, the state it was in, the state it becomes)
CANCEL = [
    ("pending: cancelled now", copy("pending", EARLY), None, "cancelled", "pending", "cancelled"),
    ("waiting for a retry: cancelled now", copy("failed", EARLY), None, "cancelled", "failed", "cancelled"),
    ("running: its worker is asked to stop it", copy("processing", EARLY), None, "requested", "processing",
     "processing"),
    ("finished: nothing to cancel", None, copy("completed", EARLY), "finished", "completed", None),
    ("a crash's leftover active copy is not the job", copy("pending", EARLY), copy("dead", LATE), "finished", "dead",
     None),
    ("revived by dlq retry after it died: cancelled", copy("pending", LATE), copy("dead", EARLY), "cancelled",
     "pending", "cancelled"),
    ("no such job", None, None, "unknown", "", None),
]


@pytest.mark.parametrize("job, finished, what, was, becomes", [row[1:] for row in CANCEL],
                         ids=[row[0] for row in CANCEL])
def test_cancel_decision(job: dict | None, finished: dict | None, what: str, was: str, becomes: str | None) -> None:
    happened, state, result = queuectl.cancel_decision(job, finished, NOW)
    assert (happened, state, result and result["state"]) == (what, was, becomes)
    if what == "requested":
        assert result["cancel_requested_at"] == queuectl.iso(NOW)
        again = queuectl.cancel_decision(result, None, NOW + 5)[2]
        assert again["cancel_requested_at"] == queuectl.iso(NOW), "a second cancel keeps the first request's time"
    if becomes == "cancelled":
        assert result["error"] == f"cancelled while {was}" and result["finished_at"] == queuectl.iso(NOW)


def pending(job_id: str, **extra) -> dict:
    return {"id": job_id, "command": "true", "state": "pending", "attempts": 0, "max_retries": 3, "priority": 0,
            "created_at": "2027-01-15T08:00:00.000Z", "updated_at": "2027-01-15T08:00:00.000Z", **extra}


# (what the job waits for: after, the states the store has of them) -> (state, waiting_for, error)
ENTERING = [
    ("nothing named", None, {}, ("pending", None, None)),
    ("one pending", ["a"], {"a": "pending"}, ("pending", ["a"], None)),
    ("one completed, one running", ["a", "b"], {"a": "completed", "b": "processing"}, ("pending", ["b"], None)),
    ("all completed: claimable at once", ["a", "b"], {"a": "completed", "b": "completed"}, ("pending", None, None)),
    ("one dead: cancelled at once", ["a", "b"], {"a": "pending", "b": "dead"},
     ("cancelled", None, "cancelled: it waits for b, which is dead")),
    ("one cancelled", ["a"], {"a": "cancelled"}, ("cancelled", None, "cancelled: it waits for a, which is cancelled")),
    ("one failed, its retry ahead", ["a"], {"a": "failed"}, ("pending", ["a"], None)),
]


@pytest.mark.parametrize("after, states, expected", [row[1:] for row in ENTERING], ids=[row[0] for row in ENTERING])
def test_waiting_job(after: list[str] | None, states: dict, expected: tuple) -> None:
    job = queuectl.waiting_job(pending("j", **({"after": after} if after else {})), states, NOW)
    assert (job["state"], job.get("waiting_for"), job.get("error")) == expected


def test_dependency_ended_crosses_off_a_completed_job_and_cancels_behind_a_dead_one() -> None:
    job = pending("j", after=["a", "b"], waiting_for=["a", "b"])
    once = queuectl.dependency_ended(job, "a", "completed", NOW)
    assert once["waiting_for"] == ["b"] and once["state"] == "pending"
    assert "waiting_for" not in queuectl.dependency_ended(once, "b", "completed", NOW), "claimable now"
    assert queuectl.is_due(queuectl.dependency_ended(once, "b", "completed", NOW), NOW)
    assert not queuectl.is_due(once, NOW)
    dead = queuectl.dependency_ended(job, "b", "dead", NOW)
    assert (dead["state"], dead["attempts"]) == ("cancelled", 0)
    assert dead["error"] == "cancelled: it waits for b, which is dead"
    assert "waiting_for" not in dead


def test_entering_jobs_orders_a_bulk_by_what_waits_for_what_and_refuses_cycles_and_unknown_ids() -> None:
    def states_of(ids: list[str]) -> dict[str, str]:
        return {job_id: {"old": "completed", "gone": "dead"}[job_id] for job_id in ids if job_id in ("old", "gone")}

    bulk = [pending("c", after=["b"]), pending("b", after=["a", "old"]), pending("a"), pending("x", after=["gone"]),
            pending("y", after=["x"])]
    entered = {job["id"]: job for job in queuectl.entering_jobs(bulk, states_of, NOW)}
    assert [job["id"] for job in queuectl.entering_jobs(bulk, states_of, NOW)] == ["c", "b", "a", "x", "y"]
    assert (entered["c"]["waiting_for"], entered["b"]["waiting_for"], entered["a"].get("waiting_for")) == (
        ["b"], ["a"], None)
    assert (entered["x"]["state"], entered["y"]["state"]) == ("cancelled", "cancelled"), "down the chain"
    assert entered["y"]["error"] == "cancelled: it waits for x, which is cancelled"
    with pytest.raises(queuectl.QueueError, match="wait for each other"):
        queuectl.entering_jobs([pending("p", after=["q"]), pending("q", after=["r"]), pending("r", after=["p"])],
                               states_of, NOW)
    with pytest.raises(queuectl.QueueError, match="job 'p' waits for 'nosuch', which is not in the queue"):
        queuectl.entering_jobs([pending("p", after=["nosuch"])], states_of, NOW)


def test_entering_jobs_takes_a_long_chain_in_one_bulk() -> None:
    """5,000 jobs each waiting for the next, listed first to last: no recursion limit is met."""
    chain = [pending(f"j{n}", **({"after": [f"j{n + 1}"]} if n < 4999 else {})) for n in range(5000)]
    entered = queuectl.entering_jobs(chain, lambda ids: {}, NOW)
    assert [job.get("waiting_for") for job in entered[:2]] == [["j1"], ["j2"]] and "waiting_for" not in entered[-1]
