"""Inputs and hand-edited files that once made queuectl print a traceback or do the wrong thing:
each must now be one clear line on stderr, exit 1, and no state file changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import Queue


def refused(queue: Queue, *args: str, words: str = "", stdin: bytes | None = None) -> str:
    before = {p.name: p.read_bytes() for p in queue.home.glob("*.json")}
    proc = queue.run(*args, input=stdin)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert words in lines[0], lines[0]
    assert {p.name: p.read_bytes() for p in queue.home.glob("*.json")} == before
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (["--delay", "99999999999d"], "too long"),
    (["--run-at", "0001-01-01"], "out of range"),
    (["--run-at", "9999-12-31T23:59:59-23:59"], "out of range"),
    (["--timeout", "1e308"], "timeout"),
])
def test_times_out_of_range_are_refused(queue: Queue, args: list[str], words: str) -> None:
    queue.ok("enqueue", "--id", "before", "--command", "true")
    refused(queue, "enqueue", "--id", "x", "--command", "true", *args, words=words)


def test_a_huge_delay_in_json_is_refused(queue: Queue) -> None:
    refused(queue, "enqueue", "--json", '{"id":"x","command":"true","delay":1e308}', words="too long")


def test_a_data_folder_that_is_a_file_is_refused(queue: Queue, tmp_path: Path) -> None:
    not_a_folder = tmp_path / "plain-file"
    not_a_folder.write_text("x")
    line = refused(queue, "--home", str(not_a_folder), "status")
    assert "not a folder" in line


def test_truncated_utf16_input_is_refused(queue: Queue) -> None:
    refused(queue, "enqueue", "--file", "-", stdin=b"\xff\xfe{\x00", words="standard input")


@pytest.mark.parametrize("edit, words", [
    (lambda job: job.pop("attempts"), "attempts"),
    (lambda job: job.update(run_at=5), "run_at"),
    (lambda job: job.update(timeout="5"), "timeout"),
    (lambda job: job.update(priority="high"), "priority"),
])
def test_a_hand_edited_job_that_cannot_run_is_reported(queue: Queue, edit, words: str) -> None:
    queue.ok("enqueue", "--id", "edited", "--command", "true")
    path = queue.home / "queue.json"
    job = json.loads(path.read_text())[0]
    edit(job)
    path.write_text("[\n" + json.dumps(job, separators=(",", ":")) + "\n]\n")
    for command in (["status"], ["list"], ["worker", "start", "--burst"]):
        line = refused(queue, *command, words="queue.json")
        assert words in line


def test_reformatted_history_is_accepted_and_rewritten_in_layout(queue: Queue) -> None:
    queue.ok("enqueue", "--id", "a", "--command", "true")
    queue.ok("worker", "start", "--burst")
    path = queue.home / "processed.json"
    jobs = json.loads(path.read_text())
    path.write_text(json.dumps(jobs, indent=2))  # what an editor's "format document" does
    status = queue.json("status")
    assert status["counts"]["completed"] == 1
    assert json.loads(path.read_text()) == jobs
    assert path.read_text().startswith('[\n{"id":"a",')
    refused(queue, "enqueue", "--id", "a", "--command", "true", words="already exists")


def test_list_limit_zero_lists_nothing(queue: Queue) -> None:
    queue.ok("enqueue", "--id", "a", "--command", "true")
    assert queue.json("list", "--state", "pending", "--limit", "0") == []
