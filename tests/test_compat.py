"""A data folder written by an earlier release (tests/data/release-95ab926: every state, logs,
late output in the old place, a history index in the old format, settings) is read, shown and
worked on by this one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import Queue

RELEASE = Path(__file__).parent / "data" / "release-95ab926"


@pytest.fixture()
def old(queue: Queue) -> Queue:
    shutil.rmtree(queue.home)
    shutil.copytree(RELEASE, queue.home)
    (queue.home / "workers").mkdir(exist_ok=True)
    return queue


def test_an_earlier_releases_folder_is_shown_as_it_was(old: Queue) -> None:
    status = old.json("status")
    assert status["counts"] == {"pending": 2, "processing": 0, "failed": 0, "completed": 3, "dead": 1, "cancelled": 1}
    assert status["scheduled"] == 1
    states = {job["id"]: job["state"] for job in old.json("list")}
    assert states == {"later-4": "pending", "pending-6": "pending", "done-1": "completed", "silent-2": "completed",
                      "leaver-7": "completed", "dead-3": "dead", "gone-5": "cancelled"}
    assert old.json("show", "pending-6")["command"] == 'echo "quoted \\"x\\" and ünïcode"'
    assert old.json("show", "dead-3")["attempts"] == 2
    assert old.ok("config", "get", "max_retries").strip() == "2"
    assert old.ok("logs", "done-1").splitlines()[1:] == ["hello from done-1"]
    assert old.ok("logs", "dead-3").count("exit code 3") == 2
    # Late output from the old place (logs/<id>.<attempt>.<offset>.late.log) moves to logs/late/.
    shown = old.ok("logs", "leaver-7")
    assert shown.splitlines()[1:] == ["own", "=== output written after attempt 1 ended, by processes it left running:",
                                      "late line"], shown
    assert [p.name for p in (old.home / "logs" / "late").iterdir()] == ["leaver-7.1.114.late.log"]
    assert not list((old.home / "logs").glob("*.late.log"))


def test_an_earlier_releases_folder_keeps_working(old: Queue, tmp_path: Path) -> None:
    assert old.run("enqueue", "--id", "done-1", "--command", "true").returncode == 1  # its history still counts
    old.ok("enqueue", "--id", "new-8", "--command", "echo new")
    old.ok("dlq", "retry", "dead-3")
    old.ok("config", "set", "max_retries", "1")
    old.ok("worker", "start", "--burst")
    states = {job["id"]: job["state"] for job in old.json("list")}
    assert states["new-8"] == "completed" and states["pending-6"] == "completed" and states["dead-3"] == "dead"
    assert "ünïcode" in old.json("show", "pending-6")["output"]
    assert old.ok("purge", "--state", "completed", "--yes").startswith("Purged 5 job(s)")
    assert not (old.home / "logs" / "late" / "leaver-7.1.114.late.log").exists(), "purge removes late output too"
    assert json.loads((old.home / "processed.json").read_text()) == []


def test_an_earlier_releases_folder_exports_and_imports_into_a_new_queue_as_it_was(old: Queue, tmp_path: Path) -> None:
    exported = old.ok("export")
    fresh = Queue(tmp_path / "fresh")
    fresh.home.mkdir()
    assert fresh.ok("import", "-", input=exported) == "Imported 7 job(s).\n"
    assert fresh.json("list") == old.json("list")
    assert fresh.json("status")["counts"] == old.json("status")["counts"]
