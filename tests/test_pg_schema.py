"""The schema of a queue in PostgreSQL, as a user meets it: created by the first command on an
empty database, versioned, upgraded only by `queuectl db migrate` (under a lock, `--dry-run`
changing nothing), a newer one refused; and a machine without the driver told how to get it."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SCRIPT, Queue

import queuectl_pg


@pytest.fixture
def empty_url(pg_url: str) -> Iterator[str]:
    """A database of this test's own with no queuectl schema in it (the template has one)."""
    import pgtools

    pgtools.admin("DROP SCHEMA queuectl CASCADE", url=pg_url)
    yield pg_url


def tables(url: str) -> list[str]:
    import pgtools

    return [name for (name,) in pgtools.admin(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'queuectl' ORDER BY 1", url=url)]


def run(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return Queue(tmp_path, location=url).run(*args)


def test_the_first_command_on_an_empty_database_creates_the_schema(empty_url: str, tmp_path: Path) -> None:
    status = run(empty_url, tmp_path, "db", "status")
    assert status.returncode == 0 and "No queuectl schema" in status.stdout
    assert tables(empty_url) == [], "db status only looks"
    assert run(empty_url, tmp_path, "enqueue", "--id", "a", "--command", "true").returncode == 0
    assert {"jobs", "runs", "chunks", "schema_version"} <= set(tables(empty_url))
    assert f"Schema version {queuectl_pg.KNOWN_VERSION} is installed" in run(empty_url, tmp_path, "db", "status").stdout


def test_migrate_dry_run_prints_the_sql_and_changes_nothing(empty_url: str, tmp_path: Path) -> None:
    dry = run(empty_url, tmp_path, "db", "migrate", "--dry-run")
    assert dry.returncode == 0 and "CREATE TABLE queuectl.jobs" in dry.stdout
    assert tables(empty_url) == []
    applied = run(empty_url, tmp_path, "db", "migrate")
    assert applied.returncode == 0 and "Applied schema version(s) 1" in applied.stdout
    again = run(empty_url, tmp_path, "db", "migrate")
    assert again.returncode == 0 and "nothing to migrate" in again.stdout


def test_two_migrations_at_once_apply_the_schema_once(empty_url: str) -> None:
    results: list[object] = []

    def migrate() -> None:
        store = queuectl_pg.PostgresStore(empty_url)
        try:
            results.append(len(store.migrate()))
        except Exception as error:  # noqa: BLE001 - the test reports whatever went wrong
            results.append(error)
        finally:
            store.close()

    threads = [threading.Thread(target=migrate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Each version once: whoever waited for a version's lock found it applied, and went on to the next.
    assert all(isinstance(count, int) for count in results) and sum(results) == queuectl_pg.KNOWN_VERSION, results
    import pgtools

    assert pgtools.admin("SELECT version FROM queuectl.schema_version ORDER BY 1", url=empty_url) == [
        (version,) for version in range(1, queuectl_pg.KNOWN_VERSION + 1)]


def test_an_older_schema_asks_for_db_migrate_and_a_newer_one_is_refused(pg_url: str, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import pgtools

    pgtools.admin("INSERT INTO queuectl.schema_version (version) VALUES (%s)", (queuectl_pg.KNOWN_VERSION + 1,),
                  url=pg_url)
    newer = run(pg_url, tmp_path, "status")
    assert newer.returncode == 1 and newer.stdout == ""
    assert newer.stderr.strip().endswith(f"has schema version {queuectl_pg.KNOWN_VERSION + 1}, newer than this "
                                         f"queuectl knows ({queuectl_pg.KNOWN_VERSION}): upgrade queuectl.")
    assert len(newer.stderr.splitlines()) == 1

    # This queuectl with one more migration than the database has: an older schema, from its view.
    pgtools.admin("DELETE FROM queuectl.schema_version WHERE version > %s", (queuectl_pg.KNOWN_VERSION,), url=pg_url)
    monkeypatch.setattr(queuectl_pg, "MIGRATIONS", [*queuectl_pg.MIGRATIONS, "CREATE TABLE queuectl.later (x int);"])
    monkeypatch.setattr(queuectl_pg, "KNOWN_VERSION", queuectl_pg.KNOWN_VERSION + 1)
    store = queuectl_pg.PostgresStore(pg_url)
    try:
        with pytest.raises(queuectl_pg.QueueError, match=r"run `queuectl db migrate`"):
            store.counts()
        assert store.schema_versions() == (queuectl_pg.KNOWN_VERSION - 1, queuectl_pg.KNOWN_VERSION)
        assert store.migrate() == ["CREATE TABLE queuectl.later (x int);"]
        assert store.counts()["pending"] == 0
    finally:
        store.close()


def test_without_the_driver_a_postgresql_queue_is_one_sentence_naming_the_extra(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "psycopg2.py").write_text("raise ImportError('No module named psycopg2')\n")
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                           "sys.argv = ['queuectl', '--home', 'postgresql://u:secret@db.example/jobs', 'status']; "
                           f"sys.path.insert(1, {str(Path(SCRIPT).parent)!r}); import queuectl; "
                           "sys.exit(queuectl.main())", str(shadow)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == ('error: a queue in PostgreSQL needs the psycopg2 driver: '
                           'pip install "queuectl[postgres]"\n')


def test_a_version_1_queue_with_jobs_in_it_is_upgraded_by_db_migrate_and_its_jobs_run(empty_url: str,
                                                                                     tmp_path: Path) -> None:
    """Version 2 added what `after` needs (waiting_for). A queue made by the first release of the
    PostgreSQL store keeps its jobs through the upgrade."""
    import json

    import pgtools

    pgtools.admin(queuectl_pg.MIGRATIONS[0], url=empty_url)
    pgtools.admin("INSERT INTO queuectl.schema_version (version) VALUES (1)", url=empty_url)
    old = {"id": "old", "command": "echo old", "state": "pending", "attempts": 0, "max_retries": 3, "priority": 0,
           "created_at": "2026-12-01T00:00:00.000Z", "updated_at": "2026-12-01T00:00:00.000Z"}
    pgtools.admin("""INSERT INTO queuectl.jobs (id, place, state, priority, ready, attempts, doc)
                     VALUES ('old', nextval('queuectl.places'), 'pending', 0, true, 0, %s)""", (json.dumps(old),),
                  url=empty_url)

    refused = run(empty_url, tmp_path, "status")
    assert refused.returncode == 1 and refused.stderr.strip().endswith(
        f"has schema version 1; this queuectl needs {queuectl_pg.KNOWN_VERSION}: run `queuectl db migrate`.")
    dry = run(empty_url, tmp_path, "db", "migrate", "--dry-run")
    assert dry.returncode == 0 and "ALTER TABLE queuectl.jobs ADD COLUMN waiting_for" in dry.stdout
    assert "CREATE TABLE queuectl.jobs" not in dry.stdout
    applied = run(empty_url, tmp_path, "db", "migrate")
    assert applied.returncode == 0 and "Applied schema version(s) 2" in applied.stdout, applied.stdout

    queue = Queue(tmp_path, location=empty_url)
    queue.ok("enqueue", "--id", "next", "--command", "echo next", "--after", "old")
    worker = queue.start_worker("--burst", log=tmp_path / "worker.out")
    assert worker.wait(timeout=60) == 0
    assert {job["id"]: job["state"] for job in queue.json("list")} == {"old": "completed", "next": "completed"}
    assert queue.json("show", "old")["output"] == "old\n"
