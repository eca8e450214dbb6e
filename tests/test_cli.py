"""The command-line contract, through real queuectl processes (see conftest.Queue)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import SCRIPT, Queue, wait_until

import queuectl

STATE_FILES = ("queue.json", "processed.json", "failed.json", "config.json")
STATES = ("pending", "processing", "failed", "completed", "dead", "cancelled")


# -- helpers --------------------------------------------------------------------------


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def snapshot(home: Path) -> dict[str, bytes | None]:
    """The bytes of every state file (None when absent)."""
    return {name: (home / name).read_bytes() if (home / name).exists() else None for name in STATE_FILES}


def stored(queue: Any, job_id: str) -> dict[str, Any]:
    """The record of a job in queue.json."""
    matches = [job for job in queue.file("queue.json") if job["id"] == job_id]
    assert len(matches) == 1, f"{job_id!r} not once in queue.json: {queue.file('queue.json')}"
    return matches[0]


def enqueued(stdout: str) -> list[str]:
    """Ids from the `Enqueued job: <id>` lines; every stdout line must be one."""
    lines = stdout.splitlines()
    assert lines and all(line.startswith("Enqueued job: ") for line in lines), stdout
    return [line[len("Enqueued job: "):] for line in lines]


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    return lines[0]


def refused(queue: Any, *args: str, input: str | bytes | None = None, code: int = 1) -> str:
    """Run a command that must fail: exit code, a single line on stderr (usage text for
    argparse errors), no traceback, and not one byte of the state files changed."""
    before = snapshot(queue.home)
    proc = queue.run(*args, input=input)
    assert proc.returncode == code, (f"queuectl {' '.join(args)} -> {proc.returncode}, expected {code}\n"
                                     f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    assert "Traceback" not in proc.stderr, proc.stderr
    if code == 1:
        line = one_error_line(proc.stderr)
    else:
        assert "usage:" in proc.stderr, proc.stderr
        line = proc.stderr.strip().splitlines()[-1]
    assert snapshot(queue.home) == before, "a refused command changed the state files"
    assert "Enqueued job" not in proc.stdout
    return line


def record(job_id: str, state: str, **extra: Any) -> dict[str, Any]:
    job = {"id": job_id, "command": f"echo {job_id}", "state": state,
           "attempts": 0 if state == "pending" else 1, "max_retries": 3, "priority": 0,
           "created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:00:00.000Z"}
    if state in ("completed", "dead"):
        job.update(finished_at="2026-01-01T00:00:01.000Z", exit_code=0 if state == "completed" else 1)
    job.update(extra)
    return job


def write_array(path: Path, jobs: list[dict[str, Any]]) -> None:
    lines = [json.dumps(job, separators=(",", ":")) for job in jobs]
    path.write_text("[\n" + ",\n".join(lines) + "\n]\n" if lines else "[\n]\n", encoding="utf-8")


@pytest.fixture
def seeded(queue):
    """A queue with a job in each file: `existing` pending, `done1` completed, `dead1` dead,
    and a config.json; written directly, so no process runs."""
    write_array(queue.home / "queue.json", [record("existing", "pending")])
    write_array(queue.home / "processed.json", [record("done1", "completed")])
    write_array(queue.home / "failed.json", [record("dead1", "dead")])
    (queue.home / "config.json").write_text(json.dumps(dict(queuectl.DEFAULT_CONFIG), indent=2) + "\n")
    return queue


@pytest.fixture(scope="module")
def ran_once(tmp_path_factory):
    """One real worker run, shared by the tests that only need its result: two jobs failed
    with max_retries 1 (-> DLQ), one completed, one still pending (due in an hour)."""
    queue = Queue(tmp_path_factory.mktemp("ran"))
    jobs = [{"id": "d1", "command": "exit 3", "max_retries": 1}, {"id": "d2", "command": "exit 4", "max_retries": 1},
            {"id": "ok1", "command": "echo fine"}, {"id": "later", "command": "echo later", "delay": "1h"}]
    queue.ok("enqueue", "--file", "-", input="\n".join(json.dumps(job) for job in jobs))
    queue.ok("worker", "start", "--burst", "--count", "2")
    assert queue.states() == {"d1": "dead", "d2": "dead", "ok1": "completed", "later": "pending"}
    return queue.home


@pytest.fixture
def ran(queue, ran_once):
    """A copy of ran_once's data folder for one test (state files and logs)."""
    for name in ("queue.json", "processed.json", "failed.json"):
        shutil.copy2(ran_once / name, queue.home / name)
    shutil.copytree(ran_once / "logs", queue.home / "logs")
    return queue


# -- enqueue: every input form ------------------------------------------------------------


def test_enqueue_positional_json(queue):
    out = queue.ok("enqueue", '{"id":"job1","command":"echo hi","priority":2}')
    assert enqueued(out) == ["job1"]
    job = stored(queue, "job1")
    assert job["command"] == "echo hi"
    assert job["state"] == "pending"
    assert job["attempts"] == 0
    assert job["priority"] == 2
    assert job["max_retries"] == 3
    assert "run_at" not in job
    assert job["created_at"] == job["updated_at"]
    assert abs(epoch(job["created_at"]) - time.time()) < 60


def test_enqueue_json_option(queue):
    assert enqueued(queue.ok("enqueue", "--json", '{"id":"job1","command":"sleep 2","max_retries":5}')) == ["job1"]
    job = stored(queue, "job1")
    assert (job["command"], job["state"], job["attempts"], job["max_retries"]) == ("sleep 2", "pending", 0, 5)


def test_enqueue_flags_with_every_option(queue):
    out = queue.ok("enqueue", "--id", "job1", "--command", "echo 'a b'", "--max-retries", "5", "--priority", "-3",
                   "--run-at", "2030-01-01T10:00:00+02:00", "--timeout", "7")
    assert enqueued(out) == ["job1"]
    job = stored(queue, "job1")
    assert job["command"] == "echo 'a b'"
    assert (job["state"], job["attempts"], job["max_retries"], job["priority"]) == ("pending", 0, 5, -3)
    assert epoch(job["run_at"]) == datetime(2030, 1, 1, 8, tzinfo=timezone.utc).timestamp()
    assert job["timeout"] == 7


def test_enqueue_delay_sets_run_at(queue):
    queue.ok("enqueue", "--id", "job1", "--command", "echo", "--delay", "5m")
    queue.ok("enqueue", "--id", "job2", "--command", "echo", "--delay", "90")
    for job_id, seconds in (("job1", 300), ("job2", 90)):
        job = stored(queue, job_id)
        assert job["state"] == "pending"
        assert abs(epoch(job["run_at"]) - epoch(job["created_at"]) - seconds) < 0.01


def test_enqueue_run_at_without_offset_is_local_time(queue, monkeypatch):
    monkeypatch.setenv("TZ", "QQQ-3")  # UTC+3 for the queuectl process
    queue.ok("enqueue", "--id", "job1", "--command", "echo", "--run-at", "2030-01-01T10:00:00")
    queue.ok("enqueue", "--json", '{"id":"job2","command":"echo","run_at":"2030-01-01 10:00"}')
    queue.ok("enqueue", "--id", "job3", "--command", "echo", "--run-at", "2030-01-01T10:00:00Z")
    seven_utc = datetime(2030, 1, 1, 7, tzinfo=timezone.utc).timestamp()
    assert epoch(stored(queue, "job1")["run_at"]) == seven_utc
    assert epoch(stored(queue, "job2")["run_at"]) == seven_utc
    assert epoch(stored(queue, "job3")["run_at"]) == seven_utc + 3 * 3600


def test_enqueue_generates_an_id_when_absent(queue):
    (job_id,) = enqueued(queue.ok("enqueue", "--command", "echo generated"))
    assert queuectl.ID_PATTERN.match(job_id)
    assert stored(queue, job_id)["command"] == "echo generated"
    (other,) = enqueued(queue.ok("enqueue", '{"command":"echo again"}'))
    assert other != job_id and stored(queue, other)["command"] == "echo again"


def test_enqueue_max_retries_default_comes_from_config(queue):
    queue.ok("config", "set", "max-retries", "7")
    queue.ok("enqueue", "--id", "job1", "--command", "echo")
    assert stored(queue, "job1")["max_retries"] == 7


def test_enqueue_accepts_a_full_record_of_the_original_spec(queue):
    text = ('{"id":"job1","command":"sleep 2","state":"pending","attempts":0,"max_retries":3,'
            '"created_at":"2025-11-04T10:30:00Z","updated_at":"2025-11-04T10:30:00Z"}')
    assert enqueued(queue.ok("enqueue", text)) == ["job1"]
    assert stored(queue, "job1")["state"] == "pending"


def test_enqueue_file_with_one_object(queue):
    (queue.home / "job.json").write_text('{"id": "job1", "command": "echo one"}\n')
    assert enqueued(queue.ok("enqueue", "--file", "job.json")) == ["job1"]
    assert stored(queue, "job1")["command"] == "echo one"


def test_enqueue_file_with_an_array(queue):
    jobs = [{"id": f"job{n}", "command": f"echo {n}", "priority": n} for n in (1, 2, 3)]
    (queue.home / "jobs.json").write_text(json.dumps(jobs, indent=2))
    assert enqueued(queue.ok("enqueue", "--file", str(queue.home / "jobs.json"))) == ["job1", "job2", "job3"]
    assert [(j["id"], j["priority"], j["state"]) for j in queue.file("queue.json")] == [
        ("job1", 1, "pending"), ("job2", 2, "pending"), ("job3", 3, "pending")]


def test_enqueue_file_with_one_object_per_line(queue):
    (queue.home / "jobs.jsonl").write_text('{"id":"a","command":"echo a"}\n\n{"id":"b","command":"echo b"}\n')
    assert enqueued(queue.ok("enqueue", "--file", "jobs.jsonl")) == ["a", "b"]
    assert queue.states() == {"a": "pending", "b": "pending"}


@pytest.mark.parametrize("encoding, bom", [("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe")])
def test_enqueue_file_with_a_bom(queue, encoding, bom):
    text = '{"id":"job1","command":"echo caf\u00e9"}\r\n{"id":"job2","command":"echo 2"}\r\n'
    (queue.home / "jobs.json").write_bytes(bom + text.encode(encoding))
    assert enqueued(queue.ok("enqueue", "--file", "jobs.json")) == ["job1", "job2"]
    assert stored(queue, "job1")["command"] == "echo caf\u00e9"


@pytest.mark.parametrize("args", [("--file", "-"), ("--json", "-"), ("-",)])
def test_enqueue_from_stdin(queue, args):
    out = queue.ok("enqueue", *args, input='{"id":"a","command":"echo a"}\n{"id":"b","command":"echo b"}\n')
    assert enqueued(out) == ["a", "b"]
    assert stored(queue, "b")["command"] == "echo b"


def test_enqueue_from_stdin_in_utf16(queue):
    data = b"\xff\xfe" + '[{"id":"a","command":"echo \u00e9"}]'.encode("utf-16-le")
    assert enqueued(queue.ok("enqueue", "--file", "-", input=data)) == ["a"]
    assert stored(queue, "a")["command"] == "echo \u00e9"


# -- enqueue: shell-mangled JSON -------------------------------------------------------------


@pytest.mark.parametrize("text, command", [
    ("{id:job1,command:sleep 2}", "sleep 2"),                          # PowerShell 5.1 stripped the quotes
    ('{""id"":""job1"",""command"":""echo""}', "echo"),                # doubled quotes
    ('{\\"id\\":\\"job1\\",\\"command\\":\\"echo hi\\"}', "echo hi"),  # \" from the 5.1 idiom under pwsh 7.3
])
def test_enqueue_repairs_shell_mangled_json_with_a_note(queue, text, command):
    proc = queue.run("enqueue", "--json", text)
    assert proc.returncode == 0, proc.stderr
    assert enqueued(proc.stdout) == ["job1"]
    note = one_error_line(proc.stderr)
    assert note.startswith("note:") and "repaired" in note
    assert stored(queue, "job1")["command"] == command


def test_enqueue_repair_positional_form(queue):
    proc = queue.run("enqueue", "{id:job1,command:sleep 2}")
    assert proc.returncode == 0 and enqueued(proc.stdout) == ["job1"]
    assert one_error_line(proc.stderr).startswith("note:")


def test_enqueue_quote_stripped_json_with_an_unknown_key_is_refused(queue):
    line = refused(queue, "enqueue", "--json", "{id:job1,foo:bar}")
    assert "repaired" not in line
    assert "{id:job1,foo:bar}" in line
    assert not (queue.home / "queue.json").exists()


def test_enqueue_unrepairable_json_shows_what_arrived_and_what_works(queue):
    line = refused(queue, "enqueue", "--json", "job1 echo hi")
    assert line.startswith("error:")
    assert "'job1 echo hi'" in line
    assert "--id" in line and "--command" in line and "--file" in line


# -- enqueue: bad input -------------------------------------------------------------------

BAD_INPUT = [
    pytest.param(("enqueue", '{"id":"j","comand":"echo"}'), ["comand", "id, command, max_retries, priority"],
                 id="unknown-field"),
    pytest.param(("enqueue", '{"id":"j"}'), ["command"], id="missing-command"),
    pytest.param(("enqueue", "--id", "j", "--command", ""), ["command"], id="empty-command"),
    pytest.param(("enqueue", "--id", "../x", "--command", "echo"), ["'../x'"], id="id-path"),
    pytest.param(("enqueue", "--id", "a" * 65, "--command", "echo"), ["id"], id="id-too-long"),
    pytest.param(("enqueue", "--id=-x", "--command", "echo"), ["'-x'"], id="id-leading-dash"),
    pytest.param(("enqueue", "--id", "j", "--command", "echo", "--priority", "high"), ["priority"],
                 id="priority-word"),
    pytest.param(("enqueue", "--id", "j", "--command", "echo", "--max-retries", "x"), ["max_retries"],
                 id="max-retries-word"),
    pytest.param(("enqueue", "--id", "j", "--command", "echo", "--max-retries", "-1"), ["max_retries"],
                 id="max-retries-negative"),
    pytest.param(("enqueue", "--id", "j", "--command", "echo", "--run-at", "tomorrow"), ["run_at", "tomorrow"],
                 id="run-at-word"),
    pytest.param(("enqueue", "--id", "j", "--command", "echo", "--delay", "soon"), ["delay", "soon"],
                 id="delay-word"),
    pytest.param(("enqueue", "--id", "j", "--command", "echo", "--delay=-5"), ["delay"], id="delay-negative"),
    pytest.param(("enqueue", '{"id":"j","command":"echo","run_at":"2030-01-01T00:00:00Z","delay":"5m"}'),
                 ["run_at", "delay"], id="run-at-and-delay-json"),
    pytest.param(("enqueue", "--id", "j", "--command", "echo", "--run-at", "2030-01-01T00:00:00Z",
                  "--delay", "5m"), ["run_at", "delay"], id="run-at-and-delay-flags"),
    pytest.param(("enqueue", "--id", "j", "--command", "echo", "--timeout", "abc"), ["timeout"], id="timeout-word"),
    pytest.param(("enqueue", "--id", "existing", "--command", "echo"), ["existing", "pending", "queue.json"],
                 id="duplicate-pending"),
    pytest.param(("enqueue", "--id", "done1", "--command", "echo"), ["done1", "completed", "processed.json"],
                 id="duplicate-completed"),
    pytest.param(("enqueue", "--id", "dead1", "--command", "echo"), ["dead1", "dead", "failed.json"],
                 id="duplicate-dead"),
    pytest.param(("enqueue", '[{"id":"n1","command":"echo"},{"id":"n1","command":"echo"}]'), ["n1", "twice"],
                 id="duplicate-within-input"),
    pytest.param(("enqueue", "--file", "no-such-file.json"), ["no-such-file.json"], id="file-missing"),
    pytest.param(("enqueue", "--json", "not json at all"), ["not json at all", "--id", "--file"],
                 id="unrepairable-json"),
    pytest.param(("enqueue", '["echo hi"]'), ["item 1", "object"], id="array-of-strings"),
    pytest.param(("enqueue",), ["--id", "--command"], id="nothing"),
    pytest.param(("enqueue", "--id", "j"), ["--command"], id="id-without-command"),
    pytest.param(("enqueue", '{"id":"a","command":"echo"}', "--json", '{"id":"b","command":"echo"}'),
                 ["one way"], id="two-sources"),
    pytest.param(("enqueue", "--file", "-", "--command", "echo"), ["one way"], id="file-and-command"),
]


@pytest.mark.parametrize("args, words", BAD_INPUT)
def test_enqueue_bad_input_is_refused(seeded, args, words):
    line = refused(seeded, *args)
    assert line.startswith("error:")
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert set(seeded.states()) == {"existing", "done1", "dead1"}


@pytest.mark.parametrize("args", [("enqueue", "--id", "-x", "--command", "echo"),
                                  ("enqueue", "--id", "j", "--command"),
                                  ("enqueue", "--bogus")])
def test_enqueue_usage_errors_exit_2(seeded, args):
    refused(seeded, *args, code=2)


@pytest.mark.parametrize("stdin, words", [("", ["standard input", "empty"]),
                                          (b"\x80\x81\x82", ["standard input", "UTF-8"]),
                                          ("{bad", ["standard input", "not valid JSON"])])
def test_enqueue_bad_stdin_is_refused(seeded, stdin, words):
    line = refused(seeded, "enqueue", "--file", "-", input=stdin)
    for word in words:
        assert word in line


@pytest.mark.parametrize("name, content, words", [
    ("jobs.jsonl", '{"id":"n1","command":"echo 1"}\n{"id":"n2","command":"echo 2"}\n{"id":"n3","comand":"x"}\n',
     ["jobs.jsonl line 3", "comand"]),
    ("jobs.jsonl", '{"id":"n1","command":"echo 1"}\n{"id":"n2","command":"echo 2"}\n{"id":"n3" "command":"x"}\n',
     ["jobs.jsonl line 3", "not valid JSON"]),
    ("jobs.json", '[{"id":"n1","command":"echo 1"},{"id":"n2","command":"echo 2"},{"id":"n3","command":""}]',
     ["jobs.json item 3", "command"]),
    ("jobs.json", '[{"id":"n1","command":"echo 1"},{"id":"n2","command":"echo 2"},{"id":"dead1","command":"x"}]',
     ["dead1", "failed.json"]),
])
def test_bulk_enqueue_is_all_or_nothing(seeded, name, content, words):
    (seeded.home / name).write_text(content)
    line = refused(seeded, "enqueue", "--file", name)
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert set(seeded.states()) == {"existing", "done1", "dead1"}


def test_id_flag_names_a_single_job_only(seeded):
    (seeded.home / "jobs.json").write_text('[{"command":"echo 1"},{"command":"echo 2"}]')
    assert "single job" in refused(seeded, "enqueue", "--id", "x", "--file", "jobs.json")


# -- status, list, show -------------------------------------------------------------------


def test_status_counts_and_home(ran):
    data = ran.json("status")
    assert data["counts"] == {"pending": 1, "processing": 0, "failed": 0, "completed": 1, "dead": 2, "cancelled": 0}
    assert data["scheduled"] == 1
    assert data["workers"] == []
    assert os.path.samefile(data["home"], ran.home)
    text = ran.ok("status")
    assert re.search(r"^Pending Jobs\s*: 1\b", text, re.M)
    assert re.search(r"^Completed Jobs\s*: 1$", text, re.M)
    assert re.search(r"^Dead Jobs \(DLQ\)\s*: 2$", text, re.M)
    assert re.search(r"^Failed Jobs\s*: 0$", text, re.M)
    assert re.search(r"^Worker State\s*: Stopped$", text, re.M)
    assert str(ran.home) in text


def test_status_shows_running_workers(queue):
    worker = queue.start_worker("--count", "2")
    data = wait_until(lambda: (d := queue.json("status"))["workers"] and d, what="a worker in status")
    (info,) = data["workers"]
    assert info["pid"] == worker.pid
    assert info["threads"] == 2
    assert info["host"] == socket.gethostname()
    assert re.search(r"^Worker State\s*: Running \(1 process, 2 threads\)$", queue.ok("status"), re.M)


def test_status_json_is_only_json(queue):
    proc = queue.run("status", "--json")
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    assert set(data["counts"]) == set(STATES)


@pytest.fixture
def every_state(queue):
    """One job in each state, written directly (the processing one is 'run' by this live process)."""
    now = queuectl.iso(time.time())
    write_array(queue.home / "queue.json", [
        record("p1", "pending"),
        record("r1", "processing", worker="Worker-1", pid=os.getpid(), host=socket.gethostname(),
               started_at=now),
        record("f1", "failed", run_at="2099-01-01T00:00:00.000Z", error="exit code 1"),
    ])
    write_array(queue.home / "processed.json", [record("c1", "completed")])
    write_array(queue.home / "failed.json", [record("x1", "dead")])
    return queue


@pytest.mark.parametrize("state, ids", [
    ("pending", ["p1"]), ("processing", ["r1"]), ("failed", ["f1"]), ("completed", ["c1"]), ("dead", ["x1"]),
    ("processed", ["c1"]), ("dlq", ["x1"]), ("DEAD", ["x1"]),
])
def test_list_filters_by_state(every_state, state, ids):
    jobs = every_state.json("list", "--state", state)
    assert [job["id"] for job in jobs] == ids
    assert all(job["state"] == queuectl.normalize_state(state) for job in jobs)


def test_list_without_state_shows_every_job_as_a_table(every_state):
    text = every_state.ok("list")
    header, *rows = text.splitlines()
    assert header.split()[:3] == ["ID", "STATE", "ATTEMPTS"] and "COMMAND" in header
    found = {row.split()[0]: row.split()[1] for row in rows}
    assert found == {"p1": "pending", "r1": "processing", "f1": "failed", "c1": "completed", "x1": "dead"}
    command_column = header.index("COMMAND")
    assert all(row[command_column:].startswith("echo ") for row in rows)


def test_list_json_is_only_a_json_array(every_state):
    proc = every_state.run("list", "--json")
    assert proc.returncode == 0 and proc.stderr == ""
    jobs = json.loads(proc.stdout)
    assert isinstance(jobs, list) and {job["id"] for job in jobs} == {"p1", "r1", "f1", "c1", "x1"}


def test_list_limit(every_state):
    assert len(every_state.json("list", "--limit", "2")) == 2
    rows = every_state.ok("list", "--limit", "1").splitlines()
    assert len(rows) == 2  # header + one job
    assert every_state.json("list", "--limit", "0") == []


def test_list_when_empty(queue):
    assert queue.json("list") == []
    assert queue.json("list", "--state", "dead") == []
    assert "No pending jobs" in queue.ok("list", "--state", "pending")


def test_list_unknown_state_is_a_usage_error_listing_valid_ones(every_state):
    line = refused(every_state, "list", "--state", "bogus", code=2)
    assert "bogus" in line
    for state in STATES:
        assert state in line


def test_list_failed_with_an_empty_failed_state_points_at_the_dlq(ran):
    text = ran.ok("list", "--state", "failed")
    assert "No failed jobs" in text
    assert "dead" in text and "DLQ" in text


def test_list_failed_without_dead_jobs_gives_no_hint(queue):
    text = queue.ok("list", "--state", "failed")
    assert "No failed jobs" in text and "DLQ" not in text


def test_show_human_and_json(ran):
    job = ran.json("show", "d1")
    assert (job["id"], job["state"], job["attempts"], job["exit_code"]) == ("d1", "dead", 1, 3)
    assert job["command"] == "exit 3"
    text = ran.ok("show", "d1")
    assert re.search(r"^id\s*: d1$", text, re.M)
    assert re.search(r"^state\s*: dead$", text, re.M)
    assert re.search(r"^command\s*: exit 3$", text, re.M)
    assert re.search(r"^error\s*: exit code 3$", text, re.M)
    assert ran.json("show", "later")["state"] == "pending"
    assert ran.json("show", "ok1")["output"] == "fine\n"


def test_show_unknown_id(ran):
    assert "nope" in refused(ran, "show", "nope")
    assert "nope" in refused(ran, "show", "nope", "--json")


# -- dlq ---------------------------------------------------------------------------------


def test_dlq_list(ran):
    jobs = ran.json("dlq", "list")
    assert sorted(job["id"] for job in jobs) == ["d1", "d2"]
    assert all(job["state"] == "dead" and job["attempts"] == 1 for job in jobs)
    text = ran.ok("dlq", "list")
    assert "d1" in text and "d2" in text and "ok1" not in text and "later" not in text


def test_dlq_retry_one_job(ran):
    out = ran.ok("dlq", "retry", "d1")
    assert out.splitlines() == ["Requeued job: d1"]
    job = stored(ran, "d1")
    assert (job["state"], job["attempts"]) == ("pending", 0)
    assert [job["id"] for job in ran.file("failed.json")] == ["d2"]
    assert ran.states()["d1"] == "pending"


def test_dlq_retry_all(ran):
    out = ran.ok("dlq", "retry", "--all")
    assert sorted(out.splitlines()) == ["Requeued job: d1", "Requeued job: d2"]
    assert ran.file("failed.json") == []
    assert all(stored(ran, i)["state"] == "pending" and stored(ran, i)["attempts"] == 0 for i in ("d1", "d2"))
    assert ran.json("dlq", "list") == []


@pytest.mark.parametrize("job_id, where", [("ok1", "completed"), ("later", "pending"), ("nope", "no such job")])
def test_dlq_retry_of_a_job_not_in_the_dlq(ran, job_id, where):
    line = refused(ran, "dlq", "retry", job_id)
    assert job_id in line and where in line


def test_dlq_retry_is_all_or_nothing(ran):
    refused(ran, "dlq", "retry", "d1", "nope")
    assert ran.states()["d1"] == "dead"


def test_dlq_retried_job_runs_again(ran):
    ran.ok("dlq", "retry", "d1")
    ran.ok("worker", "start", "--burst")
    job = ran.json("show", "d1")
    assert (job["state"], job["attempts"]) == ("dead", 1)


# -- config --------------------------------------------------------------------------------


def test_config_show_defaults(queue):
    assert queue.json("config", "show") == queuectl.DEFAULT_CONFIG
    text = queue.ok("config", "show")
    for key, value in queuectl.DEFAULT_CONFIG.items():
        assert re.search(rf"^{key}\s*= {re.escape(str(value))}$", text, re.M), (key, text)


@pytest.mark.parametrize("key", ["max_retries", "max-retries"])
def test_config_get(queue, key):
    assert queue.ok("config", "get", key).strip() == "3"


def test_config_set_with_dash_or_underscore_persists(queue):
    queue.ok("config", "set", "max-retries", "5")
    queue.ok("config", "set", "poll_interval", "0.25")
    queue.ok("config", "set", "backoff-base", "3")
    assert json.loads((queue.home / "config.json").read_text()) == dict(
        queuectl.DEFAULT_CONFIG, max_retries=5, poll_interval=0.25, backoff_base=3)
    assert queue.ok("config", "get", "max_retries").strip() == "5"
    assert queue.json("config", "show")["poll_interval"] == 0.25


@pytest.mark.parametrize("key, value, words", [
    ("max_retries", "abc", ["max_retries", "whole number"]),
    ("max_retries", "1.5", ["max_retries"]),
    ("max_retries", "-1", ["max_retries"]),
    ("backoff_base", "0.5", ["backoff_base"]),
    ("backoff-base", "two", ["backoff_base"]),
    ("failure_rate", "2", ["failure_rate"]),
    ("poll-interval", "0", ["poll_interval"]),
    ("lease_timeout", "0", ["lease_timeout"]),
    ("max_backoff", "inf", ["max_backoff"]),
    ("retries", "3", ["retries", "max_retries", "backoff_base", "failure_rate"]),
])
def test_config_set_refuses_bad_values(seeded, key, value, words):
    line = refused(seeded, "config", "set", key, value)
    for word in words:
        assert word in line


def test_config_set_refused_without_a_config_file_creates_none(queue):
    refused(queue, "config", "set", "max_retries", "x")
    assert not (queue.home / "config.json").exists()


def test_config_get_unknown_key(seeded):
    line = refused(seeded, "config", "get", "nope")
    assert "nope" in line and "max_retries" in line and "lease_timeout" in line


# -- data folder, version, help ----------------------------------------------------------------


def test_home_flag_overrides_the_environment_and_is_created_on_first_write(queue, tmp_path):
    other = tmp_path / "a" / "b"
    assert not other.exists()
    queue.ok("--home", str(other), "enqueue", "--id", "job1", "--command", "echo")
    assert [job["id"] for job in json.loads((other / "queue.json").read_text())] == ["job1"]
    assert not (queue.home / "queue.json").exists()
    assert queue.json("--home", str(other), "list")[0]["id"] == "job1"


def run_elsewhere(cwd: Path, home: Path | None, *args: str) -> subprocess.CompletedProcess:
    """queuectl started from `cwd`, with QUEUECTL_HOME=home (or unset)."""
    env = {k: v for k, v in os.environ.items() if k != "QUEUECTL_HOME"}
    if home is not None:
        env["QUEUECTL_HOME"] = str(home)
    proc = subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_queuectl_home_environment_variable(tmp_path):
    (tmp_path / "cwd").mkdir()
    run_elsewhere(tmp_path / "cwd", tmp_path / "env-home", "enqueue", "--id", "job1", "--command", "echo")
    assert json.loads((tmp_path / "env-home" / "queue.json").read_text())[0]["id"] == "job1"
    assert not (tmp_path / "cwd" / "queue.json").exists()


def test_current_folder_is_the_default_home(tmp_path):
    run_elsewhere(tmp_path, None, "enqueue", "--id", "job1", "--command", "echo")
    assert json.loads((tmp_path / "queue.json").read_text())[0]["id"] == "job1"


@pytest.mark.parametrize("args", [("status",), ("list",)])
def test_reading_does_not_create_the_data_folder(queue, tmp_path, args):
    missing = tmp_path / "missing"
    proc = queue.run("--home", str(missing), *args)
    assert "Traceback" not in proc.stderr
    assert not missing.exists(), f"{' '.join(args)} created {missing}: {os.listdir(missing)}"


def test_version(queue):
    proc = queue.run("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"queuectl {queuectl.__version__}"


@pytest.mark.parametrize("args", [
    (), ("enqueue",), ("worker",), ("worker", "start"), ("worker", "stop"), ("status",), ("list",), ("show",),
    ("dlq",), ("dlq", "list"), ("dlq", "retry"), ("config",), ("config", "show"), ("config", "get"),
    ("config", "set"),
])
def test_every_command_has_help_with_an_example(queue, args):
    proc = queue.run(*args, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Example" in proc.stdout
    assert "usage: queuectl" in proc.stdout


# -- corrupt state files ---------------------------------------------------------------------

CORRUPT = {
    "queue.json": b'[\n{"id":"a","command":"echo a","state":"pending","attempts":0},\nnot json,\n'
                  b'{"id":"b","command":"echo b","state":"pending","attempts":0}\n]\n',
    "processed.json": b'[\n{"id":"c","command":"echo c","state":"completed","attempts":1},\n{"id":"d",\n'
                      b'{"id":"e","command":"echo e","state":"completed","attempts":1}\n]\n',
    "failed.json": b'[\n{"id":"x","command":"echo x","state":"dead","attempts":1}\n{oops}\n]\n',
    "config.json": b'{"max_retries": \n',
}
COMMANDS = [("status",), ("list",), ("enqueue", "--id", "new1", "--command", "echo new"),
            ("worker", "start", "--burst")]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: " ".join(args[:2]))
@pytest.mark.parametrize("name", list(CORRUPT))
def test_corrupt_state_file_stops_every_command(queue, name, args):
    if name != "queue.json":
        write_array(queue.home / "queue.json", [record("p1", "pending")])
    (queue.home / name).write_bytes(CORRUPT[name])
    before = snapshot(queue.home)
    proc = queue.run(*args)
    assert proc.returncode == 1, f"{' '.join(args)} with a corrupt {name} -> {proc.returncode}\n{proc.stdout}"
    line = one_error_line(proc.stderr)
    assert name in line
    assert snapshot(queue.home) == before
    assert not (queue.home / "logs" / "p1.log").exists(), "a job ran although a state file is corrupt"


def test_corrupt_file_error_says_what_to_do(queue):
    (queue.home / "queue.json").write_bytes(b"{bad")
    line = refused(queue, "list")
    assert str(queue.home / "queue.json") in line
    assert "nothing was changed" in line


# -- state survives a restart ------------------------------------------------------------------


def test_state_survives_a_new_process(queue):
    queue.ok("enqueue", "--id", "a", "--command", "echo a", "--priority", "4")
    queue.ok("enqueue", "--id", "b", "--command", "echo b")
    jobs = queue.json("list")
    assert [(job["id"], job["priority"], job["state"]) for job in jobs] == [("a", 4, "pending"), ("b", 0, "pending")]
    assert jobs == queue.file("queue.json")
    assert queue.json("show", "a") == stored(queue, "a")


# -- where the queue lives: a folder, or a URL naming a store --------------------------------


def test_a_url_of_an_unknown_kind_is_refused_naming_the_known_ones_without_its_password(queue: Queue) -> None:
    proc = queue.run("--home", "redis://bob:s3cret@localhost/0", "status")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == ("error: redis://bob:***@localhost/0: no queuectl store for redis:// addresses; a queue "
                           "lives in a folder (a path) or at postgresql://, postgres://.\n")


def test_a_store_module_that_cannot_be_imported_is_one_sentence(queue: Queue, monkeypatch) -> None:
    import queuectl

    monkeypatch.setitem(queuectl.STORES, "fake", "queuectl_no_such_module:FakeStore")
    with pytest.raises(queuectl.StoreUnavailable) as raised:
        queuectl.open_store("fake://alice:pw@host/q")
    assert str(raised.value) == ("a queue at a fake:// address needs the queuectl_no_such_module module, which this "
                                 "installation cannot import (No module named 'queuectl_no_such_module').")


def test_a_store_module_gets_its_url_and_imports_the_running_queuectl(queue: Queue, tmp_path) -> None:
    """Run as `python queuectl.py`, the store module's `import queuectl` must be this very module
    (a second copy would have classes of its own). A stand-in queuectl_pg keeps a folder."""
    (tmp_path / "queuectl_pg.py").write_text(
        "import sys\n"
        "import queuectl\n"
        "assert queuectl is sys.modules['__main__'], 'a second copy of queuectl was imported'\n"
        "class PostgresStore(queuectl.FolderStore):\n"
        "    def __init__(self, location):\n"
        "        super().__init__(location.split('://', 1)[1])\n")
    shutil.copy(SCRIPT, tmp_path / "queuectl.py")  # beside the stand-in, which it finds before the real one
    proc = subprocess.run([sys.executable, str(tmp_path / "queuectl.py"), "--home", f"postgresql://{queue.home}",
                           "status"],
                          capture_output=True, text=True, timeout=60, env=queue.env(), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert f"Data folder    : {queue.home}" in proc.stdout


def test_a_file_where_the_data_folder_should_be_is_one_sentence(queue: Queue, tmp_path) -> None:
    path = tmp_path / "not-a-folder"
    path.write_text("x")
    proc = queue.run("--home", str(path), "status")
    assert proc.returncode == 1 and proc.stderr == f"error: the data folder {path} is a file, not a folder.\n"


# Runs queuectl as `python queuectl.py ARGS` does, then prints which of the heavy modules it loaded.
IMPORTS_AFTER = """
import sys, runpy
sys.argv = [{script!r}, *sys.argv[1:]]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit:
    pass
heavy = ("subprocess", "http.server", "filelock", "psycopg2", "psycopg", "socket", "asyncio", "ctypes")
sys.stderr.write(" ".join(m for m in heavy if m in sys.modules) + "\\n")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="on Windows the lock is filelock's")
@pytest.mark.parametrize("args", [["enqueue", "--id", "a", "--command", "true"], ["status"], ["list"],
                                  ["list", "--state", "completed", "--limit", "5"], ["show", "a"],
                                  ["--home", "redis://x", "status"]])
def test_one_shot_commands_import_nothing_heavy(queue: Queue, args: list[str]) -> None:
    """The start-up budget: a one-shot command pays for no subprocess, HTTP server, filelock
    (POSIX), socket or database driver; a folder queue never imports a store module."""
    if args[0] != "enqueue":
        queue.ok("enqueue", "--id", "a", "--command", "true")
    proc = subprocess.run([sys.executable, "-c", IMPORTS_AFTER.format(script=SCRIPT), *args], capture_output=True,
                          text=True, timeout=60, env=queue.env(), cwd=str(queue.home))
    assert proc.stderr.splitlines()[-1] == "", f"{args} imported: {proc.stderr.splitlines()[-1]}"
