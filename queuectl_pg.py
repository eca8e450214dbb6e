"""queuectl_pg: the queue in PostgreSQL, for workers on many machines.

`--home postgresql://host/db` (or QUEUECTL_HOME) makes every queuectl command use this store
instead of a folder. It keeps the same states, the same rules (they are queuectl's functions,
applied here to rows) and the same output; what changes is where the truth lives:

- one table of jobs, each row the job as every store shows it (`doc`) plus the columns the
  claim, the stager and recovery search on; the claim index holds only jobs that are due now;
- the server's clock decides every time comparison, so hosts with skewed clocks agree;
- a worker round is one short transaction (record outcomes, recover dead workers' jobs, claim
  with FOR UPDATE SKIP LOCKED); no transaction stays open while a command runs;
- every write a worker makes about a job carries its claim (host, pid, attempt): a worker that
  lost a job can never overwrite the result of the worker that took it over;
- output is kept as bytes, per run, in chunks off the job rows, streamed while the run goes on.

Needs psycopg2 (`pip install "queuectl[postgres]"`), imported only when a queue lives here.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import queuectl
from queuectl import (ACTIVE_STATES, DEFAULT_CONFIG, FINISHED_STATES, HOST, STATES, Attempt, BaseStore,
                      JobExists, NoSuchJob, Outcome, QueueError, StoreUnavailable, WorkerIdentity,
                      cancel_decision, claimed_job, config_key, dead_workers, dependency_ended, entering_jobs,
                      holds_claim, iso, now_ts, redact, requeue_refusal, requeued_jobs, revived, scratch_attempt,
                      settle_orphan, settle_outcome, stop_orphaned_command, validate_config_value, worker_alive)


def _import_driver() -> Any:
    """psycopg2, or None. Its C module imports Python's ssl module only to learn whether Python
    already set up OpenSSL's locking (OpenSSL before 1.1 needed that; Python 3.10 needs 1.1.1 or
    later, and the driver's wheel brings OpenSSL 3, which sets itself up): that import is half of
    the driver's import time, paid by every one-shot command. Without it the driver leaves
    OpenSSL to libpq; a later `import ssl` works as usual."""
    blocked = "ssl" not in sys.modules
    if blocked:
        sys.modules["ssl"] = None  # type: ignore[assignment]  # `import ssl` fails at once
    try:
        import psycopg2
    except ImportError:  # the store says so when it is used; importing this module stays harmless
        return None
    finally:
        if blocked:
            del sys.modules["ssl"]
    return psycopg2


psycopg2 = _import_driver()


# -- the schema and its migrations ------------------------------------------------------------

SCHEMA = "queuectl"
# Each entry upgrades the schema by one version; the first creates it. Applied in order, each in
# its own transaction, under an advisory lock, by `queuectl db migrate` (or, on an empty database,
# by the first command that needs the queue).
MIGRATIONS: list[str] = [
    """
CREATE SCHEMA IF NOT EXISTS queuectl;
CREATE TABLE queuectl.schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE queuectl.config (key text PRIMARY KEY, value jsonb NOT NULL);
CREATE TABLE queuectl.flags (name text PRIMARY KEY, at double precision NOT NULL);
CREATE TABLE queuectl.workers (
    host text NOT NULL,
    pid integer NOT NULL,
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    info jsonb NOT NULL,
    PRIMARY KEY (host, pid));
CREATE TABLE queuectl.jobs (
    id text PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    place bigint NOT NULL,
    state text NOT NULL CHECK (state IN ('pending', 'processing', 'failed', 'completed', 'dead', 'cancelled')),
    priority integer NOT NULL,
    run_at timestamptz,
    ready boolean NOT NULL,
    host text,
    pid integer,
    attempts integer NOT NULL,
    started boolean NOT NULL DEFAULT false,
    cancel_requested boolean NOT NULL DEFAULT false,
    finished_at timestamptz,
    doc json NOT NULL
) WITH (fillfactor = 80);
CREATE SEQUENCE queuectl.places;
CREATE INDEX jobs_claim ON queuectl.jobs (priority DESC, place) WHERE state IN ('pending', 'failed') AND ready;
CREATE INDEX jobs_due ON queuectl.jobs (run_at) WHERE state IN ('pending', 'failed') AND NOT ready;
CREATE INDEX jobs_processing ON queuectl.jobs (host, pid) WHERE state = 'processing';
CREATE INDEX jobs_active ON queuectl.jobs (place) WHERE finished_at IS NULL;
CREATE INDEX jobs_finished ON queuectl.jobs (state, finished_at, seq) WHERE finished_at IS NOT NULL;
CREATE TABLE queuectl.runs (
    run bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id text NOT NULL REFERENCES queuectl.jobs (id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    header bytea NOT NULL,
    size bigint NOT NULL DEFAULT 0,
    removed bigint NOT NULL DEFAULT 0,
    ending text,
    counted boolean NOT NULL DEFAULT true,
    late boolean NOT NULL DEFAULT false);
CREATE INDEX runs_job ON queuectl.runs (job_id, run);
CREATE TABLE queuectl.chunks (
    run bigint NOT NULL REFERENCES queuectl.runs (run) ON DELETE CASCADE,
    at bigint NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (run, at));
CREATE TABLE queuectl.purged_cancels (id text NOT NULL, state text NOT NULL, at timestamptz NOT NULL DEFAULT now());
""",
    # 2: jobs that wait for others (`after`): the ids each still waits for; such a job is not ready.
    """
ALTER TABLE queuectl.jobs ADD COLUMN waiting_for text[];
CREATE INDEX jobs_waiting ON queuectl.jobs USING gin (waiting_for) WHERE waiting_for IS NOT NULL;
""",
]
KNOWN_VERSION = len(MIGRATIONS)
CLAIMS_LOCK = "hashtext('queuectl.claims')"  # advisory: worker rounds share it, `pause` takes it alone
JOBS_CHANNEL = "queuectl_jobs"  # NOTIFY: new due jobs (a hint: workers poll anyway)
CONTROL_CHANNEL = "queuectl_control"  # NOTIFY: a cancel or a stop was asked for
# Mark attempts started (still the worker's) and begin their runs, in one statement; the ids started.
STARTS = """
WITH s (id, attempt, header) AS (SELECT * FROM unnest({}::text[], {}::integer[], {}::bytea[])),
     u AS (UPDATE queuectl.jobs j SET started = true FROM s WHERE j.id = s.id AND j.state = 'processing'
           AND j.host = {} AND j.pid = {} AND j.attempts = s.attempt RETURNING j.id),
     r AS (INSERT INTO queuectl.runs (job_id, attempt, host, pid, header)
           SELECT s.id, s.attempt, {}, {}, s.header FROM s WHERE s.id IN (SELECT id FROM u) RETURNING job_id)
SELECT job_id FROM r"""
# The LISTEN connection records most starts: there the statement is prepared once (planning it cost
# more than running it), as a session's prepared statement can be where no pooler shares the session.
PREPARE_STARTS = ("PREPARE queuectl_starts (text[], integer[], bytea[], text, integer, text, integer) AS "
                  + STARTS.format(*(f"${n}" for n in range(1, 8))))
EXECUTE_STARTS = "EXECUTE queuectl_starts (%s, %s, %s, %s, %s, %s, %s)"
RECORD_STARTS = STARTS.format(*["%s"] * 7)  # elsewhere (the main connection, through a pooler)
# Jobs' rows sent as one array a column (quoted by the driver in C, not a row at a time), numbered.
JOB_ROWS = """unnest(%s::text[], %s::text[], %s::integer[], %s::float8[], %s::boolean[], %s::text[], %s::integer[],
                     %s::float8[], %s::integer[], %s::boolean[], %s::text[], %s::text[])
              WITH ORDINALITY AS v (id, state, priority, run_at, ready, host, pid, finished_at, attempts,
                                    cancel_requested, doc, waiting_for, n)"""


def install_schema(url: str) -> None:
    """Create (or bring up to date) the schema of the database at `url`."""
    store = PostgresStore(url)
    try:
        store.migrate()
    finally:
        store.close()


def driver() -> Any:
    """psycopg2, or one sentence saying how to get it."""
    if psycopg2 is None:
        raise StoreUnavailable('a queue in PostgreSQL needs the psycopg2 driver: pip install "queuectl[postgres]"')
    return psycopg2


# -- connections and errors --------------------------------------------------------------------

# libpq settings for every connection: give up on a server that does not answer (a cut cable, a
# blackholed connection) in seconds, not after the kernel's default of about 15 minutes.
CONNECT_OPTIONS = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                   "keepalives_count": 3, "tcp_user_timeout": 8000, "application_name": "queuectl"}


CALL_DEADLINE = 15.0  # seconds a transaction may wait on the server before its connection is cut


class Connection:
    """One connection to the server, opened when first needed and opened again after it broke.
    Transactions are short; a driver error becomes a StoreError that names the server (without
    its password) and says what happened, and the broken connection is dropped.

    A connection that stops answering (a cut cable, a blackholed route) would hang a call for as
    long as TCP keeps the socket, which can be for ever: a watch thread shuts the socket down
    once a transaction has waited CALL_DEADLINE seconds, so the call fails instead."""

    def __init__(self, url: str, what: str = "queuectl") -> None:
        self.url = url
        self.what = what
        self.conn: Any = None
        self.lock = threading.RLock()
        self.busy_since: float | None = None
        self.deadline = CALL_DEADLINE
        self._watch: threading.Thread | None = None

    def watch(self) -> None:
        """Start the watch over hanging calls (once)."""
        if self._watch is None:
            self._watch = threading.Thread(target=self._watch_calls, name="queuectl_pg watch", daemon=True)
            self._watch.start()

    def _watch_calls(self) -> None:
        import socket

        while True:
            time.sleep(0.25)
            since, conn = self.busy_since, self.conn
            if since is None or conn is None or time.monotonic() - since < self.deadline:
                continue
            try:  # the blocked call returns with an error; the connection is opened again next time
                socket.socket(fileno=os.dup(conn.fileno())).shutdown(socket.SHUT_RDWR)
            except (OSError, ValueError, AttributeError):
                pass
            self.busy_since = None

    def open(self) -> Any:
        if self.conn is None or self.conn.closed:
            pg = driver()
            try:
                self.conn = pg.connect(self.url, **dict(CONNECT_OPTIONS, application_name=self.what))
            except pg.Error as error:
                raise unavailable(self.url, error) from None
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None

    def transaction(self, lazy: bool = False) -> Transaction:
        return Transaction(self, lazy)


class Transaction:
    """`with connection.transaction() as cur:` one transaction, committed at the end, rolled back
    on an error; driver errors leave as StoreError."""

    def __init__(self, connection: Connection, lazy: bool = False) -> None:
        self.connection = connection
        self.lazy = lazy
        self.cursor: Any = None

    def __enter__(self) -> Any:
        self.connection.lock.acquire()
        try:
            self.cursor = self.connection.open().cursor()
        except BaseException:
            self.connection.lock.release()
            raise
        self.connection.busy_since = time.monotonic()
        if self.lazy:
            try:
                self.cursor.execute("SET LOCAL synchronous_commit = off")
            except BaseException:
                self.__exit__(*sys.exc_info())
                raise
        return self.cursor

    def __exit__(self, kind: Any, error: Any, trace: Any) -> bool:
        connection = self.connection
        pg = driver()
        try:
            if kind is None:
                try:
                    connection.conn.commit()
                except pg.Error as failure:
                    connection.close()
                    raise unavailable(connection.url, failure) from None
                return False
            try:
                if not connection.conn.closed:
                    connection.conn.rollback()
            except pg.Error:
                connection.close()
            if isinstance(error, (pg.OperationalError, pg.InterfaceError)):
                connection.close()
                raise unavailable(connection.url, error) from None
            if isinstance(error, pg.Error):
                raise queuectl.StoreError(f"the PostgreSQL server at {redact(connection.url)} refused: "
                                          f"{first_line(error)}.") from None
            return False
        finally:
            connection.busy_since = None
            connection.lock.release()


def columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows of jobs (PostgresStore._row) as the parameters of JOB_ROWS: one list a column. An array
    of arrays must be rectangular, so the ids in waiting_for go as array literals, each id quoted
    (an id may spell NULL)."""
    lists = [list(column) for column in zip(*rows)]
    lists[11] = [None if ids is None else "{" + ",".join(f'"{i}"' for i in ids) + "}" for ids in lists[11]]
    return lists


def bytes_from(path: str, offset: int) -> bytes:
    """Up to a megabyte of a file from `offset` (nothing past its end); OSError if it cannot be read."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(1 << 20)


def scratch_parent() -> str:
    """Where the workers of this user on this host keep their scratch folders (owner-only)."""
    import tempfile

    parent = os.path.join(tempfile.gettempdir(), f"queuectl-scratch-{os.getuid() if hasattr(os, 'getuid') else 0}")
    os.makedirs(parent, mode=0o700, exist_ok=True)
    return parent


def remove_dead_scratch(parent: str) -> None:
    """Remove the scratch folders (<pid>-<n>) of worker processes that are gone."""
    import shutil

    for name in os.listdir(parent):
        pid = name.split("-", 1)[0]
        if pid.isdigit() and not queuectl.pid_alive(int(pid)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0].rstrip(".") if text else type(error).__name__


def unavailable(url: str, error: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"cannot reach the PostgreSQL server at {redact(url)}: {first_line(error)}.")


def stamp(text: str | None) -> float | None:
    """A job's ISO timestamp as epoch seconds (None stays None)."""
    return queuectl._epoch(text) if text else None


# -- the store ---------------------------------------------------------------------------------


class PostgresStore(BaseStore):
    """The queue in a PostgreSQL database (schema `queuectl`). One-shot commands use one short
    connection; a worker process uses at most two (rounds and heartbeats; LISTEN and the records
    of its commands' starts)."""

    def __init__(self, location: str) -> None:
        driver()
        self.location, self.location_for_jobs = redact(location), location
        self.notes: list[str] = []
        self.db = Connection(location)  # the URL as given: its password too
        self._ready = False  # the schema is known to be at KNOWN_VERSION on this connection
        self._config: tuple[float, dict[str, Any]] | None = None  # (when read, settings)
        self._offset = 0.0  # server clock - this host's clock, at the last look
        self._offset_at: float | None = None  # when that was (monotonic)
        self._scratch_dir: str | None = None
        self._scratch_lock = threading.Lock()
        self._starts: list[list[Any]] = []  # attempt_started requests waiting for the connection
        self._side: Connection | None = None  # the LISTEN connection, while it works
        self._wake: Callable[[], None] | None = None
        self._starts_lock = threading.Lock()
        self._streams: dict[str, tuple[Any, int]] = {}  # scratch path -> (run, bytes sent)
        self._watched: dict[str, float] = {}
        self._late: dict[str, tuple[str, int, int, Any]] = {}  # late file -> (job, attempt, bytes sent, run)
        self._next_due: float | None | bool = False  # as the last round saw it (False: no round yet)
        self._last_round = 0.0
        self._notified = False  # a notification came since the last round
        self._stop_at: float | None = None  # the stop request as the last round read it
        self._paused_at: float | None = None  # and the pause
        self._listener: threading.Thread | None = None
        self._closing = False

    # -- the schema

    def _installed(self, cur: Any) -> int | None:
        # A query of the catalog, not to_regclass: that answers from this session's cache, which
        # another session's migration, committed while this one waited for the lock, leaves stale.
        cur.execute("""SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables
                                      WHERE schemaname = 'queuectl' AND tablename = 'schema_version')""")
        if not cur.fetchone()[0]:
            return None
        cur.execute("SELECT max(version) FROM queuectl.schema_version")
        return cur.fetchone()[0]

    def schema_versions(self) -> tuple[int | None, int]:
        with self.db.transaction() as cur:
            return self._installed(cur), KNOWN_VERSION

    def migrate(self, dry_run: bool = False) -> list[str]:
        """Apply the migrations the database lacks, each in its own transaction under an advisory
        lock (a second migrate waits, then finds nothing to do); the SQL applied (or, dry, to apply)."""
        with self.db.transaction() as cur:
            installed = self._installed(cur) or 0
        if installed > KNOWN_VERSION:
            raise QueueError(self._newer_message(installed))
        pending = MIGRATIONS[installed:]
        if dry_run:
            return pending
        applied = []
        for version in range(installed + 1, KNOWN_VERSION + 1):
            with self.db.transaction() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext('queuectl.migrate'))")
                if (self._installed(cur) or 0) >= version:
                    continue
                cur.execute(MIGRATIONS[version - 1])
                cur.execute("INSERT INTO queuectl.schema_version (version) VALUES (%s)", (version,))
                applied.append(MIGRATIONS[version - 1])
        self._ready = True
        return applied

    def _newer_message(self, installed: int) -> str:
        return (f"the queue at {self.location} has schema version {installed}, newer than this "
                f"queuectl knows ({KNOWN_VERSION}): upgrade queuectl.")

    def _check_schema(self) -> None:
        """Before the first verb: create the schema on an empty database; refuse an old or a newer one."""
        if self._ready:
            return
        with self.db.transaction() as cur:
            installed = self._installed(cur)
            if installed == KNOWN_VERSION:  # the usual case: the settings and the time in the same round trip
                self._now(cur)
                self._config_in(cur)
                self._ready = True
                return
        if installed is None:
            self.migrate()
            return
        if installed > KNOWN_VERSION:
            raise QueueError(self._newer_message(installed))
        raise QueueError(f"the queue at {self.location} has schema version {installed}; this "
                         f"queuectl needs {KNOWN_VERSION}: run `queuectl db migrate`.")

    def _tx(self, lazy: bool = False) -> Transaction:
        """A transaction; `lazy` for a worker's own bookkeeping, whose commit need not wait for the
        disk: a commit a server crash loses means a job runs again, which at-least-once allows (an
        enqueue, a cancel or a setting is acknowledged only once it is on disk)."""
        self._check_schema()
        return self.db.transaction(lazy)

    def _now(self, cur: Any) -> float:
        """The server's time (the transaction's start), which decides every comparison."""
        cur.execute("SELECT extract(epoch FROM now())::float8")
        now = cur.fetchone()[0]
        self._offset, self._offset_at = now - now_ts(), time.monotonic()
        return now

    def clock(self) -> float:
        """The server's time: this host's clock corrected by the offset seen at the last look, if that
        was in the last few seconds (a one-shot command looked as it opened the queue)."""
        if self._offset_at is not None and time.monotonic() - self._offset_at < 5.0:
            return now_ts() + self._offset
        with self._tx() as cur:
            return self._now(cur)

    def prepare(self) -> None:
        self._check_schema()

    def close(self) -> None:
        self._closing = True
        self.db.close()
        if self._scratch_dir is not None:
            import shutil

            shutil.rmtree(self._scratch_dir, ignore_errors=True)
            self._scratch_dir = None

    def check(self) -> None:
        self._check_schema()

    def begin_worker(self, worker: WorkerIdentity) -> None:
        self._check_schema()
        self.db.watch()

    def lost(self) -> str | None:
        return None  # a server that is down is a fault the rounds report and retry, not a lost queue

    # -- writing jobs: the doc, and the columns derived from it

    @staticmethod
    def _row(job: dict[str, Any], now: float) -> tuple[Any, ...]:
        """The columns of a job's row. `doc` is json, not jsonb: it keeps a \\u0000 that a command's
        output tail may hold, which jsonb refuses."""
        run_at = stamp(job.get("run_at"))
        waiting = job.get("waiting_for") or None
        ready = job["state"] in ("pending", "failed") and (run_at is None or run_at <= now) and not waiting
        return (job["id"], job["state"], int(job.get("priority", 0)), run_at, ready,
                job.get("host") if job["state"] == "processing" else None,
                job.get("pid") if job["state"] == "processing" else None,
                stamp(job.get("finished_at")) if job["state"] in FINISHED_STATES else None,
                job["attempts"], "cancel_requested_at" in job, json.dumps(job), waiting)

    def _write(self, cur: Any, jobs: list[dict[str, Any]], now: float, claimed: bool = False,
               new_place: bool = False) -> None:
        """Store jobs as the rules made them (they exist already); `claimed`: new claims, whose
        commands have not started yet."""
        if not jobs:
            return
        rows = [self._row(job, now) for job in jobs]
        also = ", started = false" if claimed else ""
        if new_place:
            also += ", place = nextval('queuectl.places')"  # back in the queue: behind the jobs waiting now
        cur.execute(f"""
            UPDATE queuectl.jobs j SET state = v.state, priority = v.priority, run_at = to_timestamp(v.run_at),
                ready = v.ready, host = v.host, pid = v.pid, finished_at = to_timestamp(v.finished_at),
                attempts = v.attempts, cancel_requested = v.cancel_requested, doc = v.doc::json,
                waiting_for = v.waiting_for::text[]{also}
            FROM {JOB_ROWS} WHERE j.id = v.id""", columns(rows))
        ended = [job for job in jobs if job["state"] in FINISHED_STATES]
        if ended:
            self._end_waits(cur, ended, now)

    def _end_waits(self, cur: Any, ended: list[dict[str, Any]], now: float) -> None:
        """The jobs waiting for these finished ones: crossed off, claimable, or cancelled too (and
        then those waiting for them, as they are written)."""
        states = {job["id"]: job["state"] for job in ended}
        cur.execute("SELECT doc FROM queuectl.jobs WHERE waiting_for && %s::text[] ORDER BY id FOR UPDATE",
                    (list(states),))
        waiters = []
        for (waiter,) in cur.fetchall():
            for dep in [dep for dep in waiter.get("waiting_for", ()) if dep in states]:
                if waiter["state"] != "cancelled":
                    waiter = dependency_ended(waiter, dep, states[dep], now)
            waiters.append(waiter)
        if any(not waiter.get("waiting_for") and waiter["state"] != "cancelled" for waiter in waiters):
            cur.execute("SELECT pg_notify(%s, '')", (JOBS_CHANNEL,))  # claimable now
        self._write(cur, waiters, now)

    def _states_in(self, cur: Any, ids: list[str]) -> dict[str, str]:
        """The states of these jobs, their rows share-locked: a job that waits for one of them is
        enqueued before it ends (and so is found by _end_waits), or after (and sees how it ended)."""
        cur.execute("SELECT id, state FROM queuectl.jobs WHERE id = ANY(%s) ORDER BY id FOR SHARE", (list(ids),))
        return dict(cur.fetchall())

    def _lock(self, cur: Any, ids: Iterable[str], skip_locked: bool = False) -> dict[str, tuple[dict[str, Any], bool]]:
        """The jobs with these ids, locked for this transaction: {id: (job, its attempt started)}."""
        cur.execute("SELECT doc, started FROM queuectl.jobs WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
                    + (" SKIP LOCKED" if skip_locked else ""), (list(ids),))
        return {doc["id"]: (doc, started) for doc, started in cur.fetchall()}

    # -- the queue

    def enqueue(self, jobs: list[dict[str, Any]]) -> None:
        """All or nothing, in one statement: an id that exists is refused with the state it is in.
        Safe to retry after a commit whose outcome is unknown: the retry finds the job and says so."""
        seen: set[str] = set()
        for job in jobs:
            if job["id"] in seen:
                raise QueueError(f"job id {job['id']!r} appears twice in the input; nothing was enqueued.")
            seen.add(job["id"])
        with self._tx() as cur:
            now = self._now(cur)
            self._insert(cur, entering_jobs(jobs, lambda ids: self._states_in(cur, ids), now), now, "enqueued")

    def restore(self, jobs: list[dict[str, Any]]) -> None:
        with self._tx() as cur:
            self._insert(cur, jobs, self._now(cur), "imported")

    def _insert(self, cur: Any, jobs: list[dict[str, Any]], now: float, what: str) -> None:
        """New rows, in batches of 10,000; an id that exists is refused with the state it is in."""
        due = False
        for start in range(0, len(jobs), 10_000):
            batch = jobs[start:start + 10_000]
            rows = [self._row(job, now) for job in batch]
            due = due or any(row[4] for row in rows)
            cur.execute(f"""
                INSERT INTO queuectl.jobs (id, state, priority, run_at, ready, host, pid, finished_at, attempts,
                                           cancel_requested, doc, waiting_for, place)
                SELECT v.id, v.state, v.priority, to_timestamp(v.run_at), v.ready, v.host, v.pid,
                       to_timestamp(v.finished_at), v.attempts, v.cancel_requested, v.doc::json,
                       v.waiting_for::text[], nextval('queuectl.places')
                FROM (SELECT * FROM {JOB_ROWS} ORDER BY n) AS v
                ON CONFLICT (id) DO NOTHING RETURNING id""", columns(rows))
            inserted = cur.fetchall()
            if len(inserted) != len(batch):
                added = {row[0] for row in inserted}
                taken = next(job["id"] for job in batch if job["id"] not in added)
                cur.execute("SELECT state FROM queuectl.jobs WHERE id = %s", (taken,))
                found = cur.fetchone()
                cur.connection.rollback()
                raise JobExists(f"job {taken!r} already exists ({found[0] if found else 'just ' + what}); "
                                f"nothing was {what}.")
        if due:  # a worker may start one now (delayed jobs wait for the stager)
            cur.execute("SELECT pg_notify(%s, '')", (JOBS_CHANNEL,))

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._tx() as cur:
            cur.execute("SELECT doc FROM queuectl.jobs WHERE id = %s", (job_id,))
            row = cur.fetchone()
        return row[0] if row else None

    def jobs(self, state: str | None = None, limit: int | None = None,
             where: Callable[[dict[str, Any]], bool] | None = None, newest_first: bool = False,
             hint: bytes | None = None) -> list[dict[str, Any]]:
        """Active jobs first (in queue order), then finished ones by state in the order they
        finished (newest first if asked), read a page at a time as far as the limit needs."""
        result: list[dict[str, Any]] = []
        groups: list[tuple[str, tuple[Any, ...], tuple[str, ...], bool]] = []
        if state is None or state in ACTIVE_STATES:
            states = list(ACTIVE_STATES) if state is None else [state]
            groups.append(("finished_at IS NULL AND state = ANY(%s)", (states,), ("place",), False))
        for finished in FINISHED_STATES if state is None else [state] if state in FINISHED_STATES else []:
            groups.append(("finished_at IS NOT NULL AND state = %s", (finished,), ("finished_at", "seq"), newest_first))
        for condition, params, order, descending in groups:
            for job in self._stream(condition, params, order, descending, page=min(1000, max(limit or 1000, 20))):
                if where is None or where(job):
                    result.append(job)
                    if limit is not None and len(result) >= limit:
                        return result
        return result

    def _stream(self, condition: str, params: tuple[Any, ...], order: tuple[str, ...], descending: bool = False,
                page: int = 1000) -> Iterator[dict[str, Any]]:
        """Jobs matching a condition in the order of some columns, a page at a time, each page its
        own short transaction (keyset paging: no transaction stays open while the caller reads)."""
        columns = ", ".join(order)
        direction = "DESC" if descending else "ASC"
        after: tuple[Any, ...] | None = None
        while True:
            keyset = ""
            if after:
                keyset = f" AND ({columns}) {'<' if descending else '>'} ({', '.join(['%s'] * len(order))})"
            with self._tx() as cur:
                cur.execute(f"SELECT doc, {columns} FROM queuectl.jobs WHERE {condition}{keyset} "
                            f"ORDER BY {', '.join(f'{c} {direction}' for c in order)} LIMIT %s",
                            (*params, *(after or ()), page))
                rows = cur.fetchall()
            yield from (row[0] for row in rows)
            if len(rows) < page:
                return
            after = tuple(rows[-1][1:])

    def newest(self, state: str, limit: int) -> list[dict[str, Any]]:
        return self.jobs(state, limit, newest_first=True)

    def counts(self) -> dict[str, int]:
        with self._tx() as cur:
            cur.execute("""SELECT state, count(*), count(*) FILTER (WHERE state = 'pending' AND run_at > now()),
                                  count(*) FILTER (WHERE waiting_for IS NOT NULL)
                           FROM queuectl.jobs GROUP BY state""")
            counts = dict.fromkeys(STATES, 0)
            counts["scheduled"] = counts["waiting"] = 0
            for state, count, scheduled, waiting in cur.fetchall():
                counts[state] = count
                counts["scheduled"] += scheduled
                counts["waiting"] += waiting
        return counts

    def finished_count(self, state: str) -> int:
        with self._tx() as cur:
            cur.execute("SELECT count(*) FROM queuectl.jobs WHERE state = %s", (state,))
            return cur.fetchone()[0]

    def states_of(self, ids: Iterable[str]) -> dict[str, str]:
        with self._tx() as cur:
            cur.execute("SELECT id, state FROM queuectl.jobs WHERE id = ANY(%s)", (list(ids),))
            return dict(cur.fetchall())

    def active_jobs(self) -> list[dict[str, Any]]:
        return list(self._stream("finished_at IS NULL", (), ("place",)))

    def finished_since(self, since: float | None = None) -> Iterator[dict[str, Any]]:
        for state in FINISHED_STATES:
            if since is None:
                yield from self._stream("finished_at IS NOT NULL AND state = %s", (state,), ("finished_at", "seq"))
            else:
                yield from self._stream("finished_at >= to_timestamp(%s) AND state = %s", (since, state),
                                        ("finished_at", "seq"))

    def cancel(self, ids: list[str]) -> dict[str, tuple[str, str]]:
        results: dict[str, tuple[str, str]] = {}
        with self._tx() as cur:
            now = self._now(cur)
            locked = self._lock(cur, ids)
            changed = []
            for job_id in dict.fromkeys(ids):
                job = locked.get(job_id, (None, False))[0]
                active, finished = (None, job) if job and job["state"] in FINISHED_STATES else (job, None)
                what, state, becomes = cancel_decision(active, finished, now)
                results[job_id] = (what, state)
                if becomes is not None and becomes is not job:
                    changed.append(becomes)
            self._write(cur, changed, now)
            requested = [job_id for job_id, (what, _) in results.items() if what == "requested"]
            if requested:
                cur.execute("SELECT pg_notify(%s, 'cancel')", (CONTROL_CHANNEL,))
                for job, _ in self._recover(cur, self._config_in(cur), now, None):
                    if job["state"] == "cancelled" and results.get(job["id"], ("",))[0] == "requested":
                        results[job["id"]] = ("cancelled", "processing")
        self._watched = {job_id: now for job_id, (what, _) in results.items() if what == "requested"}
        return results

    def ended_since_cancel(self, ids: Iterable[str]) -> dict[str, str]:
        """A purge remembers for a minute how the jobs whose cancel was requested ended."""
        wanted = [job_id for job_id in ids if job_id in self._watched]
        if not wanted:
            return {}
        with self._tx() as cur:
            cur.execute("SELECT id, state FROM queuectl.purged_cancels WHERE id = ANY(%s) AND at >= to_timestamp(%s)",
                        (wanted, min(self._watched[job_id] for job_id in wanted)))
            return dict(cur.fetchall())

    def dlq_retry(self, ids: list[str] | None) -> list[str]:
        with self._tx() as cur:
            now = self._now(cur)
            if ids is None:
                cur.execute("SELECT doc FROM queuectl.jobs WHERE state = 'dead' ORDER BY finished_at, seq FOR UPDATE")
                dead = [doc for (doc,) in cur.fetchall()]
            else:
                locked = self._lock(cur, ids)
                for job_id in ids:
                    job = locked.get(job_id, (None,))[0]
                    if job is None:
                        raise NoSuchJob(f"job {job_id!r} is not in the DLQ (no such job).")
                    if job["state"] != "dead":
                        raise QueueError(f"job {job_id!r} is not in the DLQ (it is {job['state']}).")
                dead = [locked[job_id][0] for job_id in dict.fromkeys(ids)]
            self._write(cur, [revived(job, now) for job in dead], now, new_place=True)
            if dead:
                cur.execute("SELECT pg_notify(%s, '')", (JOBS_CHANNEL,))
        return [job["id"] for job in dead]

    def requeue(self, ids: list[str]) -> list[str]:
        ids = list(dict.fromkeys(ids))
        with self._tx() as cur:
            now = self._now(cur)
            locked = self._lock(cur, ids)
            for job_id in ids:
                refusal = requeue_refusal(job_id, locked.get(job_id, (None,))[0])
                if refusal:
                    raise refusal
            back = requeued_jobs([locked[job_id][0] for job_id in ids], lambda deps: self._states_in(cur, deps), now)
            self._write(cur, back, now, new_place=True)
            cur.execute("SELECT pg_notify(%s, '')", (JOBS_CHANNEL,))
        return ids

    def purge(self, states: Iterable[str], before: float | None, apply: bool) -> dict[str, int]:
        """Counted per state; deleted (with their output) in batches of 10,000, a transaction each,
        so no transaction stays open long."""
        counts = {}
        for state in states:
            condition = "state = %s AND finished_at IS NOT NULL" + (" AND finished_at < to_timestamp(%s)"
                                                                    if before is not None else "")
            params: tuple[Any, ...] = (state,) if before is None else (state, before)
            if not apply:
                with self._tx() as cur:
                    cur.execute(f"SELECT count(*) FROM queuectl.jobs WHERE {condition}", params)
                    counts[state] = cur.fetchone()[0]
                continue
            counts[state] = 0
            while True:
                with self._tx() as cur:
                    cur.execute(f"""WITH gone AS (DELETE FROM queuectl.jobs WHERE id IN (
                                        SELECT id FROM queuectl.jobs WHERE {condition} LIMIT 10000)
                                      RETURNING id, state, cancel_requested),
                                    kept AS (INSERT INTO queuectl.purged_cancels (id, state)
                                             SELECT id, state FROM gone WHERE cancel_requested)
                                    SELECT count(*) FROM gone""", params)
                    gone = cur.fetchone()[0]
                    cur.execute("DELETE FROM queuectl.purged_cancels WHERE at < now() - interval '1 minute'")
                counts[state] += gone
                if gone < 10000:
                    break
        return counts

    def recover_orphans(self) -> list[dict[str, Any]]:
        with self._tx() as cur:
            now = self._now(cur)
            return [job for job, _ in self._recover(cur, self._config_in(cur), now, None)]

    def _recover(self, cur: Any, config: dict[str, Any], now: float,
                 me: WorkerIdentity | None) -> list[tuple[dict[str, Any], str]]:
        """Settle the jobs of workers that died (settle_orphan): one recovery at a time (a
        transaction-scoped advisory lock, so it works through PgBouncer), each worker judged once."""
        cur.execute("SELECT pg_try_advisory_xact_lock(hashtext('queuectl.recover'))")
        if not cur.fetchone()[0]:
            return []
        cur.execute("SELECT doc FROM queuectl.jobs WHERE state = 'processing'")
        processing = [doc for (doc,) in cur.fetchall()]
        if not processing:
            return []
        workers = self._workers_in(cur, config, now)
        dead = dead_workers(workers, processing, config["lease_timeout"], now)
        if me is not None:
            dead.discard((me.host, me.pid))
        orphans = [job for job in processing if (job.get("host"), job.get("pid")) in dead]
        if not orphans:
            return []
        beats = {(w["host"], w["pid"]): queuectl._epoch(w["heartbeat_at"]) for w in workers}
        locked = self._lock(cur, [job["id"] for job in orphans], skip_locked=True)
        settled = []
        for job in orphans:
            current, started = locked.get(job["id"], (None, False))
            if not holds_claim(current, WorkerIdentity(job.get("host"), job.get("pid")), job["attempts"]):
                continue  # settled meanwhile
            host, pid = job.get("host"), job.get("pid")
            beat = beats.get((host, pid))
            if host == HOST and beat is not None and now - beat <= 2 * config["lease_timeout"]:
                stop_orphaned_command(None, queuectl.attempt_mark(job["id"], job["attempts"],
                                                                  WorkerIdentity(host, pid)))
            if started:
                cur.execute("""UPDATE queuectl.runs SET ending = 'the worker died' WHERE job_id = %s
                               AND attempt = %s AND host = %s AND pid = %s AND ending IS NULL""",
                            (job["id"], job["attempts"], host, pid))
            job, what = settle_orphan(current, started, now)
            settled.append((job, what))
        self._write(cur, [job for job, _ in settled], now)
        for host, pid in {(job.get("host"), job.get("pid")) for job in orphans}:
            cur.execute("DELETE FROM queuectl.workers WHERE host = %s AND pid = %s", (host, pid))
        if settled:
            cur.execute("SELECT pg_notify(%s, '')", (JOBS_CHANNEL,))
        return settled

    # -- settings

    def config(self) -> dict[str, Any]:
        if self._config is not None and time.monotonic() - self._config[0] < 1.0:
            return self._config[1]
        with self._tx() as cur:
            return self._config_in(cur)

    def _config_in(self, cur: Any) -> dict[str, Any]:
        cur.execute("SELECT key, value FROM queuectl.config")
        self._config = (time.monotonic(), self._settings(dict(cur.fetchall())))
        return self._config[1]

    def _settings(self, stored: dict[str, Any]) -> dict[str, Any]:
        """DEFAULT_CONFIG with the stored settings, each checked as `config set` checks it."""
        config = dict(DEFAULT_CONFIG)
        for key, value in stored.items():
            try:
                name = config_key(key, "the config table")
                config[name] = validate_config_value(name, value)
            except QueueError as error:
                raise queuectl.CorruptFileError(f"{self.location} (queuectl.config)", str(error)) from None
        return config

    def set_config(self, key: str, value: Any) -> None:
        with self._tx() as cur:
            cur.execute("""INSERT INTO queuectl.config (key, value) VALUES (%s, %s::jsonb)
                           ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value""", (key, json.dumps(value)))
        self._config = None

    # -- workers

    def worker_round(self, outcomes: list[Outcome], want: int, worker: WorkerIdentity, recover: bool = False,
                     running: Iterable[tuple[str, int]] = ()
                     ) -> tuple[list[tuple[dict[str, Any], str]], list[dict[str, Any]], list[str]]:
        """One transaction: record the outcomes (only while each attempt is still this worker's
        claim), recover dead workers' jobs, stage jobs that fell due, claim up to `want` (highest
        priority, then oldest, skipping rows other workers hold locked), and read this worker's
        cancel requests."""
        self._notified = False
        with self._tx(lazy=True) as cur:
            now, config = self._look(cur)
            recorded: list[tuple[dict[str, Any], str]] = []
            if outcomes:
                locked = self._lock(cur, {outcome.job_id for outcome in outcomes})
                changed = []
                for outcome in outcomes:
                    job = locked.get(outcome.job_id, (None, False))[0]
                    if not holds_claim(job, worker, outcome.attempt):
                        continue  # recovered meanwhile: not ours to record
                    job, what = settle_outcome(job, outcome, config, now, queuectl._chance)
                    changed.append(job)
                    recorded.append((job, what))
                settled = {job["id"] for job in changed}
                self._close_runs(cur, [outcome for outcome in outcomes if outcome.job_id in settled], worker)
                self._write(cur, changed, now)
            if recover:
                recorded += [(job, "recovered") for job, _ in self._recover(cur, config, now, worker)]
            cur.execute("""UPDATE queuectl.jobs SET ready = true
                           WHERE state IN ('pending', 'failed') AND NOT ready AND run_at <= now()
                           AND waiting_for IS NULL""")
            claimed = []
            if want > 0 and self._paused_at is None:  # (a pause that began since waits for this round)
                cur.execute("""SELECT doc FROM queuectl.jobs WHERE state IN ('pending', 'failed') AND ready
                               AND NOT EXISTS (SELECT 1 FROM queuectl.flags WHERE name = 'pause')
                               ORDER BY priority DESC, place LIMIT %s FOR UPDATE SKIP LOCKED""", (want,))
                claimed = [claimed_job(doc, worker, now) for (doc,) in cur.fetchall()]
                self._write(cur, claimed, now, claimed=True)
            cur.execute("""SELECT id FROM queuectl.jobs WHERE state = 'processing' AND host = %s AND pid = %s
                           AND cancel_requested""", (worker.host, worker.pid))
            cancels = [job_id for (job_id,) in cur.fetchall()]
            self._next_due, self._last_round = self._due_in(cur, now), time.monotonic()
            running = list(running)
            if running:  # those no longer its claim were taken over (it was taken for dead): stop them
                cur.execute("""SELECT r.id FROM unnest(%s::text[], %s::integer[]) AS r (id, attempt)
                               WHERE NOT EXISTS (SELECT 1 FROM queuectl.jobs j WHERE j.id = r.id
                                 AND j.state = 'processing' AND j.host = %s AND j.pid = %s
                                 AND j.attempts = r.attempt)""",
                            ([job_id for job_id, _ in running], [attempt for _, attempt in running],
                             worker.host, worker.pid))
                cancels += [job_id for (job_id,) in cur.fetchall()]
        return recorded, claimed, cancels

    @staticmethod
    def _close_runs(cur: Any, outcomes: list[Outcome], worker: WorkerIdentity) -> None:
        """Recorded attempts' runs are over: one that printed nothing and succeeded leaves no record
        (as a folder keeps no log of it); one whose end keep_output could not write gets it now."""
        if not outcomes:
            return
        ids, attempts = [o.job_id for o in outcomes], [o.attempt for o in outcomes]
        endings = [o.error or ("cancelled" if o.kind == "cancelled" else "exit code 0") for o in outcomes]
        cur.execute("""WITH ended (job_id, attempt, ending) AS (
                           SELECT * FROM unnest(%s::text[], %s::integer[], %s::text[])),
                         gone AS (DELETE FROM queuectl.runs r USING ended e WHERE r.job_id = e.job_id
                                  AND r.attempt = e.attempt AND r.host = %s AND r.pid = %s AND r.ending IS NULL
                                  AND r.size = 0 AND r.removed = 0 AND NOT r.late RETURNING r.run)
                       UPDATE queuectl.runs r SET ending = e.ending FROM ended e WHERE r.job_id = e.job_id
                         AND r.attempt = e.attempt AND r.host = %s AND r.pid = %s AND r.ending IS NULL AND NOT r.late
                         AND r.run NOT IN (SELECT run FROM gone)""",
                    (ids, attempts, endings, worker.host, worker.pid, worker.host, worker.pid))

    def _look(self, cur: Any) -> tuple[float, dict[str, Any]]:
        """A round's first statement: the claims lock (shared: `pause` waits for the rounds under
        way, and later ones see its flag), the server's time, the stop request and the pause, and
        the settings (read at most once a second)."""
        fresh = self._config is not None and time.monotonic() - self._config[0] < 1.0
        cur.execute(f"""SELECT extract(epoch FROM now())::float8, (SELECT at FROM queuectl.flags WHERE name = 'stop'),
                               (SELECT at FROM queuectl.flags WHERE name = 'pause'),
                               pg_advisory_xact_lock_shared({CLAIMS_LOCK})"""
                    + ("" if fresh else ", (SELECT json_object_agg(key, value) FROM queuectl.config)"))
        row = cur.fetchone()
        now = row[0]
        self._offset, self._offset_at = now - now_ts(), time.monotonic()
        self._stop_at = None if row[1] is None else row[1] - self._offset
        self._paused_at = None if row[2] is None else row[2] - self._offset
        if not fresh:
            self._config = (time.monotonic(), self._settings(row[4] or {}))
        return now, self._config[1]  # type: ignore[index]

    def attempt_started(self, job: dict[str, Any], worker: WorkerIdentity, header: bytes) -> bool:
        """The attempt's command is about to start: from now on a crash counts it. Its run (the
        record its output streams into) begins. False if the attempt is no longer this worker's.
        The worker's threads start jobs at once while its connection is busy: whichever thread gets
        the connection first records every start asked for by then, in one transaction."""
        request: list[Any] = [job["id"], job["attempts"], header, None]
        with self._starts_lock:
            self._starts.append(request)
        connection = self._side or self.db  # the LISTEN connection, when there is one: rounds hold the other
        with connection.lock:
            if request[3] is None:
                with self._starts_lock:
                    waiting, self._starts = self._starts, []
                try:
                    started = self._record_starts(waiting, worker, connection)
                except QueueError as error:
                    started = error
                for each in waiting:
                    each[3] = started
        if isinstance(request[3], QueueError):
            raise request[3]
        return job["id"] in request[3]

    def _record_starts(self, waiting: list[list[Any]], worker: WorkerIdentity, connection: Connection) -> set[str]:
        """Mark these attempts started and begin their runs, where still the worker's; those ids.
        On the LISTEN connection (autocommit, commits not waiting for the disk) it is one statement,
        one transaction; if that connection fails, the worker's main one does it."""
        if connection is not self.db and connection.conn is not None:
            try:
                connection.busy_since = time.monotonic()
                cur = connection.conn.cursor()
                cur.execute(EXECUTE_STARTS, self._starts_params(waiting, worker))
                started = {job_id for (job_id,) in cur.fetchall()}
                self._take_notifies(connection.conn)  # the driver may have read some meanwhile
                return started
            except driver().Error:
                self._side = None  # the listener notices too, and opens it again
            finally:
                connection.busy_since = None
        with self._tx(lazy=True) as cur:
            cur.execute(RECORD_STARTS, self._starts_params(waiting, worker))
            return {job_id for (job_id,) in cur.fetchall()}

    @staticmethod
    def _starts_params(waiting: list[list[Any]], worker: WorkerIdentity) -> tuple[Any, ...]:
        return ([w[0] for w in waiting], [w[1] for w in waiting], [psycopg2.Binary(w[2]) for w in waiting],
                worker.host, worker.pid, worker.host, worker.pid)

    def next_due(self) -> float | None:
        """When the next claimable job is due, on this host's clock (0: now), as the last round saw it."""
        if self._next_due is not False:
            return self._next_due  # type: ignore[return-value]
        with self._tx() as cur:
            return self._due_in(cur, self._now(cur))

    def _due_in(self, cur: Any, now: float) -> float | None:
        """When the next claimable job is due, on this host's clock (the server's `now`, corrected)."""
        cur.execute("""SELECT EXISTS (SELECT 1 FROM queuectl.jobs WHERE state IN ('pending', 'failed') AND ready),
                              extract(epoch FROM (SELECT min(run_at) FROM queuectl.jobs
                                                  WHERE state IN ('pending', 'failed') AND NOT ready
                                                  AND waiting_for IS NULL))::float8""")
        ready, due = cur.fetchone()
        if ready or (due is not None and due <= now):
            return 0.0
        return None if due is None else due - self._offset

    def changed(self) -> bool:
        """Worth a round: a notification came, or a poll interval went by since the last round."""
        try:
            poll = float(self.config()["poll_interval"])
        except QueueError:  # the server cannot answer now: a round says so, and retries
            return True
        return self._notified or time.monotonic() - self._last_round >= poll

    def on_change(self, wake: Callable[[], None]) -> None:
        """LISTEN on a connection of its own (the worker's second), unless config `listen` is off."""
        if not self.config()["listen"] or self._listener is not None:
            return
        self._wake = wake
        self._listener = threading.Thread(target=self._listen, name="queuectl_pg listen", daemon=True)
        self._listener.start()

    def _listen(self) -> None:
        """Wake the worker on each notification. A connection that dies (a server restart, a
        terminated backend, a cut cable found by the watch on a periodic SELECT 1) is opened again
        with backoff, and the worker is woken once: what was sent meanwhile is lost, not missed."""
        import select

        listener = Connection(self.location_for_jobs, "queuectl listen")
        listener.watch()
        backoff = 0.1
        while not self._closing:
            try:
                conn = listener.open()
                conn.autocommit = True
                with listener.lock:
                    conn.cursor().execute(f"LISTEN {JOBS_CHANNEL}; LISTEN {CONTROL_CHANNEL}; "
                                          f"SET synchronous_commit = off; {PREPARE_STARTS}")  # for the starts
                self._side = listener
                backoff = 0.1
                self._notified = True
                self._wake()  # type: ignore[misc]
                quiet_since = time.monotonic()
                while not self._closing:
                    if select.select([conn], [], [], 1.0)[0]:
                        if not listener.lock.acquire(blocking=False):
                            # A thread records starts on it: that reads the answer, and notifications
                            # that came with it. Waiting for the lock here would cost every start.
                            time.sleep(0.002)
                            continue
                        try:
                            conn.poll()
                        finally:
                            listener.lock.release()
                        self._take_notifies(conn)
                        quiet_since = time.monotonic()
                    elif time.monotonic() - quiet_since >= 5.0:  # is it still there?
                        with listener.lock:
                            listener.busy_since = time.monotonic()
                            try:
                                conn.cursor().execute("SELECT 1")
                            finally:
                                listener.busy_since = None
                        quiet_since = time.monotonic()
            except Exception:
                self._side = None
                listener.close()
                time.sleep(backoff)
                backoff = min(2.0, backoff * 2)
        self._side = None
        listener.close()

    def _take_notifies(self, conn: Any) -> None:
        """Notifications the driver has read on the LISTEN connection wake the worker."""
        if conn.notifies:
            conn.notifies.clear()
            self._notified = True
            if self._wake is not None:
                self._wake()

    def has_retries_waiting(self) -> bool:
        with self._tx() as cur:
            cur.execute("SELECT EXISTS (SELECT 1 FROM queuectl.jobs WHERE state = 'failed')")
            return cur.fetchone()[0]

    def heartbeat(self, info: dict[str, Any]) -> None:
        """The worker's row, with the server's time (which the other hosts judge it by)."""
        try:
            with self._tx(lazy=True) as cur:
                # The heartbeat's age as the worker states it (0 but in tests), on the server's clock.
                age = max(0.0, now_ts() - (queuectl._epoch(info.get("heartbeat_at")) or now_ts()))
                cur.execute("""INSERT INTO queuectl.workers (host, pid, heartbeat_at, info)
                               VALUES (%s, %s, now() - make_interval(secs => %s), %s)
                               ON CONFLICT (host, pid) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at,
                               info = EXCLUDED.info""",
                            (info["host"], info["pid"], age, json.dumps(info)))
        except QueueError as error:
            raise OSError(0, str(error).rstrip("."), f"(the workers table of {self.location})") from None
        try:
            self._stream_output()
            self._flush_late()
        except QueueError:
            pass  # the output goes at the next beat, or with the attempt's end

    def workers(self) -> list[dict[str, Any]]:
        with self._tx() as cur:
            now = self._now(cur)
            return self._workers_in(cur, self._config_in(cur), now)

    def _workers_in(self, cur: Any, config: dict[str, Any], now: float) -> list[dict[str, Any]]:
        cur.execute("SELECT info, extract(epoch FROM heartbeat_at)::float8 FROM queuectl.workers ORDER BY host, pid")
        result = []
        for info, beat in cur.fetchall():
            info = dict(info, heartbeat_at=iso(beat))
            info["alive"] = worker_alive(info.get("host"), info.get("pid"), beat, beat, config["lease_timeout"], now)
            result.append(info)
        return result

    def forget_worker(self, host: str, pid: int) -> None:
        with self._tx() as cur:
            cur.execute("DELETE FROM queuectl.workers WHERE host = %s AND pid = %s", (host, pid))

    def request_stop(self) -> None:
        with self._tx() as cur:
            now = self._now(cur)
            cur.execute("""INSERT INTO queuectl.flags (name, at) VALUES ('stop', %s)
                           ON CONFLICT (name) DO UPDATE SET at = EXCLUDED.at""", (now,))
            cur.execute("SELECT pg_notify(%s, 'stop')", (CONTROL_CHANNEL,))

    def stop_requested_at(self) -> float | None:
        """On this host's clock, like the worker's start it is compared with."""
        return self._stop_at if time.monotonic() - self._last_round < 1.5 else self._flag("stop")

    def _flag(self, name: str) -> float | None:
        """When a flag was set, on this host's clock, or None. A worker asks ten times a second:
        its rounds (at least one a second) read the flags, and answer it from that instead."""
        with self._tx() as cur:
            self._now(cur)
            cur.execute("SELECT at FROM queuectl.flags WHERE name = %s", (name,))
            row = cur.fetchone()
        return None if row is None else row[0] - self._offset

    def clear_stop(self) -> None:
        with self._tx() as cur:
            cur.execute("DELETE FROM queuectl.flags WHERE name = 'stop'")

    def pause(self) -> float | None:
        """Once the rounds under way have committed (their claims stand), no round claims."""
        with self._tx() as cur:
            now = self._now(cur)
            cur.execute(f"SELECT pg_advisory_xact_lock({CLAIMS_LOCK})")
            cur.execute("""INSERT INTO queuectl.flags (name, at) VALUES ('pause', %s) ON CONFLICT (name) DO NOTHING
                           RETURNING at""", (now,))
            began = cur.fetchone()
            if began is not None:
                cur.execute("SELECT pg_notify(%s, 'pause')", (CONTROL_CHANNEL,))  # claimed ahead: give back
                at = began[0]
            else:
                cur.execute("SELECT at FROM queuectl.flags WHERE name = 'pause'")
                at = cur.fetchone()[0]
        self._paused_at = at - self._offset
        return None if began else self._paused_at

    def resume(self) -> bool:
        with self._tx() as cur:
            cur.execute("DELETE FROM queuectl.flags WHERE name = 'pause' RETURNING at")
            self._paused_at = None
            if cur.fetchone() is None:
                return False
            cur.execute("SELECT pg_notify(%s, '')", (JOBS_CHANNEL,))  # idle workers claim at once
            return True

    def paused_since(self) -> float | None:
        return self._paused_at if time.monotonic() - self._last_round < 1.5 else self._flag("pause")

    # -- output: runs and their chunks

    def new_scratch(self, worker: WorkerIdentity, name: str) -> Any:
        """A scratch file in a private folder of this process, on this host (never shared)."""
        with self._scratch_lock:  # the worker's threads ask at once
            if self._scratch_dir is None:
                parent = scratch_parent()
                remove_dead_scratch(parent)  # a worker killed with -9 could not remove its own
                folder = os.path.join(parent, f"{os.getpid()}-{id(self):x}")
                os.makedirs(folder, mode=0o700, exist_ok=True)
                self._scratch_dir = folder
        path = os.path.join(self._scratch_dir, f"{name}.out")
        return open(path, "w+b", opener=lambda p, _: os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600))

    def scratch_in_place(self, handle: Any) -> bool:
        return os.path.exists(handle.name)

    def remove_scratch(self, handle: Any) -> None:
        self._streams.pop(handle.name, None)
        queuectl._quietly(lambda: os.unlink(handle.name))

    def _run_of(self, cur: Any, job_id: str, attempt: int, header: bytes) -> Any:
        """The run an attempt's header began (attempt_started), or None. Matched up to the command's
        pid, which the worker writes into the header only once the command started, after the run began."""
        begun = header.split(b", command pid", 1)[0]
        cur.execute("""SELECT run FROM queuectl.runs WHERE job_id = %s AND attempt = %s
                       AND substring(header FROM 1 FOR %s) = %s AND NOT late ORDER BY run DESC LIMIT 1""",
                    (job_id, attempt, len(begun), psycopg2.Binary(begun)))
        row = cur.fetchone()
        return row[0] if row else None

    def _append(self, cur: Any, run: int, data: bytes, limit: int) -> None:
        """Add output to a run, keeping its newest `limit` bytes (older chunks go whole)."""
        if not data:
            return
        cur.execute("""UPDATE queuectl.runs SET size = size + %s WHERE run = %s RETURNING size + removed - %s""",
                    (len(data), run, len(data)))
        offset = cur.fetchone()[0]
        cur.execute("INSERT INTO queuectl.chunks (run, at, data) VALUES (%s, %s, %s)",
                    (run, offset, psycopg2.Binary(data)))
        cur.execute("SELECT size FROM queuectl.runs WHERE run = %s", (run,))
        if cur.fetchone()[0] > limit:
            cur.execute("""WITH gone AS (
                             DELETE FROM queuectl.chunks c WHERE c.run = %(run)s AND c.at + length(c.data) <= (
                               SELECT size + removed - %(limit)s FROM queuectl.runs WHERE run = %(run)s)
                             RETURNING length(c.data) AS n)
                           UPDATE queuectl.runs SET size = size - (SELECT coalesce(sum(n), 0) FROM gone),
                                  removed = removed + (SELECT coalesce(sum(n), 0) FROM gone)
                           WHERE run = %(run)s""", {"run": run, "limit": limit})

    def keep_output(self, job_id: str, attempt: int, worker: WorkerIdentity, header: bytes, source: Any,
                    start: int, end: int, ending: str, counted: bool = True) -> bool:
        limit = int(self.config()["log_max_bytes"])
        with self._tx(lazy=True) as cur:
            sent = self._streams.pop(getattr(source, "name", ""), (None, 0))[1]  # under the lock the streaming takes
            locked = self._lock(cur, [job_id])
            if not holds_claim(locked.get(job_id, (None,))[0], worker, attempt):
                return False
            run = self._run_of(cur, job_id, attempt, header.rstrip(b" \n") + b"\n")
            if run is None:  # it never started (or was not streamed): its run begins now
                cur.execute("""INSERT INTO queuectl.runs (job_id, attempt, host, pid, header)
                               VALUES (%s, %s, %s, %s, %s) RETURNING run""",
                            (job_id, attempt, worker.host, worker.pid,
                             psycopg2.Binary(header.rstrip(b" \n") + b"\n")))
                run, sent = cur.fetchone()[0], 0
            position = start + sent
            if end - position > limit:
                cur.execute("UPDATE queuectl.runs SET removed = removed + %s WHERE run = %s",
                            (end - limit - position, run))
                position = end - limit
            source.seek(position)
            while position < end:
                data = source.read(min(end - position, 1 << 20))
                if not data:
                    break
                self._append(cur, run, data, limit)
                position += len(data)
            cur.execute("UPDATE queuectl.runs SET ending = %s, counted = %s WHERE run = %s", (ending, counted, run))
        return True

    def _stream_output(self) -> None:
        """Every heartbeat: what running attempts printed since the last one reaches the database
        (fenced: only while the attempt is this worker's), so `logs --follow` works from any host."""
        if self._scratch_dir is None:
            return
        limit = int(self.config()["log_max_bytes"])
        try:
            names = os.listdir(self._scratch_dir)
        except OSError:
            return
        for name in names:
            with self.db.lock:  # keep_output takes a stream over under the same lock: no byte goes twice
                self._stream_one(os.path.join(self._scratch_dir, name), limit)

    def _stream_one(self, path: str, limit: int) -> None:
        """Send what one scratch file gained since the last beat, while its attempt is this worker's."""
        run, sent = self._streams.get(path, (None, 0))
        try:
            with open(path, "rb") as handle:
                header = handle.readline(queuectl.LOG_LINE_MAX)
            record = scratch_attempt(header)
            data = bytes_from(path, len(header) + sent) if record else b""
        except OSError:
            return
        if not data:
            return
        with self._tx(lazy=True) as cur:
            if run is None:
                run = self._run_of(cur, record.job_id, record.number, header)
            cur.execute("""SELECT 1 FROM queuectl.jobs j JOIN queuectl.runs r ON r.job_id = j.id
                           WHERE r.run = %s AND r.ending IS NULL AND j.state = 'processing' AND j.host = r.host
                           AND j.pid = r.pid AND j.attempts = r.attempt""", (run,))
            if run is None or cur.fetchone() is None:
                return
            self._append(cur, run, data, limit)
        self._streams[path] = (run, sent + len(data))

    def keep_late_output(self, job_id: str, attempt: int, scratch: Any, end: int) -> None:
        """The processes the attempt left running write on into its scratch file, on this host:
        what they write reaches the database at each heartbeat while this worker runs (after it
        exits, late output is no longer collected: a documented limit of this store)."""
        scratch.close()
        self._streams.pop(scratch.name, None)
        self._late[scratch.name] = (job_id, attempt, end, None)

    def _flush_late(self) -> None:
        limit = int(self.config()["log_max_bytes"])
        for path, (job_id, attempt, sent, run) in list(self._late.items()):
            try:
                data = bytes_from(path, sent)
            except OSError:
                self._late.pop(path, None)
                continue
            if not data:
                continue
            with self._tx(lazy=True) as cur:
                if run is None:
                    cur.execute("""INSERT INTO queuectl.runs (job_id, attempt, host, pid, header, ending, late)
                                   SELECT %s, %s, %s, %s, ''::bytea, 'late', true
                                   WHERE EXISTS (SELECT 1 FROM queuectl.jobs WHERE id = %s) RETURNING run""",
                                (job_id, attempt, HOST, os.getpid(), job_id))
                    row = cur.fetchone()
                    if row is None:  # the job was purged
                        self._late.pop(path, None)
                        continue
                    run = row[0]
                self._append(cur, run, data, limit)
            self._late[path] = (job_id, attempt, sent + len(data), run)

    def cap_late_output(self, limit: int) -> None:
        """Late output is capped in the database as it arrives (log_max_bytes, newest kept)."""

    def log_location(self, job_id: str) -> str:
        return f"{self.location} (the output of {job_id} is kept in the database)"

    def _attempts(self, cur: Any, job_id: str, running: bool) -> list[Attempt]:
        import io

        cur.execute(f"""SELECT run, header, removed, ending, counted, late, attempt FROM queuectl.runs
                        WHERE job_id = %s AND ending IS {'' if running else 'NOT '}NULL ORDER BY run""", (job_id,))
        runs = cur.fetchall()
        attempts = []
        late: dict[int, bytes] = {}
        for run, _, _, _, _, is_late, attempt in runs:
            if is_late:
                late[attempt] = late.get(attempt, b"") + self._output(cur, run)
        for run, header, removed, ending, counted, is_late, _ in runs:
            record = scratch_attempt(bytes(header))
            if record is None or is_late:
                continue
            output = self._output(cur, run)
            record.output_start, record.output_end, record.end = 0, len(output), len(output)
            record.ending, record.counted, record.removed = ending, counted, removed
            attempt = Attempt(record, io.BytesIO(output))
            if running:
                attempt.more = self._reader(run, removed)
            elif counted and record.number in late:
                attempt.late = (io.BytesIO(late[record.number]), 0, len(late[record.number]))
            attempts.append(attempt)
        return attempts

    @staticmethod
    def _output(cur: Any, run: int) -> bytes:
        cur.execute("SELECT data FROM queuectl.chunks WHERE run = %s ORDER BY at", (run,))
        return b"".join(bytes(data) for (data,) in cur.fetchall())

    def _reader(self, run: int, removed: int) -> Callable[[int], bytes | None]:
        """Read on in a running attempt's output: from `offset` (bytes printed so far of what was
        kept when it was handed out, which began `removed` bytes into the run's output)."""

        def more(offset: int) -> bytes | None:
            with self._tx() as cur:
                cur.execute("SELECT ending FROM queuectl.runs WHERE run = %s", (run,))
                row = cur.fetchone()
                if row is None or row[0] is not None:
                    return None
                cur.execute("""SELECT at, data FROM queuectl.chunks WHERE run = %s AND at + length(data) > %s
                               ORDER BY at""", (run, offset + removed))
                data = b""
                for at, chunk in cur.fetchall():
                    chunk = bytes(chunk)
                    skip = max(0, offset + removed - at)
                    data += chunk[skip:]
                    if len(data) >= 1 << 20:
                        break
                return data

        return more

    def attempt_logs(self, job_id: str) -> list[Attempt]:
        self._flush_late()  # late output on this host so far
        with self._tx() as cur:
            return self._attempts(cur, job_id, running=False)

    def running_attempt(self, job: dict[str, Any]) -> Attempt | None:
        if job.get("state") != "processing":
            return None
        with self._tx() as cur:
            attempts = [a for a in self._attempts(cur, job["id"], running=True) if a.number == job["attempts"]]
        return attempts[-1] if attempts else None
