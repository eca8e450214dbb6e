"""What a job carries besides its command, on every store: the directory it runs in (`cwd`) and
variables for its environment (`env`). Each story runs on a data folder and on PostgreSQL (the
`queue` fixture of test_both_stores), with real worker processes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import queuectl
from conftest import q, wait_until
from test_both_stores import StoreQueue, burst, enqueue, fields, queue, state_of, wait_for_file

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX shells")


def output_of(queue: StoreQueue, job_id: str) -> str:
    job = queue.json("show", job_id)
    assert job["state"] == "completed", job
    return job["output"]


# -- cwd ------------------------------------------------------------------------------------------


def test_a_job_runs_where_it_was_enqueued_unless_its_cwd_says_otherwise(queue: StoreQueue, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "sub").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    queue.ok("enqueue", "--id", "here", "--command", "pwd", cwd=project)
    queue.ok("enqueue", "--id", "relative", "--command", "pwd", "--cwd", "sub", cwd=project)
    queue.ok("enqueue", "--id", "absolute", "--command", "pwd", "--cwd", str(elsewhere), cwd=project)
    queue.ok("enqueue", json.dumps({"id": "in-json", "command": "pwd", "cwd": "../elsewhere"}), cwd=project)
    burst(queue)  # the worker runs in the queue's own folder, none of these
    assert output_of(queue, "here") == f"{project}\n"
    assert output_of(queue, "relative") == f"{project / 'sub'}\n"
    assert output_of(queue, "absolute") == f"{elsewhere}\n"
    assert output_of(queue, "in-json") == f"{elsewhere}\n"
    assert {job["id"]: job["cwd"] for job in queue.json("list")} == {
        "here": str(project), "relative": str(project / "sub"), "absolute": str(elsewhere),
        "in-json": str(elsewhere)}
    assert fields(queue.ok("show", "here"))["cwd"] == str(project)


def test_a_cwd_missing_on_the_workers_host_fails_each_attempt_and_the_dlq_says_why(queue: StoreQueue,
                                                                                 tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    queue.set(backoff_base=1)
    queue.ok("enqueue", "--id", "lost", "--command", "echo ran", "--max-retries", "2", cwd=gone)
    gone.rmdir()
    burst(queue)
    [dead] = queue.json("dlq", "list", "--json")
    host = queuectl.HOST
    assert (dead["id"], dead["attempts"]) == ("lost", 2)
    assert dead["error"] == f"could not start the command in {gone} on host {host}: no such directory"
    assert "ran" not in (dead.get("output") or "")
    assert f"could not start the command in {gone} on host {host}" in queue.ok("logs", "lost")


def test_a_job_without_a_cwd_runs_in_its_workers_directory(queue: StoreQueue, tmp_path: Path) -> None:
    """Jobs enqueued before jobs had a cwd (or through the store by a program) have none."""
    old = queuectl.normalize_job({"id": "old", "command": "pwd"}, queuectl.DEFAULT_CONFIG)
    assert "cwd" not in old
    queue.store().enqueue([old])
    burst(queue)
    assert output_of(queue, "old") == f"{queue.home}\n"  # start_worker runs the worker there


def test_from_a_directory_whose_name_is_not_utf8_a_job_runs_in_its_workers_and_enqueue_says_so(
        tmp_path: Path) -> None:
    from conftest import Queue

    odd = tmp_path / os.fsdecode(b"caf\xe9")
    try:
        odd.mkdir()
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 names")
    folder = Queue(tmp_path / "data")
    folder.home.mkdir()
    proc = folder.run("enqueue", "--id", "odd", "--command", "pwd", cwd=odd)
    assert proc.returncode == 0 and proc.stdout == "Enqueued job: odd\n"
    assert proc.stderr == ("note: this directory's name is not UTF-8 text, so the jobs run in their worker's "
                           "directory; give --cwd to choose one.\n")
    assert "cwd" not in folder.json("show", "odd")
    refused = folder.run("enqueue", "--id", "named", "--command", "pwd", "--cwd", str(odd))
    assert refused.returncode == 1 and "cwd" in refused.stderr and "is not UTF-8 text" in refused.stderr
    assert [job["id"] for job in folder.json("list")] == ["odd"]


# -- env ------------------------------------------------------------------------------------------


def test_env_reaches_the_command_over_the_workers_environment_but_never_over_its_mark(
        queue: StoreQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUECTL_TEST_SHARED", "from the worker")
    monkeypatch.setenv("QUEUECTL_TEST_WORKER_ONLY", "kept")
    enqueue(queue, "vars", 'printf "%s|%s|%s|%s\\n" "$QUEUECTL_TEST_SHARED" "$QUEUECTL_TEST_WORKER_ONLY" "$SPACED" '
                           '"${QUEUECTL_ATTEMPT%%#*}"',
            "--env", "QUEUECTL_TEST_SHARED=from the job", "--env", "SPACED= a  b=c ")
    queue.ok("enqueue", json.dumps({"id": "json-env", "command": 'echo "$A$B"', "env": {"A": "1", "B": ""}}))
    burst(queue)
    assert output_of(queue, "vars") == "from the job|kept| a  b=c |vars\n"
    assert output_of(queue, "json-env") == "1\n"
    assert queue.json("show", "vars")["env"] == {"QUEUECTL_TEST_SHARED": "from the job", "SPACED": " a  b=c "}


def test_env_given_on_the_command_line_adds_to_each_jobs_own_from_a_file(queue: StoreQueue, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([{"id": "one", "command": "true", "env": {"A": "file", "B": "file"}},
                                {"id": "two", "command": "true"}]))
    queue.ok("enqueue", "--file", str(jobs), "--env", "B=flag")
    assert {job["id"]: job["env"] for job in queue.json("list")} == {"one": {"A": "file", "B": "flag"},
                                                                     "two": {"B": "flag"}}


@pytest.mark.parametrize("args, message", [
    (["--env", "1X=a"], "env: '1X' is not a variable name"),
    (["--env", "A-B=a"], "env: 'A-B' is not a variable name"),
    (["--env", "NOEQUALS"], "--env takes NAME=VALUE, not 'NOEQUALS'."),
    (["--env", "QUEUECTL_ATTEMPT=x"], "env: QUEUECTL_ATTEMPT is set by the worker for each attempt"),
    (["--cwd", ""], "cwd must be a directory's path"),
])
def test_a_bad_env_or_cwd_is_one_sentence_and_nothing_is_enqueued(tmp_path: Path, args: list[str],
                                                                  message: str) -> None:
    from conftest import Queue

    folder = Queue(tmp_path / "data")
    folder.home.mkdir()
    proc = folder.run("enqueue", "--id", "x", "--command", "true", *args)
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert folder.json("list") == []


@pytest.mark.parametrize("raw, message", [
    ({"env": ["A=1"]}, "env must be an object of names and strings"),
    ({"env": {"A": 1}}, "env: the value of A must be UTF-8 text"),
    ({"env": {"A": "a\u0000b"}}, "env: the value of A must be UTF-8 text without NUL characters"),
    ({"cwd": 5}, "cwd must be a directory's path, not 5."),
    ({"cwd": "rel"}, "cwd 'rel' is relative; give an absolute path."),
])
def test_normalize_job_refuses_bad_env_and_cwd_naming_the_job(raw: dict, message: str) -> None:
    with pytest.raises(queuectl.QueueError) as refused:
        queuectl.normalize_job({"id": "x", "command": "true", **raw}, queuectl.DEFAULT_CONFIG, "job 3")
    assert str(refused.value).startswith("job 3: ") and message in str(refused.value)


def test_a_jobs_variables_replace_the_workers_in_any_case_on_windows_only() -> None:
    base = {"PATH": "/bin", "HOME": "/root"}
    job = {"Path": "C:\\tools", "MODE": "fast"}
    mark = {"QUEUECTL_ATTEMPT": "a:1@h:2"}
    assert queuectl.command_environment(base, job, mark, platform="win32") == {
        "HOME": "/root", "Path": "C:\\tools", "MODE": "fast", "QUEUECTL_ATTEMPT": "a:1@h:2"}
    assert queuectl.command_environment(base, job, mark, platform="linux") == {
        "PATH": "/bin", "HOME": "/root", "Path": "C:\\tools", "MODE": "fast", "QUEUECTL_ATTEMPT": "a:1@h:2"}



# -- pause and resume -----------------------------------------------------------------------------


def test_pause_holds_every_worker_process_across_restarts_until_resume_and_running_jobs_finish(
        queue: StoreQueue, tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    enqueue(queue, "running", f"touch {q(started)}; while [ ! -e {q(release)} ]; do sleep 0.05; done")
    workers = [queue.start_worker("--count", "2"), queue.start_worker("--count", "2")]
    wait_for_file(started)

    assert queue.ok("pause") == ("Queue paused: workers start no new job until `queuectl resume` "
                                 "(running jobs finish).\n")
    for n in range(4):
        enqueue(queue, f"held{n}", "true")
    release.touch()
    wait_until(lambda: state_of(queue, "running") == "completed", 20, what="the running job to finish")
    time.sleep(1.0)  # 20 polls of each worker: none may claim (a condition that must not happen)
    assert [state_of(queue, f"held{n}") for n in range(4)] == ["pending"] * 4
    status = queue.json("status")
    assert status["paused"] is True and status["paused_since"] is not None and len(status["workers"]) == 2
    assert "Paused         : since " in queue.ok("status")
    assert queue.ok("pause").startswith("The queue was already paused (since ")

    for worker in workers:  # the pause outlives the workers: new ones obey it too
        worker.terminate()
        assert worker.wait(timeout=30) == 0
    late = queue.start_worker("--burst")
    assert late.wait(timeout=30) == 0
    assert queuectl.PAUSED_BURST in queue.logs[-1].read_text()
    worker = queue.start_worker()
    time.sleep(0.5)  # its first rounds: still nothing may start
    assert [state_of(queue, f"held{n}") for n in range(4)] == ["pending"] * 4

    assert queue.ok("resume") == "Queue resumed: workers start jobs again.\n"
    wait_until(lambda: all(state_of(queue, f"held{n}") == "completed" for n in range(4)), 20,
               what="the held jobs to run after resume")
    assert queue.json("status")["paused"] is False and "Paused" not in queue.ok("status")
    assert queue.ok("resume") == "The queue is not paused.\n"
    worker.terminate()
    assert worker.wait(timeout=30) == 0


# -- requeue ------------------------------------------------------------------------------------


def test_requeue_runs_each_finished_state_again_after_its_old_attempts(queue: StoreQueue) -> None:
    queue.set(max_retries=1)
    enqueue(queue, "done", "echo run $QUEUECTL_ATTEMPT | cut -d@ -f1")
    enqueue(queue, "dead", 'echo try; [ -e "$MARK" ] || exit 4', "--env", f"MARK={queue.home / 'fixed'}")
    enqueue(queue, "gone", "echo cancelled?", "--delay", "1h")
    enqueue(queue, "waiting", "true", "--delay", "1h")
    queue.ok("cancel", "gone")
    burst(queue)
    assert {job["id"]: job["state"] for job in queue.json("list")} == {
        "done": "completed", "dead": "dead", "gone": "cancelled", "waiting": "pending"}

    refused = queue.run("requeue", "done", "waiting")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == ("error: job 'waiting' is pending: only a completed, dead or cancelled job can be "
                              "requeued; nothing was requeued.\n")
    assert queue.run("requeue", "nosuch").returncode != 0
    assert queue.json("show", "done")["state"] == "completed"

    (queue.home / "fixed").touch()
    assert queue.ok("requeue", "done", "dead", "gone") == "Requeued job: done\nRequeued job: dead\nRequeued job: gone\n"
    status = queue.json("status")["counts"]
    assert (status["pending"], status["completed"], status["dead"], status["cancelled"]) == (4, 0, 0, 0)
    assert {job["id"]: job["attempts"] for job in queue.json("list", "--state", "pending")} == {
        "done": 0, "dead": 0, "gone": 0, "waiting": 0}
    burst(queue)
    assert {job["id"]: (job["state"], job["attempts"]) for job in queue.json("list") if job["id"] != "waiting"} == {
        "done": ("completed", 1), "dead": ("completed", 1), "gone": ("completed", 1)}
    done_log = queue.ok("logs", "done").splitlines()
    assert done_log[1::2] == ["run done#1", "run done#1"], "the old attempt stays, the new one follows"
    dead_log = queue.ok("logs", "dead").splitlines()
    assert dead_log[0].endswith(": exit code 4") and dead_log[2].endswith(": exit code 0")
    assert queue.json("show", "gone")["output"] == "cancelled?\n"


# -- after ----------------------------------------------------------------------------------------


def test_a_chain_runs_in_order_on_four_threads_and_a_dead_link_cancels_the_rest(queue: StoreQueue,
                                                                               tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    step = f'echo "$QUEUECTL_ATTEMPT" | cut -d"#" -f1 >> {q(trace)}'
    jobs = tmp_path / "jobs.json"  # the chain in one bulk, its links in reverse order
    jobs.write_text(json.dumps([{"id": "c", "command": f"sleep 0.2; {step}", "after": ["b"]},
                                {"id": "b", "command": f"sleep 0.2; {step}", "after": ["a"]},
                                {"id": "a", "command": f"sleep 0.2; {step}"}]))
    queue.ok("enqueue", "--file", str(jobs))
    enqueue(queue, "x", f"{step}; exit 3", "--max-retries", "1")
    enqueue(queue, "y", step, "--after", "x")
    enqueue(queue, "z", step, "--after", "y,c")
    status = queue.json("status")
    assert (status["counts"]["pending"], status["waiting"]) == (6, 4)
    assert "(4 waiting for other jobs)" in queue.ok("status")
    assert queue.ok("list", "--state", "pending").splitlines()[1].split()[:5] == ["c", "pending", "0", "0", "after"]

    burst(queue, "--count", "4")

    order = trace.read_text().split()
    assert order.index("a") < order.index("b") < order.index("c") and sorted(order) == ["a", "b", "c", "x"]
    states = {job["id"]: (job["state"], job["attempts"]) for job in queue.json("list")}
    assert states == {"a": ("completed", 1), "b": ("completed", 1), "c": ("completed", 1), "x": ("dead", 1),
                      "y": ("cancelled", 0), "z": ("cancelled", 0)}
    assert queue.json("show", "z")["error"] == "cancelled: it waits for y, which is cancelled"
    refused = queue.run("enqueue", "--id", "w", "--command", "true", "--after", "nosuch")
    assert refused.returncode == 1 and "waits for 'nosuch', which is not in the queue" in refused.stderr


# -- export and import ---------------------------------------------------------------------------


def test_a_folder_exported_and_imported_into_a_fresh_store_lists_the_same_jobs(queue: StoreQueue,
                                                                              tmp_path: Path) -> None:
    """The move the README describes: `queuectl --home ./jobs export | queuectl --home URL import -`
    (here into a folder, then into PostgreSQL), every state and field kept; a job caught running
    comes back pending, that attempt not counted."""
    from conftest import Queue

    source = Queue(tmp_path / "source")
    source.home.mkdir()
    started, release = tmp_path / "started", tmp_path / "release"
    source.ok("enqueue", "--id", "done", "--command", "echo done", "--env", "A=1", "--priority", "2")
    source.ok("enqueue", "--id", "dead", "--command", "exit 3", "--max-retries", "1")
    source.ok("enqueue", "--id", "gone", "--command", "true", "--delay", "1h")
    source.ok("cancel", "gone")
    source.ok("enqueue", "--id", "later", "--command", "true", "--delay", "2h")
    source.ok("enqueue", "--id", "next", "--command", "true", "--after", "later")
    worker = source.start_worker("--burst", log=tmp_path / "source-worker.out")
    assert worker.wait(timeout=60) == 0
    source.ok("enqueue", "--id", "busy", "--command",
              f"touch {q(started)}; while [ ! -e {q(release)} ]; do sleep 0.05; done")
    running = source.start_worker(log=tmp_path / "running.out")
    wait_for_file(started)
    exported = source.ok("export")
    release.touch()
    running.terminate()
    assert running.wait(timeout=30) == 0

    assert len(exported.splitlines()) == 6 and all(json.loads(line)["id"] for line in exported.splitlines())
    assert queue.ok("import", "-", input=exported) == "Imported 6 job(s).\n"

    before = {job["id"]: job for job in (json.loads(line) for line in exported.splitlines())}
    after = {job["id"]: job for job in queue.json("list")}
    busy = before.pop("busy")
    moved = after.pop("busy")
    assert after == before
    assert (busy["state"], busy["attempts"]) == ("processing", 1)
    assert (moved["state"], moved["attempts"]) == ("pending", 0) and "pid" not in moved and "host" not in moved
    assert after["next"]["waiting_for"] == ["later"]
    again = queue.run("import", "-", input=exported)
    assert again.returncode == 1 and "already exists" in again.stderr and "nothing was imported" in again.stderr
    assert len(queue.json("list")) == 6


def test_export_takes_states_and_writes_a_file_whole(queue: StoreQueue, tmp_path: Path) -> None:
    queue.set(max_retries=1)
    enqueue(queue, "ok", "true")
    enqueue(queue, "bad", "exit 1")
    enqueue(queue, "waiting", "true", "--delay", "1h")
    burst(queue)
    path = tmp_path / "dead.jsonl"
    assert queue.ok("export", "--state", "dead", "--state", "pending", "--file", str(path)) == \
        f"Exported 2 job(s) to {path}.\n"
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["bad", "waiting"]
    assert [json.loads(line)["id"] for line in queue.ok("export", "--state", "completed").splitlines()] == ["ok"]
    missing = queue.run("export", "--file", str(tmp_path / "no" / "such" / "dir.jsonl"))
    assert missing.returncode == 1 and len(missing.stderr.splitlines()) == 1 and "cannot write" in missing.stderr


@pytest.mark.parametrize("lines, message", [
    (['{"id": "a", "command": "true", "state": "pending", "attempts": 0, "created_at": "2026-01-01T00:00:00Z", '
      '"updated_at": "2026-01-01T00:00:00Z", "colour": "red"}'], "unknown field 'colour'"),
    (['{"id": "a", "command": "true", "state": "done"}'], "state must be one of"),
    (['{"id": "a", "command": "true", "state": "completed", "attempts": 1, "created_at": "2026-01-01T00:00:00Z", '
      '"updated_at": "2026-01-01T00:00:00Z"}'], "a completed job needs its finished_at"),
    (['{"id": "a", "command": "true", "state": "pending", "attempts": 0, "created_at": "2026-01-01T00:00:00Z", '
      '"updated_at": "2026-01-01T00:00:00Z", "after": ["zz"]}'], "waits for 'zz', which is neither in the queue"),
    (["not json"], "line 2: not JSON"),
])
def test_import_checks_every_line_before_it_writes_any(tmp_path: Path, lines: list[str], message: str) -> None:
    from conftest import Queue

    folder = Queue(tmp_path / "data")
    folder.home.mkdir()
    good = ('{"id": "fine", "command": "true", "state": "pending", "attempts": 0, '
            '"created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}')
    source = tmp_path / "jobs.jsonl"
    source.write_text("\n".join([good, *lines]) + "\n")
    refused = folder.run("import", str(source))
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert message in refused.stderr and "othing was imported" in refused.stderr
    assert folder.json("list") == []


def test_import_reads_what_powershell_5_writes_utf16_with_a_bom(tmp_path: Path) -> None:
    from conftest import Queue

    folder = Queue(tmp_path / "data")
    folder.home.mkdir()
    record = {"id": "cafe", "command": "echo \u00e9", "state": "pending", "attempts": 0,
              "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}
    source = tmp_path / "jobs.jsonl"
    source.write_bytes((json.dumps(record, ensure_ascii=False) + "\r\n").encode("utf-16"))
    assert folder.ok("import", str(source)) == "Imported 1 job(s).\n"
    assert folder.json("show", "cafe")["command"] == "echo \u00e9"


def test_a_crash_between_a_jobs_history_write_and_the_queue_save_still_releases_what_waits_for_it(
        tmp_path: Path) -> None:
    """Uses the folder store's private _append to write what a worker killed between its two
    writes leaves: the job completed in processed.json, still processing (its claim) in queue.json,
    and the job that waits for it still waiting. Recovery settles the job and releases the other."""
    from test_store_contract import claim, dead_worker, job

    store = queuectl.FolderStore(str(tmp_path / "data"))
    store.enqueue([job("a"), job("b", after=["a"])])
    worker = dead_worker()
    (claimed,) = claim(store, 1, worker)
    finished = dict(queuectl.released(claimed), state="completed", exit_code=0, finished_at=queuectl.iso(time.time()),
                    updated_at=queuectl.iso(time.time() + 1))
    store._append(queuectl.PROCESSED_FILE, [queuectl.dump_line(finished)])
    assert store.get("b")["waiting_for"] == ["a"]

    after_crash = queuectl.FolderStore(str(tmp_path / "data"))
    after_crash.recover_orphans()
    assert after_crash.states_of(["a", "b"]) == {"a": "completed", "b": "pending"}
    assert "waiting_for" not in after_crash.get("b")
    assert [found["id"] for found in claim(after_crash, 5)] == ["b"]
